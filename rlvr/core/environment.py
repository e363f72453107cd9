"""Building blocks for environment plugins: the config every env has, and :class:`ToolEnv`, an environment
whose turns are tool calls until the model answers without one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlvr.core.errors import ConfigError
from rlvr.core.tools import FORMATS, parse_tool_calls, run_tool


@dataclass
class EnvConfig:
    """Episode limits every environment has (``env.*``); see :mod:`rlvr.core.episodes` for each rule."""

    max_turns: int = 4  # assistant turns per episode
    max_tokens: int = 256  # completion tokens per episode (sampled + inserted by the env)
    tool_timeout: float = 5.0  # seconds per tool call; a timeout is a tool error sent back to the model
    tool_format: str = "auto"  # auto (from the chat template) | rlvr | hermes | llama3 | mistral


def validate_env_config(cfg: EnvConfig) -> None:
    """Fail before any model loads on limits that cannot work."""
    if cfg.max_turns < 1:
        raise ConfigError(f"env.max_turns must be >= 1, got {cfg.max_turns}")
    if cfg.max_tokens < 2:
        raise ConfigError(f"env.max_tokens must be >= 2, got {cfg.max_tokens}")
    if cfg.tool_timeout <= 0:
        raise ConfigError(f"env.tool_timeout must be > 0 seconds, got {cfg.tool_timeout}")
    if cfg.tool_format not in FORMATS:
        raise ConfigError(f"env.tool_format={cfg.tool_format!r}: choose one of {', '.join(FORMATS)}")


class ToolEnv:
    """An environment of tool calls: each assistant turn with tool calls gets their results (role ``tool``,
    one message per call); a turn without a tool call is the final answer and ends the episode.

    Subclasses give ``tools`` and :meth:`first_messages`; ``state`` is a dict (``tool_format`` is set by
    the episode loop). Malformed calls, unknown tools, bad arguments, exceptions and timeouts come back to
    the model as ``error: ...`` tool results.
    """

    def __init__(self, cfg: EnvConfig, tools: Sequence[Callable[..., Any]], system_prompt: str | None = None):
        validate_env_config(cfg)
        self.cfg = cfg
        self.tools = list(tools)
        self.system_prompt = system_prompt
        self._by_name = {t.__name__: t for t in self.tools}

    def first_messages(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def reset(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        msgs = self.first_messages(row)
        if self.system_prompt:
            msgs = [{"role": "system", "content": self.system_prompt}] + msgs
        return msgs, {"row": row, "tool_format": None, "answer": None}

    def step(self, state: dict[str, Any], message: str) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        calls = parse_tool_calls(message, state.get("tool_format") or "rlvr")
        if not calls:
            state["answer"] = message
            return [], True, {"tool_calls": 0, "tool_errors": 0}
        results = [run_tool(c, self._by_name, self.cfg.tool_timeout) for c in calls]
        info = {
            "tool_calls": len(calls),
            "tool_errors": sum(r.error for r in results),
            "tool_seconds": sum(r.seconds for r in results),
            "calls": [{"name": c.name, "arguments": c.arguments, "error": c.error} for c in calls],
        }
        return [{"role": "tool", "name": r.name or "error", "content": r.content} for r in results], False, info
