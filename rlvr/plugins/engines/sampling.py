"""Sampling shared by the engines: the settings every engine has, top-k / top-p / min-p filtering, and
inverse-CDF sampling from per-group random numbers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlvr.core.errors import ConfigError


@dataclass
class SamplingConfig:
    """The sampling settings every engine shares (``engine.*``)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    max_prompt_length: int = 512


def validate_sampling(cfg: SamplingConfig) -> None:
    if cfg.max_new_tokens <= 0:
        raise ConfigError(f"engine.max_new_tokens must be > 0, got {cfg.max_new_tokens}")
    if cfg.temperature <= 0:
        raise ConfigError(f"engine.temperature must be > 0, got {cfg.temperature} (use a small value for near-greedy)")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"engine.top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.top_k < 0 or not 0 <= cfg.min_p < 1:
        raise ConfigError(f"engine.top_k must be >= 0 and engine.min_p in [0, 1), got {cfg.top_k}, {cfg.min_p}")
    if cfg.max_prompt_length <= 0:
        raise ConfigError(f"engine.max_prompt_length must be > 0, got {cfg.max_prompt_length}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Mask (set to -inf) the logits that top-k, top-p (nucleus) and min-p sampling exclude.

    logits: float [B, V] already divided by the temperature; returns a new tensor [B, V].
    top_k keeps the k largest; top_p keeps the smallest set whose probability reaches top_p (the
    most likely token always stays); min_p keeps tokens with p >= min_p · max p.
    """
    out = logits.clone()
    if top_k > 0 and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if min_p > 0:
        probs = out.softmax(-1)
        out = out.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop[..., 0] = False
        out = out.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return out


def sample_inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Draw one token per row by inverting the CDF: the first index whose cumulative probability exceeds u.

    probs: float [N, V] rows summing to 1; uniform: float [N] in [0, 1). Returns long [N]. One random
    number per row (instead of one per vocabulary entry), so per-group generators stay cheap.
    """
    cdf = probs.cumsum(-1)
    u = (uniform.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)  # scale by the total: robust to rounding
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)
