"""Reading a row's tests: the completion's code block, assert tests (rewritten, see ``transform.py``)
and stdin → stdout tests."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from rlvr.core.errors import DataError

from .transform import Program, transform

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
PYTHON_TAGS = ("", "python", "py", "python3")


def extract_code(text: str, allow_unfenced: bool = False) -> Optional[str]:
    """The last fenced Python (or untagged) code block of ``text``; the whole text when there is
    none and ``allow_unfenced``; else None."""
    blocks = [body for lang, body in _FENCE_RE.findall(text or "") if lang.lower() in PYTHON_TAGS]
    if blocks:
        return blocks[-1]
    if allow_unfenced and text and text.strip():
        return text
    return None


@dataclass
class TestSuite:
    """Parsed tests of one row: ``kind`` is "assert" (a rewritten program) or "io" (stdin, expected stdout)."""

    kind: str
    program: Program = field(default_factory=Program)
    cases: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.program.checks) if self.kind == "assert" else len(self.cases)


def parse_tests(value: Any) -> Optional[TestSuite]:
    """A row's tests as a :class:`TestSuite`; None when the row has none (not applicable).

    Accepted: a string of Python with asserts; a list of such strings (MBPP; a string that is a
    single expression is judged as ``assert <expr>``); ``{"asserts": [...]}`` (or ``tests`` /
    ``assert``); stdin → stdout tests as ``[{"input": ..., "output": ...}, ...]`` or the APPS
    layout ``{"inputs": [...], "outputs": [...]}``; or a JSON string of any of these. Raises
    ``ValueError`` (``TestsNotSupported`` for shapes that cannot be judged outside the sandbox).
    """
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return None
        if stripped[0] in "[{":
            try:
                return parse_tests(json.loads(stripped))
            except json.JSONDecodeError:
                pass
        return TestSuite("assert", program=transform([value]))
    if isinstance(value, dict):
        if "inputs" in value and "outputs" in value:
            ins, outs = list(value["inputs"]), list(value["outputs"])
            if len(ins) != len(outs):
                raise DataError(f"tests have {len(ins)} inputs but {len(outs)} outputs")
            return TestSuite("io", cases=[(_text(i), _text(o)) for i, o in zip(ins, outs)])
        for key in ("asserts", "tests", "assert"):
            if key in value:
                return parse_tests(value[key])
        raise DataError(f"unrecognised tests mapping with keys {sorted(value)}; expected inputs/outputs or asserts")
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        if all(isinstance(v, dict) for v in value):
            cases = []
            for v in value:
                inp = v.get("input", v.get("stdin"))
                out = v.get("output", v.get("stdout", v.get("expected_output")))
                if inp is None or out is None:
                    raise DataError(f"stdin/stdout test {v!r} needs 'input' and 'output'")
                cases.append((_text(inp), _text(out)))
            return TestSuite("io", cases=cases)
        if all(isinstance(v, str) for v in value):
            return TestSuite("assert", program=transform(list(value)))
    raise DataError(f"unrecognised tests value of type {type(value).__name__}: {str(value)[:200]!r}")


def _text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "\n".join(map(str, v)) + "\n"
    return str(v)


def same_output(actual: str, expected: str) -> bool:
    """Line-by-line equality ignoring trailing whitespace on each line and trailing blank lines."""

    def norm(s: str) -> list[str]:
        out = [line.rstrip() for line in s.replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    return norm(actual) == norm(expected)
