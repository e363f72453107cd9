"""A batch of rollouts: B prompts × G completions, in group order (rows g·G … g·G+G-1 share a prompt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class Rollouts:
    prompt_ids: torch.Tensor  # long [N, P], left-padded
    prompt_mask: torch.Tensor  # long [N, P], 1 on prompt tokens
    completion_ids: torch.Tensor  # long [N, T], right-padded
    completion_mask: torch.Tensor  # long [N, T], 1 on completion tokens (EOS included)
    truncated: torch.Tensor  # bool [N], hit max_new_tokens without EOS
    group: torch.Tensor  # long [N], the prompt's index in the batch
    sampling_logps: Optional[torch.Tensor] = None  # float32 [N, T] log-probs under the sampling distribution
    prompts: list[str] = field(default_factory=list)  # N prompt strings (repeated per group)
    completions: list[str] = field(default_factory=list)  # N decoded completions (no special tokens)
    rows: list[dict[str, Any]] = field(default_factory=list)  # N task rows (repeated per group)
    # multi-turn episodes (env=<name>, rlvr/core/episodes.py): completion_mask is 1 on sampled tokens only;
    # attention_mask [N, T] is 1 on every completion token (sampled and inserted by the environment)
    attention_mask: Optional[torch.Tensor] = None
    episodes: list[dict[str, Any]] = field(default_factory=list)  # N Episode.summary() dicts (messages, turns...)

    @property
    def num(self) -> int:
        return self.completion_ids.shape[0]

    def columns(self) -> dict[str, list[Any]]:
        """Task columns as lists aligned with the completions (what rewards receive)."""
        keys: list[str] = []
        for row in self.rows:
            keys.extend(k for k in row if k not in keys)
        cols = {k: [row.get(k) for row in self.rows] for k in keys}
        if self.episodes:  # rewards of multi-turn episodes read the whole trajectory from these columns
            cols["episode"] = list(self.episodes)
            cols["messages"] = [e["messages"] for e in self.episodes]
        return cols


def _empty() -> torch.Tensor:
    return torch.empty(0)


@dataclass
class StepBatch:
    """What one training step knows, filled in phase by phase (see :meth:`rlvr.core.trainer.Trainer.train_step`).

    "Whole batch" tensors cover every process's groups (the same on every rank); the others only this
    rank's ``rollouts``. N = this rank's completions, N_all = the whole batch's, T = completion tokens.
    Tensors are empty until their phase has run.
    """

    step: int
    rollouts: Rollouts  # rollout: this rank's completions
    groups: slice  # rollout: this rank's groups within the whole batch
    started: float  # rollout: time.perf_counter() at the start of the step
    generation_time: float  # rollout (then score: the slowest rank's)
    local_rewards: torch.Tensor = field(
        default_factory=_empty
    )  # score: float32 [N, k], NaN where a reward returned None
    rewards: torch.Tensor = field(default_factory=_empty)  # score: float32 [N_all, k], whole batch
    total: torch.Tensor = field(default_factory=_empty)  # score: float32 [N_all], weighted sum (None counts as 0)
    scored: torch.Tensor = field(
        default_factory=_empty
    )  # score: bool [N_all], at least one reward scored the completion
    lengths: torch.Tensor = field(default_factory=_empty)  # score: float32 [N_all] completion lengths, whole batch
    all_truncated: torch.Tensor = field(default_factory=_empty)  # score: bool [N_all], whole batch
    turn_scores: torch.Tensor = field(default_factory=_empty)  # score: float32 [N_all, K] per-turn rewards (or empty)
    episodes: list[dict[str, Any]] = field(default_factory=list)  # score: whole batch's episode counts (env=...)
    advantages: torch.Tensor = field(default_factory=_empty)  # advantages: float32 [N], this rank's rows
    token_advantages: torch.Tensor = field(default_factory=_empty)  # advantages: float32 [N, T] with per-turn rewards
    mask: torch.Tensor = field(default_factory=_empty)  # reference: float32 [N, T] on the policy's device
    truncated: torch.Tensor = field(default_factory=_empty)  # reference: bool [N] on the policy's device
    slices: list[slice] = field(default_factory=list)  # reference: the micro-batches
    ref_logps: Optional[torch.Tensor] = None  # reference: float32 [N, T] when loss.beta > 0
    old_logps: Optional[torch.Tensor] = None  # reference: float32 [N, T] when num_iterations > 1
    num_sequences: int = 0  # reference: completions in the whole batch (loss normaliser)
    num_tokens: int = 0  # reference: the loss's active tokens in the whole batch (loss normaliser)
    metrics: dict[str, float] = field(default_factory=dict)  # any phase: extra metrics for this step
    prompt_index: list[int] = field(default_factory=list)  # rollout: the task's row index of each group, whole batch
    trainable: bool = True  # dynamic sampling: False when no group is informative (the update is skipped)

    @property
    def has_scores(self) -> bool:
        return bool(self.scored.any())


@dataclass
class Update:
    """What the optimise phase reports."""

    loss_sum: float = 0.0  # this rank's loss summed over micro-batches and passes
    grad_norm: float = 0.0
    skipped: bool = False  # non-finite loss/gradient (or nothing scored): no optimizer step
    sums: dict[str, float] = field(default_factory=dict)  # the loss's metrics, batch-weighted
