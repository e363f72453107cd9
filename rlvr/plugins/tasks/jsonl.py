"""``task=jsonl``: any local JSON-lines file (one object per line) with a question and an answer column."""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import DataError, MissingValueError, PathNotFoundError
from rlvr.core.task import Task, TaskConfig


@dataclass
class JsonlTaskConfig(TaskConfig):
    train_path: str = ""
    eval_path: Optional[str] = None  # default: hold out eval_fraction of the training file
    eval_fraction: float = 0.1
    max_train_rows: int = 0  # 0 = all
    max_eval_rows: int = 0
    seed: int = 0
    correct: str = "exact_match"  # held-out accuracy: the answer text equals the reference after normalisation


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file; errors name the file and the line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PathNotFoundError(f"dataset file {str(p)!r} does not exist")
    rows = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{p}:{lineno}: not valid JSON ({exc.msg}); the file must hold one JSON object per line"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise DataError(f"dataset file {str(p)!r} is empty")
    return rows


def split_rows(
    rows: list[dict], eval_rows: Optional[list[dict]], cfg: JsonlTaskConfig
) -> tuple[list[dict], list[dict]]:
    if eval_rows is None:
        rows = list(rows)
        random.Random(cfg.seed).shuffle(rows)
        n_eval = max(1, int(len(rows) * cfg.eval_fraction))
        if n_eval >= len(rows):
            raise DataError(
                f"the dataset has {len(rows)} row(s) and at least one is held out for evaluation "
                f"(task.eval_fraction={cfg.eval_fraction}), which leaves none to train on: add rows, or give the "
                "held-out rows in their own file with task.eval_path=FILE (then every training row trains)"
            )
        if len(rows) < 20:
            warnings.warn(
                f"{n_eval} of the dataset's {len(rows)} rows are held out for evaluation (task.eval_fraction="
                f"{cfg.eval_fraction}, at least one) and not trained on; give task.eval_path=FILE to train on every row",
                stacklevel=2,
            )
        rows, eval_rows = rows[n_eval:], rows[:n_eval]
    if cfg.max_train_rows:
        rows = rows[: cfg.max_train_rows]
    if cfg.max_eval_rows:
        eval_rows = eval_rows[: cfg.max_eval_rows]
    return rows, eval_rows


def make_jsonl(cfg: JsonlTaskConfig) -> Task:
    if not cfg.train_path:
        raise MissingValueError("task=jsonl needs task.train_path=/path/to/train.jsonl")
    train = read_jsonl(cfg.train_path)
    train, held_out = split_rows(train, read_jsonl(cfg.eval_path) if cfg.eval_path else None, cfg)
    return Task("jsonl", train, held_out, cfg)


@hookimpl
def rlvr_tasks() -> list[PluginSpec]:
    return [PluginSpec("jsonl", make_jsonl, JsonlTaskConfig, "any local JSON-lines dataset")]
