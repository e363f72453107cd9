"""``logger=[jsonl,tensorboard]``: the same per-step metrics as ``metrics.jsonl``, as TensorBoard scalars.

Event files go to ``RUN_DIR/tensorboard`` (``logger.tensorboard.log_dir``); view them with
``tensorboard --logdir RUN_DIR/tensorboard``. Every metric of a step is one scalar under its own
name (``reward/mean``, ``rewards/<name>/mean``, ``kl``, ``clip_ratio/low_mean``, ...); the sampled
completions of each step are a text entry (``completions``). On resume, events after the
checkpoint's step are dropped (``purge_step``), so no step appears twice. Needs the
``tensorboard`` package (``pip install 'rlvr[report]'``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import MissingDependencyError


@dataclass
class TensorBoardLoggerConfig:
    log_dir: str = "tensorboard"  # relative to the run directory (or absolute)
    log_completions: bool = True  # each step's sampled completions as a text entry
    log_config: bool = True  # the composed config as a text entry at the start


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingDependencyError(
            "logger=tensorboard needs the tensorboard package: pip install 'rlvr[report]' (or pip install tensorboard)"
        ) from None
    return SummaryWriter


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ⏎ ")[:400]


class TensorBoardLogger:
    def __init__(self, cfg: TensorBoardLoggerConfig) -> None:
        self.cfg = cfg
        self._writer_cls = _summary_writer()  # fail before the model loads when tensorboard is missing
        self.writer: Any = None

    def on_train_start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        log_dir = Path(self.cfg.log_dir)
        log_dir = log_dir if log_dir.is_absolute() else Path(run_dir) / log_dir
        # purge_step: a resumed run drops the events of steps after its checkpoint (they are redone)
        self.writer = self._writer_cls(log_dir=str(log_dir), purge_step=start_step + 1 if start_step else None)
        if self.cfg.log_config and not start_step:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def on_step_end(self, step: int, metrics: dict[str, float], samples: list[dict[str, Any]]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, float(value), step)
        if self.cfg.log_completions and samples:
            names = list(samples[0].get("rewards") or {})
            rows = [
                "| prompt | completion | answer | " + " | ".join(names) + " | advantage |",
                "|---|---|---|" + "---|" * len(names) + "---|",
            ]
            for s in samples:
                prompt = str(s.get("prompt", "")).strip().splitlines()
                rewards = s.get("rewards") or {}
                rows.append(
                    f"| {_cell(prompt[-1] if prompt else '')} | {_cell(s.get('completion', ''))} | "
                    f"{_cell(s.get('answer', ''))} | "
                    + " | ".join(_cell(rewards.get(n)) for n in names)
                    + f" | {float(s.get('advantage', 0.0)):+.3f} |"
                )
            self.writer.add_text("completions", "\n".join(rows), step)
        self.writer.flush()  # a crash loses nothing already logged

    def on_train_end(self, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@hookimpl
def rlvr_loggers() -> list[PluginSpec]:
    return [
        PluginSpec(
            "tensorboard",
            TensorBoardLogger,
            TensorBoardLoggerConfig,
            "TensorBoard scalars (the metrics.jsonl metrics) and sampled completions",
        )
    ]
