"""Held-out correctness: the verifier a task names (``task.correct=<verifier>``) as a batch check.

Any verifier plugin (built-in or third-party, see ``rlvr plugins``) can judge evaluation. Defaults:
``arithmetic`` → ``numeric``, ``gsm8k`` → ``math_answer``, ``jsonl`` → ``exact_match``; a task whose
config leaves ``correct`` empty uses its own ``is_correct(completion, row)`` when it has one, else
``exact_match``. Parameters
go in ``task.correct_params`` (e.g. ``+task.correct_params.decimal_comma=always``); a verifier with
an ``answer_column`` parameter gets the task's ``answer_column`` unless set there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

from rlvr.core.errors import ConfigError

Check = Callable[[Sequence[str], Sequence[dict[str, Any]], Optional[Sequence[str]]], list[bool]]


def passed(verdict: Any) -> bool:
    """A verdict counts as correct only when it is plainly true: ``True``, or an ``int``/``float``
    equal to 1, or a NumPy bool that is true. None, strings and objects with a custom ``__eq__`` /
    ``__bool__`` never do (a verifier cannot be fooled into passing by what the completion builds)."""
    if verdict is None or isinstance(verdict, str):
        return False
    if type(verdict) in (bool, int, float):
        return verdict == 1
    return type(verdict).__name__ == "bool_" and type(verdict).__module__ == "numpy" and bool(verdict)


def verifier_check(name: str, params: Optional[dict[str, Any]] = None, answer_column: str = "answer") -> Check:
    """``check(completions, rows, prompts) -> list[bool]`` from the verifier plugin ``name``.

    The verifier receives every row column as a list (as rewards do) and ``prompts``; a None verdict
    (no reference) counts as not correct.
    """
    from rlvr.core import registry
    from rlvr.core.rewards import _run_coroutine, is_async

    params = dict(params or {})
    try:
        entry = registry.get("verifier", name)
    except registry.UnknownPluginError as exc:
        raise ConfigError(f"task.correct={name!r}: {exc}") from None
    fields = {f.name for f in dataclasses.fields(entry.spec.config)}
    if "answer_column" in fields and "answer_column" not in params:
        params["answer_column"] = answer_column
    verify = registry.create("verifier", name, **params)

    def check(
        completions: Sequence[str], rows: Sequence[dict[str, Any]], prompts: Optional[Sequence[str]] = None
    ) -> list[bool]:
        keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in ("prompts", "completions")]
        columns = {k: [row.get(k) for row in rows] for k in keys}
        out = verify(list(completions), prompts=list(prompts) if prompts is not None else [""] * len(rows), **columns)
        if is_async(verify):
            out = _run_coroutine(out)
        if not isinstance(out, (list, tuple)) or len(out) != len(completions):
            raise ValueError(
                f"verifier {name!r} (task.correct) returned {type(out).__name__} of length "
                f"{len(out) if hasattr(out, '__len__') else '?'} for {len(completions)} completions; "
                "a verifier returns one bool (or None) per completion"
            )
        return [passed(v) for v in out]

    return check


DEFAULT_CHECK = "exact_match"


def check_name(task: Any) -> str:
    """The name of the check that judges ``task``: ``config.correct``, else ``"is_correct"`` for a task
    that brings its own function, else :data:`DEFAULT_CHECK`."""
    name = getattr(task.config, "correct", "") or ""
    if name:
        return name
    return "is_correct" if getattr(task, "is_correct", None) is not None else DEFAULT_CHECK


def task_check(task: Any) -> Check:
    """The correctness check of ``task``: the verifier ``config.correct`` names; when it names none, the
    task's own ``is_correct(completion, row)``, else ``exact_match``."""
    cfg = task.config
    name = check_name(task)
    if name == "is_correct" and not getattr(cfg, "correct", ""):
        is_correct = task.is_correct
        return lambda completions, rows, prompts=None: [passed(is_correct(c, r)) for c, r in zip(completions, rows)]  # type: ignore[misc]
    params = dict(getattr(cfg, "correct_params", None) or {})
    return verifier_check(name, params, getattr(cfg, "answer_column", "answer"))
