"""``task=arithmetic`` (the default): seeded synthetic "What is a + b?" questions, no download.

All (a, op, b) combinations within the difficulty are enumerated, shuffled with the seed and
split, so the held-out questions never appear in training. A held-out split smaller than
``min_eval_rows`` (default 120) is topped up with questions that have an operand above
``max_operand`` (up to ``eval_extra_max_operand``, default 19). When the space is very large, a
seeded sample of it is used instead.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import List, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ConfigError
from rlvr.core.task import Task, TaskConfig

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass
class ArithmeticConfig(TaskConfig):
    system_prompt: Optional[str] = "You are a careful calculator. Reply with the result."
    prompt_template: str = "What is {question}?"
    min_operand: int = 0
    max_operand: int = 9  # difficulty: 9 = single-digit operands
    operations: List[str] = field(default_factory=lambda: ["+"])
    eval_fraction: float = 0.2
    min_eval_rows: int = 120  # a held-out split smaller than this is topped up with wider-operand questions
    eval_extra_max_operand: int = 19  # ... whose operands go up to this (at least one above max_operand)
    max_rows: int = 20000
    seed: int = 1234
    correct: str = "numeric"  # held-out accuracy: the final number equals the answer


def make_rows(cfg: ArithmeticConfig) -> tuple[list[dict], list[dict]]:
    bad = [op for op in cfg.operations if op not in OPS]
    if bad or not cfg.operations:
        raise ConfigError(f"task.operations={list(cfg.operations)}: supported operations are {sorted(OPS)}")
    if cfg.max_operand < cfg.min_operand:
        raise ConfigError(f"task.max_operand ({cfg.max_operand}) is below task.min_operand ({cfg.min_operand})")
    if not 0.0 < cfg.eval_fraction < 1.0:
        raise ConfigError(f"task.eval_fraction must be in (0, 1), got {cfg.eval_fraction}")
    operands = range(cfg.min_operand, cfg.max_operand + 1)
    rng = random.Random(cfg.seed)
    space = len(operands) ** 2 * len(cfg.operations)
    if space <= cfg.max_rows:
        triples = list(itertools.product(operands, cfg.operations, operands))
        rng.shuffle(triples)
    else:
        seen: set[tuple] = set()
        while len(seen) < cfg.max_rows:
            seen.add((rng.choice(operands), rng.choice(cfg.operations), rng.choice(operands)))
        triples = sorted(seen)
        rng.shuffle(triples)
    rows = [{"question": f"{a} {op} {b}", "answer": str(OPS[op](a, b))} for a, op, b in triples]
    n_eval = max(1, round(len(rows) * cfg.eval_fraction))
    return rows[n_eval:], rows[:n_eval] + extra_eval_rows(cfg, cfg.min_eval_rows - n_eval)


def extra_eval_rows(cfg: ArithmeticConfig, k: int) -> list[dict]:
    """Up to ``k`` held-out questions with operands in [min_operand, eval_extra_max_operand] and at least one
    above max_operand (so none is a training question), a seeded sample in a seeded order."""
    if k <= 0 or cfg.eval_extra_max_operand <= cfg.max_operand:
        return []
    wide = range(cfg.min_operand, cfg.eval_extra_max_operand + 1)
    triples = [(a, op, b) for a, op, b in itertools.product(wide, cfg.operations, wide) if max(a, b) > cfg.max_operand]
    random.Random(cfg.seed + 1).shuffle(triples)
    return [{"question": f"{a} {op} {b}", "answer": str(OPS[op](a, b))} for a, op, b in triples[:k]]


def make_arithmetic(cfg: ArithmeticConfig) -> Task:
    train, held_out = make_rows(cfg)
    return Task("arithmetic", train, held_out, cfg)


@hookimpl
def rlvr_tasks() -> list[PluginSpec]:
    return [
        PluginSpec("arithmetic", make_arithmetic, ArithmeticConfig, "synthetic a+b questions with a held-out split")
    ]
