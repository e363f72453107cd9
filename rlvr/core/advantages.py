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


# ----- per-turn rewards (multi-turn episodes) -----------------------------------------------------------
def group_baseline_and_scale(
    returns: torch.Tensor, group_size: int, scaling: str = "group", baseline: str = "mean", eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine form of :func:`group_advantages`: ``b`` and ``s`` (float [N] each) such that
    ``group_advantages(returns, ...) == (returns - b) / s`` for every group whose returns are not all equal.

    ``b_i``: the group mean (``mean``) or the mean of the other G−1 returns (``rloo``: then
    ``r_i - b_i = G/(G-1) · (r_i - mean_g)``); ``s_i``: ``std_g + eps`` (``group``), ``std + eps`` over the
    batch (``batch``), 1 (``none``). returns: float [N] in groups of ``group_size``.
    """
    grouped = returns.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    if baseline == "rloo":
        base = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    elif baseline == "mean":
        base = mean.expand_as(grouped)
    else:
        raise ConfigError(f"advantage baseline {baseline!r}: choose 'mean' or 'rloo'")
    if scaling == "group":
        scale = (grouped.std(dim=1, keepdim=True) + eps).expand_as(grouped)
    elif scaling == "batch":
        scale = torch.full_like(grouped, float(returns.std()) + eps if returns.numel() > 1 else 1.0)
    elif scaling == "none":
        scale = torch.ones_like(grouped)
    else:
        raise ConfigError(f"advantage scaling {scaling!r}: choose 'group', 'batch' or 'none'")
    return base.reshape(-1), scale.reshape(-1)


def outcome_turn_scores(total: torch.Tensor, turns: list[int]) -> torch.Tensor:
    """float [N, K]: each episode's score ``total`` (float [N]) on its last turn (``turns``: assistant turns of
    each episode; K = the most), zeros elsewhere: outcome rewards written as per-turn scores."""
    out = torch.zeros((len(turns), max(turns + [1])), dtype=torch.float32)
    for i, t in enumerate(turns):
        out[i, max(t - 1, 0)] = total[i]
    return out


def rewards_to_go(turn_scores: torch.Tensor) -> torch.Tensor:
    """``R[i, t] = Σ_{u ≥ t} S[i, u]``: the reward still to come from turn t on (turn_scores float [N, K], zeros
    past an episode's last turn); ``R[:, 0]`` is the episode's return. Returns float [N, K]."""
    return turn_scores.flip(1).cumsum(1).flip(1)


def turn_advantages(
    turn_scores: torch.Tensor,
    group_size: int,
    scaling: str = "group",
    baseline: str = "mean",
    eps: float = EPS,
) -> torch.Tensor:
    """Per-turn advantages of multi-turn episodes whose rewards score each assistant turn.

    ``A[i, t] = (R[i, t] - b_i) / s_i`` with ``R`` the rewards to go (:func:`rewards_to_go`) and ``b``, ``s``
    computed from the episode returns ``R[:, 0]`` exactly as the outcome advantages are
    (:func:`group_baseline_and_scale`): turn t is credited with the rewards from turn t on, against the group's
    baseline of whole-episode returns. When every score sits on the last turn (outcome rewards),
    ``R[i, t] = R[i, 0]`` and this is :func:`group_advantages` at every turn. A group whose returns are all
    equal gets 0 at every turn (no between-episode signal, as for outcome rewards).

    turn_scores: float [N, K] (N = B·G in group order, K = the most turns; 0 past an episode's end).
    Returns float [N, K].
    """
    to_go = rewards_to_go(turn_scores)
    returns = to_go[:, 0]
    base, scale = group_baseline_and_scale(returns, group_size, scaling, baseline, eps)
    adv = (to_go - base[:, None]) / scale[:, None]
    grouped = returns.view(-1, group_size)
    flat = (grouped.max(dim=1).values == grouped.min(dim=1).values).repeat_interleave(group_size)
    return torch.where(flat[:, None], torch.zeros_like(adv), adv)


def token_turns(completion_mask: torch.Tensor) -> torch.Tensor:
    """long [N, T]: the assistant turn (0, 1, ...) each sampled token belongs to, -1 on other tokens.

    A turn is a run of consecutive sampled tokens (``completion_mask`` 1); environment tokens (0) separate
    turns. completion_mask: [N, T] of 0/1.
    """
    m = completion_mask.long()
    starts = m.clone()
    starts[:, 1:] = m[:, 1:] * (1 - m[:, :-1])
    turn = starts.cumsum(1) - 1
    return torch.where(m == 1, turn, torch.full_like(turn, -1))


def token_advantages(per_turn: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """float [N, T]: each sampled token gets its turn's advantage (``per_turn`` [N, K]), other tokens 0.
    ``turns``: long [N, T] from :func:`token_turns`."""
    idx = turns.clamp(min=0, max=per_turn.shape[1] - 1)
    return torch.where(turns >= 0, per_turn.gather(1, idx), torch.zeros((), dtype=per_turn.dtype))
