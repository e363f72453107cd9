"""What the ``rlvr`` subcommands do, one module each (the argument parsing is in :mod:`rlvr.cli`):
``evaluation`` (rlvr eval), ``show``, ``report`` and ``compare`` (rlvr report), ``export``, ``audit``."""
