"""``verifier=math_answer`` / ``reward=math_answer``: is the completion's final answer right?

The final answer is extracted (``\\boxed{}``, ``<answer>…</answer>``, ``<SOLUTION>…</SOLUTION>``,
``#### N``, "the answer is N", ``A: N``, else the last number), normalised (thousands separators,
currency, unit words, trailing ``.0``, fractions) and compared with the reference column
numerically (exactly, or within ``rel_tol`` / ``abs_tol``). Answers that are not plain numbers
(``\\frac{\\sqrt{3}}{2}``, ``x^2+1``, intervals, sets) are compared symbolically with Math-Verify.

Verdicts: True / False; None where the row has no reference answer (not applicable).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.rewards import VerifierConfig, verifier_as_reward
from rlvr.plugins.rewards._answers import (against_reference, clean_answer, extract_final_answer, numbers_match,
                                           parse_number)


@dataclass
class MathAnswerConfig(VerifierConfig):
    """``pass_score`` / ``fail_score`` apply when used as a reward (``reward=math_answer``)."""

    answer_column: str = "answer"
    rel_tol: float = 0.0  # numbers within rel_tol * max(|a|, |b|) count as equal
    abs_tol: float = 1e-9  # ... or within abs_tol
    last_number: bool = True  # fall back to the last number in the text when no answer marker is found
    math_verify: bool = True  # compare non-numeric answers symbolically with Math-Verify
    timeout_seconds: int = 5  # Math-Verify's own timeout (main thread only; it uses SIGALRM)


def _as_latex(text: str) -> str:
    s = text.strip()
    if s.startswith("$") or s.startswith("\\(") or s.startswith("\\[") or "\\boxed" in s:
        return s
    return f"${s}$"


def symbolic_equal(reference: str, candidate: str, timeout_seconds: Optional[int] = 5) -> bool:
    """Math-Verify's verdict on ``candidate`` against ``reference`` (both short answer strings)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if threading.current_thread() is not threading.main_thread():
        timeout_seconds = None  # Math-Verify's timeout relies on signal.alarm, main thread only
    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    gold = parse(_as_latex(reference), extraction_config=config, parsing_timeout=timeout_seconds)
    pred = parse(_as_latex(candidate), extraction_config=config, parsing_timeout=timeout_seconds)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout_seconds))


def answers_match(candidate: Optional[str], reference: str, rel_tol: float = 0.0, abs_tol: float = 1e-9,
                  use_math_verify: bool = True, timeout_seconds: Optional[int] = 5) -> bool:
    """Whether an extracted answer equals the reference: numerically when both are numbers,
    else by normalised string equality, else symbolically through Math-Verify."""
    if candidate is None:
        return False
    a, b = parse_number(candidate), parse_number(reference)
    if a is not None and b is not None:
        return numbers_match(a, b, rel_tol, abs_tol)
    if clean_answer(candidate).replace(" ", "").lower() == clean_answer(reference).replace(" ", "").lower():
        return True
    if use_math_verify:
        return symbolic_equal(reference, candidate, timeout_seconds)
    return False


def make_math_answer(cfg: MathAnswerConfig) -> Callable[..., list[Optional[bool]]]:
    """Build the verifier ``fn(completions, **columns) -> list[bool | None]``."""

    def judge(text: str, ref: str) -> bool:
        candidate = extract_final_answer(text, last_number=cfg.last_number)
        return answers_match(candidate, ref, cfg.rel_tol, cfg.abs_tol, cfg.math_verify, cfg.timeout_seconds)

    def math_answer(completions: list[str], **columns: Any) -> list[Optional[bool]]:
        return against_reference("math_answer", completions, columns, cfg.answer_column, judge)

    return math_answer


def make_math_answer_reward(cfg: MathAnswerConfig) -> Callable[..., list[Optional[float]]]:
    return verifier_as_reward(make_math_answer(cfg), cfg.pass_score, cfg.fail_score)


DESCRIPTION = "final answer (boxed / tags / #### / last number) equals the reference: numeric or Math-Verify"


@hookimpl
def rlvr_verifiers() -> list[PluginSpec]:
    return [PluginSpec("math_answer", make_math_answer, MathAnswerConfig, DESCRIPTION)]


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [PluginSpec("math_answer", make_math_answer_reward, MathAnswerConfig,
                       DESCRIPTION + "; pass_score / fail_score")]
