"""``reward=arithmetic``: the seed example reward for the arithmetic task.

score = (+found if a number appears in the completion else -found)
      + (+correct if the last number equals the answer else -correct)
With the defaults: right answer +4, wrong number -2, no number at all -4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlvr import PluginSpec, hookimpl
from rlvr.core.answers import last_number, same_number
from rlvr.core.rewards import RewardConfig


@dataclass
class ArithmeticRewardConfig(RewardConfig):
    found: float = 1.0
    correct: float = 3.0


def arithmetic_scores(
    completions: list[str], answer: list[Any], found: float = 1.0, correct: float = 3.0
) -> list[float]:
    out = []
    for text, ref in zip(completions, answer):
        n = last_number(text)
        out.append((found if n is not None else -found) + (correct if same_number(n, ref) else -correct))
    return out


def make_arithmetic_reward(cfg: ArithmeticRewardConfig):
    def arithmetic(completions: list[str], answer: list[Any], **_: Any) -> list[float]:
        return arithmetic_scores(completions, answer, cfg.found, cfg.correct)

    return arithmetic


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "arithmetic", make_arithmetic_reward, ArithmeticRewardConfig, "number found ±1, number correct ±3, summed"
        )
    ]
