"""``env=calculator task=multiply3 reward=[calculator_correct,tool_use]``: 3-digit multiplication with a
calculator tool.

The model is asked e.g. "What is 123 * 456?" and may call ``calculator(expression)``; the result comes
back as a tool message; its next turn without a tool call is the final answer.

Rewards (read the ``episode`` column, i.e. the whole trajectory):

* ``calculator_correct``: 1.0 when the episode ended with a final answer (the env said done) whose last
  number is the product, else 0.0. A truncated episode scores 0 (no final answer).
* ``tool_use``: partial credit for the format, so that GRPO has a signal while the model cannot call
  tools yet: 1.0 = at least one call that ran without error; 0.5 = a ``<tool_call>`` that did not run
  (bad JSON, unknown tool, bad arguments); 0.2 = ``<tool_call>`` written without a parseable call
  inside; 0.0 = no attempt. Taken over the whole episode (the best turn).
"""

from __future__ import annotations

import ast
import operator
import random
from dataclasses import dataclass
from typing import Any

from rlvr import PluginSpec, hookimpl
from rlvr.core.environment import EnvConfig, ToolEnv
from rlvr.core.episodes import final_answer
from rlvr.core.rewards import RewardConfig
from rlvr.core.task import Task, TaskConfig, last_number, same_number

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Pow: operator.pow,
}
MAX_ABS = 10**15


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 16 or abs(left) > 10**6):
            raise ValueError("exponent too large")
        value = _OPS[type(node.op)](left, right)
        if abs(value) > MAX_ABS:
            raise ValueError("result too large")
        return value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError(f"unsupported expression element {type(node).__name__}; use numbers and + - * / // % **")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "123 * 456"
    """
    if not isinstance(expression, str) or len(expression) > 200:
        raise ValueError("expression must be a string of at most 200 characters")
    value = _eval(ast.parse(expression.strip(), mode="eval"))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


calculator.example = {"expression": "12 * 34"}  # type: ignore[attr-defined]  # shown in the rlvr tool prompt


@dataclass
class CalculatorEnvConfig(EnvConfig):
    max_turns: int = 3
    max_tokens: int = 160
    system_prompt: str | None = None  # prepended (the tool description is added to it in the rlvr format)


class CalculatorEnv(ToolEnv):
    def __init__(self, cfg: CalculatorEnvConfig) -> None:
        super().__init__(cfg, [calculator], cfg.system_prompt)

    def first_messages(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": str(row["question"])}]


@dataclass
class Multiply3Config(TaskConfig):
    prompt_template: str = "What is {a} * {b}? Use the calculator tool."
    train_size: int = 2000
    eval_size: int = 100
    seed: int = 0


def multiply_rows(n: int, rng: random.Random, template: str) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        rows.append({"a": a, "b": b, "answer": a * b, "question": template.format(a=a, b=b)})
    return rows


def load_multiply3(cfg: Multiply3Config) -> Task:
    """Seeded 3-digit multiplications; the eval rows are disjoint from the training rows."""
    rng = random.Random(cfg.seed)
    eval_rows = multiply_rows(cfg.eval_size, random.Random(cfg.seed + 1_000_003), cfg.prompt_template)
    held = {(r["a"], r["b"]) for r in eval_rows}
    train = [
        r
        for r in multiply_rows(cfg.train_size + cfg.eval_size, rng, cfg.prompt_template)
        if (r["a"], r["b"]) not in held
    ][: cfg.train_size]
    return Task(
        "multiply3",
        train,
        eval_rows,
        cfg,
        is_correct=lambda completion, row: same_number(last_number(completion), row["answer"]),
    )


def calculator_correct_reward(cfg: RewardConfig) -> Any:
    def calculator_correct(
        completions: list[str], episode: list[Any] | None = None, answer: Any = None, **kw: Any
    ) -> list[float | None]:
        if episode is None or answer is None:
            raise ValueError(
                "calculator_correct scores multi-turn episodes: use it with env=calculator (the "
                "'episode' column) and a task with an 'answer' column, e.g. task=multiply3"
            )
        out: list[float | None] = []
        for ep, ans in zip(episode, answer):
            text = final_answer(ep)
            out.append(1.0 if text is not None and same_number(last_number(text), ans) else 0.0)
        return out

    return calculator_correct


def tool_use_score(episode: dict[str, Any]) -> float:
    """Partial credit for tool-call format over an episode (see the module docstring)."""
    best = 0.0
    infos = episode.get("infos", []) if isinstance(episode, dict) else []
    for info in infos:
        for call in info.get("calls", []) if isinstance(info, dict) else []:
            best = max(best, 0.5 if call.get("error") or info.get("tool_errors") else 1.0)
        if info.get("tool_calls") and not info.get("tool_errors"):
            best = 1.0
    if best == 0.0:
        said = [m.get("content", "") for m in episode.get("messages", []) if m.get("role") == "assistant"]
        if any("<tool_call>" in str(s) for s in said):
            best = 0.2
    return best


def tool_use_reward(cfg: RewardConfig) -> Any:
    def tool_use(completions: list[str], episode: list[Any] | None = None, **kw: Any) -> list[float | None]:
        if episode is None:
            raise ValueError("tool_use scores multi-turn episodes: use it with an env (the 'episode' column)")
        return [tool_use_score(ep) for ep in episode]

    return tool_use


@hookimpl
def rlvr_envs() -> list[PluginSpec]:
    return [PluginSpec("calculator", CalculatorEnv, CalculatorEnvConfig, "a calculator tool (safe arithmetic)")]


@hookimpl
def rlvr_tasks() -> list[PluginSpec]:
    return [PluginSpec("multiply3", load_multiply3, Multiply3Config, "3-digit multiplications (for env=calculator)")]


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "calculator_correct",
            calculator_correct_reward,
            RewardConfig,
            "1 when the episode's final answer is the product (env=calculator)",
        ),
        PluginSpec(
            "tool_use",
            tool_use_reward,
            RewardConfig,
            "partial credit for well-formed tool calls that run (multi-turn envs)",
        ),
    ]
