"""Logger callbacks, fanned out with pluggy.

A run's loggers are objects built from config (``logger=[jsonl,tensorboard]``), each implementing any
of ``on_train_start(run_dir, config, start_step)``, ``on_step_end(step, metrics, samples)`` and
``on_train_end(metrics)`` as plain methods. They are registered with a pluggy manager of their own, so
the trainer calls each callback once (``callbacks.hook.on_step_end(...)``) and pluggy calls every logger
that implements it — what pluggy is for — without the trainer probing objects with ``hasattr``. pluggy
also validates at registration that a callback takes only arguments the hook provides.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import pluggy

from rlvr.core.contracts import LOGGER_HOOKS

PROJECT = "rlvr.callbacks"
_spec = pluggy.HookspecMarker(PROJECT)


class LoggerHooks:
    """The callback hookspecs (argument names as in :data:`rlvr.core.contracts.LOGGER_HOOKS`)."""

    @_spec
    def on_train_start(self, run_dir: Any, config: dict[str, Any], start_step: int) -> None:
        """The run starts (or resumes at ``start_step``) in ``run_dir`` with the composed ``config``."""

    @_spec
    def on_step_end(self, step: int, metrics: dict[str, Optional[float]], samples: list[dict[str, Any]]) -> None:
        """A step finished: its metrics (None = undefined) and a few sampled completions."""

    @_spec
    def on_train_end(self, metrics: dict[str, Optional[float]]) -> None:
        """The run finished (or stopped on an error); ``metrics`` are the last step's."""


class _LoggerManager(pluggy.PluginManager):
    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Optional[pluggy.HookimplOpts]:
        # loggers are plain objects: a method named like a callback is its implementation (no decorator needed)
        if name in LOGGER_HOOKS and callable(getattr(plugin, name, None)):
            return {
                "wrapper": False,
                "hookwrapper": False,
                "optionalhook": False,
                "tryfirst": False,
                "trylast": False,
                "specname": None,
            }
        return None


def logger_manager(loggers: Sequence[tuple[str, Any]]) -> pluggy.PluginManager:
    """A manager calling every ``(name, logger)`` in order of the list; its ``.hook`` has the three callbacks."""
    pm = _LoggerManager(PROJECT)
    pm.add_hookspecs(LoggerHooks)
    for name, logger in reversed(list(loggers)):  # pluggy calls the last registered first
        pm.register(logger, name=name)
    return pm
