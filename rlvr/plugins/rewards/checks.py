"""Two plain verifiers, mostly for held-out accuracy (``task.correct=...``):

- ``numeric``: the completion's final number equals the reference number (an explicit marker,
  ``#### N`` / ``<answer>`` / ``\\boxed{}`` / "the answer is N", wins; else the last number in the text),
  exactly or within ``abs_tol``;
- ``exact_match``: the answer text equals the reference after normalisation (case, whitespace,
  markdown, surrounding quotes and punctuation, ``\\text{}``); the answer is the content of an explicit
  marker when the completion has one, else the whole completion. A reference given as a list accepts
  any of its items.

Both read answers through :mod:`rlvr.core.answers`, like ``math_answer`` and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core import answers
from rlvr.core.errors import ColumnError
from rlvr.core.rewards import VerifierConfig


@dataclass
class NumericConfig(VerifierConfig):
    answer_column: str = "answer"
    abs_tol: float = 1e-6
    decimal_comma: str = "auto"  # auto | never | always (docs/answers.md)


@dataclass
class ExactMatchConfig(VerifierConfig):
    answer_column: str = "answer"
    case_sensitive: bool = False


def _column(name: str, column: str, columns: dict[str, list[Any]]) -> list[Any]:
    if column not in columns:
        raise ColumnError(
            f"{name} needs the task column {column!r} (set answer_column); columns given: {sorted(columns)}"
        )
    return columns[column]


def numeric_verdict(text: str, reference: Any, abs_tol: float = 1e-6, decimal_comma: str = "auto") -> Optional[bool]:
    """The final number of ``text`` against a numeric reference; None when there is no reference."""
    ref = answers.reference_answer(reference)
    if ref is None:
        return None
    want = answers.parse_number(ref, decimal_comma)
    if want is None:
        return False
    found = answers.extract_final_answer(text or "", last_number=True, free_form=False)
    got = answers.parse_number(found, decimal_comma)
    if got is None and found is not None:  # a marker with words around the number: its first number
        numbers = answers.NUMBER_RE.findall(found)
        got = answers.parse_number(numbers[0], decimal_comma) if numbers else None
    return got is not None and answers.numbers_match(got, want, 0.0, abs_tol)


def exact_verdict(text: str, reference: Any, case_sensitive: bool = False) -> Optional[bool]:
    """Normalised exact match of the completion's answer against the reference (or any item of a list)."""
    if reference is None:
        return None
    refs = reference if isinstance(reference, (list, tuple)) else [reference]
    got = answers.normalize_text(answers.exact_answer(text or ""))
    wants = [answers.normalize_text(r) for r in refs if r is not None and str(r).strip()]
    if not wants:
        return None
    if case_sensitive:
        got = " ".join(answers.exact_answer(text or "").split()).strip(" .")
        wants = [" ".join(str(r).split()).strip(" .") for r in refs if r is not None]
    return got in wants


def make_numeric(cfg: NumericConfig) -> Callable[..., list[Optional[bool]]]:
    def numeric(completions: list[str], **columns: Any) -> list[Optional[bool]]:
        refs = _column("numeric", cfg.answer_column, columns)
        return [numeric_verdict(t, r, cfg.abs_tol, cfg.decimal_comma) for t, r in zip(completions, refs)]

    return numeric


def make_exact_match(cfg: ExactMatchConfig) -> Callable[..., list[Optional[bool]]]:
    def exact_match(completions: list[str], **columns: Any) -> list[Optional[bool]]:
        refs = _column("exact_match", cfg.answer_column, columns)
        return [exact_verdict(t, r, cfg.case_sensitive) for t, r in zip(completions, refs)]

    return exact_match


@hookimpl
def rlvr_verifiers() -> list[PluginSpec]:
    return [
        PluginSpec(
            "numeric", make_numeric, NumericConfig, "final number (marker, else last number) equals the reference"
        ),
        PluginSpec(
            "exact_match",
            make_exact_match,
            ExactMatchConfig,
            "answer text equals the reference after normalisation (case, spaces, punctuation)",
        ),
    ]
