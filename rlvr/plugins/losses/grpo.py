"""The GRPO loss family: grpo, bnpo, dr_grpo, dapo and gspo, one implementation with different aggregations.

Per token t of completion i (M = loss mask, zeroed for truncated rows when mask_truncated_completions)::

    r      = exp(logps - old_logps)                          (token level)
           = exp(sum_t (logps - old_logps) M / max(sum_t M, 1))   (sequence level, GSPO; broadcast over t)
    r_clip = clamp(r, 1 - epsilon, 1 + epsilon_high)
    r~     = min(r, delta) if delta is set else r
    ℓ      = -min(r~ A_i, r_clip A_i) + beta * k3,    k3 = exp(ref - logps) - (ref - logps) - 1

and ℓ is reduced by the loss's aggregation (see :func:`rlvr.plugins.losses.functional.aggregate`). The math
matches TRL's GRPOTrainer (``loss_type`` grpo / bnpo / dr_grpo / dapo, ``epsilon_high``, ``delta``,
``importance_sampling_level``, ``mask_truncated_completions``); docs/losses.md has the table of sources.

Gradient accumulation: the training loop passes ``num_sequences`` and ``num_tokens`` (totals over the whole
optimizer step: all micro-batches and processes, tokens counted after masking — see :meth:`active_tokens`).
Each call then returns its micro-batch's *share* of the step loss, and the shares add up:

- grpo / gspo: sum of per-sequence token means / num_sequences   (exact for any split)
- dr_grpo:     sum ℓ M / (num_sequences * max_completion_length)  (exact)
- dapo:        sum ℓ M / num_tokens                              (exact)
- bnpo:        micro-batch token mean * (micro-batch sequences / num_sequences): the sequence-weighted mean
  of the micro-batch token means, TRL's "normalise over the local batch" (equal to the whole-batch token
  mean when every micro-batch holds the same number of active tokens).

With data-parallel training that *averages* gradients over P processes, multiply the value by P (TRL does the
equivalent by dividing ``num_items_in_batch`` by the number of processes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ConfigError
from rlvr.plugins.losses import functional as F


@dataclass
class GRPOLossConfig:
    """Parameters shared by grpo, bnpo, dr_grpo and dapo (``loss.*``)."""

    epsilon: float = 0.2  # lower clip: r_clip >= 1 - epsilon (and the upper one when epsilon_high is None)
    epsilon_high: Optional[float] = None  # upper clip 1 + epsilon_high ("clip-higher", DAPO uses 0.28)
    delta: Optional[float] = None  # two-sided clipping: cap the unclipped ratio at delta (> 1 + epsilon_high)
    beta: float = 0.0  # weight of the k3 KL penalty to the reference policy; 0 = no reference model
    max_completion_length: Optional[int] = None  # dr_grpo's constant normaliser (the engine's max_new_tokens)
    mask_truncated_completions: bool = False  # drop completions that hit the length limit from the loss
    importance_sampling_level: str = "token"  # "token" (per-token ratio) or "sequence" (GSPO ratio)


@dataclass
class DAPOLossConfig(GRPOLossConfig):
    """DAPO (Yu et al. 2025, arXiv:2503.14476): clip-higher with epsilon 0.2 / epsilon_high 0.28, no KL."""

    epsilon_high: Optional[float] = 0.28


@dataclass
class GSPOLossConfig(GRPOLossConfig):
    """GSPO (Zheng et al. 2025, arXiv:2507.18071 v2, section 5.1): sequence-level ratio, epsilons 3e-4 / 4e-4."""

    epsilon: float = 3e-4
    epsilon_high: Optional[float] = 4e-4
    importance_sampling_level: str = "sequence"


def _finite(name: str, value: float, loss_name: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"loss {loss_name!r}: {name} must be a finite number, got {value!r}")


def validate_config(cfg: Any, loss_name: str, aggregation: str) -> None:
    """Raise ValueError with an actionable message for parameters outside their valid range."""
    _finite("epsilon", cfg.epsilon, loss_name)
    if not 0.0 < cfg.epsilon < 1.0:
        raise ConfigError(
            f"loss {loss_name!r}: epsilon must be in (0, 1) so that the lower clip 1 - epsilon is a "
            f"positive ratio, got epsilon={cfg.epsilon}. Typical values: 0.2 (PPO/GRPO), 3e-4 (GSPO)."
        )
    if cfg.epsilon_high is not None:
        _finite("epsilon_high", cfg.epsilon_high, loss_name)
        if cfg.epsilon_high <= 0.0:
            raise ConfigError(
                f"loss {loss_name!r}: epsilon_high must be > 0 (upper clip 1 + epsilon_high), got "
                f"{cfg.epsilon_high}; leave it unset (null) to use epsilon."
            )
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    if cfg.delta is not None:
        _finite("delta", cfg.delta, loss_name)
        if cfg.delta <= 1.0 + eps_high:
            raise ConfigError(
                f"loss {loss_name!r}: delta must exceed 1 + epsilon_high = {1.0 + eps_high:g} (it caps "
                f"the ratio of negative-advantage tokens above the clip range), got delta={cfg.delta}. "
                f"Use e.g. delta=3.0, or null to disable two-sided clipping."
            )
    _finite("beta", cfg.beta, loss_name)
    if cfg.beta < 0.0:
        raise ConfigError(
            f"loss {loss_name!r}: beta (KL weight) must be >= 0, got {cfg.beta}; use 0 to train "
            f"without a reference model."
        )
    if cfg.importance_sampling_level not in F.IMPORTANCE_SAMPLING_LEVELS:
        raise ConfigError(
            f"loss {loss_name!r}: importance_sampling_level must be 'token' or 'sequence', got "
            f"{cfg.importance_sampling_level!r}"
        )
    mcl = cfg.max_completion_length
    if mcl is not None and (isinstance(mcl, bool) or not isinstance(mcl, int) or mcl <= 0):
        raise ConfigError(f"loss {loss_name!r}: max_completion_length must be a positive integer, got {mcl!r}")
    if aggregation == "dr_grpo" and mcl is None:
        raise ConfigError(
            f"loss {loss_name!r} normalises by max_completion_length, which is not set: pass "
            f"max_completion_length=<the engine's max_new_tokens> (the shipped conf/loss/dr_grpo.yaml "
            f"sets it to ${{engine.max_new_tokens}})."
        )


class ClippedPolicyLoss:
    """A configured GRPO-family loss. Call it as

    ``loss(logps, old_logps=None, ref_logps=None, advantages=..., mask=..., truncated=None, *,
    num_sequences=None, num_tokens=None, entropies=None) -> (value, metrics)``.

    Attributes:
        name: the plugin name.
        aggregation: "grpo" | "bnpo" | "dr_grpo" | "dapo" (see :func:`functional.aggregate`).
        beta: KL weight; the training loop computes reference log-probs only when ``beta > 0``.
        needs_entropy: whether the loop must pass per-token ``entropies`` (False for this family).
        epsilon_low, epsilon_high, delta, importance_sampling_level, max_completion_length,
        mask_truncated_completions: the validated configuration.
    """

    needs_entropy: bool = False

    def __init__(self, cfg: Any, name: str, aggregation: str) -> None:
        if aggregation not in F.AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {aggregation!r}; choose one of {F.AGGREGATIONS}")
        validate_config(cfg, name, aggregation)
        self.config = cfg
        self.name = name
        self.aggregation = aggregation
        self.epsilon_low = float(cfg.epsilon)
        self.epsilon_high = float(cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high)
        self.delta: Optional[float] = None if cfg.delta is None else float(cfg.delta)
        self.beta = float(cfg.beta)
        self.max_completion_length: Optional[int] = cfg.max_completion_length
        self.mask_truncated_completions = bool(cfg.mask_truncated_completions)
        self.importance_sampling_level: str = cfg.importance_sampling_level

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, epsilon={self.epsilon_low}, "
            f"epsilon_high={self.epsilon_high}, delta={self.delta}, beta={self.beta}, "
            f"importance_sampling_level={self.importance_sampling_level!r}, "
            f"max_completion_length={self.max_completion_length}, "
            f"mask_truncated_completions={self.mask_truncated_completions})"
        )

    # -- what the training loop asks before calling -------------------------------------------------
    def active_tokens(self, mask: Tensor, truncated: Optional[Tensor] = None) -> int:
        """Number of tokens this loss counts in a micro-batch (after mask_truncated_completions).

        The loop sums it over every micro-batch (and process) of an optimizer step to get ``num_tokens``.
        """
        m = F.effective_mask(mask, truncated, self.mask_truncated_completions, dtype=torch.float32)
        return int(m.sum().item())

    # -- the loss ---------------------------------------------------------------------------------
    def __call__(
        self,
        logps: Tensor,
        old_logps: Optional[Tensor] = None,
        ref_logps: Optional[Tensor] = None,
        advantages: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        truncated: Optional[Tensor] = None,
        *,
        num_sequences: Optional[int] = None,
        num_tokens: Optional[float] = None,
        entropies: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """This micro-batch's share of the step loss and its metrics.

        Args:
            logps: float [N, T] per-token log-probs of the sampled tokens under the current policy.
            old_logps: float [N, T] under the sampling policy, or None for on-policy (``logps.detach()``).
            ref_logps: float [N, T] under the reference policy; required when ``beta > 0``.
            advantages: float [N] (or [N, T] per-token).
            mask: [N, T] 1 for completion tokens.
            truncated: [N] bool, completion hit the length limit.
            num_sequences, num_tokens: step totals (see module docstring); None = this call's counts.
            entropies: float [N, T] per-token entropies; only used by losses with ``needs_entropy``.
        Returns:
            (value, metrics): a 0-dim tensor (float32, or float64 for float64 inputs) that back-propagates into
            ``logps``, and a dict of python floats.
        """
        per_token, m, extra = self._per_token_loss(logps, old_logps, ref_logps, advantages, mask, truncated, entropies)
        value = F.aggregate(
            per_token,
            m,
            self.aggregation,
            num_sequences=num_sequences,
            num_tokens=num_tokens,
            max_completion_length=self.max_completion_length,
        )
        return value, extra

    def _check(
        self,
        logps: Tensor,
        old_logps: Optional[Tensor],
        ref_logps: Optional[Tensor],
        advantages: Optional[Tensor],
        mask: Optional[Tensor],
        truncated: Optional[Tensor],
    ) -> None:
        if not isinstance(logps, Tensor) or logps.dim() != 2 or not logps.is_floating_point():
            raise ValueError(
                f"loss {self.name!r}: logps must be a float tensor [N, T], got {getattr(logps, 'shape', type(logps))}"
            )
        shape = tuple(logps.shape)
        if advantages is None or mask is None:
            raise ValueError(f"loss {self.name!r}: advantages [N] and mask [N, T] are required")
        for label, t in (("old_logps", old_logps), ("ref_logps", ref_logps), ("mask", mask)):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(
                    f"loss {self.name!r}: {label} has shape {tuple(t.shape)}, expected {shape} like logps"
                )
        if tuple(advantages.shape) not in ((shape[0],), shape):
            raise ValueError(
                f"loss {self.name!r}: advantages has shape {tuple(advantages.shape)}, expected "
                f"({shape[0]},) or {shape}"
            )
        if truncated is not None and tuple(truncated.shape) != (shape[0],):
            raise ValueError(
                f"loss {self.name!r}: truncated has shape {tuple(truncated.shape)}, expected ({shape[0]},)"
            )
        if self.beta > 0.0 and ref_logps is None:
            raise ValueError(
                f"loss {self.name!r} has beta={self.beta} > 0 but no reference log-probs were given "
                f"(ref_logps=None): pass ref_logps, or set loss.beta=0 to train without the KL term."
            )

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
        """Per-token loss ℓ [N, T], the loss mask M [N, T] and the metrics."""
        self._check(logps, old_logps, ref_logps, advantages, mask, truncated)
        assert advantages is not None and mask is not None
        # half-precision log-probs are upcast: exp, clamps and the token counts in the sums need float32
        logps = logps.to(torch.promote_types(logps.dtype, torch.float32))
        m = F.effective_mask(mask.to(logps.device), truncated, self.mask_truncated_completions, dtype=logps.dtype)
        old = logps.detach() if old_logps is None else old_logps.detach().to(logps.dtype)
        adv = F.broadcast_advantages(advantages.detach(), logps)
        ratio = torch.exp(F.log_importance_weights(logps, old, m, self.importance_sampling_level))
        per_token = F.clipped_surrogate(ratio, adv, self.epsilon_low, self.epsilon_high, self.delta)
        per_token = per_token.expand_as(logps)
        metrics = F.clip_fractions(ratio, adv, m, self.epsilon_low, self.epsilon_high)
        if self.beta > 0.0:
            assert ref_logps is not None
            kl = F.k3_kl(logps, ref_logps.detach().to(logps.dtype))
            per_token = per_token + self.beta * kl
            metrics["kl"] = float(F.masked_mean(kl.detach(), m))
        return per_token, m, metrics


def _factory(name: str, aggregation: str) -> Callable[[Any], ClippedPolicyLoss]:
    def build(cfg: Any) -> ClippedPolicyLoss:
        return ClippedPolicyLoss(cfg, name=name, aggregation=aggregation)

    build.__name__ = f"build_{name}"
    return build


@hookimpl
def rlvr_losses() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="grpo",
            factory=_factory("grpo", "grpo"),
            config=GRPOLossConfig,
            description="GRPO (DeepSeekMath): clipped ratio, per-sequence token mean, mean over sequences",
        ),
        PluginSpec(
            name="bnpo",
            factory=_factory("bnpo", "bnpo"),
            config=GRPOLossConfig,
            description="GRPO with token-mean over each micro-batch (TRL loss_type='bnpo')",
        ),
        PluginSpec(
            name="dr_grpo",
            factory=_factory("dr_grpo", "dr_grpo"),
            config=GRPOLossConfig,
            description="Dr. GRPO: token sum / (sequences x max_completion_length), no length bias",
        ),
        PluginSpec(
            name="dapo",
            factory=_factory("dapo", "dapo"),
            config=DAPOLossConfig,
            description="DAPO token-level loss: token sum / active tokens of the whole step",
        ),
        PluginSpec(
            name="gspo",
            factory=_factory("gspo", "grpo"),
            config=GSPOLossConfig,
            description="GSPO: sequence-level (length-normalised) ratio, epsilon 3e-4 / 4e-4",
        ),
    ]
