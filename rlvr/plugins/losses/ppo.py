"""ppo_clip: the PPO clipped surrogate (Schulman et al. 2017) as verl's actor computes it.

Per token (M = loss mask, A = advantage from any estimator: group z-score, RLOO, GAE [N, T], ...)::

    ℓ = -min(r~ A, clamp(r, 1 - epsilon, 1 + epsilon_high) A) + beta * k3 - entropy_coef * H

with ``r~ = min(r, delta)`` when ``delta`` is set (verl's dual-clip with ``clip_ratio_c = delta``), ``H`` the
per-token entropy of the policy (passed by the loop as ``entropies`` when ``entropy_coef != 0``) and ``k3`` the
KL estimator to the reference. Aggregation is verl's "token-mean" over the whole optimizer step:
``sum ℓ M / num_tokens`` where ``num_tokens`` counts the active tokens of every micro-batch of the step, so the
per-micro-batch values add up exactly to the whole-batch token mean (without ``num_tokens`` it is this
micro-batch's token mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ConfigError
from rlvr.plugins.losses import functional as F
from rlvr.plugins.losses.grpo import ClippedPolicyLoss, GRPOLossConfig


@dataclass
class PPOClipLossConfig(GRPOLossConfig):
    """Parameters of ppo_clip (``loss.*``): the GRPO-family ones plus an entropy bonus."""

    entropy_coef: float = 0.0  # weight of the entropy bonus (subtracted from the loss); 0 = off


class PPOClipLoss(ClippedPolicyLoss):
    """PPO clipped surrogate, token-mean over the step, optional entropy bonus. See the module docstring."""

    def __init__(self, cfg: Any, name: str = "ppo_clip") -> None:
        coef = cfg.entropy_coef
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not math.isfinite(coef):
            raise ConfigError(f"loss {name!r}: entropy_coef must be a finite number, got {coef!r}")
        super().__init__(cfg, name=name, aggregation="dapo")
        self.entropy_coef = float(coef)
        self.needs_entropy = self.entropy_coef != 0.0

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", entropy_coef={self.entropy_coef})"

    def _per_token_loss(
        self,
        logps: Tensor,
        old_logps: Optional[Tensor],
        ref_logps: Optional[Tensor],
        advantages: Optional[Tensor],
        mask: Optional[Tensor],
        truncated: Optional[Tensor],
        entropies: Optional[Tensor],
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        per_token, m, metrics = super()._per_token_loss(
            logps, old_logps, ref_logps, advantages, mask, truncated, entropies
        )
        if entropies is not None:
            if tuple(entropies.shape) != tuple(logps.shape):
                raise ValueError(
                    f"loss {self.name!r}: entropies has shape {tuple(entropies.shape)}, expected "
                    f"{tuple(logps.shape)} like logps"
                )
            ent = entropies.to(logps.dtype)
            metrics["entropy"] = float(F.masked_mean(ent.detach(), m))
            if self.needs_entropy:
                per_token = per_token - self.entropy_coef * ent
        elif self.needs_entropy:
            raise ValueError(
                f"loss {self.name!r} has entropy_coef={self.entropy_coef} but no per-token entropies "
                f"were passed: pass entropies=[N, T], or set loss.entropy_coef=0."
            )
        return per_token, m, metrics


def build_ppo_clip(cfg: Any) -> PPOClipLoss:
    return PPOClipLoss(cfg)


@hookimpl
def rlvr_losses() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="ppo_clip",
            factory=build_ppo_clip,
            config=PPOClipLossConfig,
            description="PPO clipped surrogate, token-mean over the step, optional entropy bonus (verl)",
        ),
    ]
