"""``reward=[function] reward.function.path=my_module:my_reward``: any importable Python function as
a reward, no packaging needed. The module is imported from the working directory or sys.path."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ConfigError
from rlvr.core.rewards import RewardConfig


@dataclass
class FunctionRewardConfig(RewardConfig):
    path: str = ""  # "package.module:function"


def load_function(path: str):
    if ":" not in path:
        raise ConfigError(
            f"reward.function.path={path!r} must look like 'my_module:my_function' (a module importable "
            "from the current directory, and the name of a function in it)"
        )
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"reward.function.path={path!r}: cannot import {module_name!r} ({exc}); run from the "
            "directory that holds it or put it on PYTHONPATH"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        found = sorted(
            k
            for k, v in vars(module).items()
            if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        raise ConfigError(
            f"reward.function.path={path!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
            f"has no function {attr!r}; its functions: {', '.join(found) or '(none)'}"
        )
    return fn


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "function",
            lambda cfg: load_function(cfg.path),
            FunctionRewardConfig,
            "a plain Python function given as module:function",
        )
    ]
