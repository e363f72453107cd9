"""Group-relative advantage estimators: grpo, dr_grpo, rloo, reinforce_pp.

All four are :func:`rlvr.core.advantages.group_advantages` with different defaults (formulas there):

| name | baseline | scaling | source |
|---|---|---|---|
| grpo | group mean | group std | Shao et al. 2024 (DeepSeekMath), arXiv:2402.03300 |
| dr_grpo | group mean | none | Liu et al. 2025 (Dr. GRPO), arXiv:2503.20783 |
| rloo | leave-one-out mean | none | Ahmadian et al. 2024, arXiv:2402.14740 |
| reinforce_pp | group mean | batch std | Hu et al. 2025 (REINFORCE++-baseline), arXiv:2501.03262 |

Each takes ``baseline`` (mean | rloo), ``scaling`` (group | batch | none) and ``eps`` to override.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from rlvr import PluginSpec, hookimpl
from rlvr.core.advantages import EPS, group_advantages, turn_advantages
from rlvr.core.errors import ConfigError

BASELINES = ("mean", "rloo")
SCALINGS = ("group", "batch", "none")


@dataclass
class GroupAdvantageConfig:
    """``advantage.*``: A_i = (r_i − baseline) / scale."""

    baseline: str = "mean"  # mean (group mean) | rloo (mean of the other G−1 rewards)
    scaling: str = "group"  # group (group std) | batch (whole-batch std) | none
    eps: float = EPS  # added to the std


@dataclass
class DrGRPOConfig(GroupAdvantageConfig):
    scaling: str = "none"


@dataclass
class RLOOConfig(GroupAdvantageConfig):
    baseline: str = "rloo"
    scaling: str = "none"


@dataclass
class ReinforcePPConfig(GroupAdvantageConfig):
    scaling: str = "batch"


class GroupAdvantage:
    """``estimator(rewards [N] float32, group_size) -> advantages [N] float32`` (the AdvantageEstimator contract)."""

    def __init__(self, cfg: GroupAdvantageConfig, name: str) -> None:
        if cfg.baseline not in BASELINES:
            raise ConfigError(f"advantage {name!r}: baseline={cfg.baseline!r}: choose {' or '.join(BASELINES)}")
        if cfg.scaling not in SCALINGS:
            raise ConfigError(f"advantage {name!r}: scaling={cfg.scaling!r}: choose group, batch or none")
        if not cfg.eps >= 0:
            raise ConfigError(f"advantage {name!r}: eps must be >= 0, got {cfg.eps}")
        self.name, self.baseline, self.scaling, self.eps = name, cfg.baseline, cfg.scaling, float(cfg.eps)

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        return group_advantages(rewards, group_size, self.scaling, self.baseline, self.eps)

    def turn_advantages(self, turn_scores: Tensor, group_size: int) -> Tensor:
        """Per-turn rewards: turn t is credited with the rewards from turn t on (see
        :func:`rlvr.core.advantages.turn_advantages`); outcome rewards give ``__call__``'s values at every turn."""
        return turn_advantages(turn_scores, group_size, self.scaling, self.baseline, self.eps)

    def __repr__(self) -> str:
        return f"GroupAdvantage({self.name}: baseline={self.baseline}, scaling={self.scaling}, eps={self.eps})"


def _factory(name: str) -> Any:
    return lambda cfg: GroupAdvantage(cfg, name)


@hookimpl
def rlvr_advantages() -> list[PluginSpec]:
    return [
        PluginSpec("grpo", _factory("grpo"), GroupAdvantageConfig, "(r − group mean) / group std (GRPO)"),
        PluginSpec("dr_grpo", _factory("dr_grpo"), DrGRPOConfig, "r − group mean, no std (Dr. GRPO)"),
        PluginSpec("rloo", _factory("rloo"), RLOOConfig, "r − mean of the other G−1 rewards (RLOO)"),
        PluginSpec(
            "reinforce_pp",
            _factory("reinforce_pp"),
            ReinforcePPConfig,
            "(r − group mean) / batch std (REINFORCE++-baseline)",
        ),
    ]
