"""``task=gsm8k``: grade-school math word problems.

Reads local ``train.jsonl`` / ``test.jsonl`` when ``task.data_dir`` holds them (this repository's
CI uses ``../shared/data/gsm8k``); otherwise loads the Hub dataset ``openai/gsm8k`` (needs the
``datasets`` package and network). Each row gets ``answer`` = the final number (the text after
``####``) and ``solution`` = the full reference solution.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlvr.core.errors import DataError, MissingDependencyError
from rlvr import PluginSpec, hookimpl
from rlvr.core.task import Task
from rlvr.plugins.tasks.jsonl import JsonlTaskConfig, read_jsonl, split_rows

SYSTEM_PROMPT = ("Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>")


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
    if cfg.data_dir:
        d = Path(cfg.data_dir).expanduser()
        train = normalise(read_jsonl(d / "train.jsonl"), str(d / "train.jsonl"))
        test_file = d / "test.jsonl"
        held = normalise(read_jsonl(test_file), str(test_file)) if test_file.is_file() else None
    else:
        try:
            import datasets
        except ImportError:
            raise MissingDependencyError("task=gsm8k without task.data_dir loads the Hub dataset and needs `pip install datasets`; "
                                         "or point task.data_dir at a folder with train.jsonl/test.jsonl") from None
        ds = datasets.load_dataset(cfg.hub_id, "main")
        train = normalise(list(ds["train"]), cfg.hub_id)
        held = normalise(list(ds["test"]), cfg.hub_id)
    train, held = split_rows(train, held, cfg)
    return Task("gsm8k", train, held, cfg)


@hookimpl
def rlvr_tasks() -> list[PluginSpec]:
    return [PluginSpec("gsm8k", make_gsm8k, GSM8KConfig, "GSM8K from local jsonl files or the Hub")]
