"""``reward=proximity``: closer numbers score more (the graded answer check of Unsloth's GRPO notebooks).

=============================================  ======
the extracted answer …                         score
=============================================  ======
is identical to the reference string           +5.0
equals it after stripping (spaces, commas,     +3.5
currency, units, trailing zeros)
is within 10 % of it (ratio 0.9 – 1.1)         +2.0
is within 20 % of it (ratio 0.8 – 1.2)         +1.5
is any other number                            −2.5
is not a number                                −4.5
is missing (no answer found)                   −2.0
=============================================  ======

All scores and both ratio bands are configurable. The answer is read between ``answer_start`` and
``answer_end`` when they are set (e.g. ``<SOLUTION>`` / ``</SOLUTION>``), else with the shared
final-answer extraction (``\\boxed{}``, ``<answer>``, ``<SOLUTION>``, ``####``, "the answer is").
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.answers import against_reference, clean_answer, extract_final_answer, last_tagged, parse_number
from rlvr.core.rewards import RewardConfig


@dataclass
class ProximityConfig(RewardConfig):
    exact: float = 5.0
    stripped: float = 3.5
    within_close: float = 2.0
    within_near: float = 1.5
    wrong: float = -2.5
    unparseable: float = -4.5
    no_answer: float = -2.0
    close_ratio: float = 0.1  # |guess / reference - 1| <= close_ratio scores within_close
    near_ratio: float = 0.2  # ... <= near_ratio scores within_near
    answer_column: str = "answer"
    answer_start: str = ""  # e.g. "<SOLUTION>"; empty: the shared final-answer extraction
    answer_end: str = ""  # e.g. "</SOLUTION>"
    last_number: bool = False  # with the shared extraction, fall back to the last number in the text


def extract(text: str, cfg: ProximityConfig) -> Optional[str]:
    """The raw answer string of a completion (not stripped in tag mode), or None."""
    if cfg.answer_start and cfg.answer_end:
        return last_tagged(text, cfg.answer_start, cfg.answer_end, case_sensitive=True)
    return extract_final_answer(text, last_number=cfg.last_number)


def proximity_score(guess: Optional[str], reference: str, cfg: ProximityConfig) -> float:
    """The score band of one extracted answer against the reference answer string."""
    if guess is None:
        return cfg.no_answer
    if guess == reference:
        return cfg.exact
    g, r = parse_number(guess), parse_number(reference)
    if (
        guess.strip() == reference.strip()
        or clean_answer(guess) == clean_answer(reference)
        or (g is not None and r is not None and g == r)
    ):
        return cfg.stripped
    if g is None:
        return cfg.unparseable
    if r is None or r == 0:
        return cfg.wrong
    off = abs(g / r - 1)  # exact arithmetic: 110 vs 100 is within 10 %
    if off <= Fraction(repr(cfg.close_ratio)):
        return cfg.within_close
    if off <= Fraction(repr(cfg.near_ratio)):
        return cfg.within_near
    return cfg.wrong


def make_proximity(cfg: ProximityConfig) -> Callable[..., list[Optional[float]]]:
    def proximity(completions: list[str], **columns: Any) -> list[Optional[float]]:
        return against_reference(
            "proximity",
            completions,
            columns,
            cfg.answer_column,
            lambda text, ref: proximity_score(extract(text, cfg), ref, cfg),
        )

    return proximity


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "proximity",
            make_proximity,
            ProximityConfig,
            "closer numbers score more: exact +5, stripped +3.5, ±10% +2, ±20% +1.5, wrong -2.5, "
            "not a number -4.5, no answer -2",
        )
    ]
