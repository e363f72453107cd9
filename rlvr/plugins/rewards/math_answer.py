"""``verifier=math_answer`` / ``reward=math_answer``: is the completion's final answer right?

The answer is read and judged by :mod:`rlvr.core.answers` (the module evaluation uses too): explicit
markers first (``<answer>…</answer>``, ``<SOLUTION>…</SOLUTION>``, ``\\boxed{}``, ``#### N``, "the
answer is …", ``A: …``), else the last LaTeX environment the way Math-Verify finds it, else the last
number. Numbers are compared exactly (or within ``rel_tol`` / ``abs_tol``); everything else (sets,
intervals, inequalities, equations, ``\\dfrac``, ``\\sqrt3``, units, percentages, multiple-choice
letters) through Math-Verify's parser and comparison. Lines of the completion that repeat the
prompt verbatim are ignored. See docs/answers.md.

Verdicts: True / False; None where the row has no reference answer (not applicable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core import answers
from rlvr.core.errors import ColumnError, ConfigError
from rlvr.core.rewards import VerifierConfig, verifier_as_reward


@dataclass
class MathAnswerConfig(VerifierConfig):
    """``pass_score`` / ``fail_score`` apply when used as a reward (``reward=math_answer``)."""

    answer_column: str = "answer"
    rel_tol: float = 0.0  # numbers within rel_tol * max(|a|, |b|) count as equal
    abs_tol: float = 1e-9  # ... or within abs_tol
    last_number: bool = True  # no marker and no LaTeX: fall back to the last number in the text
    free_form: bool = True  # no marker: read the last LaTeX environment / expression as Math-Verify does
    math_verify: bool = True  # compare non-numeric answers symbolically with Math-Verify
    decimal_comma: str = "auto"  # auto (1,500 = 1500; 1,5 = 1.5) | never (commas group thousands) | always
    ignore_prompt_echo: bool = True  # lines repeating the prompt verbatim are not the model's answer
    timeout_seconds: int = 5  # Math-Verify's own timeout (main thread; inputs are size-bounded everywhere)


def make_math_answer(cfg: MathAnswerConfig) -> Callable[..., list[Optional[bool]]]:
    """Build the verifier ``fn(completions, prompts=None, **columns) -> list[bool | None]``."""
    if cfg.decimal_comma not in answers.DECIMAL_COMMA_CHOICES:
        raise ConfigError(
            f"math_answer: decimal_comma={cfg.decimal_comma!r}; choose one of "
            f"{answers.DECIMAL_COMMA_CHOICES} (see docs/answers.md)"
        )

    def math_answer(
        completions: list[str], prompts: Optional[list[str]] = None, **columns: Any
    ) -> list[Optional[bool]]:
        if cfg.answer_column not in columns:
            raise ColumnError(
                f"math_answer needs the task column {cfg.answer_column!r} (set answer_column); "
                f"columns given: {sorted(columns)}"
            )
        echo = prompts if (cfg.ignore_prompt_echo and prompts) else [None] * len(completions)
        return [
            answers.judge(
                text or "",
                ref,
                prompt=p,
                last_number=cfg.last_number,
                free_form=cfg.free_form,
                rel_tol=cfg.rel_tol,
                abs_tol=cfg.abs_tol,
                use_math_verify=cfg.math_verify,
                timeout_seconds=cfg.timeout_seconds,
                decimal_comma=cfg.decimal_comma,
            )
            for text, ref, p in zip(completions, columns[cfg.answer_column], echo)
        ]

    return math_answer


def make_math_answer_reward(cfg: MathAnswerConfig) -> Callable[..., list[Optional[float]]]:
    return verifier_as_reward(make_math_answer(cfg), cfg.pass_score, cfg.fail_score)


DESCRIPTION = (
    "final answer (tags / boxed / #### / 'the answer is' / last LaTeX / last number) equals the reference: "
    "exact numbers, else Math-Verify"
)


@hookimpl
def rlvr_verifiers() -> list[PluginSpec]:
    return [PluginSpec("math_answer", make_math_answer, MathAnswerConfig, DESCRIPTION)]


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec("math_answer", make_math_answer_reward, MathAnswerConfig, DESCRIPTION + "; pass_score / fail_score")
    ]
