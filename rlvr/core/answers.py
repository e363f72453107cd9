"""The one answer module: what a completion's final answer is, and whether it equals a reference.

Rewards (``math_answer``, ``gsm8k_*``, ``proximity``, ``arithmetic``), the built-in verifiers
(``numeric``, ``exact_match``) and held-out evaluation (``rlvr eval``, ``eval/*`` metrics) all read
answers through these functions, so a reward and the accuracy it is checked against never disagree on
what the answer is. Pure functions; Math-Verify is imported lazily.

Extraction (:func:`extract_final_answer`), first marker found wins:

1. ``<answer>…</answer>`` / ``<SOLUTION>…</SOLUTION>`` (the last pair; a ``\\boxed{}`` inside wins);
2. ``\\boxed{…}`` / ``\\fbox{…}``; several boxes with *different* answers are read together as one
   multi-valued answer (``\\boxed{3} … \\boxed{5}`` is ``3, 5``), so hedging never matches a
   single-valued reference;
3. the line after ``####`` (several ``####`` lines with different answers: all of them, as for boxes);
4. "the (final) answer is …" / "answer: …" (up to the end of that sentence);
5. a line starting ``A: …``;
6. free form (:func:`free_form_answer`): the last LaTeX environment (``$…$``, ``$$…$$``,
   ``\\(…\\)``, ``\\[…\\]``) as Math-Verify finds it, else (when ``last_number``) the last number.

Judging (:func:`answers_match`): multiple-choice letters are compared as letters; two plain numbers
exactly (or within ``rel_tol`` / ``abs_tol``); then normalised strings; then Math-Verify's parser and
``verify`` (sets, intervals, relations, equations, ``\\dfrac``, ``\\frac13``, ``\\sqrt3``, units,
percentages, matrices). Inputs are bounded (:data:`MAX_ANSWER_CHARS`, :data:`MAX_TEXT_CHARS`) and
expressions whose evaluation explodes (exponent towers, huge powers or factorials) fail before
SymPy sees them, so a verdict takes bounded time also off the main thread, where Math-Verify's own
``SIGALRM`` timeout cannot run.

Decimal comma (``decimal_comma``):

- ``auto`` (default): a comma followed by groups of exactly three digits is a thousands separator
  (``1,500`` = 1500, ``12,345,678``); any other comma between digits of one number is a decimal comma
  (``1,5`` = 1.5, ``3,14``, ``0,111`` because a thousands group never follows a lone ``0``). Lists are
  written with a space or inside braces: ``1, 5`` and ``\\{1,5\\}`` are two values.
- ``never``: commas are only thousands separators; ``1,5`` is not a number (it is the list 1, 5).
- ``always``: a comma between digits is the decimal mark and dots group thousands
  (``1.234,5`` = 1234.5; ``1,500`` = 1.5).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from fractions import Fraction
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from rlvr.core.errors import ColumnError, ConfigError

T = TypeVar("T")

DECIMAL_COMMA_CHOICES = ("auto", "never", "always")
MAX_TEXT_CHARS = 20_000  # free-form extraction reads at most the last this many characters of a completion
MAX_ANSWER_CHARS = 1_000  # an extracted answer longer than this is not parsed (judged wrong)
MAX_NESTING = 24  # deeper bracket nesting in one answer: too costly to parse (judged wrong)
MAX_BOXED = 8  # more distinct \boxed{} answers than this in one completion: no answer

NUMBER_RE = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_LAST_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")

_TAG_PAIRS = (("<answer>", "</answer>"), ("<SOLUTION>", "</SOLUTION>"))
_PHRASE_RE = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?", re.IGNORECASE)
_A_COLON_RE = re.compile(r"^\s*A\s*:\s*([^\n]+)", re.MULTILINE)
_CURRENCY_RE = re.compile(r"(\\\$|\$|€|£|¥|₹|\bUSD\b|\bEUR\b|\bGBP\b)")
_FRAC_RE = re.compile(r"^([-+]?)\\[dtc]?frac\{\s*([^{}]+?)\s*\}\{\s*([^{}]+?)\s*\}$")
_SHORT_FRAC_RE = re.compile(r"\\[dtc]?frac(\d)(\d)")
_SIMPLE_FRAC_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)$")
_MIXED_RE = re.compile(r"^([-+]?\d+)\s+(\d+)\s*/\s*(\d+)$")
_LATEX_MIXED_RE = re.compile(r"^([-+]?\d+)\s*\\[dtc]?frac\{(\d+)\}\{(\d+)\}$")
_VARIABLE_LETTERS = set("abciknpqrtxyz")  # "5x" is an expression, not 5 of a unit named x
_LEADING_VAR_RE = re.compile(r"^(?:[A-Za-z]\w*\s*)?=\s*")
_NUMBER_CORE = r"[-+]?(?:\d[\d,.]*|\.\d+)(?:[eE][-+]?\d+)?"
_NUM_THEN_WORDS_RE = re.compile(r"^(" + _NUMBER_CORE + r")\s*(%|[A-Za-z°][A-Za-z°\s.\-/²³]*)?$")
_THOUSANDS_RE = re.compile(r"^[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
_DOT_THOUSANDS_RE = re.compile(r"^[-+]?[1-9]\d{0,2}(?:\.\d{3})+(?:,\d+)?$")
_CHOICE_RE = re.compile(r"^\(?\s*([A-E])\s*\)?[.:]?$")  # upper case only: a reference "e" is Euler's number
_CHOICE_IN_TEXT_RE = re.compile(r"(?:^|[\s(*\[])\(?([A-E])\)?(?=$|[\s).:,*\]])")
_DANGEROUS_RE = (
    re.compile(r"\^\s*\{[^{}]*\^|\^\s*\(?\s*[\w.]+\s*\^"),  # exponent towers: 9^{9^{9}}, 9^9^9
    re.compile(r"\^\s*\{?\s*\(?\s*-?\d{4,}"),  # powers with >= 4-digit exponents
    re.compile(r"[A-Za-z)}\]]\s*\^\s*\{?\s*\(?\s*-?\d{3,}"),  # symbolic bases to 3-digit powers
    re.compile(r"\d{4,}\s*!|\d{3,}\s*!\s*!|\\(?:prod|sum|int)"),  # big factorials, sums, integrals
    re.compile(r"\*\*\s*\(?\s*\d{4,}"),
)
_MARKDOWN_RE = re.compile(r"\*\*|__|`")


# --------------------------------------------------------------------------- small helpers


def _closing_braces(text: str) -> dict[int, int]:
    """``{index of '{': index of its matching '}'}`` for every closed brace group, in one pass."""
    stack: list[int] = []
    match: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
    return match


def all_balanced(text: str, command: str) -> list[str]:
    """The contents of every ``\\command{...}`` in ``text`` (nested braces balanced), in order.
    Linear in ``len(text)``: unclosed groups are skipped."""
    if command not in text:
        return []
    match = _closing_braces(text)
    out, start = [], text.find(command)
    while start != -1:
        i = start + len(command)
        while i < len(text) and text[i] == " ":
            i += 1
        end = match.get(i)
        if end is not None:
            out.append(text[i + 1 : end])
            start = text.find(command, end + 1)
        else:
            start = text.find(command, start + len(command))
    return out


def last_tagged(text: str, open_tag: str, close_tag: str, case_sensitive: bool = False) -> Optional[str]:
    """The content of the last ``open_tag … close_tag`` pair (across newlines), or None."""
    flags = re.DOTALL | (0 if case_sensitive else re.IGNORECASE)
    found = re.findall(re.escape(open_tag) + r"(.*?)" + re.escape(close_tag), text, flags)
    return found[-1] if found else None


def extract_xml_answer(text: str) -> Optional[str]:
    """The stripped text inside the last ``<answer>…</answer>`` (or after an unclosed ``<answer>``),
    across newlines; None when there is no ``<answer>`` tag. (The GSM8K reward suite's reading.)"""
    if "<answer>" not in text:
        return None
    inner = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    return inner.strip()


def strip_delimiters(text: str) -> str:
    """``text`` without one enclosing pair of math delimiters
    (``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]``)."""
    s = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            inner = s[len(left) : len(s) - len(right)].strip()
            if "$" not in inner or left == "$$":
                return inner
    return s


def strip_prompt_echo(text: str, prompt: Optional[str], min_chars: int = 12) -> str:
    """``text`` without the lines that repeat the prompt verbatim (lines of at least ``min_chars``
    characters found inside ``prompt``), so an answer that appears only in an echoed question or
    few-shot example is not read as the model's own."""
    if not prompt or not text:
        return text
    kept = [line for line in text.split("\n") if len(line.strip()) < min_chars or line.strip() not in prompt]
    return "\n".join(kept)


# --------------------------------------------------------------------------- extraction


def _distinct(found: list[str]) -> list[str]:
    """The non-empty answers of ``found`` with repeats of the same answer (by :func:`answer_key`) dropped."""
    out: list[str] = []
    keys: set[Optional[str]] = set()
    for item in found:
        key = answer_key(item)
        if item and key not in keys:
            keys.add(key)
            out.append(item)
    return out


def _boxed_answer(text: str) -> Optional[str]:
    boxes = [b.strip() for command in ("\\boxed", "\\fbox") for b in all_balanced(text, command)]
    boxes = [b for b in boxes if b]
    if not boxes:
        return None
    distinct = _distinct(boxes)
    if len(distinct) == 1:
        return distinct[0]
    if len(distinct) > MAX_BOXED:
        return ""  # box spam: no answer
    return ", ".join(distinct)


def _phrase_answer(text: str) -> Optional[str]:
    """The span after the last "the answer is" / "answer:", up to the end of its sentence."""
    last = None
    for m in _PHRASE_RE.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end() :].lstrip(" :\t")
    rest = rest.split("\n", 1)[0]
    rest = _MARKDOWN_RE.sub("", rest).strip()
    first_env = re.match(r"^(\$\$.+?\$\$|\$.+?\$|\\\(.+?\\\)|\\\[.+?\\\])", rest)
    if first_env:
        return first_env.group(1).strip()
    end = re.search(r"\.(?:\s|$)|;|,\s+(?:so|since|because|which|as|not)\b|\s+(?:since|because)\b", rest)
    span = (rest[: end.start()] if end else rest).strip().rstrip(".").strip()
    if len(span.split()) > 3 and not re.search(r"[\d$\\]", span):
        return None  # "the answer: first we need to …" is a sentence, not an answer
    return span or None


_ENV_RE = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]", re.DOTALL)
_LONG_EXPR_RE = re.compile(r"[\d.\s+\-*/^()×÷]{%d,}" % MAX_ANSWER_CHARS)


_PLAIN_TUPLE_RE = re.compile(r"([(\[]\s*-?[\w./]+(?:\s*,\s*-?[\w./]+)+\s*[)\]])\s*[.!]?\s*$")


def defuse(text: str) -> str:
    """``text`` with the LaTeX environments that would be too costly to parse (:func:`too_costly`) and
    runs of expression characters longer than :data:`MAX_ANSWER_CHARS` blanked out, so that Math-Verify's
    free-form extraction reads it in bounded time."""
    text = _ENV_RE.sub(lambda m: " " if too_costly(m.group(0)) else m.group(0), text)
    return _LONG_EXPR_RE.sub(" ", text)


def _is_math_verify_percent(value: Any) -> bool:
    try:
        from math_verify.grader import get_pct_val

        return get_pct_val(value) is not None
    except Exception:  # noqa: BLE001
        return False


def free_form_answer(text: str, last_number: bool = True, timeout_seconds: Optional[int] = 5) -> Optional[str]:
    """The answer of a completion without markers, read the way Math-Verify reads one: the last LaTeX
    environment (``$…$``, ``\\(…\\)``, ``\\[…\\]``, ``$$…$$``), else (``last_number``) the last number or
    simple expression. Only the last :data:`MAX_TEXT_CHARS` characters are read."""
    tail = defuse(text[-MAX_TEXT_CHARS:])
    plain = _PLAIN_TUPLE_RE.search(tail[-300:])
    if plain and "$" not in tail[-300:] and "\\(" not in tail[-300:]:
        return plain.group(1)  # "The point is (1, 2)." in plain text: Math-Verify would read only the 2
    configs = _mv_configs(expr_without_anchor=last_number)
    from math_verify import parse

    found = _mv_call(
        parse, tail, extraction_config=configs, fallback_mode="first_match", parsing_timeout=_alarm(timeout_seconds)
    )
    if found:
        span = found[-1] if isinstance(found[-1], str) else None
        if span:
            span = span.strip()
            if len(found) > 1 and _is_math_verify_percent(found[0]) and not is_percent(span):
                span += "\\%"  # "$28$ %": the percent sign sat outside the LaTeX span
            return span
    if last_number:
        numbers = NUMBER_RE.findall(tail)
        if numbers:
            return numbers[-1]
    return None


def extract_final_answer(
    text: str, last_number: bool = True, free_form: bool = True, timeout_seconds: Optional[int] = 5
) -> Optional[str]:
    """The answer string a completion commits to, or None (see the module docstring for the order).

    ``free_form=False`` skips the Math-Verify free-form step (only the explicit markers, then the
    last number when ``last_number``). Tags match across newlines and case-insensitively.
    """
    if not text:
        return None
    for open_tag, close_tag in _TAG_PAIRS:
        inner = last_tagged(text, open_tag, close_tag)
        if inner is not None and inner.strip():
            inner = inner.strip()
            boxed = _boxed_answer(inner)
            if boxed is not None:
                return boxed or None
            if len(inner) > 80 or "\n" in inner or _PHRASE_RE.search(inner):  # a sentence, not a bare answer
                return extract_final_answer(inner, last_number, free_form, timeout_seconds) or inner
            return inner
    boxed = _boxed_answer(text)
    if boxed is not None:
        return boxed or None
    if "####" in text:
        hashed = _distinct([part.strip().split("\n", 1)[0].strip() for part in text.split("####")[1:]])
        if len(hashed) > MAX_BOXED:
            return None
        if hashed:
            return ", ".join(hashed)
    phrase = _phrase_answer(text)
    if phrase:
        return phrase
    a_colon = _A_COLON_RE.findall(text)
    if a_colon:
        return a_colon[-1].strip().rstrip(".").strip()
    if free_form:
        return free_form_answer(text, last_number=last_number, timeout_seconds=timeout_seconds)
    if last_number:
        numbers = NUMBER_RE.findall(text[-MAX_TEXT_CHARS:])
        if numbers:
            return numbers[-1]
    return None


def reference_answer(value: Any) -> Optional[str]:
    """A reference column value as an answer string: the text after ``####`` when present (a full
    GSM8K solution), the content of its last ``\\boxed{}`` when it has one (a MATH solution), else the
    value itself; enclosing ``$…$`` / ``\\(…\\)`` removed. None for missing or empty values."""
    if value is None:
        return None
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    elif "\\boxed" in text:
        boxes = all_balanced(text, "\\boxed")
        if boxes:
            text = boxes[-1]
    text = strip_delimiters(text.strip())
    return text or None


# --------------------------------------------------------------------------- numbers


def last_number(text: str) -> Optional[float]:
    """The last number written in ``text`` (commas allowed as thousands separators), or None."""
    found = _LAST_NUMBER_RE.findall(text or "")
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def same_number(a: Optional[float], b: Any, tol: float = 1e-6) -> bool:
    """``a`` (a float or None) equals the reference ``b`` (a number or numeric string) within ``tol``."""
    if a is None:
        return False
    try:
        return abs(a - float(str(b).replace(",", ""))) <= tol
    except ValueError:
        return False


def clean_answer(text: str) -> str:
    """Strip what does not change an answer's value: math delimiters, ``\\text{}``, currency, markdown,
    ``{,}`` groupings, a leading ``x =``, a trailing full stop. Commas between digits are kept (the
    decimal-comma rule decides them)."""
    s = strip_delimiters(text)
    s = _MARKDOWN_RE.sub("", s)
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox|textrm|operatorname)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("{,}", ",").replace("\\!", "").replace("\\,", "").replace("\\;", " ").replace("\\ ", " ")
    s = s.replace("\\%", "%").replace("\\left", "").replace("\\right", "")
    s = _CURRENCY_RE.sub("", s)
    s = _LEADING_VAR_RE.sub("", s.strip())
    s = s.strip().rstrip(".").strip()
    return s


def _number_value(token: str, decimal_comma: str) -> Optional[Fraction]:
    """The exact value of one number token (digits, ``,`` and ``.`` as the decimal-comma rule reads them)."""
    t = token
    if "," in t:
        if decimal_comma == "always":
            if "." in t and not _DOT_THOUSANDS_RE.match(t):
                return None
            t = t.replace(".", "").replace(",", ".")
        elif _THOUSANDS_RE.match(t):
            t = t.replace(",", "")
        elif decimal_comma == "auto" and re.fullmatch(r"[-+]?\d+,\d+", t):
            t = t.replace(",", ".")
        else:
            return None
    elif decimal_comma == "always" and re.fullmatch(r"[-+]?[1-9]\d{0,2}(?:\.\d{3}){2,}", t):
        t = t.replace(".", "")
    if t.count(".") > 1:
        return None
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def parse_number(text: Optional[str], decimal_comma: str = "auto") -> Optional[Fraction]:
    """The exact value of an answer string, or None when it is not a single number.

    Accepts "1,234", "$18.00", "18 dollars", "25%", "-3", "0.5", "3/4", "1 1/2", "\\frac{3}{4}",
    "\\dfrac{-1}{2}", "\\frac34", "x = 7", "1e3", "1{,}000". Percentages keep their number ("25%" is 25);
    :func:`is_percent` tells them apart. Commas follow ``decimal_comma`` (module docstring).
    """
    if text is None or len(text) > MAX_ANSWER_CHARS:
        return None
    if decimal_comma not in DECIMAL_COMMA_CHOICES:
        raise ConfigError(f"decimal_comma={decimal_comma!r}; choose one of {DECIMAL_COMMA_CHOICES}")
    s = _SHORT_FRAC_RE.sub(r"\\frac{\1}{\2}", clean_answer(text))
    if not s:
        return None
    m = _FRAC_RE.match(s)
    if m:
        num, den = parse_number(m.group(2), decimal_comma), parse_number(m.group(3), decimal_comma)
        if num is None or den is None or den == 0:
            return None
        return -(num / den) if m.group(1) == "-" else num / den
    m = _MIXED_RE.match(s) or _LATEX_MIXED_RE.match(s)
    if m:
        whole, num, den = int(m.group(1)), int(m.group(2)), int(m.group(3))  # type: ignore[assignment]
        if den == 0:
            return None
        frac = Fraction(num, den)  # type: ignore[arg-type]
        return whole - frac if m.group(1).startswith("-") else whole + frac
    m = _SIMPLE_FRAC_RE.match(s)
    if m:
        den = Fraction(m.group(2))
        return Fraction(m.group(1)) / den if den != 0 else None
    m = _NUM_THEN_WORDS_RE.match(s)
    if m and m.group(2) and m.group(2).strip().lower() in _VARIABLE_LETTERS and not re.search(r"\s", s):
        return None
    if m and re.search(r"\d", m.group(1)):
        return _number_value(m.group(1).rstrip("."), decimal_comma)
    return None


def is_percent(text: Optional[str]) -> bool:
    """Whether an answer string is written as a percentage (``25%``, ``25\\%``, ``25 percent``)."""
    return text is not None and re.search(r"(?:\\?%|\bpercent\b|\bpct\b)\s*\$?\s*\.?$", text.strip()) is not None


def numbers_match(a: Fraction, b: Fraction, rel_tol: float = 0.0, abs_tol: float = 0.0) -> bool:
    """Exact equality, or ``|a - b| <= max(abs_tol, rel_tol * max(|a|, |b|))``."""
    if a == b:
        return True
    diff = abs(float(a) - float(b))
    return diff <= max(abs_tol, rel_tol * max(abs(float(a)), abs(float(b))))


def is_integer_text(text: Optional[str]) -> bool:
    """Whether ``text`` (stripped) is an integer written with digits, optionally signed."""
    return text is not None and re.fullmatch(r"[-+]?\d+", text.strip()) is not None


# --------------------------------------------------------------------------- multiple choice


def choice_letter(text: Optional[str]) -> Optional[str]:
    """The letter of a multiple-choice answer written alone (``B``, ``(B)``, ``\\text{(B)}``, ``B.``,
    ``\\textbf{B}``, ``**B**``; capitals A–E only), else None."""
    if text is None:
        return None
    m = _CHOICE_RE.match(clean_answer(text).strip())
    return m.group(1) if m else None


def choice_in_text(text: Optional[str]) -> Optional[str]:
    """The choice a short answer span commits to (``(B) 42``, ``B) 42``, ``Option B``), else None.
    A span naming two different letters is no answer."""
    if text is None:
        return None
    alone = choice_letter(text)
    if alone:
        return alone
    letters = {m.group(1) for m in _CHOICE_IN_TEXT_RE.finditer(clean_answer(text)[:200])}
    return letters.pop() if len(letters) == 1 else None


# --------------------------------------------------------------------------- Math-Verify


def _alarm(timeout_seconds: Optional[float]) -> Optional[int]:
    """Math-Verify's timeout (whole seconds, SIGALRM) where it can run: the main thread only."""
    if not timeout_seconds or threading.current_thread() is not threading.main_thread():
        return None
    return max(1, int(round(timeout_seconds)))


def _mv_configs(expr_without_anchor: bool = True) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [
        LatexExtractionConfig(boxed_match_priority=0),
        ExprExtractionConfig(try_extract_without_anchor=expr_without_anchor),
    ]


@contextlib.contextmanager
def _quiet_math_verify() -> Iterator[None]:
    """Silence Math-Verify's "timeout is disabled" warning (off the main thread we bound inputs ourselves)."""
    logger = logging.getLogger("math_verify")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _mv_call(fn: Callable[..., list[Any]], *args: Any, **kwargs: Any) -> list[Any]:
    """Call Math-Verify's ``parse`` quietly; ``[]`` when it raises (an unparseable answer is a wrong answer)."""
    with _quiet_math_verify():
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001
            return []


def too_costly(text: str) -> bool:
    """Whether evaluating ``text`` could take unbounded time or memory in SymPy (exponent towers,
    4+-digit exponents, 3-digit exponents of symbolic bases such as ``(x+1)^{999}``, big factorials,
    sums/products/integrals), nests brackets deeper than :data:`MAX_NESTING` or is longer than
    :data:`MAX_ANSWER_CHARS`."""
    if len(text) > MAX_ANSWER_CHARS or any(p.search(text) for p in _DANGEROUS_RE):
        return True
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest > MAX_NESTING


def _as_latex(text: str) -> str:
    s = re.sub(r"(?<!\\)%", r"\\%", text.strip())
    if s.startswith(("$", "\\(", "\\[")):
        return s
    return f"${s}$"


def math_parse(answer: str, decimal_comma: str = "auto", timeout_seconds: Optional[int] = 5) -> list[Any]:
    """Math-Verify's parse of one short answer string (wrapped in ``$…$`` when it has no delimiters);
    ``[]`` when it does not parse or is too costly to evaluate."""
    if too_costly(answer):
        return []
    from math_verify import parse

    s = answer
    if decimal_comma == "always":
        s = re.sub(r"(?<=\d),(?=\d)", ".", s.replace("{,}", ","))
    timeout = _alarm(timeout_seconds)
    found = _mv_call(parse, _as_latex(s), extraction_config=_mv_configs(), parsing_timeout=timeout)
    if not found:
        found = _mv_call(parse, s, extraction_config=_mv_configs(), parsing_timeout=timeout)
    return found


def symbolic_equal(
    reference: str, candidate: str, timeout_seconds: Optional[int] = 5, decimal_comma: str = "auto"
) -> bool:
    """Math-Verify's verdict on ``candidate`` against ``reference`` (both short answer strings)."""
    from math_verify import verify

    gold = math_parse(reference, decimal_comma, timeout_seconds)
    pred = math_parse(candidate, decimal_comma, timeout_seconds)
    if not gold or not pred:
        return False
    gold = [g for g in gold if not isinstance(g, str)] or gold  # the string fallback only when nothing parsed
    pred = [p for p in pred if not isinstance(p, str)] or pred
    with _quiet_math_verify():
        try:
            return bool(verify(gold, pred, timeout_seconds=_alarm(timeout_seconds)))
        except Exception:  # noqa: BLE001
            return False


# --------------------------------------------------------------------------- judging


def _normal_text(text: str) -> str:
    s = clean_answer(text)
    s = re.sub(r"[\s{}]+", "", s).lower()
    return s.strip(".,;:!'\"")


def answer_key(text: Optional[str], decimal_comma: str = "auto") -> Optional[str]:
    """A canonical key of an extracted answer for majority voting and deduplication: the exact value
    of a number (``"3/2"``), else the normalised text; None for no answer."""
    if text is None:
        return None
    n = parse_number(text, decimal_comma)
    if n is not None:
        return str(n)
    return _normal_text(text) or None


def answers_match(
    candidate: Optional[str],
    reference: str,
    rel_tol: float = 0.0,
    abs_tol: float = 1e-9,
    use_math_verify: bool = True,
    timeout_seconds: Optional[int] = 5,
    decimal_comma: str = "auto",
) -> bool:
    """Whether an extracted answer equals the reference answer string.

    Order: multiple-choice letters (when the reference is a letter A–E); both plain numbers (exact
    Fractions, or within the tolerances; a percentage also matches its fraction, ``25%`` = ``0.25``);
    normalised text; Math-Verify (when ``use_math_verify``).
    """
    if candidate is None or not candidate.strip() or len(candidate) > MAX_ANSWER_CHARS:
        return False
    ref_letter = choice_letter(reference)
    if ref_letter is not None:
        return choice_in_text(candidate) == ref_letter
    a, b = parse_number(candidate, decimal_comma), parse_number(reference, decimal_comma)
    if a is not None and b is not None:
        if numbers_match(a, b, rel_tol, abs_tol):
            return True
        if is_percent(candidate) != is_percent(reference):
            pa = a / 100 if is_percent(candidate) else a
            pb = b / 100 if is_percent(reference) else b
            return numbers_match(pa, pb, rel_tol, abs_tol)
        return False
    if _normal_text(candidate) and _normal_text(candidate) == _normal_text(reference):
        return True
    if use_math_verify:
        return symbolic_equal(reference, candidate, timeout_seconds, decimal_comma)
    return False


def judge(
    completion: str,
    reference: Any,
    *,
    prompt: Optional[str] = None,
    last_number: bool = True,
    free_form: bool = True,
    rel_tol: float = 0.0,
    abs_tol: float = 1e-9,
    use_math_verify: bool = True,
    timeout_seconds: Optional[int] = 5,
    decimal_comma: str = "auto",
) -> Optional[bool]:
    """Is ``completion``'s final answer the reference? None when there is no reference.

    The reference is read with :func:`reference_answer`; lines echoing ``prompt`` are ignored
    (:func:`strip_prompt_echo`); the answer is extracted with :func:`extract_final_answer` and
    compared with :func:`answers_match`.
    """
    ref = reference_answer(reference)
    if ref is None:
        return None
    text = strip_prompt_echo(completion or "", prompt)
    candidate = extract_final_answer(
        text, last_number=last_number, free_form=free_form, timeout_seconds=timeout_seconds
    )
    if candidate is None and choice_letter(ref) is not None:  # a bare "B" as the whole last line
        lines = [line for line in text.strip().split("\n") if line.strip()]
        candidate = lines[-1] if lines and len(lines[-1]) <= 40 else None
    return answers_match(candidate, ref, rel_tol, abs_tol, use_math_verify, timeout_seconds, decimal_comma)


def normalize_text(text: Any) -> str:
    """Exact-match normalisation: Unicode case-folded, markdown and surrounding quotes/punctuation
    removed, whitespace collapsed, ``\\text{}`` and math delimiters dropped, a leading article kept."""
    s = strip_delimiters(str(text))
    s = re.sub(r"\\(?:text|mathrm|textbf)\s*\{([^{}]*)\}", r"\1", s)
    s = _MARKDOWN_RE.sub("", s)
    s = " ".join(s.split()).casefold()
    return s.strip(" .,;:!?\"'“”‘’()[]")


def exact_answer(completion: str) -> str:
    """The part of a completion an exact-match check compares: the explicit answer marker's content
    when there is one (tags, ``\\boxed{}``, ``####``, "the answer is"), else the whole completion."""
    found = extract_final_answer(completion or "", last_number=False, free_form=False)
    return found if found is not None else (completion or "")


def against_reference(
    reward: str,
    completions: Sequence[str],
    columns: dict[str, list[Any]],
    column: str,
    judge_fn: Callable[[str, str], T],
) -> list[Optional[T]]:
    """``judge_fn(completion, reference)`` for each completion, the reference read from ``column``
    with :func:`reference_answer`; None (not applicable) where a row has no reference."""
    if column not in columns:
        raise ColumnError(
            f"{reward} needs the task column {column!r} (set answer_column); columns given: {sorted(columns)}"
        )
    out: list[Optional[T]] = []
    for text, value in zip(completions, columns[column]):
        ref = reference_answer(value)
        out.append(None if ref is None else judge_fn(text or "", ref))
    return out
