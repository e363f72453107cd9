"""``task=gsm8k``: grade-school math word problems.

Reads local ``train.jsonl`` / ``test.jsonl`` when ``task.data_dir`` holds them. Without it: the Hub
dataset ``openai/gsm8k`` through ``datasets`` when it is in the local cache (no network), else the local
copy in ``$RLVR_GSM8K_DIR`` or ``../shared/data/gsm8k``, else a download of the Hub dataset. Each row
gets ``answer`` = the final number (the text after ``####``) and ``solution`` = the full reference solution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import DataError, PathNotFoundError
from rlvr.core.hfdata import hub_rows
from rlvr.core.task import Task
from rlvr.plugins.tasks.jsonl import JsonlTaskConfig, read_jsonl, split_rows

SYSTEM_PROMPT = "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"


@dataclass
class GSM8KConfig(JsonlTaskConfig):
    system_prompt: Optional[str] = SYSTEM_PROMPT
    data_dir: str = ""  # a folder with train.jsonl and test.jsonl; empty = Hub dataset
    hub_id: str = "openai/gsm8k"
    correct: str = "math_answer"  # held-out accuracy: the final answer (<answer>, ####, boxed, last number) is right


def final_answer(solution: str) -> str:
    return solution.split("####")[-1].strip().replace(",", "")


def normalise(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        if "question" not in row or "answer" not in row:
            raise DataError(f"{source}: row {i} lacks 'question' or 'answer' (columns: {sorted(row)})")
        out.append({**row, "solution": row["answer"], "answer": final_answer(str(row["answer"]))})
    return out


def make_gsm8k(cfg: GSM8KConfig) -> Task:
    # no data_dir: the Hub dataset through `datasets` when cached; else the local copy named by $RLVR_GSM8K_DIR;
    # else download it
    local = Path(os.environ.get("RLVR_GSM8K_DIR", "") or "/nonexistent").expanduser()
    d = Path(cfg.data_dir).expanduser() if cfg.data_dir else (local if (local / "train.jsonl").is_file() else None)
    hub = None if cfg.data_dir else hub_rows(cfg.hub_id, "main", ("train", "test"), download=d is None)
    if hub is not None:
        train, held = normalise(hub["train"], cfg.hub_id), normalise(hub["test"], cfg.hub_id)
    elif d is None:
        raise PathNotFoundError(
            f"task=gsm8k: {cfg.hub_id} is neither in the datasets cache nor downloadable (is "
            f"`datasets` installed? are you online?) and $RLVR_GSM8K_DIR names no local copy: set "
            "task.data_dir to a folder with train.jsonl/test.jsonl"
        )
    else:
        train = normalise(read_jsonl(d / "train.jsonl"), str(d / "train.jsonl"))
        test_file = d / "test.jsonl"
        held = normalise(read_jsonl(test_file), str(test_file)) if test_file.is_file() else None
    train, held = split_rows(train, held, cfg)
    return Task("gsm8k", train, held, cfg)


@hookimpl
def rlvr_tasks() -> list[PluginSpec]:
    return [PluginSpec("gsm8k", make_gsm8k, GSM8KConfig, "GSM8K from local jsonl files or the Hub")]
