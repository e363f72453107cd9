"""rlvr: reinforcement learning from verifiable rewards.

Public API::

    import rlvr
    loss = rlvr.create("loss", "dr_grpo", epsilon=0.2, max_completion_length=256)
    cfg = rlvr.compose(["model=tiny", "trainer.max_steps=2"])
    rlvr.Trainer(cfg, rewards=[my_reward]).train()
"""

from __future__ import annotations

from typing import Any

from rlvr.core.hookspecs import hookimpl
from rlvr.core.registry import PluginSpec, add_plugin, create, names, register

__version__ = "0.1.0"

__all__ = [
    "create",
    "register",
    "add_plugin",
    "names",
    "PluginSpec",
    "hookimpl",
    "compose",
    "Trainer",
    "train",
    "__version__",
]


def compose(overrides: list[str] | None = None) -> Any:
    """Compose the run config exactly as ``rlvr train <overrides>`` would."""
    from rlvr.core.config import compose as _compose

    return _compose(overrides)


def __getattr__(name: str) -> Any:  # lazy: importing rlvr must not import torch
    if name in ("Trainer", "train"):
        from rlvr.core import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'rlvr' has no attribute {name!r}")
