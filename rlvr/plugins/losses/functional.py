"""Pure tensor functions behind the policy-gradient loss plugins (grpo, bnpo, dr_grpo, dapo, gspo, ppo_clip).

Notation (shapes are ``N`` sequences by ``T`` completion positions):

- ``logps``      float [N, T]: log pi_theta(o_t | q, o_<t) of the sampled tokens (differentiable).
- ``old_logps``  float [N, T]: the same under the policy that sampled (pi_old); a constant.
- ``ref_logps``  float [N, T]: the same under the reference policy; a constant.
- ``advantages`` float [N] (one per sequence, broadcast over tokens) or [N, T] (per token).
- ``mask``       float [N, T]: 1 for completion tokens that count, 0 for padding.

Every function computes in the dtype of its inputs (the loss objects upcast half-precision log-probs to
float32 first; the gradient checks use float64) and returns tensors on their device. None of them reads
global state.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from rlvr.core.errors import ConfigError

AGGREGATIONS: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = ("token", "sequence")


def effective_mask(
    mask: Tensor,
    truncated: Optional[Tensor] = None,
    mask_truncated_completions: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The loss mask M: ``mask`` as ``dtype``, with the rows of truncated completions zeroed when asked.

    ``M[i, t] = mask[i, t] * (1 - truncated[i])`` if ``mask_truncated_completions`` else ``mask[i, t]``.

    Args:
        mask: [N, T] bool/int/float, non-zero for completion tokens.
        truncated: [N] bool, True where the completion hit the length limit; None means none did.
        mask_truncated_completions: drop truncated completions from the loss (DAPO's overlong filtering).
        dtype: floating dtype of the result.
    Returns:
        [N, T] tensor of 0/1 in ``dtype``.
    """
    m = (mask != 0).to(dtype)
    if mask_truncated_completions and truncated is not None:
        keep = (~truncated.to(device=m.device, dtype=torch.bool)).to(dtype)
        m = m * keep.unsqueeze(-1)
    return m


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``sum(x * M) / max(sum(M), 1)`` over every element; ``x`` broadcasts against ``mask`` [N, T]."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def log_importance_weights(logps: Tensor, old_logps: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """log r: the log importance ratio between the current and the sampling policy.

    - ``level="token"``:    ``log r[i, t] = logps[i, t] - old_logps[i, t]``; shape [N, T].
    - ``level="sequence"``: ``log r[i] = sum_t (logps - old_logps)[i, t] * M[i, t] / max(sum_t M[i, t], 1)``
      (GSPO's length-normalised sequence ratio, Zheng et al. 2025, eq. 7); shape [N, 1], which broadcasts
      over the tokens of the sequence. A row with no active token gets log r = 0 (ratio 1).

    Args:
        logps, old_logps: float [N, T].
        mask: float [N, T] loss mask M (only used at sequence level).
        level: "token" or "sequence".
    """
    log_ratio = logps - old_logps
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ConfigError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {level!r}")


def broadcast_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    """Advantages [N] -> [N, 1] (one per sequence), or [N, T] unchanged, in ``like``'s dtype and device."""
    adv = advantages.to(dtype=like.dtype, device=like.device)
    return adv.unsqueeze(-1) if adv.dim() == 1 else adv


def clipped_surrogate(
    ratio: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float, delta: Optional[float] = None
) -> Tensor:
    """Per-token PPO clipped surrogate loss, with optional two-sided clipping.

    ``loss = -min(r~ * A, clamp(r, 1 - epsilon_low, 1 + epsilon_high) * A)`` where ``r~ = min(r, delta)`` when
    ``delta`` is set and ``r~ = r`` otherwise. With ``delta > 1 + epsilon_high`` the cap only changes the loss of
    negative-advantage tokens whose ratio exceeds ``delta``: it bounds the otherwise unbounded
    ``-r * A`` (this equals verl's dual-clip PPO with ``clip_ratio_c = delta``, Ye et al. 2020).

    Args:
        ratio: importance ratio r, [N, T] or [N, 1] (sequence level).
        advantages: [N, 1] or [N, T] (see :func:`broadcast_advantages`).
    Returns:
        Per-token loss, shape broadcast of ``ratio`` and ``advantages``.
    """
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    unclipped = torch.clamp(ratio, max=delta) if delta is not None else ratio
    return -torch.minimum(unclipped * advantages, clipped * advantages)


def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref) (Schulman 2020; GRPO paper eq. 4).

    ``k3 = exp(ref - logps) - (ref - logps) - 1`` >= 0, shape [N, T]. Its gradient with respect to
    ``logps`` is ``1 - exp(ref - logps)``.
    """
    diff = ref_logps - logps
    return torch.exp(diff) - diff - 1.0


def aggregate(
    per_token_loss: Tensor,
    mask: Tensor,
    mode: str,
    *,
    num_sequences: Optional[int] = None,
    num_tokens: Optional[float] = None,
    max_completion_length: Optional[int] = None,
) -> Tensor:
    """Reduce per-token losses ℓ [N, T] to this micro-batch's share of the optimizer step's loss.

    ``num_sequences`` / ``num_tokens`` are the step totals (all micro-batches, all processes) of completions
    and of active tokens (sum of M); None means this call's own counts (then the result is the plain
    single-batch formula). With the totals given, summing the results over the micro-batches of a step gives:

    - ``grpo``:    ``(1/num_sequences) * sum_i sum_t ℓ M / max(sum_t M, 1)`` — the mean over all sequences of each
      sequence's token mean (DeepSeekMath GRPO). Exact for any split.
    - ``bnpo``:    ``(N / num_sequences) * sum ℓ M / max(sum M, 1)`` — each micro-batch's token mean, weighted
      by its share of the sequences (TRL's bnpo divides by the accumulation steps, the same for equal
      micro-batches). The step value is the sequence-weighted mean of the micro-batch token means; it equals
      the whole-batch token mean when all micro-batches hold the same number of active tokens.
    - ``dr_grpo``: ``sum ℓ M / (num_sequences * max_completion_length)`` (Dr. GRPO, Liu et al. 2025). Exact.
    - ``dapo``:    ``sum ℓ M / max(num_tokens, 1)`` (DAPO token-level loss, Yu et al. 2025). Exact.

    Args:
        per_token_loss: [N, T] (or broadcastable to ``mask``).
        mask: float [N, T] loss mask M.
        mode: one of ``AGGREGATIONS``.
    Returns:
        A 0-dim tensor.
    """
    weighted = per_token_loss * mask
    n = mask.shape[0]
    seqs = float(n if num_sequences is None else num_sequences)
    if mode == "grpo":
        per_seq = weighted.sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / max(seqs, 1.0)
    if mode == "bnpo":
        return weighted.sum() / mask.sum().clamp(min=1.0) * (n / max(seqs, 1.0))
    if mode == "dr_grpo":
        if max_completion_length is None or max_completion_length <= 0:
            raise ConfigError("dr_grpo aggregation needs a positive max_completion_length")
        return weighted.sum() / (max(seqs, 1.0) * float(max_completion_length))
    if mode == "dapo":
        tokens = (
            mask.sum()
            if num_tokens is None
            else torch.as_tensor(float(num_tokens), dtype=mask.dtype, device=mask.device)
        )
        return weighted.sum() / tokens.clamp(min=1.0)
    raise ConfigError(f"unknown aggregation {mode!r}; choose one of {AGGREGATIONS}")


@torch.no_grad()
def clip_fractions(
    ratio: Tensor, advantages: Tensor, mask: Tensor, epsilon_low: float, epsilon_high: float
) -> dict[str, float]:
    """Fractions of active tokens whose gradient the clipping removed (masked means over M).

    - ``clip_ratio/low_mean``:    r < 1 - epsilon_low and A < 0
    - ``clip_ratio/high_mean``:   r > 1 + epsilon_high and A > 0
    - ``clip_ratio/region_mean``: either of the two.

    At sequence level the per-sequence ratio is broadcast to its tokens, so the fractions are token-weighted.
    """
    low = ((ratio < 1.0 - epsilon_low) & (advantages < 0)).to(mask.dtype)
    high = ((ratio > 1.0 + epsilon_high) & (advantages > 0)).to(mask.dtype)
    region = torch.maximum(low, high)
    return {
        "clip_ratio/low_mean": float(masked_mean(low, mask)),
        "clip_ratio/high_mean": float(masked_mean(high, mask)),
        "clip_ratio/region_mean": float(masked_mean(region, mask)),
    }
