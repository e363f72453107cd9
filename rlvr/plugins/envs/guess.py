"""``env=guess task=guess reward=[guess_solved]``: guess a hidden number with "higher" / "lower" feedback.

Each turn the model answers with a number (the last number in its message counts); the environment
replies ``higher``, ``lower`` or ends the episode when it is right. A message without a number gets
"Answer with a single number." and costs a turn.

``guess_solved`` = 1 + (max_turns − turns) / max_turns when solved (fewer turns score more), else 0;
``guess_valid`` = the fraction of turns that gave an in-range number (a format signal).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from rlvr import PluginSpec, hookimpl
from rlvr.core.environment import EnvConfig, validate_env_config
from rlvr.core.rewards import RewardConfig
from rlvr.core.task import Task, TaskConfig, last_number


@dataclass
class GuessEnvConfig(EnvConfig):
    max_turns: int = 6
    max_tokens: int = 200


class GuessEnv:
    """No tools: the model's message is its guess."""

    def __init__(self, cfg: GuessEnvConfig) -> None:
        validate_env_config(cfg)
        self.cfg = cfg
        self.tools: list[Any] = []

    def reset(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        state = {
            "target": int(row["answer"]),
            "low": int(row["low"]),
            "high": int(row["high"]),
            "guesses": [],
            "solved": False,
            "max_turns": int(self.cfg.max_turns),
        }
        return [{"role": "user", "content": str(row["question"])}], state

    def step(self, state: dict[str, Any], message: str) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        guess = last_number(message)
        if guess is None or not guess.is_integer():
            state["guesses"].append(None)
            return [{"role": "user", "content": "Answer with a single number."}], False, {"valid": False}
        g = int(guess)
        state["guesses"].append(g)
        valid = state["low"] <= g <= state["high"]
        if g == state["target"]:
            state["solved"] = True
            return [], True, {"valid": valid}
        hint = "Higher." if g < state["target"] else "Lower."
        return [{"role": "user", "content": hint}], False, {"valid": valid}


@dataclass
class GuessTaskConfig(TaskConfig):
    prompt_template: str = (
        "I am thinking of a whole number from {low} to {high}. Guess it. After each guess I say "
        "higher or lower. Answer with just the number."
    )
    low: int = 1
    high: int = 20
    train_size: int = 500
    eval_size: int = 100
    seed: int = 0


def load_guess(cfg: GuessTaskConfig) -> Task:
    def rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            row = {"low": cfg.low, "high": cfg.high, "answer": rng.randint(cfg.low, cfg.high)}
            row["question"] = cfg.prompt_template.format(**row)
            out.append(row)
        return out

    return Task(
        "guess",
        rows(cfg.train_size, random.Random(cfg.seed)),
        rows(cfg.eval_size, random.Random(cfg.seed + 1_000_003)),
        cfg,
    )


def guess_solved_reward(cfg: RewardConfig) -> Any:
    def guess_solved(completions: list[str], episode: list[Any] | None = None, **kw: Any) -> list[float | None]:
        if episode is None:
            raise ValueError("guess_solved scores env=guess episodes (the 'episode' column)")
        out: list[float | None] = []
        for ep in episode:
            state = ep.get("state") if isinstance(ep, dict) else None
            if not isinstance(state, dict) or not state.get("solved") or ep.get("stop") != "env_done":
                out.append(0.0)
                continue
            turns, limit = max(1, int(ep.get("turns", 1))), max(1, int(state.get("max_turns", 1)))
            out.append(1.0 + max(0, limit - turns) / limit)
        return out

    return guess_solved


@dataclass
class GuessValidConfig(RewardConfig):
    per_turn: bool = False  # score each turn (1/turns for an in-range guess) instead of the episode's fraction


def guess_valid_reward(cfg: GuessValidConfig) -> Any:
    def guess_valid(completions: list[str], episode: list[Any] | None = None, **kw: Any) -> list[Any]:
        if episode is None:
            raise ValueError("guess_valid scores env=guess episodes (the 'episode' column)")
        out: list[Any] = []
        for ep in episode:
            infos = ep.get("infos", []) if isinstance(ep, dict) else []
            if cfg.per_turn:  # a turn cut by a limit has no info (the env never saw it): 0
                turns = int(ep.get("turns", 0)) if isinstance(ep, dict) else 0
                valid = [bool(i.get("valid")) for i in infos[:turns]] + [False] * max(0, turns - len(infos))
                out.append([v / max(turns, 1) for v in valid])
            else:
                out.append(sum(bool(i.get("valid")) for i in infos) / len(infos) if infos else 0.0)
        return out

    return guess_valid


@hookimpl
def rlvr_envs() -> list[PluginSpec]:
    return [PluginSpec("guess", GuessEnv, GuessEnvConfig, "guess-the-number with higher/lower feedback")]


@hookimpl
def rlvr_tasks() -> list[PluginSpec]:
    return [PluginSpec("guess", load_guess, GuessTaskConfig, "hidden numbers for env=guess")]


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "guess_solved",
            guess_solved_reward,
            RewardConfig,
            "env=guess: 1 + bonus for fewer turns when solved, else 0",
        ),
        PluginSpec(
            "guess_valid",
            guess_valid_reward,
            GuessValidConfig,
            "env=guess: fraction of turns with an in-range numeric guess (per_turn=true: per-turn scores)",
        ),
    ]
