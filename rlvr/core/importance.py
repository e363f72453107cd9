"""Importance-sampling correction for the mismatch between the engine that sampled and the trainer.

An inference engine (vLLM: other kernels, other precision, batch-dependent reductions) gives the
sampled tokens slightly different log-probs from the trainer's forward of the same weights, so
the rollouts are a little off-policy. Truncated importance sampling (Yao et al. 2025, "Your
efficient RL framework secretly brings you off-policy RL training"; TRL's
``vllm_importance_sampling_*``) reweights each token's loss by a capped ratio::

    log rho[i, t] = old_logps[i, t] - sampling_logps[i, t]           (level "token")
    log rho[i]    = sum_t (old_logps - sampling_logps)[i, t] M[i, t]   (level "sequence", one per row)
    truncate: w = clamp(rho, floor, cap)          mask: w = rho, set to 0 outside [floor, cap]

``old_logps`` are the trainer's log-probs under the weights that sampled (with μ = 1 the detached
current ones: no extra forward pass). ``w`` is a constant (no gradient) that multiplies the
per-token loss; :func:`scale_gradient` applies it to any loss plugin without changing its code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from rlvr.core.errors import ConfigError

MODES = ("off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class ImportanceSamplingConfig:
    mode: str = "token_truncate"  # off | token_truncate | token_mask | sequence_truncate | sequence_mask
    cap: Optional[float] = 3.0  # upper bound C_max on the ratio (None = none)
    floor: Optional[float] = None  # lower bound C_min (None = none)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def level(self) -> str:
        return self.mode.split("_")[0]

    @property
    def constraint(self) -> str:
        return self.mode.split("_")[-1]


def validate(cfg: ImportanceSamplingConfig) -> None:
    if cfg.mode not in MODES:
        raise ConfigError(f"importance sampling mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
    for name, value in (("cap", cfg.cap), ("floor", cfg.floor)):
        if value is not None and (not math.isfinite(float(value)) or float(value) < 0):
            raise ConfigError(f"importance sampling {name} must be a finite number >= 0 or null, got {value!r}")
    if cfg.cap is not None and cfg.floor is not None and cfg.floor > cfg.cap:
        raise ConfigError(f"importance sampling floor ({cfg.floor}) is above the cap ({cfg.cap})")
    if cfg.mode.endswith("truncate") and cfg.cap is None and cfg.floor is None:
        raise ConfigError(f"importance sampling mode {cfg.mode!r} needs a cap or a floor to truncate at")


@torch.no_grad()
def importance_weights(
    old_logps: Tensor, sampling_logps: Tensor, mask: Tensor, cfg: ImportanceSamplingConfig
) -> Tensor:
    """The detached per-token loss weights ``w`` ([N, T]; zeros on padding).

    Args:
        old_logps: float [N, T], the trainer's log-probs of the sampled tokens under the sampling weights.
        sampling_logps: float [N, T], the engine's log-probs of the same tokens (NaN where it had none: ratio 1).
        mask: [N, T], 1 on completion tokens.
        cfg: mode, cap and floor.
    """
    m = (mask != 0).to(old_logps.dtype)
    if not cfg.enabled:
        return m
    diff = torch.nan_to_num((old_logps.detach() - sampling_logps.to(old_logps.dtype)) * m, nan=0.0)
    log_rho = diff.sum(-1, keepdim=True) if cfg.level == "sequence" else diff
    rho = torch.exp(log_rho.clamp(max=80.0))  # exp(80) is finite in float32; a cap/mask handles the rest
    lo = -math.inf if cfg.floor is None else float(cfg.floor)
    hi = math.inf if cfg.cap is None else float(cfg.cap)
    if cfg.constraint == "truncate":
        w = rho.clamp(min=None if cfg.floor is None else lo, max=None if cfg.cap is None else hi)
    else:
        w = rho.masked_fill((rho < lo) | (rho > hi), 0.0)
    return w.expand_as(m) * m


def scale_gradient(logps: Tensor, weights: Tensor) -> Tensor:
    """``logps`` with the same values and gradient multiplied by ``weights`` (detached), token by token.

    For a loss whose per-token term depends on its own token's log-prob (every token-level loss, and any
    loss with one weight per sequence), the gradient of ``loss(scale_gradient(logps, w))`` equals the
    gradient of the loss with each token's term multiplied by ``w``; the loss *value* is unchanged.
    """
    w = weights.detach().to(logps.dtype)
    return logps * w + (logps * (1.0 - w)).detach()


@torch.no_grad()
def importance_metrics(weights: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean / min / max of the weights over completion tokens, and the fraction zeroed by masking."""
    sel = weights[mask != 0]
    if sel.numel() == 0:
        return {}
    return {
        "importance_sampling/mean": float(sel.mean()),
        "importance_sampling/min": float(sel.min()),
        "importance_sampling/max": float(sel.max()),
        "importance_sampling/masked": float((sel == 0).float().mean()),
    }
