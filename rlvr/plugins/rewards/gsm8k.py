"""The GSM8K reward suite for the ``<reasoning>…</reasoning><answer>…</answer>`` format.

The five rewards and their default scores follow the widely used community recipe (the GRPO
GSM8K demo and the notebooks derived from it):

=====================  =====  ===========================================================
reward                 score  when
=====================  =====  ===========================================================
gsm8k_correct          2.0    the text inside ``<answer>…</answer>`` equals the reference
gsm8k_int              0.5    the text inside ``<answer>…</answer>`` is an integer
gsm8k_strict_format    0.5    exactly ``<reasoning>\\n…\\n</reasoning>\\n<answer>\\n…\\n</answer>``
gsm8k_soft_format      0.5    ``<reasoning>…</reasoning>`` then ``<answer>…</answer>``, any whitespace
gsm8k_xmlcount         ≤0.5   0.125 per tag present exactly once, −0.001 per character after ``</answer>``
=====================  =====  ===========================================================

Unlike the copied originals, every pattern matches across newlines: there, ``.`` does not match
a newline, so a multi-line reasoning block never earns the format rewards.

The ``answer`` column may be the full GSM8K solution (``… #### 72``) or the bare final answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.answers import against_reference, clean_answer, extract_xml_answer, is_integer_text, parse_number
from rlvr.core.rewards import RewardConfig

TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
_NO_TAG = r"(?:(?!</?reasoning>|</?answer>).)"  # any character that does not start a tag
STRICT_RE = re.compile(rf"^<reasoning>\n{_NO_TAG}*?\n</reasoning>\n<answer>\n{_NO_TAG}*?\n</answer>\n?\Z", re.DOTALL)
SOFT_RE = re.compile(r"^\s*<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)


def same_answer(candidate: Optional[str], reference: Optional[str], normalize: bool = True) -> bool:
    """Exact string equality; with ``normalize``, also equal after dropping thousands separators,
    currency and trailing zeros (``"1,000.0"`` equals ``"1000"``)."""
    if candidate is None or reference is None:
        return False
    if candidate.strip() == reference.strip():
        return True
    if not normalize:
        return False
    a, b = parse_number(candidate), parse_number(reference)
    if a is not None and b is not None:
        return a == b
    return clean_answer(candidate) == clean_answer(reference)


def xml_count(text: str, per_tag: float = 0.125, per_trailing_char: float = 0.001) -> float:
    """``per_tag`` for each of the four tags that appears exactly once, minus
    ``per_trailing_char`` per non-whitespace-trimmed character after the last ``</answer>``."""
    score = sum(per_tag for tag in TAGS if text.count(tag) == 1)
    if "</answer>" in text:
        score -= per_trailing_char * len(text.rsplit("</answer>", 1)[1].strip())
    return score


@dataclass
class GSM8KCorrectConfig(RewardConfig):
    score: float = 2.0
    answer_column: str = "answer"
    normalize: bool = True  # also accept "1,000" for "1000" and "7.0" for "7" (the original compares strings)


@dataclass
class GSM8KScoreConfig(RewardConfig):
    score: float = 0.5


@dataclass
class GSM8KXmlCountConfig(RewardConfig):
    per_tag: float = 0.125
    per_trailing_char: float = 0.001


def make_correct(cfg: GSM8KCorrectConfig) -> Callable[..., list[Optional[float]]]:
    def judge(text: str, ref: str) -> float:
        return cfg.score if same_answer(extract_xml_answer(text), ref, cfg.normalize) else 0.0

    def gsm8k_correct(completions: list[str], **columns: Any) -> list[Optional[float]]:
        return against_reference("gsm8k_correct", completions, columns, cfg.answer_column, judge)

    return gsm8k_correct


def make_int(cfg: GSM8KScoreConfig) -> Callable[..., list[float]]:
    def gsm8k_int(completions: list[str], **_: Any) -> list[float]:
        return [cfg.score if is_integer_text(extract_xml_answer(t)) else 0.0 for t in completions]

    return gsm8k_int


def make_strict(cfg: GSM8KScoreConfig) -> Callable[..., list[float]]:
    def gsm8k_strict_format(completions: list[str], **_: Any) -> list[float]:
        return [cfg.score if STRICT_RE.match(t) else 0.0 for t in completions]

    return gsm8k_strict_format


def make_soft(cfg: GSM8KScoreConfig) -> Callable[..., list[float]]:
    def gsm8k_soft_format(completions: list[str], **_: Any) -> list[float]:
        return [cfg.score if SOFT_RE.match(t) else 0.0 for t in completions]

    return gsm8k_soft_format


def make_xmlcount(cfg: GSM8KXmlCountConfig) -> Callable[..., list[float]]:
    def gsm8k_xmlcount(completions: list[str], **_: Any) -> list[float]:
        return [xml_count(t, cfg.per_tag, cfg.per_trailing_char) for t in completions]

    return gsm8k_xmlcount


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec("gsm8k_correct", make_correct, GSM8KCorrectConfig, "2.0 when <answer> equals the reference"),
        PluginSpec("gsm8k_int", make_int, GSM8KScoreConfig, "0.5 when <answer> holds an integer"),
        PluginSpec(
            "gsm8k_strict_format",
            make_strict,
            GSM8KScoreConfig,
            "0.5 for exactly <reasoning>\\n…\\n</reasoning>\\n<answer>\\n…\\n</answer>",
        ),
        PluginSpec(
            "gsm8k_soft_format",
            make_soft,
            GSM8KScoreConfig,
            "0.5 for <reasoning>…</reasoning> then <answer>…</answer>, any whitespace",
        ),
        PluginSpec(
            "gsm8k_xmlcount",
            make_xmlcount,
            GSM8KXmlCountConfig,
            "0.125 per tag present once, -0.001 per character after </answer>",
        ),
    ]
