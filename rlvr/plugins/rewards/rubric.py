"""``reward=rubric``: a weighted list of checkable criteria, written in config.

Each criterion passes or fails on one completion; the score is the sum over criteria of
``weight`` when it passes and ``fail`` when it fails (``fail`` defaults to 0; a length criterion
can add ``penalty_per_unit`` for each character or word over the limit). With ``normalize``
the sum is divided by the sum of the positive weights.

Criterion kinds:

==============  =========================================================================
kind            passes when
==============  =========================================================================
contains        the completion contains ``any`` / ``all`` of ``keywords``
                (``negate: true`` turns it into "contains none of them")
exact           the completion equals the row's ``column`` (whitespace- and case-insensitive by default)
length          the completion has at most ``max_chars`` / ``max_words`` (and at least the min_ values)
name_present    the name in the row's ``column`` appears (its first name is enough unless ``full_name``)
signature       the last ``signature_lines`` lines hold a phone number / e-mail address / street address
                (``require``; ``mode: any`` or ``all``)
==============  =========================================================================

``reward=rubric_email`` is the same plugin with a shipped example rubric for answering an inbound
e-mail (columns ``sender_name``): greets the sender by name, thanks them, stays under 120 words,
sounds human, signs off with a signature block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ColumnError, ConfigError, ConfigTypeError
from rlvr.core.rewards import RewardConfig

KINDS = ("contains", "exact", "length", "name_present", "signature")
SIGNATURE_PARTS = ("phone", "email", "address")

EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PHONE_RE = re.compile(r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}")
ADDRESS_RE = re.compile(
    r"\b\d{1,5}\s+(?:[A-Z][\w'.-]*\s+){0,4}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|"
    r"Way|Court|Ct|Place|Pl|Square|Sq|Terrace|Parkway|Pkwy|Highway|Hwy|Close|Crescent)\b\.?"
    r"|\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b"  # UK postcode
    r"|\b[A-Z][a-z]+,?\s+[A-Z]{2}\s+\d{5}(?:-\d{4})?\b",  # US "City, ST 12345"
    re.IGNORECASE,
)
_PART_RES = {"phone": PHONE_RE, "email": EMAIL_RE, "address": ADDRESS_RE}


@dataclass
class Criterion:
    """One rubric line. Only the fields its ``kind`` reads matter."""

    kind: str = "contains"  # contains | exact | length | name_present | signature
    weight: float = 1.0  # added when the criterion passes
    fail: float = 0.0  # added when it fails (e.g. -1.0 for a penalty)
    name: str = ""  # label for messages and docs
    # contains
    keywords: List[str] = field(default_factory=list)
    mode: str = "any"  # any | all (contains, signature)
    negate: bool = False  # contains: pass when none of the keywords is present
    case_sensitive: bool = False
    # exact / name_present
    column: str = ""
    full_name: bool = False  # name_present: require the whole name, not only the first name
    # length
    max_chars: int = 0  # 0 = no limit
    max_words: int = 0
    min_chars: int = 0
    min_words: int = 0
    penalty_per_unit: float = 0.0  # length: extra penalty per character / word over the maximum
    # signature
    require: List[str] = field(default_factory=lambda: list(SIGNATURE_PARTS))
    signature_lines: int = 6


@dataclass
class RubricConfig(RewardConfig):
    criteria: List[Criterion] = field(default_factory=list)
    normalize: bool = False  # divide by the sum of positive weights (scores in [.., 1])


def _email_rubric() -> List[Criterion]:
    return [
        Criterion(kind="name_present", name="greets the sender by name", column="sender_name", weight=1.0),
        Criterion(
            kind="contains", name="thanks them", keywords=["thank", "thanks", "grateful", "appreciate"], weight=0.5
        ),
        Criterion(
            kind="contains",
            name="sounds human",
            keywords=["as an ai", "language model", "i am unable to"],
            negate=True,
            weight=0.0,
            fail=-3.0,
        ),
        Criterion(
            kind="length", name="at most 120 words", max_words=120, weight=0.5, fail=-0.5, penalty_per_unit=0.01
        ),
        Criterion(kind="signature", name="signature block", require=list(SIGNATURE_PARTS), mode="any", weight=1.0),
    ]


@dataclass
class EmailRubricConfig(RubricConfig):
    """The shipped example: reply to an inbound e-mail (needs a ``sender_name`` column)."""

    criteria: List[Criterion] = field(default_factory=_email_rubric)


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _column(columns: dict[str, list[Any]], name: str, i: int, what: str) -> Any:
    if name not in columns:
        raise ColumnError(f"rubric criterion {what} reads the task column {name!r}; columns given: {sorted(columns)}")
    return columns[name][i]


def criterion_value(c: Criterion, text: str, columns: dict[str, list[Any]], i: int) -> Optional[float]:
    """The score one criterion adds for completion ``text`` of row ``i`` (None: not applicable)."""
    what = repr(c.name or c.kind)
    if c.kind == "contains":
        hay = text if c.case_sensitive else text.lower()
        hits = [(k if c.case_sensitive else k.lower()) in hay for k in c.keywords]
        passed = (all(hits) if c.mode == "all" else any(hits)) if hits else False
        if c.negate:
            passed = not any(hits)
        return c.weight if passed else c.fail
    if c.kind == "exact":
        ref = _column(columns, c.column, i, what)
        if ref is None:
            return None
        a, b = (text.strip(), str(ref).strip()) if c.case_sensitive else (_norm(text), _norm(str(ref)))
        return c.weight if a == b else c.fail
    if c.kind == "length":
        chars, words = len(text), len(text.split())
        over = max(chars - c.max_chars if c.max_chars else 0, words - c.max_words if c.max_words else 0, 0)
        short = (c.min_chars and chars < c.min_chars) or (c.min_words and words < c.min_words)
        if over == 0 and not short:
            return c.weight
        return c.fail - c.penalty_per_unit * over
    if c.kind == "name_present":
        name = _column(columns, c.column, i, what)
        if name is None or not str(name).strip():
            return None
        wanted = str(name).strip() if c.full_name else str(name).strip().split()[0]
        pattern = r"(?<!\w)" + re.escape(wanted) + r"(?!\w)"
        found = re.search(pattern, text, 0 if c.case_sensitive else re.IGNORECASE)
        return c.weight if found else c.fail
    if c.kind == "signature":
        tail = "\n".join(text.rstrip().splitlines()[-c.signature_lines :])
        hits = [bool(_PART_RES[p].search(tail)) for p in c.require]
        passed = (all(hits) if c.mode == "all" else any(hits)) if hits else False
        return c.weight if passed else c.fail
    raise ConfigError(f"rubric criterion {what}: unknown kind {c.kind!r}; kinds are {', '.join(KINDS)}")


def _as_criterion(c: Any) -> Criterion:
    if isinstance(c, Criterion):
        return c
    if isinstance(c, dict):
        return Criterion(**c)
    raise ConfigTypeError(f"rubric criteria must be mappings or Criterion, got {c!r}")


def validate(criteria: List[Criterion]) -> None:
    """Fail at build time on rubric mistakes (unknown kinds, modes, signature parts, missing columns)."""
    for c in criteria:
        what = repr(c.name or c.kind)
        if c.kind not in KINDS:
            raise ConfigError(f"rubric criterion {what}: unknown kind {c.kind!r}; kinds are {', '.join(KINDS)}")
        if c.mode not in ("any", "all"):
            raise ConfigError(f"rubric criterion {what}: mode must be 'any' or 'all', got {c.mode!r}")
        if c.kind == "contains" and not c.keywords:
            raise ConfigError(f"rubric criterion {what}: kind 'contains' needs keywords")
        if c.kind in ("exact", "name_present") and not c.column:
            raise ConfigError(f"rubric criterion {what}: kind {c.kind!r} needs column (the task column to read)")
        if c.kind == "length" and not (c.max_chars or c.max_words or c.min_chars or c.min_words):
            raise ConfigError(
                f"rubric criterion {what}: kind 'length' needs max_chars, max_words, min_chars or min_words"
            )
        bad = [p for p in c.require if p not in SIGNATURE_PARTS]
        if c.kind == "signature" and (bad or not c.require):
            raise ConfigError(f"rubric criterion {what}: require must list some of {SIGNATURE_PARTS}, got {c.require}")


def make_rubric(cfg: RubricConfig) -> Callable[..., list[Optional[float]]]:
    criteria = [_as_criterion(c) for c in cfg.criteria]
    if not criteria:
        raise ConfigError(
            "reward rubric has no criteria: give reward.rubric.criteria=[{kind: contains, keywords: [...]}, ...]"
        )
    validate(criteria)
    scale = sum(c.weight for c in criteria if c.weight > 0) if cfg.normalize else 1.0
    scale = scale or 1.0

    def rubric(completions: list[str], **columns: Any) -> list[Optional[float]]:
        out: list[Optional[float]] = []
        for i, text in enumerate(completions):
            values = [criterion_value(c, text or "", columns, i) for c in criteria]
            applied = [v for v in values if v is not None]
            out.append(sum(applied) / scale if applied else None)
        return out

    return rubric


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "rubric",
            make_rubric,
            RubricConfig,
            "weighted criteria from config: keywords, exact match, length, name present, signature block",
        ),
        PluginSpec(
            "rubric_email",
            make_rubric,
            EmailRubricConfig,
            "example rubric for replying to an inbound e-mail (name, thanks, human tone, length, signature)",
        ),
    ]
