"""Checkpoints and resume: a run killed mid-step and mid-checkpoint finishes bit-identical to an uninterrupted one."""

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY, run_cli

# a reward that SIGKILLs its own process on its N-th call (= during step N, after generation, before the update)
CRASH_REWARD = """
import os, signal
_calls = 0

def crash_reward(completions, **columns):
    global _calls
    _calls += 1
    if int(os.environ.get("CRASH_AT_REWARD_CALL", "0") or 0) == _calls:
        os.kill(os.getpid(), signal.SIGKILL)
    return [float(len(c) % 3) for c in completions]
"""

# full fine-tuning with a KL term (the frozen reference must be the base, not the resumed weights), two rewards,
# a lr large enough that every step moves the weights, a checkpoint every 2 steps
RUN = [
    *TINY,
    "trainer.max_steps=8",
    "trainer.save_steps=2",
    "trainer.keep_checkpoints=4",
    "trainer.lr=1e-3",
    "loss.beta=0.04",
    "reward=[arithmetic,function]",
    "reward.function.path=crash_reward:crash_reward",
]


def volatile(key: str) -> bool:
    return "time" in key or key.endswith("per_s") or key.startswith("memory/")  # memory/: per process


def metric_rows(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if not volatile(k)}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa and wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    (d / "crash_reward.py").write_text(CRASH_REWARD)
    return d


@pytest.fixture(scope="module")
def uninterrupted(workdir):
    run_dir = workdir / "uninterrupted"
    proc = run_cli("train", *RUN, f"hydra.run.dir={run_dir}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_sigkill_mid_step_and_mid_checkpoint_then_resume_is_bit_identical(workdir, uninterrupted):
    run_dir = workdir / "interrupted"
    args = ["train", *RUN, f"hydra.run.dir={run_dir}"]

    # 1. killed in the middle of step 5 (after generating, before the update): checkpoint-4 is the latest
    proc = run_cli(*args, cwd=workdir, env={"CRASH_AT_REWARD_CALL": "5"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [m["step"] for m in metric_rows(run_dir)] == [1, 2, 3, 4]
    assert not (run_dir / "final").exists()

    # 2. resumed from checkpoint-4, killed while writing checkpoint-6 (weights written, trainer state not yet)
    proc = run_cli(*args, cwd=workdir, env={"RLVR_TEST_CRASH_AT": "checkpoint-write:6"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "checkpoint-4 at step 4" in proc.stdout
    ckpts = run_dir / "checkpoints"
    leftovers = [p.name for p in ckpts.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers and all("checkpoint-6" in n for n in leftovers)  # the half-written one, never renamed into place
    assert not (ckpts / "checkpoint-6").exists()
    assert [m["step"] for m in metric_rows(run_dir)] == [1, 2, 3, 4, 5, 6]  # logged before the crash...

    # 3. resumed again from checkpoint-4 (6 is incomplete): steps 5 and 6 are redone, not duplicated
    proc = run_cli(*args, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint-4 at step 4" in proc.stdout
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp-")]  # leftovers cleaned up

    got, want = metric_rows(run_dir), metric_rows(uninterrupted)
    assert [m["step"] for m in got] == list(range(1, 9))  # no step lost or written twice
    assert got == want  # every metric bit-identical (loss, kl, grad_norm, lr, rewards, lengths)
    assert (run_dir / "completions.jsonl").read_text() == (uninterrupted / "completions.jsonl").read_text()
    assert_same_weights(run_dir / "final", uninterrupted / "final")
    assert_same_weights(ckpts / "checkpoint-8", uninterrupted / "checkpoints" / "checkpoint-8")
    state = torch.load(ckpts / "checkpoint-8" / "trainer_state.pt", weights_only=False)
    for key in ("optimizer", "scheduler", "sampler", "rng", "step", "bad_steps_in_row", "skipped_steps"):
        assert key in state, key
    assert {"torch", "python", "numpy"} <= set(state["rng"]) and state["step"] == 8
    # the metrics so far travel with each checkpoint
    assert [
        json.loads(x)["step"] for x in (ckpts / "checkpoint-6" / "metrics.jsonl").read_text().splitlines()
    ] == list(range(1, 7))


def test_resume_from_a_given_checkpoint_path(workdir, uninterrupted, monkeypatch):
    """trainer.resume=PATH into a new run directory: steps 5..8 equal the uninterrupted run's."""
    import rlvr

    monkeypatch.syspath_prepend(str(workdir))
    run_dir = workdir / "from_path"
    cfg = rlvr.compose([*RUN, f"trainer.resume={uninterrupted / 'checkpoints' / 'checkpoint-4'}"])
    rlvr.Trainer(cfg, run_dir=run_dir).train()
    assert metric_rows(run_dir) == metric_rows(uninterrupted)[4:]
    assert_same_weights(run_dir / "final", uninterrupted / "final")


def test_rerun_of_a_finished_run_changes_nothing(workdir, uninterrupted, monkeypatch):
    before = (uninterrupted / "metrics.jsonl").read_text()
    final = weights(uninterrupted / "final")
    monkeypatch.syspath_prepend(str(workdir))
    import rlvr

    trainer = rlvr.Trainer(rlvr.compose(RUN), run_dir=uninterrupted)
    trainer.train()
    assert trainer.step == 8
    assert (uninterrupted / "metrics.jsonl").read_text() == before
    assert all(torch.equal(final[k], v) for k, v in weights(uninterrupted / "final").items())


def test_lora_resume_is_bit_identical(tmp_path):
    """LoRA: adapter weights, optimizer and RNG restored; the same seed gives the same adapter init."""
    import rlvr

    run = [
        *TINY,
        "model.lora=true",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
        "trainer.lr=1e-3",
        "loss.beta=0.04",
    ]
    rlvr.Trainer(rlvr.compose(run), run_dir=tmp_path / "a").train()
    resumed = rlvr.Trainer(
        rlvr.compose([*run, f"trainer.resume={tmp_path / 'a' / 'checkpoints' / 'checkpoint-2'}"]),
        run_dir=tmp_path / "b",
    )
    resumed.train()
    assert metric_rows(tmp_path / "b") == metric_rows(tmp_path / "a")[2:]
    assert_same_weights(tmp_path / "b" / "final", tmp_path / "a" / "final")
    assert (tmp_path / "b" / "final" / "adapter_model.safetensors").is_file()


def test_resume_path_errors(tmp_path):
    from rlvr.core.checkpoint import resolve_resume

    with pytest.raises(FileNotFoundError, match="no such directory"):
        resolve_resume(str(tmp_path / "nope"))
    half = tmp_path / "checkpoints" / "checkpoint-3"
    half.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="incomplete checkpoint"):
        resolve_resume(str(half))
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        resolve_resume(str(tmp_path / "checkpoints"))


def test_checkpoint_listing_ignores_and_cleans_incomplete_ones(tmp_path):
    from rlvr.core.checkpoint import MARKER, latest_checkpoint, list_checkpoints

    root = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        if complete:
            (d / MARKER).write_text(str(step))
    (root / ".tmp-checkpoint-8-123").mkdir()
    # interrupted between moving a re-saved step aside and renaming its replacement in: it is put back
    aside = root / ".tmp-old-checkpoint-10-123"
    aside.mkdir()
    (aside / MARKER).write_text("10")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4", "checkpoint-10"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"
    assert not (root / ".tmp-checkpoint-8-123").exists()


def test_jsonl_logger_truncates_after_the_checkpoint_and_drops_a_torn_line(tmp_path):
    from rlvr.plugins.loggers.jsonl import JsonlLogger, JsonlLoggerConfig

    lines = [json.dumps({"step": s, "reward/mean": 0.5}) for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "rew')  # killed mid-write
    (tmp_path / "completions.jsonl").write_text("\n".join(lines) + "\n")
    logger = JsonlLogger(JsonlLoggerConfig())
    logger.on_train_start(tmp_path, {}, start_step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines[:2]) + "\n"
    assert (tmp_path / "completions.jsonl").read_text() == "\n".join(lines[:2]) + "\n"
    logger.on_step_end(3, {"reward/mean": 1.0}, [{"prompt": "p", "completion": "c"}])
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-decode-and-update"])
def test_dynamic_sampling_and_curriculum_resume_is_bit_identical(tmp_path, bf16):
    """trainer.dynamic_sampling=refill + trainer.curriculum=true: the sampler's streaks and draw counter and the
    prompts-consumed counter travel with the checkpoint; a resumed run equals the uninterrupted one. Also with
    bfloat16 decoding (importance-sampling correction) and a bfloat16 (autocast) update."""
    import rlvr

    run = [
        *TINY,
        "trainer.prompts_per_step=4",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
        "trainer.lr=1e-3",
        "loss.beta=0.04",
        "trainer.dynamic_sampling=refill",
        "trainer.curriculum=true",
        "reward=[rubric]",
        "reward.rubric.criteria=[{kind:length,max_chars:3,weight:1.0,fail:0.0,penalty_per_unit:0.1}]",
    ] + (["engine.decode_dtype=bfloat16", "trainer.update_dtype=bfloat16"] if bf16 else [])
    rlvr.Trainer(rlvr.compose(run), run_dir=tmp_path / "a").train()
    want = metric_rows(tmp_path / "a")
    assert sum(m["dynamic/refill_rounds"] for m in want) >= 1  # the refill path ran
    assert sum(m["dynamic/groups_filtered"] for m in want[2:]) >= 1  # ... and the curriculum had outcomes to use
    state = torch.load(tmp_path / "a" / "checkpoints" / "checkpoint-2" / "trainer_state.pt", weights_only=False)
    assert state["sampler"]["kind"] == "curriculum" and state["sampler"]["streak"]
    assert state["sampling"]["prompts_consumed_total"] == want[1]["dynamic/prompts_consumed_total"]
    resumed = rlvr.Trainer(
        rlvr.compose([*run, f"trainer.resume={tmp_path / 'a' / 'checkpoints' / 'checkpoint-2'}"]),
        run_dir=tmp_path / "b",
    )
    resumed.train()
    assert metric_rows(tmp_path / "b") == want[2:]
    logged = [(tmp_path / d / "completions.jsonl").read_text().splitlines() for d in ("a", "b")]
    assert logged[1] and logged[1] == [line for line in logged[0] if json.loads(line)["step"] > 2]
    assert_same_weights(tmp_path / "b" / "final", tmp_path / "a" / "final")
