"""Advantage estimators (``advantage=<name>``)."""
