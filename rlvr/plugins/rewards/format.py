"""Format rewards for a custom reasoning template (the layout popularised by Unsloth's GRPO notebooks):

    <start_working_out> …reasoning… <end_working_out><SOLUTION> …answer… </SOLUTION>

- ``format_exact``: ``+3.0`` when the whole completion has this layout (only whitespace around
  it; the reasoning non-empty, the solution non-empty), else ``0.0``.
- ``format_approx``: for each tag, ``+0.5`` when it appears exactly once, ``-1.0`` otherwise.

The four tags are configurable. When the chat template already ends the prompt with the
reasoning tag, set ``reasoning_start_in_prompt: true``: the completion then need not repeat it
(``format_exact``) and it is not counted (``format_approx``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from rlvr import PluginSpec, hookimpl
from rlvr.core.rewards import RewardConfig


@dataclass
class FormatTagsConfig(RewardConfig):
    reasoning_start: str = "<start_working_out>"
    reasoning_end: str = "<end_working_out>"
    solution_start: str = "<SOLUTION>"
    solution_end: str = "</SOLUTION>"
    reasoning_start_in_prompt: bool = False  # the prompt already ends with reasoning_start


@dataclass
class FormatExactConfig(FormatTagsConfig):
    score: float = 3.0


@dataclass
class FormatApproxConfig(FormatTagsConfig):
    present_once: float = 0.5
    otherwise: float = -1.0


def layout_regex(cfg: FormatTagsConfig) -> re.Pattern[str]:
    """The whole-completion layout: [reasoning_start] reasoning reasoning_end … solution_start answer solution_end."""
    start = re.escape(cfg.reasoning_start)
    start = f"(?:{start})?" if cfg.reasoning_start_in_prompt else start
    return re.compile(
        rf"^\s*{start}.+?{re.escape(cfg.reasoning_end)}.*?"
        rf"{re.escape(cfg.solution_start)}(.+?){re.escape(cfg.solution_end)}\s*\Z",
        re.DOTALL,
    )


def make_exact(cfg: FormatExactConfig) -> Callable[..., list[float]]:
    pattern = layout_regex(cfg)

    def format_exact(completions: list[str], **_: Any) -> list[float]:
        out = []
        for text in completions:
            m = pattern.match(text)
            out.append(cfg.score if m is not None and m.group(1).strip() else 0.0)
        return out

    return format_exact


def make_approx(cfg: FormatApproxConfig) -> Callable[..., list[float]]:
    tags = [cfg.reasoning_end, cfg.solution_start, cfg.solution_end]
    if not cfg.reasoning_start_in_prompt:
        tags.insert(0, cfg.reasoning_start)

    def format_approx(completions: list[str], **_: Any) -> list[float]:
        return [
            sum(cfg.present_once if text.count(tag) == 1 else cfg.otherwise for tag in tags) for text in completions
        ]

    return format_approx


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "format_exact",
            make_exact,
            FormatExactConfig,
            "+3.0 when the whole completion is <start_working_out>…<end_working_out><SOLUTION>…</SOLUTION>",
        ),
        PluginSpec(
            "format_approx",
            make_approx,
            FormatApproxConfig,
            "+0.5 per template tag present exactly once, -1.0 otherwise",
        ),
    ]
