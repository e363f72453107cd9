"""User-facing errors of rlvr.

Everything a user can fix (a bad config value, a missing dataset, a broken plugin, a checkpoint
that cannot be written) is raised as a subclass of :class:`RlvrError`. The ``rlvr`` command
prints these as one line (exit code 2 when nothing has started yet, 1 when a run failed) and lets
every other exception keep its traceback, because anything else is a bug.

Each class also derives from the builtin exception that was raised before the hierarchy existed
(``ConfigError`` is a ``ValueError``, ``PluginNotFoundError`` a ``KeyError``, ...), so callers
that catch the builtin keep working.
"""

from __future__ import annotations


class RlvrError(Exception):
    """Base of every error a user can act on; its message says what was wrong and what to do."""


class ConfigError(RlvrError, ValueError):
    """A config value, key or combination that cannot work (``trainer.lr=0``, an unknown key)."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value or plugin parameter of the wrong type, or a parameter a plugin does not have."""


class MissingValueError(ConfigError):
    """A config field without a default that the user must set (``key=value``)."""


class PluginError(RlvrError, RuntimeError):
    """A plugin that cannot be imported, built or used; the message names the plugin and its distribution."""


class PluginNotFoundError(RlvrError, KeyError):
    """A plugin name that no installed plugin provides (or that two distributions provide)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class DataError(RlvrError, ValueError):
    """A dataset that is missing, empty, malformed or lacks a needed column."""


class ColumnError(DataError, KeyError):
    """A task column that a reward, template or task needs and the rows do not have."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class PathNotFoundError(RlvrError, FileNotFoundError):
    """A path the user gave (dataset, model, checkpoint, run directory) that does not exist."""


class MissingDependencyError(RlvrError, ImportError):
    """An optional package a chosen feature needs is not installed; the message says what to install."""


class LoadError(RlvrError, OSError):
    """A model, tokenizer or checkpoint that exists but cannot be loaded."""


class RunError(RlvrError, RuntimeError):
    """A run that cannot go on (too many non-finite losses, a reward that failed, ...)."""


class CheckpointError(RlvrError, OSError):
    """A checkpoint that cannot be written or read."""


class CheckpointMismatchError(CheckpointError, RuntimeError):
    """A checkpoint whose weights do not fit the configured model."""


class UsageError(RlvrError, ValueError):
    """A command line the ``rlvr`` command cannot parse (unknown option, wrong number of arguments)."""


class UnreachableError(RlvrError, ConnectionError):
    """A server the run needs (an experiment tracker, a judge) cannot be reached."""
