"""Scoring completions with reward plugins.

A *reward* is ``fn(completions, prompts=..., **columns) -> list[float | None]`` where ``columns``
holds every task column (``answer``, ``tests``, ...) as a list aligned with ``completions``.
``None`` means "not applicable": it is left out of the weighted sum. A *verifier* returns
``list[bool | None]``; :func:`verifier_as_reward` turns it into a reward with ``pass_score`` /
``fail_score``. ``async def`` rewards are awaited concurrently.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from rlvr.core.advantages import outcome_turn_scores
from rlvr.core.errors import ConfigError, DataError, RunError

ON_ERROR_CHOICES = ("raise", "zero", "none")


@dataclass
class RewardConfig:
    """Fields every reward config has (reward configs subclass this)."""

    weight: float = 1.0
    on_error: str = "raise"  # raise | zero (score 0 and go on) | none (score None and go on)


@dataclass
class VerifierConfig(RewardConfig):
    """A verifier used as a reward: pass -> pass_score, fail -> fail_score, None stays None."""

    pass_score: float = 1.0
    fail_score: float = 0.0


class RewardError(RunError):
    """A reward plugin failed or returned something unusable."""


@dataclass
class RewardFn:
    """One configured reward of a run."""

    name: str
    fn: Callable[..., Any]
    weight: float = 1.0
    on_error: str = "raise"

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR_CHOICES:
            raise ConfigError(f"reward {self.name!r}: on_error={self.on_error!r}; choose one of {ON_ERROR_CHOICES}")
        if not math.isfinite(self.weight):
            raise ConfigError(f"reward {self.name!r}: weight must be finite, got {self.weight}")


def verifier_as_reward(
    verify: Callable[..., Any], pass_score: float = 1.0, fail_score: float = 0.0
) -> Callable[..., Any]:
    """Wrap a verifier (``-> list[bool | None]``) as a reward (``-> list[float | None]``)."""

    def as_scores(verdicts: Sequence[bool | None]) -> list[float | None]:
        return [None if v is None else (pass_score if v else fail_score) for v in verdicts]

    if inspect.iscoroutinefunction(verify):

        async def reward_async(completions: list[str], **kwargs: Any) -> list[float | None]:
            return as_scores(await verify(completions, **kwargs))

        return reward_async

    def reward(completions: list[str], **kwargs: Any) -> list[float | None]:
        return as_scores(verify(completions, **kwargs))

    return reward


def _on_failure(
    reward: RewardFn, exc: BaseException, completions: list[str], prompts: list[str], columns: dict[str, list[Any]]
) -> list[float | None]:
    """A reward raised: stop with the plugin, row and completion named, or (on_error zero/none) warn and
    score the whole batch 0 / None."""
    if reward.on_error == "raise":
        raise RewardError(
            f"reward {reward.name!r} raised {type(exc).__name__}: {exc}."
            f"{_first_failing(reward, completions, prompts, columns)} Fix the reward, or set "
            f"reward.{reward.name}.on_error=zero (or none) to score such completions and go on."
        ) from exc
    fallback = 0.0 if reward.on_error == "zero" else None
    warnings.warn(
        f"reward {reward.name!r} raised {type(exc).__name__}: {exc}; scoring the batch {fallback} "
        f"(on_error={reward.on_error})",
        RuntimeWarning,
        stacklevel=3,
    )
    return [fallback] * len(completions)


def is_async(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions and objects with an ``async def __call__``."""
    return inspect.iscoroutinefunction(fn) or (callable(fn) and inspect.iscoroutinefunction(type(fn).__call__))


def _run_coroutine(coro: Any) -> Any:
    """Run a coroutine to completion, also when called from inside a running event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _first_failing(reward: RewardFn, completions: list[str], prompts: list[str], columns: dict[str, list[Any]]) -> str:
    """Find which row makes a raising reward fail, by scoring rows one at a time (for the message).

    A single completion is reported without calling the reward again (no second request to a judge).
    """
    if len(completions) == 1:
        return f" It fails on row 0; completion: {completions[0][:300]!r}"
    for i, c in enumerate(completions):
        try:
            out = reward.fn([c], prompts=[prompts[i]], **{k: [v[i]] for k, v in columns.items()})
            if is_async(reward.fn):
                _run_coroutine(out)
        except Exception as exc:  # noqa: BLE001 - reported to the user below
            return f" It fails on row {i} ({type(exc).__name__}: {exc}); completion: {c[:300]!r}"
    return ""


def _number(reward: RewardFn, v: Any, where: str) -> float:
    if isinstance(v, (str, bytes)):
        raise RewardError(f"reward {reward.name!r} returned the string {v!r} for {where}; expected a number or None")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise RewardError(f"reward {reward.name!r} returned {v!r} for {where}; expected a number or None") from None
    if not math.isfinite(f):
        raise RewardError(
            f"reward {reward.name!r} returned a non-finite score {f} for {where}; "
            "return None for 'not applicable' instead"
        )
    return f


Score = float | None | list[float]  # one completion's score; a list: one per assistant turn (episodes only)


def _check(reward: RewardFn, values: Any, n: int, turns: Sequence[int] | None = None) -> list[Score]:
    if not isinstance(values, (list, tuple)):
        raise RewardError(
            f"reward {reward.name!r} returned {type(values).__name__}; it must return a list of "
            f"{n} floats or None (one per completion)"
        )
    if len(values) != n:
        raise RewardError(
            f"reward {reward.name!r} returned {len(values)} scores for {n} completions; "
            "it must return exactly one score (or None) per completion"
        )
    out: list[Score] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
        elif isinstance(v, (list, tuple)):  # per-turn scores of a multi-turn episode
            if turns is None:
                raise RewardError(
                    f"reward {reward.name!r} returned a list for completion {i}: per-turn scores exist only for "
                    "multi-turn episodes (env=...); return one number (or None) per completion"
                )
            if len(v) != turns[i]:
                raise RewardError(
                    f"reward {reward.name!r} returned {len(v)} per-turn scores for episode {i}, which has "
                    f"{turns[i]} assistant turns (episode['turns']); return one score per turn, or one number"
                )
            out.append([_number(reward, x, f"turn {t} of episode {i}") for t, x in enumerate(v)])
        else:
            out.append(_number(reward, v, f"completion {i}"))
    return out


@dataclass
class Scores:
    """What :func:`score_all` returns."""

    table: torch.Tensor  # float32 [N, k]: each reward's score (per-turn lists summed), NaN where None
    turn_scores: torch.Tensor | None  # float32 [N, K]: weighted score of each turn; None without per-turn lists


def score(
    rewards: Sequence[RewardFn], completions: list[str], prompts: list[str], columns: dict[str, list[Any]]
) -> torch.Tensor:
    """Score every completion with every reward.

    Returns a float32 tensor [N, k] (N completions, k rewards) with NaN where a reward returned
    None. Columns must be lists of length N. A reward that raises is reported with its name, the
    row and the completion, unless its ``on_error`` is ``zero`` or ``none``.
    """
    return score_all(rewards, completions, prompts, columns).table


def score_all(
    rewards: Sequence[RewardFn],
    completions: list[str],
    prompts: list[str],
    columns: dict[str, list[Any]],
    turns: Sequence[int] | None = None,
) -> Scores:
    """:func:`score`, and for multi-turn episodes (``turns``: each episode's assistant turns) per-turn scores.

    A reward may return, for an episode, a list of one score per assistant turn instead of a number. Its
    table entry is then the list's sum (the episode's return), and ``turn_scores[i, t]`` is
    ``Σ_j w_j · s_j[i, t]`` where a reward that returned a number (or None: 0) puts it on the episode's last
    turn. ``turn_scores`` is None when no reward returned a list (outcome rewards: nothing changes).
    """
    n = len(completions)
    clash = sorted({"prompts", "completions"} & set(columns))
    if clash:
        raise DataError(
            f"task column(s) {clash} clash with the arguments every reward receives (completions, prompts); "
            "rename the column in the dataset"
        )
    for key, col in columns.items():
        if len(col) != n:
            raise DataError(f"column {key!r} has {len(col)} values for {n} completions")
    kwargs = {"prompts": prompts, **columns}
    results: list[list[Score] | None] = [None] * len(rewards)
    pending: list[tuple[int, Any]] = []
    for j, r in enumerate(rewards):
        try:
            if is_async(r.fn):
                pending.append((j, r.fn(completions, **kwargs)))
            else:
                results[j] = _check(r, r.fn(completions, **kwargs), n, turns)
        except RewardError:
            raise
        except Exception as exc:  # noqa: BLE001
            results[j] = list(_on_failure(r, exc, completions, prompts, columns))
    if pending:

        async def gather() -> list[Any]:
            return await asyncio.gather(*(coro for _, coro in pending), return_exceptions=True)

        outs = _run_coroutine(gather())
        for (j, _), out in zip(pending, outs):
            r = rewards[j]
            if isinstance(out, RewardError):
                raise out
            if isinstance(out, BaseException):
                results[j] = list(_on_failure(r, out, completions, prompts, columns))
            else:
                results[j] = _check(r, out, n, turns)
    table = torch.full((n, len(rewards)), float("nan"), dtype=torch.float32)
    per_turn = False
    for j, vals in enumerate(results):
        assert vals is not None
        for i, v in enumerate(vals):
            if isinstance(v, list):
                per_turn = True
                table[i, j] = sum(v)
            elif v is not None:
                table[i, j] = v
    if not per_turn or turns is None:
        return Scores(table, None)
    turn_scores = torch.zeros((n, max(max(turns), 1)), dtype=torch.float32)
    for j, vals in enumerate(results):
        w = float(rewards[j].weight)
        for i, v in enumerate(vals or []):
            if isinstance(v, list):
                turn_scores[i, : len(v)] += w * torch.tensor(v, dtype=torch.float32)
            elif v is not None:
                turn_scores[i, max(turns[i] - 1, 0)] += w * v
    return Scores(table, turn_scores)


def whole_batch_turn_scores(parts: Sequence[dict[str, Any]], weights: Sequence[float]) -> torch.Tensor:
    """The whole batch's per-turn scores, float32 [N_all, K], from every process's part (its ``rewards`` table,
    its episodes' ``turns`` and its ``turn_scores`` or None). A part without per-turn lists puts each episode's
    weighted total on its last turn (as :func:`score_all` does for a reward that returned a number)."""
    blocks = []
    for p in parts:
        ts = p["turn_scores"]
        if ts is None:
            turns = p["turns"] or [1] * p["rewards"].shape[0]
            ts = outcome_turn_scores(weighted_total(p["rewards"], weights), list(turns))
        blocks.append(ts)
    K = max(b.shape[1] for b in blocks)
    return torch.cat([torch.nn.functional.pad(b, (0, K - b.shape[1])) for b in blocks])


def weighted_total(table: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Per-completion total ``Σ_j w_j · R[i, j]`` over the rewards that applied (NaN counts as 0).

    table: float32 [N, k] from :func:`score`; returns float32 [N].
    """
    w = torch.tensor(list(weights), dtype=table.dtype)
    return torch.nan_to_num(table, nan=0.0) @ w
