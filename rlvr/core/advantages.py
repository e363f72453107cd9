"""Group-relative advantages."""

from __future__ import annotations

import torch

from rlvr.core.errors import ConfigError

EPS = 1e-4


def group_advantages(
    rewards: torch.Tensor, group_size: int, scaling: str = "group", baseline: str = "mean", eps: float = EPS
) -> torch.Tensor:
    """Advantages of rewards laid out as consecutive groups of ``group_size`` completions of one prompt.

    With ``baseline="mean"``: ``A_i = r_i - mean_g(r)``; with ``baseline="rloo"`` (leave-one-out):
    ``A_i = r_i - mean_{j≠i}(r_j) = G/(G-1) · (r_i - mean_g(r))``. Then scaling:

    - ``group``: divide by ``std_g(r) + eps`` (unbiased std of the group; GRPO),
    - ``batch``: divide by ``std(r) + eps`` over the whole batch (unbiased),
    - ``none``: no division (Dr. GRPO).

    rewards: float [N] with N = B·G; returns float [N] of the same dtype. A group whose rewards are
    all equal gets advantage 0 whatever the scaling.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, got shape {tuple(rewards.shape)}"
        )
    if group_size < 2:
        raise ValueError("group-relative advantages need group_size >= 2")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if baseline == "rloo":
        centred = centred * (group_size / (group_size - 1))
    elif baseline != "mean":
        raise ConfigError(f"advantage baseline {baseline!r}: choose 'mean' or 'rloo'")
    if scaling == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scaling == "batch":
        centred = centred / (rewards.std() + eps) if rewards.numel() > 1 else centred
    elif scaling != "none":
        raise ConfigError(f"advantage scaling {scaling!r}: choose 'group', 'batch' or 'none'")
    return centred.reshape(-1)


def zero_std_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal (they carry no learning signal)."""
    grouped = rewards.view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values == 0).float().mean().item()
