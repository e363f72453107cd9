"""The pluggy hook specifications of rlvr: one hook per component kind.

A plugin module implements any of these hooks with ``@rlvr.hookimpl`` and returns a list of
:class:`rlvr.core.registry.PluginSpec`. Modules are found through the ``rlvr`` entry-point group
(``[project.entry-points.rlvr]`` in a pyproject.toml); rlvr's built-ins are declared the same way.
"""

from __future__ import annotations

import pluggy

PROJECT = "rlvr"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def rlvr_rewards() -> list:
    """Reward plugins: factory(cfg) -> fn(completions, prompts=..., **columns) -> list[float | None]
    (contract: rlvr.core.contracts.Reward)."""


@hookspec
def rlvr_verifiers() -> list:
    """Verifier plugins: factory(cfg) -> fn(completions, prompts=..., **columns) -> list[bool | None]
    (contract: rlvr.core.contracts.Verifier).

    Each verifier is also a reward of the same name (``reward=[<name>]``, pass -> pass_score,
    fail -> fail_score) unless its distribution ships a reward of that name; see docs/plugins.md.
    """


@hookspec
def rlvr_losses() -> list:
    """Loss plugins: factory(cfg) -> loss(logps, old_logps, ref_logps, advantages, mask, truncated, *, num_sequences,
    num_tokens, entropies=None) -> (value, metrics), with attributes beta, needs_entropy and active_tokens(mask,
    truncated) (contract: rlvr.core.contracts.Loss)."""


@hookspec
def rlvr_advantages() -> list:
    """Advantage estimators: factory(cfg) -> estimator(rewards [N], group_size) -> advantages [N]
    (contract: rlvr.core.contracts.AdvantageEstimator)."""


@hookspec
def rlvr_models() -> list:
    """Model plugins: factory(cfg) -> rlvr.core.policy.Policy (trainable model + tokenizer)
    (contract: rlvr.core.contracts.Policy)."""


@hookspec
def rlvr_engines() -> list:
    """Engine plugins: factory(cfg) -> engine with generate(policy, prompts, num_generations, seeds, greedy=False)
    -> Rollouts, and attributes cfg (temperature, max_new_tokens, max_prompt_length) and importance_sampling
    (contract: rlvr.core.contracts.Engine)."""


@hookspec
def rlvr_tasks() -> list:
    """Task plugins: factory(cfg) -> rlvr.core.task.Task (rows, prompt template, answer column)
    (contract: rlvr.core.contracts.Task)."""


@hookspec
def rlvr_loggers() -> list:
    """Logger / callback plugins: factory(cfg) -> object with any of on_train_start(run_dir, config, start_step),
    on_step_end(step, metrics, samples), on_train_end(metrics); called through pluggy (rlvr.core.callbacks)."""


@hookspec
def rlvr_envs() -> list:
    """Multi-turn environment plugins: factory(cfg) -> env with reset(row) -> (messages, state),
    step(state, message) -> (messages, done, info), attributes cfg (max_turns, max_tokens, tool_timeout,
    tool_format) and tools (contract: rlvr.core.contracts.Env; the loop: rlvr.core.episodes)."""


KINDS: dict[str, str] = {
    "reward": "rlvr_rewards",
    "verifier": "rlvr_verifiers",
    "loss": "rlvr_losses",
    "advantage": "rlvr_advantages",
    "model": "rlvr_models",
    "engine": "rlvr_engines",
    "task": "rlvr_tasks",
    "logger": "rlvr_loggers",
    "env": "rlvr_envs",
}
"""Component kind -> the hook that lists its plugins."""

LIST_KINDS = frozenset({"reward", "verifier", "logger"})
"""Kinds of which a run uses several at once (``reward=[a,b]``); their configs live under ``<kind>.<name>``."""
