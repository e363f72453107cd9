"""``logger=[jsonl]``: ``metrics.jsonl`` (one line per step) and ``completions.jsonl`` (samples per step)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlvr import PluginSpec, hookimpl


@dataclass
class JsonlLoggerConfig:
    metrics_file: str = "metrics.jsonl"
    completions_file: str = "completions.jsonl"


def _step_of(line: str) -> float:
    """The step a jsonl line belongs to; infinity (= dropped) for a blank or torn line."""
    try:
        return float(json.loads(line).get("step", 0)) if line.strip() else float("inf")
    except (json.JSONDecodeError, AttributeError):
        return float("inf")


class JsonlLogger:
    def __init__(self, cfg: JsonlLoggerConfig) -> None:
        self.cfg = cfg
        self.run_dir: Path | None = None

    def on_train_start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        self.run_dir = Path(run_dir)
        # on resume, drop lines of steps after the checkpoint (they will be redone), and a line torn by a crash
        for name in (self.cfg.metrics_file, self.cfg.completions_file):
            path = self.run_dir / name
            if path.exists():
                kept = [line for line in path.read_text().splitlines() if _step_of(line) <= start_step]
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(line + "\n" for line in kept))
                os.replace(tmp, path)  # atomic: a crash here never loses the earlier lines

    def on_step_end(self, step: int, metrics: dict[str, float], samples: list[dict[str, Any]]) -> None:
        assert self.run_dir is not None
        with (self.run_dir / self.cfg.metrics_file).open("a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")
        if samples:
            with (self.run_dir / self.cfg.completions_file).open("a") as fh:
                for s in samples:
                    fh.write(json.dumps({"step": step, **s}) + "\n")

    def on_train_end(self, metrics: dict[str, float]) -> None:
        pass


@hookimpl
def rlvr_loggers() -> list[PluginSpec]:
    return [
        PluginSpec("jsonl", JsonlLogger, JsonlLoggerConfig, "metrics.jsonl and completions.jsonl in the run directory")
    ]
