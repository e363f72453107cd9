"""Verdicts, decided here (the trainer's side) on plain values the sandbox sent.

A check's slots arrive as ``["v", value]`` (a strict tagged JSON value, see ``harness.py``),
``["e", "ExcName"]`` (evaluating that operand raised) or ``["u", "why"]`` (the value was not a
plain built-in: a custom class, an ``int``/``str`` subclass, too large...). Decoding is strict:
only the tags the harness writes, bounded depth and size; anything else counts as "u".

Evaluation is three-valued: True, False, or None (an operand raised or was not plain), and None
is a failure wherever it appears (``not`` does not turn it into a pass). A check passes when it
was executed at least once and every execution passed.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Optional

from .transform import BoolOp, Check, Compare, Const, Falsy, IsClose, Lit, Not, Operand, Pred, Slot, Truth

MAX_DEPTH = 100
MAX_HASHED = 20_000  # largest set / dict rebuilt here (bounds hash-collision work)


class Unplain(Exception):
    """A sent value that is not a plain built-in one."""


_MISSING = object()


def decode(value: Any, depth: int = 0) -> Any:
    """Tagged JSON (parsed) -> the Python value it stands for; raises :class:`Unplain`."""
    if depth > MAX_DEPTH:
        raise Unplain("nested too deeply")
    t = type(value)
    if value is None or t in (bool, int, float, str):
        return value
    if t is list:
        return [decode(v, depth + 1) for v in value]
    if t is dict and len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "t" and type(body) is list:
            return tuple(decode(v, depth + 1) for v in body)
        if tag in ("s", "fs") and type(body) is list:
            if len(body) > MAX_HASHED:
                raise Unplain("set too large")
            items = [decode(v, depth + 1) for v in body]
            try:
                return set(items) if tag == "s" else frozenset(items)
            except TypeError:
                raise Unplain("unhashable set member") from None
        if tag == "d" and type(body) is list:
            if len(body) > MAX_HASHED:
                raise Unplain("dict too large")
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise Unplain("malformed dict item")
                try:
                    out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
                except TypeError:
                    raise Unplain("unhashable dict key") from None
            return out
        if tag == "f" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "b" and type(body) is str:
            try:
                return bytes.fromhex(body)
            except ValueError:
                raise Unplain("malformed bytes") from None
    raise Unplain(f"unknown value encoding {str(value)[:60]!r}")


def slot_values(slots: list[list[Any]]) -> list[Any]:
    """Decoded slot values; ``_MISSING`` for a slot that raised or was not plain."""
    out = []
    for kind, body in slots:
        if kind != "v":
            out.append(_MISSING)
            continue
        try:
            out.append(decode(body))
        except (Unplain, RecursionError, ValueError, OverflowError):
            out.append(_MISSING)
    return out


def _singleton(x: Any) -> bool:
    return x is None or x is True or x is False or x is Ellipsis


def _same(a: Any, b: Any) -> bool:
    """``a is b`` for plain values: identity for None/True/False/..., else same type and equal."""
    if _singleton(a) or _singleton(b):
        return a is b
    return type(a) is type(b) and a == b


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "Eq": operator.eq,
    "NotEq": operator.ne,
    "Lt": operator.lt,
    "LtE": operator.le,
    "Gt": operator.gt,
    "GtE": operator.ge,
    "In": lambda a, b: a in b,
    "NotIn": lambda a, b: a not in b,
    "Is": lambda a, b: _same(a, b),
    "IsNot": lambda a, b: not _same(a, b),
}


def _operand(op: Operand, values: list[Any]) -> Any:
    if isinstance(op, Lit):
        return op.value
    if isinstance(op, Slot):
        return values[op.index]
    a, b = _operand(op.a, values), _operand(op.b, values)
    if a is _MISSING or b is _MISSING or type(a) not in (int, float, bool) or type(b) not in (int, float, bool):
        return _MISSING
    return abs(a - b)


def evaluate(pred: Pred, values: list[Any], sent: list[list[Any]]) -> Optional[bool]:
    """Three-valued truth of ``pred`` given decoded slot ``values`` (``sent``: the raw slots)."""
    if isinstance(pred, Const):
        return pred.value
    if isinstance(pred, Truth):
        if any(sent[d][0] == "e" for d in pred.deps):
            return None
        v = values[pred.slot.index]
        return None if v is _MISSING else v is True
    if isinstance(pred, Falsy):
        v = values[pred.slot.index]
        if v is _MISSING:
            return None
        try:
            return not v
        except Exception:  # noqa: BLE001 - plain values do not raise here; be safe
            return None
    if isinstance(pred, Not):
        inner = evaluate(pred.pred, values, sent)
        return None if inner is None else not inner
    if isinstance(pred, BoolOp):
        results = [evaluate(p, values, sent) for p in pred.preds]
        if pred.kind == "and":
            return None if None in results else all(results)
        return True if True in results else (None if None in results else False)
    if isinstance(pred, IsClose):
        a, b = _operand(pred.a, values), _operand(pred.b, values)
        if a is _MISSING or b is _MISSING or type(a) not in (int, float) or type(b) not in (int, float):
            return None
        try:
            return math.isclose(a, b, rel_tol=pred.rel_tol, abs_tol=pred.abs_tol)
        except (ValueError, OverflowError):
            return None
    if isinstance(pred, Compare):
        operands = [_operand(o, values) for o in pred.operands]
        if any(o is _MISSING for o in operands):
            return None
        try:
            return all(bool(_OPS[op](a, b)) for op, a, b in zip(pred.ops, operands, operands[1:]))
        except (TypeError, ValueError, OverflowError, RecursionError):
            return None
    raise TypeError(f"unknown predicate {pred!r}")


def check_passes(check: Check, executions: list[list[list[Any]]]) -> bool:
    """A check passes when it ran (exactly once for a top-level assert outside loops and functions,
    at least once elsewhere) and every execution's predicate is True."""
    if not executions or (check.once and len(executions) != 1):
        return False
    for sent in executions:
        if evaluate(check.pred, slot_values(sent), sent) is not True:
            return False
    return True


def duplicate_count(checks: list[Check], executions: dict[int, list[list[list[Any]]]]) -> int:
    """Top-level checks reported more than once (a second report fails the check)."""
    return sum(1 for i, runs in executions.items() if 0 <= i < len(checks) and checks[i].once and len(runs) > 1)


def unplain_count(executions: dict[int, list[list[list[Any]]]]) -> int:
    """How many sent values were not plain (fail-closed signals for the reward-hacking monitor)."""
    return sum(1 for runs in executions.values() for sent in runs for kind, _ in sent if kind == "u")
