"""The contract of every plugin kind, written once.

Each kind's factory returns an object that must satisfy the Protocol below. The registry checks it
when the plugin is created (:func:`check`), so a plugin that misses an attribute or takes the wrong
arguments fails at start-up with a message naming what is missing, not with a ``TypeError`` in the
middle of a step. The trainer then uses these attributes directly, without probing.

Shapes: N = completions in the batch (B prompts × G generations, group order: rows g·G … g·G+G−1
share a prompt), T = completion tokens (right-padded), P = prompt tokens (left-padded).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence, runtime_checkable

from rlvr.core.errors import PluginError

if TYPE_CHECKING:  # torch is heavy; the protocols only name its types
    from torch import Tensor

    from rlvr.core.importance import ImportanceSamplingConfig
    from rlvr.core.rollout import Rollouts


class ContractError(PluginError, TypeError):
    """A plugin does not satisfy its kind's contract."""


@runtime_checkable
class Loss(Protocol):
    """``loss=<name>``: token log-probs and advantages → a scalar to minimise.

    Attributes:
        beta: weight of the KL term to the reference policy; the trainer computes reference log-probs
            (``ref_logps``) only when ``beta > 0``.
        needs_entropy: whether the trainer must pass per-token ``entropies`` (costs a little memory).
    """

    beta: float
    needs_entropy: bool

    def active_tokens(self, mask: Tensor, truncated: Tensor) -> int:
        """Tokens that count in the loss: ``mask`` float [N, T], ``truncated`` bool [N] → an int.

        The trainer sums it over micro-batches and processes to get ``num_tokens``."""
        ...

    def __call__(
        self,
        logps: Tensor,
        old_logps: Optional[Tensor],
        ref_logps: Optional[Tensor],
        advantages: Tensor,
        mask: Tensor,
        truncated: Tensor,
        *,
        num_sequences: int,
        num_tokens: int,
        entropies: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """One micro-batch's share of the step loss and its metrics.

        Args:
            logps: float32 [n, T] log-probs of the sampled tokens under the current policy (with grad).
            old_logps: float32 [n, T] under the policy that sampled (None when μ = 1: use ``logps.detach()``).
            ref_logps: float32 [n, T] under the reference policy, or None when ``beta == 0``.
            advantages: float32 [n], one per completion.
            mask: float32 [n, T], 1 on completion tokens.
            truncated: bool [n], the completion hit ``max_new_tokens``.
            num_sequences: completions in the whole optimizer step (all micro-batches and processes).
            num_tokens: sum of :meth:`active_tokens` over the whole step.
            entropies: float32 [n, T] per-token entropies when ``needs_entropy``, else None.

        Returns:
            (scalar tensor, {metric name: float}); the shares of all micro-batches add up to the step loss.
        """
        ...


@runtime_checkable
class SamplingSettings(Protocol):
    """What the trainer reads of an engine's config."""

    temperature: float
    max_new_tokens: int
    max_prompt_length: int


@runtime_checkable
class Engine(Protocol):
    """``engine=<name>``: samples completions.

    Attributes:
        cfg: the sampling settings (temperature is also used by the trainer's log-probs).
        importance_sampling: the trainer-side correction for a sampler whose log-probs differ from the
            trainer's (e.g. vLLM), or None when the engine samples from the trainer's own distribution.
    """

    cfg: SamplingSettings
    importance_sampling: Optional[ImportanceSamplingConfig]

    def generate(
        self, policy: Model, prompts: Sequence[str], num_generations: int, seeds: Sequence[int], greedy: bool = False
    ) -> Rollouts:
        """G completions of each prompt (``len(prompts)`` · G rows, group order), seeded per group."""
        ...

    def release(self, policy: Model) -> None:
        """Called once per training step after the rollout: give back memory the engine holds that the update
        needs (vLLM's sleep mode). The next ``generate`` takes it back."""
        ...


@runtime_checkable
class Task(Protocol):
    """``task=<name>``: rows, prompt construction and held-out correctness (see :class:`rlvr.core.task.Task`).

    ``config`` is a :class:`rlvr.core.task.TaskConfig` (``answer_column``; ``correct``: the verifier that
    judges held-out accuracy, :mod:`rlvr.core.correctness`). Every row holds the answer column; all of a
    row's columns reach the rewards as keyword arguments.
    """

    name: str
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    config: Any

    def render(self, row: dict[str, Any], tokenizer: Any) -> str:
        """The prompt string fed to the model for ``row``."""
        ...


@runtime_checkable
class Reward(Protocol):
    """``reward=[<name>, ...]``: ``fn(completions, prompts=..., **columns) -> list[float | None]``.

    ``completions``: N strings; ``prompts``: N strings; every task column arrives as a keyword argument
    holding a list of N values. None means "cannot score this one" (it does not count in the mean).
    May be ``async def``. A *verifier* has the same call and returns ``list[bool | None]``.
    """

    def __call__(self, completions: list[str], **kwargs: Any) -> Any: ...


Verifier = Reward


@runtime_checkable
class Model(Protocol):
    """``model=<name>``: the trainable policy, its tokenizer and the KL reference
    (see :class:`rlvr.core.policy.Policy`, which every built-in model plugin returns)."""

    model: Any
    tokenizer: Any
    is_lora: bool

    def reference(self) -> Any:
        """Context manager giving the KL reference model (adapters off, or a frozen copy)."""
        ...


@runtime_checkable
class AdvantageEstimator(Protocol):
    """``advantage=<name>``: rewards of the whole batch → one advantage per completion.

    ``rewards``: float32 [N] (the weighted sum of the reward functions), N = B·G in group order;
    returns float32 [N]. A group whose rewards are all equal must get advantage 0.
    """

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor: ...


@runtime_checkable
class TurnAdvantageEstimator(Protocol):
    """An estimator that can also credit each turn of a multi-turn episode (rewards that return per-turn scores).

    ``turn_scores``: float32 [N, K] (each turn's weighted score, 0 past an episode's end); returns float32
    [N, K]. See :func:`rlvr.core.advantages.turn_advantages`.
    """

    def turn_advantages(self, turn_scores: Tensor, group_size: int) -> Tensor: ...


@runtime_checkable
class EnvSettings(Protocol):
    """The episode limits the rollout phase reads of an environment's config (``env.*``)."""

    max_turns: int  # assistant turns per episode
    max_tokens: int  # completion tokens per episode (sampled + inserted)
    tool_timeout: float  # seconds per tool call
    tool_format: str  # auto | rlvr | hermes | llama3 | mistral (rlvr.core.tools)


@runtime_checkable
class Env(Protocol):
    """``env=<name>``: a multi-turn environment (see :mod:`rlvr.core.episodes`).

    Attributes:
        cfg: the episode limits.
        tools: plain Python functions offered to the model as tools (may be empty).
    """

    cfg: EnvSettings
    tools: list[Any]

    def reset(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
        """(the episode's first messages, e.g. system + user, and the env's state) for a task row."""
        ...

    def step(self, state: Any, message: str) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        """After the assistant's turn ``message`` (its text): (messages the env answers with, done, info).

        ``info`` may hold ``tool_calls``, ``tool_errors``, ``tool_seconds`` (counted in reports)."""
        ...


LOGGER_HOOKS: dict[str, tuple[str, ...]] = {
    "on_train_start": ("run_dir", "config", "start_step"),
    "on_step_end": ("step", "metrics", "samples"),
    "on_train_end": ("metrics",),
}
"""Logger callbacks (each optional) and the argument names each receives; see :mod:`rlvr.core.callbacks`."""


CONTRACTS: dict[str, Any] = {
    "loss": Loss,
    "engine": Engine,
    "task": Task,
    "reward": Reward,
    "verifier": Reward,
    "model": Model,
    "advantage": AdvantageEstimator,
    "env": Env,
}
"""Kind → the Protocol its plugins satisfy (loggers: any of :data:`LOGGER_HOOKS`)."""

_CALLS = {Loss: "__call__", Engine: "generate", AdvantageEstimator: "__call__"}


def _members(proto: Any) -> tuple[list[str], list[str]]:
    """(data attributes, methods) a Protocol declares."""
    own = [c for c in reversed(proto.__mro__) if c.__module__ == __name__]
    attrs = [a for c in own for a in vars(c).get("__annotations__", {})]
    methods = [n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")]
    if "__call__" in vars(proto):
        methods.append("__call__")
    return list(dict.fromkeys(attrs)), methods


def _missing_parameters(proto: Any, obj: Any) -> list[str]:
    """Parameters of the Protocol's main call that ``obj``'s implementation cannot accept."""
    name = _CALLS.get(proto)
    if name is None:
        return []
    try:
        theirs = inspect.signature(getattr(obj, name)).parameters.values()
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in theirs):
        return []
    accepted = {p.name for p in theirs}
    ours = [p for p in inspect.signature(getattr(proto, name)).parameters.values() if p.name != "self"]
    return [p.name for p in ours if p.name not in accepted]


def check(kind: str, obj: Any, name: str) -> Any:
    """Return ``obj`` if it satisfies the contract of ``kind``; else raise :class:`ContractError` naming what is
    missing. ``name`` is the plugin's name, for the message."""
    if kind == "logger":
        if not any(callable(getattr(obj, hook, None)) for hook in LOGGER_HOOKS):
            raise ContractError(
                f"logger plugin {name!r} returned {type(obj).__name__}, which has none of the "
                f"callbacks {', '.join(LOGGER_HOOKS)} (see rlvr.core.contracts.LOGGER_HOOKS)"
            )
        return obj
    proto = CONTRACTS.get(kind)
    if proto is None:
        return obj
    attrs, methods = _members(proto)
    missing = [a for a in attrs if not hasattr(obj, a)]
    missing += [f"{m}()" for m in methods if not callable(getattr(obj, m, None))]
    if proto is Engine and hasattr(obj, "cfg"):
        missing += [f"cfg.{a}" for a in _members(SamplingSettings)[0] if not hasattr(obj.cfg, a)]
    if proto is Env and hasattr(obj, "cfg"):
        missing += [f"cfg.{a}" for a in _members(EnvSettings)[0] if not hasattr(obj.cfg, a)]
    if not missing:
        missing = [f"parameter {p!r} of {_CALLS[proto]}" for p in _missing_parameters(proto, obj)]
    if missing:
        raise ContractError(
            f"{kind} plugin {name!r} returned {type(obj).__name__}, which does not satisfy the "
            f"{proto.__name__} contract (rlvr.core.contracts.{proto.__name__}): missing "
            f"{', '.join(missing)}"
        )
    return obj
