"""Final-answer extraction and number normalisation shared by the math reward families.

Pure functions, no plugin registration here:

- :func:`extract_final_answer` finds the answer a completion commits to (``\\boxed{}``,
  ``<answer>…</answer>``, ``<SOLUTION>…</SOLUTION>``, ``#### N``, "the answer is N", ``A: N``,
  else the last number);
- :func:`parse_number` turns an answer string into an exact :class:`fractions.Fraction`
  ("$1,234.50", "18 dollars", "3/4", "\\frac{3}{4}", "25%", "x = 7"), or None;
- :func:`reference_answer` reads a reference column value (a GSM8K solution ending in ``#### N``
  or a bare answer).
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Callable, Optional, TypeVar

from rlvr.core.errors import ColumnError

T = TypeVar("T")

NUMBER_RE = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_NUMBER_BODY = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?"

_TAG_PAIRS = (("<answer>", "</answer>"), ("<SOLUTION>", "</SOLUTION>"))
_PHRASE_RE = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]+)", re.IGNORECASE)
_A_COLON_RE = re.compile(r"^\s*A\s*:\s*([^\n]+)", re.MULTILINE)
_CURRENCY_RE = re.compile(r"(\\\$|\$|€|£|¥|₹|\bUSD\b|\bEUR\b|\bGBP\b)")
_FRAC_RE = re.compile(r"^([-+]?)\\[dt]?frac\{\s*([^{}]+?)\s*\}\{\s*([^{}]+?)\s*\}$")
_SIMPLE_FRAC_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)$")
_MIXED_RE = re.compile(r"^([-+]?\d+)\s+(\d+)\s*/\s*(\d+)$")
_LEADING_VAR_RE = re.compile(r"^(?:[A-Za-z]\w*\s*)?=\s*")
_NUM_THEN_WORDS_RE = re.compile(r"^(" + _NUMBER_BODY + r")\s*(?:%|[A-Za-z°][A-Za-z°\s.\-/]*)?$")


def _last_balanced(text: str, command: str) -> Optional[str]:
    """The content of the last ``\\command{...}`` in ``text`` with nested braces balanced."""
    start = text.rfind(command)
    while start != -1:
        i = start + len(command)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1:j]
                j += 1
        start = text.rfind(command, 0, start)
    return None


def last_tagged(text: str, open_tag: str, close_tag: str, case_sensitive: bool = False) -> Optional[str]:
    """The content of the last ``open_tag … close_tag`` pair (across newlines), or None."""
    flags = re.DOTALL | (0 if case_sensitive else re.IGNORECASE)
    found = re.findall(re.escape(open_tag) + r"(.*?)" + re.escape(close_tag), text, flags)
    return found[-1] if found else None


def extract_final_answer(text: str, last_number: bool = True) -> Optional[str]:
    """The answer string a completion commits to, or None.

    Tried in order: the last ``\\boxed{…}`` (or ``\\fbox``), the last ``<answer>…</answer>``, the
    last ``<SOLUTION>…</SOLUTION>``, the text after the last ``####``, "the answer is …" /
    "final answer: …", a line starting ``A: …``, and (when ``last_number``) the last number in the
    text. Tags match across newlines and case-insensitively.
    """
    if not text:
        return None
    for command in ("\\boxed", "\\fbox"):
        boxed = _last_balanced(text, command)
        if boxed is not None and boxed.strip():
            return boxed.strip()
    for open_tag, close_tag in _TAG_PAIRS:
        inner = last_tagged(text, open_tag, close_tag)
        if inner is not None and inner.strip():
            inner = inner.strip()
            boxed = _last_balanced(inner, "\\boxed")
            return boxed.strip() if boxed else inner
    if "####" in text:
        after = text.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()
        if after:
            return after
    phrases = _PHRASE_RE.findall(text)
    if phrases:
        return phrases[-1].strip().rstrip(".").strip()
    a_colon = _A_COLON_RE.findall(text)
    if a_colon:
        return a_colon[-1].strip().rstrip(".").strip()
    if last_number:
        numbers = NUMBER_RE.findall(text)
        if numbers:
            return numbers[-1]
    return None


def reference_answer(value: Any) -> Optional[str]:
    """A reference column value as an answer string: the text after ``####`` when present
    (a full GSM8K solution), else the value itself, stripped. None for missing values."""
    if value is None:
        return None
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = text.strip()
    return text or None


def clean_answer(text: str) -> str:
    """Strip what does not change an answer's value: math delimiters, ``\\text{}``, currency,
    thousands separators, a leading ``x =``, a trailing full stop."""
    s = text.strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left):len(s) - len(right)].strip()
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", " ").replace("\\%", "%")
    s = _CURRENCY_RE.sub("", s)
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    s = _LEADING_VAR_RE.sub("", s.strip())
    s = s.strip().rstrip(".").strip()
    return s


def parse_number(text: Optional[str]) -> Optional[Fraction]:
    """The exact value of an answer string, or None when it is not a single number.

    Accepts "1,234", "$18.00", "18 dollars", "25%", "-3", "0.5", "3/4", "1 1/2", "\\frac{3}{4}",
    "\\dfrac{-1}{2}", "x = 7", "1e3". Percentages keep their number ("25%" is 25).
    """
    if text is None:
        return None
    s = clean_answer(text)
    if not s:
        return None
    m = _FRAC_RE.match(s)
    if m:
        num, den = parse_number(m.group(2)), parse_number(m.group(3))
        if num is None or den is None or den == 0:
            return None
        value = num / den
        return -value if m.group(1) == "-" else value
    m = _MIXED_RE.match(s)
    if m:
        whole, num, den = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if den == 0:
            return None
        frac = Fraction(num, den)
        return whole - frac if m.group(1).startswith("-") else whole + frac
    m = _SIMPLE_FRAC_RE.match(s)
    if m:
        den = Fraction(m.group(2))
        return Fraction(m.group(1)) / den if den != 0 else None
    m = _NUM_THEN_WORDS_RE.match(s)
    if m and re.search(r"\d", m.group(1)):
        try:
            return Fraction(m.group(1).replace(",", ""))
        except (ValueError, ZeroDivisionError):
            return None
    return None


def numbers_match(a: Fraction, b: Fraction, rel_tol: float = 0.0, abs_tol: float = 0.0) -> bool:
    """Exact equality, or ``|a - b| <= max(abs_tol, rel_tol * max(|a|, |b|))``."""
    if a == b:
        return True
    diff = abs(float(a) - float(b))
    return diff <= max(abs_tol, rel_tol * max(abs(float(a)), abs(float(b))))


def is_integer_text(text: Optional[str]) -> bool:
    """Whether ``text`` (stripped) is an integer written with digits, optionally signed."""
    return text is not None and re.fullmatch(r"[-+]?\d+", text.strip()) is not None


def against_reference(reward: str, completions: list[str], columns: dict[str, list[Any]], column: str,
                      judge: Callable[[str, str], T]) -> list[Optional[T]]:
    """``judge(completion, reference)`` for each completion, the reference read from ``column``
    with :func:`reference_answer`; None (not applicable) where a row has no reference."""
    if column not in columns:
        raise ColumnError(f"{reward} needs the task column {column!r} (set answer_column); columns given: {sorted(columns)}")
    out: list[Optional[T]] = []
    for text, value in zip(completions, columns[column]):
        ref = reference_answer(value)
        out.append(None if ref is None else judge(text or "", ref))
    return out
