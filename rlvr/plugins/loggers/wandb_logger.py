"""``logger=[jsonl,wandb]``: Weights & Biases, with the metric names of ``metrics.jsonl``.

Each step's metrics are logged at ``step=<training step>``; the composed config is the run config; the
sampled completions of each step are a ``wandb.Table`` (``completions``). Files go under
``RUN_DIR/wandb``. The W&B run id is kept in ``RUN_DIR/trackers.json``: a resumed rlvr run continues the same
W&B run (``resume="allow"``) and does not send again the steps W&B already has.

Needs ``pip install 'rlvr[trackers]'`` (or ``pip install wandb``) and, online, ``WANDB_API_KEY`` or
``wandb login``; ``WANDB_MODE=offline`` (or ``logger.wandb.mode=offline``) writes the run locally, to upload
later with ``wandb sync RUN_DIR/wandb/offline-run-*``. Checked when the plugin is created, before the model loads.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ConfigError, MissingDependencyError
from rlvr.core.tracking import COMPLETION_COLUMNS, TrackerState, check_reachable, completion_rows, scalars

MODES = ("", "online", "offline", "disabled")


@dataclass
class WandbLoggerConfig:
    project: str = "rlvr"
    entity: Optional[str] = None  # team or user (default: your W&B default entity)
    name: Optional[str] = None  # run display name (default: the run directory's name)
    group: Optional[str] = None
    tags: Optional[List[str]] = None
    mode: str = ""  # "" = $WANDB_MODE (default online) | online | offline | disabled
    log_completions: bool = True  # each step's sampled completions as a wandb.Table


def _wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise MissingDependencyError(
            "logger=wandb needs the wandb package: pip install 'rlvr[trackers]' (or pip install wandb)"
        ) from None
    return wandb


def _mode(cfg: WandbLoggerConfig) -> str:
    if cfg.mode not in MODES:
        raise ConfigError(f"logger.wandb.mode={cfg.mode!r}: choose online, offline or disabled")
    return cfg.mode or os.environ.get("WANDB_MODE", "online")


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbLogger:
    def __init__(self, cfg: WandbLoggerConfig) -> None:
        self.cfg = cfg
        self.wandb = _wandb()
        self.mode = _mode(cfg)
        if self.mode == "online":  # fail now, not after the model has loaded
            if not _has_api_key():
                raise ConfigError(
                    "logger=wandb is online but no W&B API key is set: export WANDB_API_KEY=..., run "
                    "`wandb login`, or log locally with WANDB_MODE=offline (logger.wandb.mode=offline)"
                )
            base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            check_reachable(
                base,
                "logger=wandb",
                "Check the network or WANDB_BASE_URL, or log locally with "
                "WANDB_MODE=offline and upload later with `wandb sync`.",
            )
        self.run: Any = None
        self.state: Optional[TrackerState] = None

    def on_train_start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        self.state = TrackerState(run_dir, "wandb")
        run_id = self.state.run_id or uuid.uuid4().hex[:12]
        self.run = self.wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            name=self.cfg.name or Path(run_dir).name,
            group=self.cfg.group,
            tags=list(self.cfg.tags) if self.cfg.tags else None,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
            mode=self.mode,
        )
        self.state.save(run_id=run_id)

    def on_step_end(self, step: int, metrics: dict[str, float], samples: list[dict[str, Any]]) -> None:
        if self.run is None or self.state is None or not self.state.is_new(step):
            return
        data: dict[str, Any] = dict(scalars(metrics))
        if self.cfg.log_completions and samples:
            data["completions"] = self.wandb.Table(
                columns=list(COMPLETION_COLUMNS), data=completion_rows(step, samples)
            )
        self.run.log(data, step=step)
        self.state.save(last_step=step)

    def on_train_end(self, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


@hookimpl
def rlvr_loggers() -> list[PluginSpec]:
    return [
        PluginSpec(
            "wandb",
            WandbLogger,
            WandbLoggerConfig,
            "Weights & Biases: metrics.jsonl metrics, config, completion tables (WANDB_MODE=offline works)",
        )
    ]
