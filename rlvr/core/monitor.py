"""The reward-hacking monitor: per-step signals that a policy games its reward (metrics ``audit/...``).

The reward is the only teacher, so every step the monitor compares what the rewards paid with an
*independent check* (a verifier such as ``math_answer``, named by ``trainer.audit_verifiers``) and
looks for the usual shapes of reward hacking. :func:`audit_metrics` is a pure function of one
step's completions and reward table; :class:`Monitor` resolves the checks through the registry
(core never imports plugins), calls it, and prints one aggregated warning per step when a signal
crosses its threshold (``trainer.audit_warn_*``).

Metrics (N completions in groups of G, ``total_i = Σ_j w_j R_ij`` with None counted as 0, as in training):

- ``audit/duplicate_frac``: Σ_groups (G − number of distinct completions in the group) / N
  (completions compared after stripping surrounding whitespace).
- ``audit/completion_chars/mean``: mean completion length in characters.
- ``audit/length_reward_corr``: Pearson correlation, pooled over groups, of (length − group mean
  length) and (total − group mean total); omitted when either has no variance.
- ``audit/check/<v>/pass_rate``: share of the completions check ``v`` applies to (verdict not None)
  that pass it.
- ``audit/check/<v>/fail_paid_as_pass_frac``: share of those completions that *fail* the check yet
  get a total reward ≥ the mean total of the completions that pass it (paid like a right answer);
  omitted when no completion passes.
- ``audit/check/<v>/fail_rewarded_frac``: share that fail the check yet get a positive advantage
  (total above their group's mean, i.e. the update makes them more likely).
- ``audit/check/<v>/reward_gap``: mean total of passing − mean total of failing completions (a
  reward that does not track correctness sits near 0); omitted unless both sides exist.
- ``audit/<reward>/pass_gap``: the same gap for each reward on its own (first check only); a
  format-only reward sits near 0 while a correctness reward is large.
- ``audit/format_reward/mean`` and ``audit/content_reward/mean``: per-completion mean of the weighted
  sum of the format rewards (``trainer.audit_format_rewards``; default: names containing ``format``
  or ``xmlcount``) and of the other rewards; plotted side by side they show format-only gains.
- ``audit/<reward>/<key>``: every number in the optional ``last_metrics`` dict a reward function
  exposes after a call, and ``audit/<reward>/fail_closed/<key>`` for what its (or its ``executor``'s)
  ``fail_closed_counts()`` returns (code_exec: ``violations``, ``unplain_values``,
  ``duplicate_reports``): results that failed closed, which the monitor warns on.
- ``audit/check/<v>/errors``: 1 when the check raised this step (the monitor never stops training).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from rlvr.core.errors import ConfigError

PREFIX = "audit/"
FORMAT_NAME = re.compile(r"format|xmlcount", re.IGNORECASE)
EPS = 1e-6

Check = Callable[..., list]
"""``fn(completions, prompts=..., **columns) -> list[bool | None]`` (a verifier's contract)."""


@dataclass
class Thresholds:
    """When the monitor warns (``trainer.audit_warn_*``); a threshold ≤ 0 turns its warning off, except
    ``fail_closed`` where 0 means "warn on any"."""

    fail_paid_as_pass: float = 0.2  # audit/check/<v>/fail_paid_as_pass_frac above this
    duplicates: float = 0.9  # audit/duplicate_frac above this
    length_corr: float = 0.0  # audit/length_reward_corr above this (0 = off)
    fail_closed: float = 0.0  # a reward's */fail_closed counter above this (-1 = off)


def json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's columns that survive JSON (the others are left out): what completions.jsonl keeps for
    ``rlvr audit`` to re-score a completion."""
    import json

    out = {}
    for key, value in row.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[str(key)] = value
    return out


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    return {k: [row.get(k) for row in rows] for k in keys}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def duplicate_fraction(completions: Sequence[str], group_size: int) -> float:
    """Σ_groups (G − distinct completions of the group) / N; completions compared after ``strip()``."""
    n = len(completions)
    dups = sum(group_size - len({c.strip() for c in completions[g : g + group_size]}) for g in range(0, n, group_size))
    return dups / n if n else 0.0


def within_group_corr(x: Sequence[float], y: Sequence[float], group_size: int) -> Optional[float]:
    """Pearson correlation of x and y after subtracting each group's mean from both; None without variance."""
    dx, dy = [], []  # type: ignore[var-annotated]
    for g in range(0, len(x), group_size):
        xs, ys = x[g : g + group_size], y[g : g + group_size]
        mx, my = _mean(xs), _mean(ys)
        dx.extend(v - mx for v in xs)
        dy.extend(v - my for v in ys)
    sxx, syy = sum(v * v for v in dx), sum(v * v for v in dy)
    if sxx <= EPS or syy <= EPS:
        return None
    return sum(a * b for a, b in zip(dx, dy)) / math.sqrt(sxx * syy)


def run_check(
    check: Check, completions: list[str], prompts: list[str], columns: dict[str, list[Any]]
) -> list[Optional[bool]]:
    """A check's verdicts as a list of bool/None (awaited when the check is ``async``)."""
    from rlvr.core.rewards import _run_coroutine, is_async

    out = check(completions, prompts=prompts, **columns)
    if is_async(check):
        out = _run_coroutine(out)
    out = list(out)
    if len(out) != len(completions):
        raise ValueError(f"returned {len(out)} verdicts for {len(completions)} completions")
    return [None if v is None else bool(v) for v in out]


def audit_metrics(
    completions: Sequence[str],
    table: torch.Tensor,
    reward_names: Sequence[str],
    weights: Sequence[float],
    group_size: int,
    rows: Sequence[Mapping[str, Any]],
    checks: Optional[Mapping[str, Check]] = None,
    prompts: Optional[Sequence[str]] = None,
    format_rewards: Optional[Sequence[str]] = None,
    reward_metrics: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> dict[str, float]:
    """One step's reward-hacking signals (see the module docstring for each metric's formula).

    completions: N strings in group order (rows g·G … g·G+G−1 share a prompt); table: float [N, k]
    with NaN where a reward returned None; reward_names / weights: k each; rows: the N task rows;
    checks: name -> verifier; format_rewards: names of the format-only rewards (None = the names
    matching ``format`` or ``xmlcount``); reward_metrics: reward name -> its ``last_metrics``.
    Returns a dict of floats, every key starting with ``audit/``; undefined metrics are left out.
    A check that raises yields ``audit/check/<v>/errors`` = 1 and a warning, never an exception.
    """
    n, k = len(completions), len(reward_names)
    if table.shape != (n, k) or len(weights) != k:
        raise ValueError(
            f"audit_metrics: table {tuple(table.shape)} does not match {n} completions × {k} rewards "
            f"({len(weights)} weights)"
        )
    if n % group_size:
        raise ValueError(f"audit_metrics: {n} completions are not whole groups of {group_size}")
    filled = torch.nan_to_num(table.double(), nan=0.0)
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    total = (filled @ w).tolist()
    groups = [range(g, g + group_size) for g in range(0, n, group_size)]
    group_mean = {i: _mean([total[j] for j in grp]) for grp in groups for i in grp}
    lengths = [float(len(c)) for c in completions]
    out: dict[str, float] = {f"{PREFIX}duplicate_frac": duplicate_fraction(list(completions), group_size)}
    if n:
        out[f"{PREFIX}completion_chars/mean"] = _mean(lengths)
        corr = within_group_corr(lengths, total, group_size)
        if corr is not None:
            out[f"{PREFIX}length_reward_corr"] = corr

    is_format = [
        (name in format_rewards) if format_rewards is not None else bool(FORMAT_NAME.search(name))
        for name in reward_names
    ]
    if any(is_format) and n:
        fmt = filled[:, [j for j in range(k) if is_format[j]]] @ w[[j for j in range(k) if is_format[j]]]
        out[f"{PREFIX}format_reward/mean"] = float(fmt.mean())
        rest = [j for j in range(k) if not is_format[j]]
        if rest:
            out[f"{PREFIX}content_reward/mean"] = float((filled[:, rest] @ w[rest]).mean())

    columns = _columns(rows)
    prompt_list = list(prompts) if prompts is not None else [""] * n
    first = True
    for name, check in (checks or {}).items():
        key = f"{PREFIX}check/{name}/"
        try:
            verdicts = run_check(check, list(completions), prompt_list, columns)
        except Exception as exc:  # noqa: BLE001 - a broken check must not stop training
            warnings.warn(
                f"audit check {name!r} raised {type(exc).__name__}: {exc}; its audit metrics are "
                "skipped this step (fix it or drop it from trainer.audit_verifiers)",
                RuntimeWarning,
                stacklevel=2,
            )
            out[key + "errors"] = 1.0
            continue
        judged = [i for i, v in enumerate(verdicts) if v is not None]
        if not judged:
            continue
        passed = [i for i in judged if verdicts[i]]
        failed = [i for i in judged if not verdicts[i]]
        out[key + "pass_rate"] = len(passed) / len(judged)
        out[key + "fail_rewarded_frac"] = sum(total[i] > group_mean[i] + EPS for i in failed) / len(judged)
        if passed:
            bar = _mean([total[i] for i in passed])
            out[key + "fail_paid_as_pass_frac"] = sum(total[i] >= bar - EPS for i in failed) / len(judged)
        if passed and failed:
            out[key + "reward_gap"] = _mean([total[i] for i in passed]) - _mean([total[i] for i in failed])
            if first:
                for j, rname in enumerate(reward_names):
                    col = table[:, j].tolist()
                    p = [col[i] for i in passed if not math.isnan(col[i])]
                    f = [col[i] for i in failed if not math.isnan(col[i])]
                    if p and f:
                        out[f"{PREFIX}{rname}/pass_gap"] = _mean(p) - _mean(f)
        first = False

    for rname, extra in (reward_metrics or {}).items():
        for mkey, value in (extra or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
                out[f"{PREFIX}{rname}/{mkey}"] = float(value)
    return out


def reward_counters(fn: Any) -> dict[str, float]:
    """The counters a reward function exposes after a call: its ``last_metrics`` dict, plus, under
    ``fail_closed/<key>``, what ``fail_closed_counts()`` returns on the function or on its ``executor``
    (code_exec: runs that broke the result protocol, values that were not plain, duplicate reports)."""
    out: dict[str, float] = {}
    extra = getattr(fn, "last_metrics", None)
    if isinstance(extra, Mapping):
        out.update({str(k): v for k, v in extra.items()})
    for holder in (fn, getattr(fn, "executor", None)):
        counts = getattr(holder, "fail_closed_counts", None)
        if callable(counts):
            out.update({f"fail_closed/{k}": v for k, v in dict(counts()).items()})
            break
    return out


def crossed(metrics: Mapping[str, float], thresholds: Thresholds) -> list[str]:
    """Human-readable lines for every audit signal above its threshold (empty when none is)."""
    lines = []
    for key, value in sorted(metrics.items()):
        if not key.startswith(PREFIX):
            continue
        if (
            key.endswith("/fail_paid_as_pass_frac")
            and thresholds.fail_paid_as_pass > 0
            and value > thresholds.fail_paid_as_pass
        ):
            check = key[len(PREFIX + "check/") : -len("/fail_paid_as_pass_frac")]
            lines.append(
                f"{value:.0%} of completions fail the check {check!r} but are paid like passing ones "
                f"(> {thresholds.fail_paid_as_pass:.0%})"
            )
        elif key == f"{PREFIX}duplicate_frac" and thresholds.duplicates > 0 and value > thresholds.duplicates:
            lines.append(
                f"{value:.0%} of completions duplicate another in their group (> {thresholds.duplicates:.0%})"
            )
        elif key == f"{PREFIX}length_reward_corr" and thresholds.length_corr > 0 and value > thresholds.length_corr:
            lines.append(
                f"reward follows completion length (within-group correlation {value:.2f} > "
                f"{thresholds.length_corr:.2f})"
            )
        elif (
            ("/fail_closed" in key or key.endswith("fail_closed"))
            and thresholds.fail_closed >= 0
            and value > thresholds.fail_closed
        ):
            lines.append(
                f"{key[len(PREFIX) :]} = {value:g}: results that failed closed (> {thresholds.fail_closed:g})"
            )
    return lines


def _as_check(fn: Callable[..., Any]) -> Check:
    """A reward used as a check: passes when its score is > 0."""
    from rlvr.core.rewards import _run_coroutine, is_async

    def check(completions: list[str], **kwargs: Any) -> list[Optional[bool]]:
        out = fn(completions, **kwargs)
        if is_async(fn):
            out = _run_coroutine(out)
        return [None if s is None else float(s) > 0 for s in out]

    return check


def resolve_checks(names: Optional[Sequence[str]], answer_column: Optional[str]) -> dict[str, Check]:
    """Build the checks named in ``trainer.audit_verifiers`` through the registry (a verifier plugin, else a
    reward plugin whose score > 0 counts as a pass), reading the task's ``answer_column`` when the plugin has
    that parameter. ``names=None``: ``math_answer`` on ``answer_column``
    when the task has one (else no check); ``[]``: none."""
    from rlvr.core import registry

    if names is None:
        if not answer_column or "math_answer" not in registry.registry().entries("verifier"):
            return {}
        return {"math_answer": registry.create("verifier", "math_answer", answer_column=answer_column)}
    out: dict[str, Check] = {}
    for name in names:
        for kind in ("verifier", "reward"):
            entry = registry.registry().entries(kind).get(name)
            if entry is None:
                continue
            fields = (
                {f.name for f in dataclasses.fields(entry.spec.config)}
                if dataclasses.is_dataclass(entry.spec.config)
                else set()
            )
            params = {"answer_column": answer_column} if answer_column and "answer_column" in fields else {}
            fn = registry.create(kind, name, **params)
            out[name] = fn if kind == "verifier" else _as_check(fn)
            break
        if name not in out:
            known = sorted(set(registry.names("verifier")) | set(registry.names("reward")))
            raise ConfigError(
                f"trainer.audit_verifiers: {name!r} is neither a verifier nor a reward plugin; "
                f"choose from {', '.join(known)} (or [] to turn the checks off)"
            )
    return out


class Monitor:
    """The trainer's monitor: resolved checks + thresholds; call it once per step after scoring."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        group_size: int,
        thresholds: Thresholds,
        format_rewards: Optional[Sequence[str]] = None,
        enabled: bool = True,
    ) -> None:
        self.checks, self.group_size, self.thresholds = dict(checks), group_size, thresholds
        self.format_rewards = list(format_rewards) if format_rewards is not None else None
        self.enabled = enabled

    @classmethod
    def from_config(cls, tc: Any, answer_column: Optional[str]) -> "Monitor":
        """From a TrainerConfig (``trainer.audit*`` fields)."""
        enabled = bool(getattr(tc, "audit", True))
        checks = resolve_checks(getattr(tc, "audit_verifiers", None), answer_column) if enabled else {}
        thresholds = Thresholds(
            tc.audit_warn_fail_paid, tc.audit_warn_duplicates, tc.audit_warn_length_corr, tc.audit_warn_fail_closed
        )
        return cls(checks, tc.num_generations, thresholds, getattr(tc, "audit_format_rewards", None), enabled)

    def __call__(
        self,
        step: int,
        completions: Sequence[str],
        table: torch.Tensor,
        rewards: Sequence[Any],
        rows: Sequence[Mapping[str, Any]],
        prompts: Optional[Sequence[str]] = None,
        gather: Optional[Callable[[Any], list]] = None,
        warn: bool = True,
    ) -> dict[str, float]:
        """``rewards``: the run's RewardFn list (name, fn, weight). Returns the ``audit/`` metrics and warns
        once (one line per crossed signal) when any crosses its threshold. ``gather`` (``Dist.gather`` under
        torchrun; call on every rank) joins every rank's share first, so the metrics are the whole batch's
        (the reward counters are summed over the ranks); ``warn``: whether this rank prints the warning."""
        if not self.enabled:
            return {}
        extra = {r.name: c for r in rewards if (c := reward_counters(r.fn))}
        prompts = list(prompts) if prompts is not None else [""] * len(completions)
        if gather is not None:
            parts = gather(
                {
                    "completions": list(completions),
                    "table": table,
                    "rows": [dict(r) for r in rows],
                    "prompts": prompts,
                    "extra": extra,
                }
            )
            if len(parts) > 1:
                completions = [c for p in parts for c in p["completions"]]
                table = torch.cat([p["table"] for p in parts])
                rows = [r for p in parts for r in p["rows"]]
                prompts = [x for p in parts for x in p["prompts"]]
                extra = {}
                for p in parts:
                    for name, counters in p["extra"].items():
                        merged = extra.setdefault(name, {})
                        for key, value in counters.items():
                            if isinstance(value, (int, float)) and not isinstance(value, bool):
                                merged[key] = merged.get(key, 0.0) + float(value)
        metrics = audit_metrics(
            completions,
            table,
            [r.name for r in rewards],
            [r.weight for r in rewards],
            self.group_size,
            rows,
            self.checks,
            prompts,
            self.format_rewards,
            extra,
        )
        lines = crossed(metrics, self.thresholds)
        if lines and warn:
            warnings.warn(
                f"step {step}: possible reward hacking: "
                + "; ".join(lines)
                + " (see docs/reward-hacking.md; thresholds: trainer.audit_warn_*)",
                RuntimeWarning,
                stacklevel=2,
            )
        return metrics
