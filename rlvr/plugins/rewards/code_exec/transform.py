"""Assert tests rewritten so that the verdict is decided outside the sandbox.

Every ``assert`` statement of the test code, wherever it sits (top level, inside a helper such as
HumanEval's ``def check(candidate)``, in a loop, a ``with`` or an ``if``), becomes one *check*:

- its expression is split into a predicate the trusted side evaluates (comparisons, ``not``,
  ``and``/``or``, ``abs(a - b) < tol``, ``math.isclose``) and *slots*: the non-literal operands,
  which the sandbox evaluates and sends back as plain values;
- operands that are constant expressions (``7``, ``[1, 2]``, ``-1e-9``, ``set([1, 2])``,
  ``float('inf')``, ...) are evaluated here and kept here: they never enter the sandbox;
- the statement is replaced by code that evaluates each slot in its own ``try`` (an exception
  makes that slot an error) and hands the raw values to the harness (``_rlvr_begin`` /
  ``_rlvr_end``), which serialises them.

Shapes that cannot be judged this way fail closed with a :class:`TestsNotSupported` error naming
the line: ``assert False`` (and other asserts that are constant and false, used as "must not be
reached" markers), asserts lexically inside a ``try`` whose handler catches ``AssertionError``
(their outcome depends on the assert raising), and test code that uses the reserved ``_rlvr_``
prefix.
"""

from __future__ import annotations

import ast
import builtins
import copy
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from rlvr.core.errors import DataError

RESERVED = "_rlvr_"
BEGIN, END, FAIL, VALUES = "_rlvr_begin", "_rlvr_end", "_rlvr_fail", "_rlvr_v"
MAX_CONST_ITEMS = 100_000  # largest constant container built here
MAX_CONST_BITS = 100_000  # largest constant int built here


class TestsNotSupported(ValueError):
    __test__ = False  # not a pytest test class

    """The test code has a shape code_exec cannot judge outside the sandbox."""


# ----------------------------------------------------------------------------- predicates


@dataclass(frozen=True)
class Lit:
    """A constant operand, kept on the trusted side."""

    value: Any


@dataclass(frozen=True)
class Slot:
    """An operand the sandbox evaluates: index into the values of one check execution."""

    index: int


@dataclass(frozen=True)
class AbsDiff:
    """``abs(a - b)`` computed on the trusted side from two plain numbers."""

    a: "Operand"
    b: "Operand"


Operand = Union[Lit, Slot, AbsDiff]


@dataclass(frozen=True)
class Compare:
    """``operands[0] ops[0] operands[1] ops[1] ...`` (a chained comparison); ops are ast class names."""

    operands: tuple[Operand, ...]
    ops: tuple[str, ...]


@dataclass(frozen=True)
class Truth:
    """A non-comparison expression evaluated in the sandbox: passes only when it is exactly ``True``."""

    slot: Slot
    deps: tuple[int, ...] = ()  # slots that must not have raised (the operands of an ``is`` test)


@dataclass(frozen=True)
class Falsy:
    """``not <expr>``: passes when the plain value of ``expr`` is falsy (``not value`` on this side)."""

    slot: Slot


@dataclass(frozen=True)
class Not:
    """Negation of a predicate (an error stays a failure)."""

    pred: "Pred"


@dataclass(frozen=True)
class BoolOp:
    """``and`` / ``or`` of predicates."""

    kind: str  # "and" | "or"
    preds: tuple["Pred", ...]


@dataclass(frozen=True)
class IsClose:
    """``math.isclose(a, b, rel_tol=..., abs_tol=...)`` on the trusted side."""

    a: Operand
    b: Operand
    rel_tol: float = 1e-9
    abs_tol: float = 0.0


@dataclass(frozen=True)
class Const:
    """A predicate with no sandbox part at all (``assert True``)."""

    value: bool


Pred = Union[Compare, Truth, Falsy, Not, BoolOp, IsClose, Const]


@dataclass(frozen=True)
class Check:
    """One assert statement: its predicate, how many slots it sends, and where it is."""

    pred: Pred
    slots: int
    line: int
    source: str  # the assert's source with constant operands shown as ``<expected>``
    once: bool = False  # at module level outside loops and functions: it must run exactly once


@dataclass
class Program:
    """Transformed test code: top-level steps (Python source run in order) and the checks they report."""

    steps: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


# ----------------------------------------------------------------------------- constants

_CONST_CALLS = {
    "set",
    "frozenset",
    "tuple",
    "list",
    "dict",
    "sorted",
    "float",
    "int",
    "str",
    "bool",
    "abs",
    "len",
    "min",
    "max",
    "sum",
    "round",
    "range",
    "complex",
}


class _NotConst(Exception):
    pass


def _size_ok(value: Any) -> Any:
    if isinstance(value, (str, bytes, list, tuple, set, frozenset, dict, range)) and len(value) > MAX_CONST_ITEMS:
        raise _NotConst
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_CONST_BITS:
        raise _NotConst
    return value


def const_value(node: ast.AST, shadowed: frozenset[str] = frozenset(), names: Optional[dict[str, Any]] = None) -> Any:
    """The value of a constant expression, computed here (never in the sandbox).

    Constant: literals and displays of constants, unary/binary arithmetic on them (sizes bounded),
    and calls of a few pure built-ins (``set``, ``tuple``, ``sorted``, ``float``, ``range``, ...)
    with constant arguments, unless the test code rebinds that name (``shadowed``); and the
    ``names`` bound once to a constant at the top level of the tests (see ``_named_constants``).
    Raises ``_NotConst`` for anything else.
    """

    def ev(n: ast.AST) -> Any:
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.Name) and names and n.id in names:
            return copy.deepcopy(names[n.id])
        if isinstance(n, (ast.List, ast.Tuple, ast.Set)):
            if any(isinstance(e, ast.Starred) for e in n.elts):
                raise _NotConst
            items = [ev(e) for e in n.elts]
            return _size_ok(
                list(items) if isinstance(n, ast.List) else tuple(items) if isinstance(n, ast.Tuple) else set(items)
            )
        if isinstance(n, ast.Dict):
            if any(k is None for k in n.keys):
                raise _NotConst
            return _size_ok({ev(k): ev(v) for k, v in zip(n.keys, n.values)})  # type: ignore[arg-type]
        if isinstance(n, ast.UnaryOp):
            v = ev(n.operand)
            if isinstance(n.op, ast.Not):
                return not v
            if not isinstance(v, (int, float, complex)):
                raise _NotConst
            return _size_ok(-v if isinstance(n.op, ast.USub) else +v if isinstance(n.op, ast.UAdd) else ~v)
        if isinstance(n, ast.BinOp):
            a, b = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Pow):
                if (
                    not (isinstance(a, (int, float)) and isinstance(b, (int, float)))
                    or abs(b) > 4096
                    or (
                        isinstance(a, int)
                        and isinstance(b, int)
                        and abs(a) > 1
                        and b * abs(a).bit_length() > MAX_CONST_BITS
                    )
                ):
                    raise _NotConst
            elif isinstance(n.op, ast.Mult):
                for x, y in ((a, b), (b, a)):
                    if (
                        isinstance(x, (str, bytes, list, tuple))
                        and isinstance(y, int)
                        and len(x) * y > MAX_CONST_ITEMS
                    ):
                        raise _NotConst
            elif isinstance(n.op, ast.LShift):
                if not isinstance(b, int) or b > MAX_CONST_BITS:
                    raise _NotConst
            ops = {
                ast.Add: lambda: a + b,
                ast.Sub: lambda: a - b,
                ast.Mult: lambda: a * b,
                ast.Div: lambda: a / b,
                ast.FloorDiv: lambda: a // b,
                ast.Mod: lambda: a % b,
                ast.Pow: lambda: a**b,
                ast.LShift: lambda: a << b,
                ast.RShift: lambda: a >> b,
                ast.BitOr: lambda: a | b,
                ast.BitAnd: lambda: a & b,
                ast.BitXor: lambda: a ^ b,
            }
            if type(n.op) not in ops or isinstance(a, str) and isinstance(n.op, ast.Mod):
                raise _NotConst
            try:
                return _size_ok(ops[type(n.op)]())
            except (ArithmeticError, TypeError, ValueError):
                raise _NotConst from None
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)
            and n.func.id in _CONST_CALLS
            and n.func.id not in shadowed
            and all(k.arg == "reverse" and n.func.id == "sorted" for k in n.keywords)
        ):
            if any(isinstance(a, ast.Starred) for a in n.args):
                raise _NotConst
            args = [ev(a) for a in n.args]
            kwargs = {k.arg: ev(k.value) for k in n.keywords if k.arg}
            for a in args:
                if isinstance(a, range) and len(a) > MAX_CONST_ITEMS:
                    raise _NotConst
            try:
                value = getattr(builtins, n.func.id)(*args, **kwargs)
            except (ArithmeticError, TypeError, ValueError, OverflowError):
                raise _NotConst from None
            if isinstance(value, range):
                raise _NotConst  # only inside list()/set()/...
            return _size_ok(value)
        raise _NotConst

    return ev(node)


def _is_const(node: ast.AST, shadowed: frozenset[str], names: Optional[dict[str, Any]] = None) -> tuple[bool, Any]:
    try:
        return True, const_value(node, shadowed, names)
    except (_NotConst, RecursionError):
        return False, None


# ----------------------------------------------------------------------------- analysis of one assert

_TRUSTED_OPS = ("Eq", "NotEq", "Lt", "LtE", "Gt", "GtE", "In", "NotIn", "Is", "IsNot")
_SINGLETONS = (None, True, False, Ellipsis)


class _Builder:
    """Collects the slot expressions of one assert while its predicate is built."""

    def __init__(self, shadowed: frozenset[str], names: dict[str, Any]):
        self.shadowed = shadowed
        self.names = names
        self.slots: list[ast.expr] = []

    def const(self, node: ast.AST) -> tuple[bool, Any]:
        return _is_const(node, self.shadowed, self.names)

    def slot(self, expr: ast.expr) -> Slot:
        self.slots.append(expr)
        return Slot(len(self.slots) - 1)

    def operand(self, node: ast.expr) -> Operand:
        ok, value = self.const(node)
        if ok:
            return Lit(value)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "abs"
            and "abs" not in self.shadowed
            and len(node.args) == 1
            and not node.keywords
            and isinstance(node.args[0], ast.BinOp)
            and isinstance(node.args[0].op, ast.Sub)
        ):
            return AbsDiff(self.operand(node.args[0].left), self.operand(node.args[0].right))
        return self.slot(node)

    def pred(self, node: ast.expr) -> Pred:
        ok, value = self.const(node)
        if ok:
            return Const(value is True)
        if isinstance(node, ast.BoolOp):
            return BoolOp("and" if isinstance(node.op, ast.And) else "or", tuple(self.pred(v) for v in node.values))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = node.operand
            if (
                isinstance(inner, (ast.Compare, ast.BoolOp))
                or (isinstance(inner, ast.UnaryOp) and isinstance(inner.op, ast.Not))
                or _isclose(inner)
            ):
                return Not(self.pred(inner))
            return Falsy(self.slot(inner))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if _isclose(node) and "math" not in self.shadowed:
            return self.isclose(node)  # type: ignore[arg-type]
        return Truth(self.slot(node))

    def compare(self, node: ast.Compare) -> Pred:
        nodes = [node.left, *node.comparators]
        ops = [type(op).__name__ for op in node.ops]
        operands: list[Optional[Operand]] = [None] * len(nodes)
        consts = [self.const(n) for n in nodes]
        # identity between two values computed in the sandbox: the sandbox itself says ``a is b``
        # (identity cannot be faked by an object), sent as a bool that must be exactly True
        identity_pairs = [
            i for i, op in enumerate(ops) if op in ("Is", "IsNot") and not consts[i][0] and not consts[i + 1][0]
        ]
        identity_sides = {j for i in identity_pairs for j in (i, i + 1)}
        for i, n in enumerate(nodes):
            operands[i] = (
                Lit(consts[i][1]) if consts[i][0] else self.slot(n) if i in identity_sides else self.operand(n)
            )
        preds: list[Pred] = []
        for i, op in enumerate(ops):
            if i in identity_pairs:
                a, b = operands[i], operands[i + 1]
                assert isinstance(a, Slot) and isinstance(b, Slot)
                test = ast.Compare(
                    left=_slot_ref(a.index),
                    ops=[ast.Is() if op == "Is" else ast.IsNot()],
                    comparators=[_slot_ref(b.index)],
                )
                preds.append(Truth(self.slot(test), deps=(a.index, b.index)))
            else:
                preds.append(Compare((operands[i], operands[i + 1]), (op,)))  # type: ignore[arg-type]
        if len(preds) == 1:
            return preds[0]
        return BoolOp("and", tuple(preds))

    def isclose(self, node: ast.Call) -> Pred:
        kwargs = {}
        for k in node.keywords:
            ok, value = self.const(k.value)
            if k.arg not in ("rel_tol", "abs_tol") or not ok or not isinstance(value, (int, float)):
                return Truth(self.slot(node))
            kwargs[k.arg] = float(value)
        if len(node.args) != 2 or any(isinstance(a, ast.Starred) for a in node.args):
            return Truth(self.slot(node))
        return IsClose(self.operand(node.args[0]), self.operand(node.args[1]), **kwargs)


def _isclose(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "isclose"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "math"
    )


def _slot_ref(index: int) -> ast.expr:
    return ast.Subscript(value=ast.Name(id=VALUES, ctx=ast.Load()), slice=ast.Constant(index), ctx=ast.Load())


def _shown(node: ast.Assert, shadowed: frozenset[str], names: dict[str, Any]) -> str:
    """The assert's source with its constant operands replaced by ``<expected>`` (for reports)."""

    class Hide(ast.NodeTransformer):
        def visit_Compare(self, n: ast.Compare) -> ast.AST:
            parts = [n.left, *n.comparators]
            hidden = [
                ast.Name(id="<expected>", ctx=ast.Load()) if _is_const(p, shadowed, names)[0] else self.visit(p)
                for p in parts
            ]
            return ast.Compare(left=hidden[0], ops=n.ops, comparators=hidden[1:])

    try:
        return ast.unparse(Hide().visit(ast.Assert(test=_copy(node.test), msg=None)))[:200]
    except (ValueError, AttributeError, RecursionError):
        return "assert ..."


def _copy(node: ast.expr) -> ast.expr:
    return ast.parse(ast.unparse(node), mode="eval").body


# ----------------------------------------------------------------------------- the rewrite


def _catches_assertion_error(handler: ast.ExceptHandler) -> bool:
    names = {"AssertionError", "Exception", "BaseException"}
    t = handler.type
    if t is None:
        return True
    elts = t.elts if isinstance(t, ast.Tuple) else [t]
    return any(
        isinstance(e, ast.Name) and e.id in names or isinstance(e, ast.Attribute) and e.attr in names for e in elts
    )


class _Rewriter(ast.NodeTransformer):
    def __init__(self, program: Program, shadowed: frozenset[str], origin: str, names: dict[str, Any]):
        self.program = program
        self.shadowed = shadowed
        self.names = names
        self.origin = origin
        self.guarded = 0  # depth of try bodies whose handlers catch AssertionError
        self.repeats = 0  # depth of loops, functions and classes (an assert there may run any number of times)

    def _repeating(self, node: ast.AST) -> Any:
        self.repeats += 1
        try:
            return self.generic_visit(node)
        finally:
            self.repeats -= 1

    visit_For = visit_AsyncFor = visit_While = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _repeating

    def visit_Try(self, node: ast.Try) -> ast.AST:
        catches = any(_catches_assertion_error(h) for h in node.handlers)
        self.guarded += catches
        node.body = self._stmts(node.body)
        self.guarded -= catches
        node.handlers = [self.visit(h) for h in node.handlers]
        node.orelse = self._stmts(node.orelse)
        node.finalbody = self._stmts(node.finalbody)
        return node

    visit_TryStar = visit_Try

    def _stmts(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for s in stmts:
            r = self.visit(s)
            out.extend(r if isinstance(r, list) else [r])
        return out

    def visit_Assert(self, node: ast.Assert) -> Any:
        where = f"{self.origin}line {node.lineno}"
        if self.guarded:
            raise TestsNotSupported(
                f"code_exec tests: the assert at {where} is inside a try whose handler catches AssertionError, so its "
                "outcome depends on the assert raising inside the sandbox; code_exec decides verdicts outside the "
                "sandbox and cannot judge it. Move the assert out of the try block."
            )
        builder = _Builder(self.shadowed, self.names)
        pred = builder.pred(node.test)
        if isinstance(pred, Const) and not pred.value:
            raise TestsNotSupported(
                f"code_exec tests: `{ast.unparse(node)[:80]}` at {where} is always false (a 'must not be reached' "
                "marker, e.g. after a call expected to raise). code_exec cannot judge it outside the sandbox; write "
                "the check as a comparison instead, e.g. `assert raises_value_error(lambda: f(-1)) == True` with "
                "the helper defined in the tests."
            )
        index = len(self.program.checks)
        shown = _shown(node, self.shadowed, self.names)
        self.program.checks.append(Check(pred, len(builder.slots), node.lineno, shown, once=self.repeats == 0))
        return _emit(index, builder.slots, node)


def _emit(index: int, slots: list[ast.expr], where: ast.AST) -> list[ast.stmt]:
    """``_rlvr_v = _rlvr_begin(i, n)``; one ``try: _rlvr_v[k] = <slot>`` per slot; ``_rlvr_end(i, _rlvr_v)``."""

    def name(n: str, store: bool = False) -> ast.Name:
        return ast.Name(id=n, ctx=ast.Store() if store else ast.Load())

    body: list[ast.stmt] = [
        ast.Assign(
            targets=[name(VALUES, True)],
            value=ast.Call(func=name(BEGIN), args=[ast.Constant(index), ast.Constant(len(slots))], keywords=[]),
        )
    ]
    for k, expr in enumerate(slots):
        target = ast.Subscript(value=name(VALUES), slice=ast.Constant(k), ctx=ast.Store())
        failed = ast.Subscript(value=name(VALUES), slice=ast.Constant(k), ctx=ast.Store())
        body.append(
            ast.Try(
                body=[ast.Assign(targets=[target], value=expr)],
                handlers=[
                    ast.ExceptHandler(
                        type=name("BaseException"),
                        name="_rlvr_e",
                        body=[
                            ast.Assign(
                                targets=[failed], value=ast.Call(func=name(FAIL), args=[name("_rlvr_e")], keywords=[])
                            )
                        ],
                    )
                ],
                orelse=[],
                finalbody=[],
            )
        )
    body.append(ast.Expr(value=ast.Call(func=name(END), args=[ast.Constant(index), name(VALUES)], keywords=[])))
    for s in body:
        ast.copy_location(s, where)
        ast.fix_missing_locations(s)
    return body


def _bound_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.alias):
            names.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            names.update(n.names)
    return names


def _uses_reserved(tree: ast.AST) -> Optional[int]:
    for n in ast.walk(tree):
        ident = (
            n.id
            if isinstance(n, ast.Name)
            else n.attr
            if isinstance(n, ast.Attribute)
            else n.arg
            if isinstance(n, ast.arg)
            else n.name
            if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            else None
        )
        if isinstance(ident, str) and ident.startswith(RESERVED):
            return getattr(n, "lineno", 0)
    return None


def _operand_nodes(expr: ast.expr, shadowed: frozenset[str]) -> list[ast.expr]:
    """The nodes of an assert expression that ``_Builder`` treats as whole operands."""
    if isinstance(expr, ast.BoolOp):
        return [n for v in expr.values for n in _operand_nodes(v, shadowed)]
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        inner = expr.operand
        nested = isinstance(inner, (ast.Compare, ast.BoolOp, ast.UnaryOp)) or _isclose(inner)
        return _operand_nodes(inner, shadowed) if nested else []
    if isinstance(expr, ast.Compare):
        out = []
        for n in [expr.left, *expr.comparators]:
            out.append(n)
            if (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Name)
                and n.func.id == "abs"
                and len(n.args) == 1
                and isinstance(n.args[0], ast.BinOp)
                and isinstance(n.args[0].op, ast.Sub)
            ):
                out += [n.args[0].left, n.args[0].right]
        return out
    if _isclose(expr) and "math" not in shadowed and isinstance(expr, ast.Call):
        return list(expr.args)
    return []


def _named_constants(trees: list[ast.Module], shadowed: frozenset[str]) -> tuple[dict[str, Any], set[int]]:
    """Expected values held in a variable (``expected = [1, 2]`` then ``assert f(x) == expected``).

    A name qualifies when it is bound exactly once in all the test code, at the top level, to a
    constant expression, and every later use of it is a whole operand of an assert (so nothing
    in the sandbox needs it). Returns {name: value} and the ids of the assignments to drop from
    the code the sandbox gets.
    """
    binds: dict[str, int] = {}
    for tree in trees:
        for n in ast.walk(tree):
            if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
                binds[n.id] = binds.get(n.id, 0) + 1
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                binds[n.name] = binds.get(n.name, 0) + 2
            elif isinstance(n, ast.alias):
                name = (n.asname or n.name).split(".")[0]
                binds[name] = binds.get(name, 0) + 2
            elif isinstance(n, ast.arg):
                binds[n.arg] = binds.get(n.arg, 0) + 2
            elif isinstance(n, (ast.Global, ast.Nonlocal)):
                for name in n.names:
                    binds[name] = binds.get(name, 0) + 2
    candidates: dict[str, tuple[Any, int, tuple[int, int]]] = {}
    for t, tree in enumerate(trees):
        for stmt in tree.body:
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and binds.get(stmt.targets[0].id) == 1
                and not stmt.targets[0].id.startswith("__")
            ):
                ok, value = _is_const(stmt.value, shadowed)
                if ok:
                    candidates[stmt.targets[0].id] = (value, id(stmt), (t, stmt.lineno))
    if not candidates:
        return {}, set()
    operands: set[int] = set()
    for tree in trees:
        for n in ast.walk(tree):
            if isinstance(n, ast.Assert):
                operands.update(id(o) for o in _operand_nodes(n.test, shadowed) if isinstance(o, ast.Name))
    for t, tree in enumerate(trees):
        for n in ast.walk(tree):
            if (
                isinstance(n, ast.Name)
                and isinstance(n.ctx, ast.Load)
                and n.id in candidates
                and (id(n) not in operands or (t, n.lineno) <= candidates[n.id][2])
            ):
                del candidates[n.id]
    return {k: v[0] for k, v in candidates.items()}, {v[1] for v in candidates.values()}


def transform(sources: list[str]) -> Program:
    """Rewrite test sources (one or several strings, run in order) into a :class:`Program`.

    A string that holds no ``assert`` but is a single expression (``"f(1) == 2"``) is judged as
    ``assert <expr>``. Raises ``ValueError`` for invalid Python and :class:`TestsNotSupported`
    for shapes that cannot be judged outside the sandbox.
    """
    trees = []
    for i, src in enumerate(sources):
        where = f"test string {i}, " if len(sources) > 1 else ""
        try:
            tree = ast.parse(src)
        except SyntaxError as exc:
            raise DataError(f"tests are not valid Python ({where}line {exc.lineno}): {exc.msg}") from None
        line = _uses_reserved(tree)
        if line is not None:
            raise TestsNotSupported(
                f"code_exec tests ({where}line {line}) use a name starting with {RESERVED!r}, "
                "which the harness reserves; rename it"
            )
        if (
            not any(isinstance(n, ast.Assert) for n in ast.walk(tree))
            and len(tree.body) == 1
            and isinstance(tree.body[0], ast.Expr)
        ):
            tree.body = [ast.copy_location(ast.Assert(test=tree.body[0].value, msg=None), tree.body[0])]
        trees.append((where, tree))
    shadowed = frozenset(set().union(*(_bound_names(t) for _, t in trees)) & (_CONST_CALLS | {"math"}))
    names, assignments = _named_constants([t for _, t in trees], shadowed)
    program = Program()
    for where, tree in trees:
        rewriter = _Rewriter(program, shadowed, where, names)
        for stmt in tree.body:
            if id(stmt) in assignments:  # ``expected = [...]`` used only as an assert operand: kept here
                program.steps.append("pass\n")
                continue
            new = rewriter.visit(stmt)
            module = ast.Module(body=new if isinstance(new, list) else [new], type_ignores=[])
            program.steps.append(ast.unparse(ast.fix_missing_locations(module)) + "\n")
    return program
