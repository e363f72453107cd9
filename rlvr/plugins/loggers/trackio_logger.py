"""``logger=[jsonl,trackio]``: Trackio (Hugging Face's local-first tracker), with the metric names of
``metrics.jsonl``.

Each step's metrics are logged at ``step=<training step>``; the composed config is the run config; the
sampled completions of each step are a ``trackio.Table`` (``completions``). Runs are stored locally
(``$TRACKIO_DIR``, default ``~/.cache/huggingface/trackio``; view them with ``trackio show``), or sent to a
Hugging Face Space (``logger.trackio.space_id``) or a self-hosted server (``logger.trackio.server_url``).
The trackio run name is kept in ``RUN_DIR/trackers.json``: a resumed rlvr run continues the same trackio
run (``resume="allow"``) and does not log again the steps it already has.

Needs ``pip install 'rlvr[trackers]'`` (or ``pip install trackio``); a Space needs a Hugging Face token
(``hf auth login`` or ``HF_TOKEN``). Both are checked when the plugin is created, before the model loads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import ConfigError, MissingDependencyError
from rlvr.core.tracking import COMPLETION_COLUMNS, TrackerState, check_reachable, completion_rows, scalars


@dataclass
class TrackioLoggerConfig:
    project: str = "rlvr"
    name: Optional[str] = None  # run name (default: the run directory's name + a short hash of its path)
    group: Optional[str] = None
    space_id: Optional[str] = None  # log to this Hugging Face Space instead of locally
    server_url: Optional[str] = None  # or to a self-hosted trackio server
    log_completions: bool = True  # each step's sampled completions as a trackio.Table


def _trackio() -> Any:
    try:
        import trackio
    except ImportError:
        raise MissingDependencyError(
            "logger=trackio needs the trackio package: pip install 'rlvr[trackers]' (or pip install trackio)"
        ) from None
    return trackio


class TrackioLogger:
    def __init__(self, cfg: TrackioLoggerConfig) -> None:
        self.cfg = cfg
        self.trackio = _trackio()
        if cfg.space_id:  # fail now, not after the model has loaded
            from huggingface_hub import get_token

            if not get_token():
                raise ConfigError(
                    f"logger.trackio.space_id={cfg.space_id!r} needs a Hugging Face token: run "
                    "`hf auth login` or export HF_TOKEN=..., or drop space_id to log locally"
                )
        if cfg.server_url:
            check_reachable(
                cfg.server_url,
                "logger=trackio",
                "Start the trackio server, fix logger.trackio.server_url, or drop it to log locally.",
            )
        self.run: Any = None
        self.state: Optional[TrackerState] = None

    def on_train_start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        self.state = TrackerState(run_dir, "trackio")
        digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:6]
        name = self.state.run_id or self.cfg.name or f"{Path(run_dir).name}-{digest}"
        self.run = self.trackio.init(
            project=self.cfg.project,
            name=name,
            group=self.cfg.group,
            config=config,
            resume="allow",
            space_id=self.cfg.space_id,
            server_url=self.cfg.server_url,
            embed=False,
            auto_log_gpu=False,
            auto_log_cpu=False,
        )
        self.state.save(run_id=name)

    def on_step_end(self, step: int, metrics: dict[str, float], samples: list[dict[str, Any]]) -> None:
        if self.run is None or self.state is None or not self.state.is_new(step):
            return
        data: dict[str, Any] = dict(scalars(metrics))
        if self.cfg.log_completions and samples:
            data["completions"] = self.trackio.Table(
                columns=list(COMPLETION_COLUMNS), data=completion_rows(step, samples)
            )
        self.trackio.log(data, step=step)
        self.state.save(last_step=step)

    def on_train_end(self, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.trackio.finish()
            self.run = None


@hookimpl
def rlvr_loggers() -> list[PluginSpec]:
    return [
        PluginSpec(
            "trackio",
            TrackioLogger,
            TrackioLoggerConfig,
            "Trackio (local-first): metrics.jsonl metrics, config, completion tables",
        )
    ]
