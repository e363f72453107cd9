"""``logger=[jsonl,mlflow]``: MLflow tracking, with the metric names of ``metrics.jsonl``.

Each step's metrics are logged at ``step=<training step>``; the composed config is flattened into run
parameters (``trainer.lr``, ``loss.epsilon``, ...) and also stored whole as the artifact ``config.json``;
the sampled completions are appended to the table artifact ``completions.json`` (``mlflow.load_table``).
``logger.mlflow.tracking_uri`` (default ``$MLFLOW_TRACKING_URI``, else a local file store in
``RUN_DIR/mlruns``; view it with ``mlflow ui --backend-store-uri RUN_DIR/mlruns``). The MLflow run id is
kept in ``RUN_DIR/trackers.json``: a resumed rlvr run continues the same MLflow run and does not log again
the steps MLflow already has.

Needs ``pip install 'rlvr[trackers]'`` (or ``pip install mlflow``). A server URI (http/https) is checked
when the plugin is created, before the model loads. MLflow 3 keeps its file store behind
``MLFLOW_ALLOW_FILE_STORE=true``, which this logger sets for ``file:`` URIs.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.errors import MissingDependencyError
from rlvr.core.tracking import COMPLETION_COLUMNS, TrackerState, check_reachable, completion_rows, flatten, scalars

PARAM_VALUE_MAX = 6000  # MLflow's limit on a parameter value
BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")


@dataclass
class MlflowLoggerConfig:
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else file:RUN_DIR/mlruns
    experiment: str = "rlvr"
    run_name: Optional[str] = None  # default: the run directory's name
    log_config: bool = True  # the composed config as parameters and as config.json
    log_completions: bool = True  # each step's sampled completions, appended to completions.json


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise MissingDependencyError(
            "logger=mlflow needs the mlflow package: pip install 'rlvr[trackers]' (or pip install mlflow-skinny)"
        ) from None
    return mlflow


class MlflowLogger:
    def __init__(self, cfg: MlflowLoggerConfig) -> None:
        self.cfg = cfg
        self.mlflow = _mlflow()
        uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri.startswith(("http://", "https://")):  # fail now, not after the model has loaded
            check_reachable(
                uri.rstrip("/") + "/health",
                "logger=mlflow",
                "Start the server (mlflow server ...), fix logger.mlflow.tracking_uri / "
                "MLFLOW_TRACKING_URI, or log to a local store with "
                "logger.mlflow.tracking_uri=file:/some/dir",
            )
        self.uri = uri
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.state: Optional[TrackerState] = None

    def on_train_start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri = self.uri or (Path(run_dir).resolve() / "mlruns").as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.state = TrackerState(run_dir, "mlflow")
        if self.state.run_id:  # resume: the same MLflow run
            self.run_id = self.state.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.cfg.experiment)
        run = self.client.create_run(
            exp_id,
            run_name=self.cfg.run_name or Path(run_dir).name,
            tags={"rlvr.run_dir": str(Path(run_dir).resolve())},
        )
        self.run_id = run.info.run_id
        self.state.save(run_id=self.run_id)
        if self.cfg.log_config:
            params = [
                Param(BAD_KEY_CHARS.sub("_", k)[:250], str(v)[:PARAM_VALUE_MAX]) for k, v in flatten(config).items()
            ]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=params[i : i + 100])
            self.client.log_dict(self.run_id, config, "config.json")

    def on_step_end(self, step: int, metrics: dict[str, float], samples: list[dict[str, Any]]) -> None:
        if self.client is None or self.state is None or not self.state.is_new(step):
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(BAD_KEY_CHARS.sub("_", k), v, now, step) for k, v in scalars(metrics).items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])
        if self.cfg.log_completions and samples:
            rows = completion_rows(step, samples)
            table = {c: [r[j] for r in rows] for j, c in enumerate(COMPLETION_COLUMNS)}
            self.client.log_table(self.run_id, data=table, artifact_file="completions.json")
        self.state.save(last_step=step)

    def on_train_end(self, metrics: dict[str, float]) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id)
            self.client = None


@hookimpl
def rlvr_loggers() -> list[PluginSpec]:
    return [
        PluginSpec(
            "mlflow",
            MlflowLogger,
            MlflowLoggerConfig,
            "MLflow: metrics.jsonl metrics, config as params, completions table (local store or server)",
        )
    ]
