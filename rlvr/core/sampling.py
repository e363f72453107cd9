"""Which groups a step trains on: dynamic sampling (DAPO) and a prompt curriculum.

**Dynamic sampling** (``trainer.dynamic_sampling``). A group whose G rewards are all equal has advantage 0
under every group baseline, so it carries no policy gradient; it only costs a forward and backward pass.

- ``off`` (default): the step trains on the B groups it sampled, as GRPO does.
- ``refill``: groups whose rewards all agree are dropped and the step samples fresh prompts (refill
  rounds) until it holds B informative groups or ``trainer.dynamic_max_rounds`` refill rounds have run.
  A refill round samples ``min(B, max(needed, W, ceil(needed / rate)))`` prompts, where ``needed`` is the
  number of informative groups still missing, ``rate`` the fraction of informative groups among those
  generated so far in this step (B when none was) and W the number of processes. When more than B are
  found the first B (in sampling order) are kept. When the bound is reached with fewer than B, the step
  trains on the informative groups it has (``dynamic/short_groups`` says how many were missing and a
  warning is printed); with none at all, the update is skipped (no forward/backward, no optimizer or
  scheduler step; ``dynamic/update_skipped`` = 1).
- ``skip``: the same selection without refill rounds: the step trains only on its informative groups
  and skips the update when it has none. No extra generation.

The loss normalisers count the groups trained on, so a step of K < B informative groups weighs each the
way a full batch of informative groups would. The decision is made on the whole batch's rewards, which
every process holds after the score phase, so every process takes it identically; the kept groups'
rollouts are then gathered and re-split over the processes in sampling order, which makes W processes
train on exactly what one process trains on. One exception: with W > 1 processes and 0 < K < W
informative groups, uninformative groups (advantage 0) are added until every process holds one.

Metrics: ``dynamic/groups_filtered`` (uninformative groups dropped), ``dynamic/refill_rounds``,
``dynamic/prompts_consumed`` (prompts generated in the step) and ``dynamic/prompts_consumed_total``
(since the start of the run), ``dynamic/groups_trained``, ``dynamic/short_groups``,
``dynamic/update_skipped`` and ``dynamic/reward_all_mean`` (the mean reward of every completion generated
in the step; ``reward/mean`` is that of the groups trained on).

**Curriculum** (``trainer.curriculum=true``). Each training prompt has a streak: the number of its most
recent groups in a row whose rewards all agreed (all right or all wrong); an informative group resets it
to 0. A prompt is sampled with weight ``max(curriculum_min_weight, curriculum_decay ** streak)``: with the
defaults (0.25, 0.05) weights 1, 0.25, 0.0625, then 0.05 from three such groups in a row. A step's prompts
are drawn without replacement with probability proportional to weight (Efraimidis–Spirakis keys from a
seeded generator). The streaks and the draw counter are saved in each checkpoint, so resume is exact.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlvr.core.advantages import outcome_turn_scores
from rlvr.core.errors import ConfigError
from rlvr.core.rollout import Rollouts, StepBatch

MODES = ("off", "refill", "skip")


def informative_groups(total: torch.Tensor, group_size: int) -> torch.Tensor:
    """bool [N/G]: whether each group's rewards differ (max > min). ``total``: float [N], groups consecutive."""
    grouped = total.view(-1, group_size)
    return grouped.max(dim=1).values > grouped.min(dim=1).values


def refill_size(needed: int, kept: int, generated: int, batch: int, world: int) -> int:
    """Prompts to sample in the next refill round: ``min(B, max(needed, W, ceil(needed / rate)))`` with
    ``rate = kept / generated`` (the step's informative fraction so far; B prompts when it is 0)."""
    if kept == 0:
        return max(batch, world)
    return max(world, min(batch, max(needed, math.ceil(needed * generated / kept))))


def _left_pad(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)


def _right_pad(x: torch.Tensor, width: int, value: float) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def concat_rollouts(parts: Sequence[Rollouts], pad_id: int) -> Rollouts:
    """One Rollouts of every part's rows in order: prompts left-padded to the widest (pad_id, mask 0),
    completions right-padded (pad_id, mask 0; sampling log-probs 0). ``group`` is renumbered 0..K-1."""
    P = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.completion_ids.shape[1] for p in parts)
    logps = None
    if all(p.sampling_logps is not None for p in parts):
        logps = torch.cat([_right_pad(p.sampling_logps, T, 0.0) for p in parts])  # type: ignore[arg-type]
    attention = None  # multi-turn episodes: 1 on every completion token (sampled and inserted)
    if any(p.attention_mask is not None for p in parts):
        attention = torch.cat(
            [_right_pad(p.completion_mask if p.attention_mask is None else p.attention_mask, T, 0) for p in parts]
        )
    offsets, groups = 0, []
    for p in parts:
        groups.append(p.group - (int(p.group.min()) if p.num else 0) + offsets)
        offsets += int(p.group.max()) - int(p.group.min()) + 1 if p.num else 0
    return Rollouts(
        prompt_ids=torch.cat([_left_pad(p.prompt_ids, P, pad_id) for p in parts]),
        prompt_mask=torch.cat([_left_pad(p.prompt_mask, P, 0) for p in parts]),
        completion_ids=torch.cat([_right_pad(p.completion_ids, T, pad_id) for p in parts]),
        completion_mask=torch.cat([_right_pad(p.completion_mask, T, 0) for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        group=torch.cat(groups),
        sampling_logps=logps,
        prompts=[s for p in parts for s in p.prompts],
        completions=[s for p in parts for s in p.completions],
        rows=[r for p in parts for r in p.rows],
        attention_mask=attention,
        episodes=[e for p in parts for e in p.episodes],
    )


def take_groups(ro: Rollouts, groups: Sequence[int], group_size: int) -> Rollouts:
    """The rows of the given groups (indices into ``ro``'s groups, in that order), regrouped 0..K-1."""
    rows = [g * group_size + j for g in groups for j in range(group_size)]
    idx = torch.tensor(rows, dtype=torch.long)
    return Rollouts(
        prompt_ids=ro.prompt_ids[idx],
        prompt_mask=ro.prompt_mask[idx],
        completion_ids=ro.completion_ids[idx],
        completion_mask=ro.completion_mask[idx],
        truncated=ro.truncated[idx],
        group=torch.arange(len(groups)).repeat_interleave(group_size),
        sampling_logps=ro.sampling_logps[idx] if ro.sampling_logps is not None else None,
        prompts=[ro.prompts[i] for i in rows],
        completions=[ro.completions[i] for i in rows],
        rows=[ro.rows[i] for i in rows],
        attention_mask=ro.attention_mask[idx] if ro.attention_mask is not None else None,
        episodes=[ro.episodes[i] for i in rows] if ro.episodes else [],
    )


def _to_cpu(ro: Rollouts) -> Rollouts:
    moved = {
        k: getattr(ro, k).cpu()
        for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated", "group")
    }
    logps = ro.sampling_logps.cpu() if ro.sampling_logps is not None else None
    attention = ro.attention_mask.cpu() if ro.attention_mask is not None else None
    return Rollouts(
        **moved,
        sampling_logps=logps,
        prompts=ro.prompts,
        completions=ro.completions,
        rows=ro.rows,
        attention_mask=attention,
        episodes=ro.episodes,
    )


def _turn_scores(part: StepBatch) -> torch.Tensor:
    """A round's per-turn scores [N_all, K] (outcome placement when no reward returned per-turn lists)."""
    return (
        part.turn_scores
        if part.turn_scores.numel()
        else outcome_turn_scores(part.total, [e["turns"] for e in part.episodes])
    )


# ----- curriculum -------------------------------------------------------------------------------------
def curriculum_weight(streak: int, decay: float, min_weight: float) -> float:
    """``max(min_weight, decay ** streak)``: a prompt's sampling weight after ``streak`` all-agree groups in a row."""
    return max(min_weight, decay**streak)


class CurriculumSampler:
    """Draws a step's prompts with probability proportional to :func:`curriculum_weight`; same interface as
    :class:`rlvr.core.task.RowSampler` (``take``, ``state_dict``, ``load_state_dict``) plus ``observe``."""

    def __init__(self, n_rows: int, seed: int, decay: float = 0.25, min_weight: float = 0.05) -> None:
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"trainer.curriculum_decay must be in (0, 1], got {decay}")
        if not 0.0 < min_weight <= 1.0:
            raise ConfigError(
                f"trainer.curriculum_min_weight must be in (0, 1] (0 would never sample a prompt "
                f"again), got {min_weight}"
            )
        self.n_rows, self.seed, self.decay, self.min_weight = n_rows, seed, decay, min_weight
        self.streak: dict[int, int] = {}
        self.draws = 0

    def weights(self) -> list[float]:
        """Sampling weight of every training row (unnormalised)."""
        return [curriculum_weight(self.streak.get(i, 0), self.decay, self.min_weight) for i in range(self.n_rows)]

    def take(self, k: int) -> list[int]:
        """``k`` row indices: distinct within each run of ``n_rows`` draws, P(row) ∝ weight (weighted sampling
        without replacement by keys ``u ** (1 / w)``, u ~ U(0, 1) from a generator seeded by (seed, draw))."""
        out: list[int] = []
        w = self.weights()
        while len(out) < k:
            rng = random.Random(self.seed * 1_000_003 + 7_919 * self.draws + 17)
            self.draws += 1
            keys = [rng.random() ** (1.0 / wi) for wi in w]
            order = sorted(range(self.n_rows), key=lambda i: keys[i], reverse=True)
            out.extend(order[: min(k - len(out), self.n_rows)])
        return out

    def observe(self, rows: Sequence[int], informative: Sequence[bool]) -> None:
        """Update the streaks with one group's outcome per row index (in sampling order)."""
        for i, info in zip(rows, informative):
            self.streak[int(i)] = 0 if info else self.streak.get(int(i), 0) + 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "curriculum",
            "draws": self.draws,
            "streak": sorted(self.streak.items()),
            "n_rows": self.n_rows,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "curriculum":
            raise ConfigError(
                "the checkpoint's sampler is not a curriculum sampler; resume with the run's own "
                "trainer.curriculum setting"
            )
        self.draws, self.streak = int(state["draws"]), {int(i): int(s) for i, s in state["streak"]}


# ----- dynamic sampling --------------------------------------------------------------------------------
@dataclass
class SamplingState:
    """Counters that travel with checkpoints."""

    prompts_consumed_total: int = 0
    warned_short: bool = field(default=False)

    def state_dict(self) -> dict[str, int]:
        return {"prompts_consumed_total": self.prompts_consumed_total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.prompts_consumed_total = int(state.get("prompts_consumed_total", 0))


def select_groups(
    batch: StepBatch,
    more: Callable[[int, int], StepBatch],
    *,
    mode: str,
    max_rounds: int,
    batch_size: int,
    group_size: int,
    dist: Any,
    pad_id: int,
    state: SamplingState,
    sampler: Any,
) -> StepBatch:
    """The step's batch after dynamic sampling (see the module docstring); ``batch`` itself when ``mode`` is off.

    ``batch``: the first scored round (B groups). ``more(k, first_group)``: rollout + score of k fresh prompts
    whose groups are numbered from ``first_group`` within the step (their sampling seeds). ``sampler``: told
    each group's outcome when it has ``observe`` (the curriculum).
    """
    G = group_size
    parts = [batch]
    flags = [informative_groups(batch.total, G)]
    _observe(sampler, batch, flags[-1])
    if mode == "off":
        state.prompts_consumed_total += len(batch.prompt_index)
        batch.metrics["dynamic/prompts_consumed_total"] = float(state.prompts_consumed_total)
        return batch
    rounds = 0
    while mode == "refill" and rounds < max_rounds:
        kept, generated = int(sum(int(f.sum()) for f in flags)), sum(f.numel() for f in flags)
        if kept >= batch_size:
            break
        k = refill_size(batch_size - kept, kept, generated, batch_size, dist.world_size)
        parts.append(more(k, generated))
        flags.append(informative_groups(parts[-1].total, G))
        _observe(sampler, parts[-1], flags[-1])
        rounds += 1
    return _merge(parts, flags, rounds, batch_size=batch_size, group_size=G, dist=dist, pad_id=pad_id, state=state)


def _observe(sampler: Any, part: StepBatch, flags: torch.Tensor) -> None:
    if hasattr(sampler, "observe"):
        sampler.observe(part.prompt_index, [bool(f) for f in flags])


def _merge(
    parts: list[StepBatch],
    flags: list[torch.Tensor],
    rounds: int,
    *,
    batch_size: int,
    group_size: int,
    dist: Any,
    pad_id: int,
    state: SamplingState,
) -> StepBatch:
    """Keep the first B informative groups of all rounds; gather them and re-split them over the processes."""
    G, first = group_size, parts[0]
    # DISTRIBUTED: every rank's rollouts of every round, in group order (rank slices are contiguous)
    full = [concat_rollouts([_to_cpu(r) for r in dist.gather(_to_cpu(p.rollouts))], pad_id) for p in parts]
    order = [(pi, g) for pi, f in enumerate(flags) for g in range(f.numel())]
    info = torch.cat(flags)
    keep = [i for i in range(len(order)) if info[i]][:batch_size]
    found, short = len(keep), max(0, batch_size - len(keep))
    if 0 < len(keep) < dist.world_size:  # every process needs a group: add zero-advantage ones
        keep = sorted(keep + [i for i in range(len(order)) if not info[i]][: dist.world_size - len(keep)])
    trainable = bool(keep)
    if not keep:  # nothing informative: no update; the first round's groups stay for the metrics
        keep = list(range(flags[0].numel()))
    pieces = [take_groups(full[order[i][0]], [order[i][1]], G) for i in keep]
    rollouts = concat_rollouts(pieces, pad_id)
    rows = torch.tensor([order[i][1] * G + j for i in keep for j in range(G)], dtype=torch.long)
    src = [order[i][0] for i in keep for _ in range(G)]

    def pick(name: str) -> torch.Tensor:
        return torch.stack([getattr(parts[p], name)[r] for p, r in zip(src, rows.tolist())])

    consumed = sum(len(p.prompt_index) for p in parts)
    state.prompts_consumed_total += consumed
    mine = dist.groups(len(keep))
    out = StepBatch(
        step=first.step,
        rollouts=take_groups(rollouts, range(len(keep))[mine], G),
        groups=mine,
        started=first.started,
        generation_time=sum(p.generation_time for p in parts),
        prompt_index=[parts[order[i][0]].prompt_index[order[i][1]] for i in keep],
    )
    out.rewards, out.lengths, out.all_truncated = pick("rewards"), pick("lengths"), pick("all_truncated")
    out.total, out.scored = pick("total"), pick("scored")
    out.episodes = [parts[p].episodes[r] for p, r in zip(src, rows.tolist())] if first.episodes else []
    if any(p.turn_scores.numel() for p in parts):  # per-turn rewards: the kept rows, padded to the most turns
        blocks = [_turn_scores(p) for p in parts]
        K = max(b.shape[1] for b in blocks)
        padded = [torch.nn.functional.pad(b, (0, K - b.shape[1])) for b in blocks]
        out.turn_scores = torch.stack([padded[p][r] for p, r in zip(src, rows.tolist())])
    out.local_rewards = out.rewards[mine.start * G : mine.stop * G]
    out.trainable = trainable
    all_total = torch.cat([p.total for p in parts])
    timers = {k for p in parts for k in p.metrics if k.startswith("env/") and k.endswith("_seconds")}
    out.metrics.update({k: sum(float(p.metrics.get(k, 0.0)) for p in parts) for k in sorted(timers)})  # all rounds
    out.metrics.update(
        {
            "dynamic/groups_filtered": float(len(order) - int(info.sum())),
            "dynamic/refill_rounds": float(rounds),
            "dynamic/prompts_consumed": float(consumed),
            "dynamic/prompts_consumed_total": float(state.prompts_consumed_total),
            "dynamic/groups_trained": float(len(keep) if trainable else 0),
            "dynamic/short_groups": float(short),
            "dynamic/update_skipped": float(not trainable),
            "dynamic/reward_all_mean": float(all_total.mean()),
        }
    )
    if short and trainable and rounds and not state.warned_short and dist.is_main:
        state.warned_short = True
        warnings.warn(
            f"step {first.step}: dynamic sampling found {found} informative groups of "
            f"trainer.prompts_per_step={batch_size} after {rounds} refill rounds; the step trains on those "
            "(dynamic/short_groups counts the missing ones each step; raise trainer.dynamic_max_rounds to "
            "search longer). Printed once per run.",
            stacklevel=2,
        )
    return out


def validate(mode: str, max_rounds: int) -> None:
    """Fail early on a bad ``trainer.dynamic_sampling`` / ``trainer.dynamic_max_rounds``."""
    if mode not in MODES:
        raise ConfigError(f"trainer.dynamic_sampling={mode!r}: choose off, refill or skip")
    if max_rounds < 0:
        raise ConfigError(f"trainer.dynamic_max_rounds must be >= 0, got {max_rounds}")


def make_sampler(
    n_rows: int, seed: int, curriculum: bool, decay: float, min_weight: float, default: Any | None = None
) -> Any:
    """The curriculum sampler when ``curriculum`` is on, else ``default`` (the epoch-wise RowSampler)."""
    return CurriculumSampler(n_rows, seed, decay, min_weight) if curriculum else default
