"""An example rlvr reward plugin: ``reward=[brevity]``.

Scores ``+bonus`` when a completion has at most ``max_words`` words and loses ``penalty`` per word
beyond that, so that the policy learns to answer briefly. Install this package and
``rlvr plugins`` lists it; ``rlvr train reward=[arithmetic,brevity] reward.brevity.max_words=20``
uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlvr import PluginSpec, hookimpl
from rlvr.core.rewards import RewardConfig


@dataclass
class BrevityConfig(RewardConfig):
    """Every field needs a default: ``reward.brevity.<field>=...`` overrides it from the command line."""

    max_words: int = 50
    bonus: float = 0.5
    penalty: float = 0.02  # per word over max_words


def make_brevity(cfg: BrevityConfig):
    """Build the reward from its config. The reward gets the completions, the prompts and every
    task column as keyword lists; ``**_`` ignores the ones it does not need."""

    def brevity(completions: list[str], **_: Any) -> list[float]:
        scores = []
        for text in completions:
            words = len(text.split())
            scores.append(cfg.bonus if words <= cfg.max_words else -cfg.penalty * (words - cfg.max_words))
        return scores

    return brevity


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="brevity",
            factory=make_brevity,
            config=BrevityConfig,
            description="short answers score more (example third-party plugin)",
        )
    ]
