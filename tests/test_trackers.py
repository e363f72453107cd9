"""Tracker loggers against the real libraries, offline: wandb (offline run directory), mlflow (local file
store, read back with MlflowClient), trackio (local SQLite). Each: the metrics.jsonl names, the config,
completion tables, and a resume that continues the same tracker run without sending a step twice."""

from __future__ import annotations

import glob
import json
import shutil
import sys

import pytest
from conftest import TINY

import rlvr


def _train(run_dir, logger: str, max_steps: int, *extra: str) -> None:
    cfg = rlvr.compose(
        [
            *TINY,
            f"logger=[jsonl,{logger}]",
            f"trainer.max_steps={max_steps}",
            "trainer.save_steps=2",
            "trainer.keep_checkpoints=3",
            f"trainer.output_dir={run_dir}",
            "trainer.log_completions=2",
            *extra,
        ]
    )
    rlvr.Trainer(cfg).train()


def _interrupted_then_resumed(run_dir, logger: str, *extra: str) -> list[dict]:
    """Steps 1-3 logged, checkpoint 3 lost (as if killed while writing it), then resumed from step 2 to step 4:
    step 3 is redone. Returns metrics.jsonl's rows."""
    _train(run_dir, logger, 3, *extra)
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-3")
    _train(run_dir, logger, 4, *extra)
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----- wandb -----------------------------------------------------------------------------------------------------
def _wandb_records(path):
    """Records of a W&B transaction log (``run-<id>.wandb``): LevelDB-style 32 KiB blocks of protobuf records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:  # block padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def test_wandb_offline_metrics_config_tables_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    rows = _interrupted_then_resumed(run_dir, "wandb")
    import wandb

    wandb.teardown()  # wait for the W&B service to write everything it was sent
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["run_id"]
    logs = sorted(glob.glob(str(run_dir / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb")))
    assert len(logs) == 2  # the first attempt and the resumed one: the same W&B run id
    history, config = [], {}
    for path in logs:
        for r in _wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
            elif kind == "run":
                config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
    steps = [h["_step"] for h in history if "loss" in h]
    assert steps == [1, 2, 3, 4]  # step 3 (redone after the resume) is not sent twice
    by_step = {r["step"]: r for r in rows}
    for h in history:
        if "loss" in h:
            jsonl = by_step[h["_step"]]
            for key in ("reward/mean", "loss", "rewards/arithmetic/mean", "completion_length/mean"):
                assert h[key] == pytest.approx(jsonl[key], rel=1e-6, abs=1e-9)
            assert h["completions/_type"] == "table-file" and h["completions/nrows"] == 2
    assert config["trainer"]["max_steps"] in (3, 4) and config["model"]["name"] == "tiny"


# ----- mlflow ----------------------------------------------------------------------------------------------------
def test_mlflow_local_store_metrics_params_table_and_resume(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    rows = _interrupted_then_resumed(run_dir, "mlflow")
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "reward/mean")
    assert [m.step for m in history] == [1, 2, 3, 4]  # one run, no step twice
    assert [m.value for m in history] == pytest.approx([r["reward/mean"] for r in rows], abs=1e-6)
    assert set(run.data.metrics) >= {"loss", "grad_norm", "rewards/arithmetic/mean", "completion_length/mean"}
    assert run.data.params["trainer.save_steps"] == "2" and run.data.params["model.name"] == "tiny"
    table = json.loads(open(client.download_artifacts(run_id, "completions.json", str(tmp_path))).read())
    step_col = table["columns"].index("step")
    assert sorted({r[step_col] for r in table["data"]}) == [1, 2, 3, 4] and len(table["data"]) == 8


# ----- trackio ---------------------------------------------------------------------------------------------------
def test_trackio_local_metrics_config_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    import trackio.sqlite_storage as storage

    for name, mod in list(sys.modules.items()):  # trackio reads $TRACKIO_DIR once, at import
        if name.startswith("trackio") and hasattr(mod, "TRACKIO_DIR"):
            monkeypatch.setattr(mod, "TRACKIO_DIR", tmp_path / "trackio")
    run_dir = tmp_path / "run"
    rows = _interrupted_then_resumed(run_dir, "trackio", "logger.trackio.project=rlvr-test")
    name = json.loads((run_dir / "trackers.json").read_text())["trackio"]["run_id"]
    assert storage.SQLiteStorage.get_runs("rlvr-test") == [name]
    logs = [x for x in storage.SQLiteStorage.get_logs("rlvr-test", name) if "loss" in x]
    assert [x["step"] for x in logs] == [1, 2, 3, 4]
    assert [x["reward/mean"] for x in logs] == pytest.approx([r["reward/mean"] for r in rows], abs=1e-6)
    table = logs[3]["completions"]  # step 4's sampled completions
    assert table["_type"] == "trackio.table" and [r["step"] for r in table["_value"]] == [4, 4]
    assert set(table["_value"][0]) >= {"prompt", "completion", "answer", "rewards", "advantage"}
    config = storage.SQLiteStorage.get_run_config("rlvr-test", name)
    assert config["trainer"]["save_steps"] == 2


# ----- fail before the model loads -------------------------------------------------------------------------------
def _cfg_with_missing_model(logger: str, *extra: str):
    # a model path that does not exist: reaching the model would raise FileNotFoundError instead
    return rlvr.compose([*TINY, "model=hf", "model.name_or_path=/nonexistent/model", f"logger=[{logger}]", *extra])


@pytest.mark.parametrize("logger,module", [("wandb", "wandb"), ("mlflow", "mlflow"), ("trackio", "trackio")])
def test_tracker_not_installed(logger, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'rlvr\[trackers\]'"):
        rlvr.Trainer(_cfg_with_missing_model(logger))


def test_tracker_unreachable_or_unconfigured(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(ValueError, match="WANDB_API_KEY.*WANDB_MODE=offline"):
        rlvr.Trainer(_cfg_with_missing_model("wandb"))
    with pytest.raises(ConnectionError, match=r"logger=mlflow: cannot reach http://127.0.0.1:9/health"):
        rlvr.Trainer(_cfg_with_missing_model("mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9"))
    with pytest.raises(ConnectionError, match="logger=trackio: cannot reach"):
        rlvr.Trainer(_cfg_with_missing_model("trackio", "logger.trackio.server_url=http://127.0.0.1:9"))
