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

    @property
    def num(self) -> int:
        return self.completion_ids.shape[0]

    def columns(self) -> dict[str, list[Any]]:
        """Task columns as lists aligned with the completions (what rewards receive)."""
        keys: list[str] = []
        for row in self.rows:
            keys.extend(k for k in row if k not in keys)
        return {k: [row.get(k) for row in self.rows] for k in keys}
