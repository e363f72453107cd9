"""torch.distributed: 2 processes over gloo give what 1 process gives (same config, global batch and seed).

The proof runs the real CLI under ``torchrun`` (``python -m torch.distributed.run``) on the CPU, 3 steps
of the tiny model with LoRA, and compares completions, rewards and every non-timing metric exactly and
the final adapter within 1e-5 to a one-process run. DDP with batch-scaled advantages and two
micro-batches per rank (gradient accumulation without sync); FSDP2 with dapo (the global token
normaliser), a sharded checkpoint and a resume with 2 processes and with 1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlvr.core import distributed
from rlvr.core.config import TrainerConfig
from rlvr.core.trainer import validate_trainer
from tests.conftest import REPO, TINY, run_cli

# a reward that varies on a random model's output (shorter is better), so every step has a gradient
REWARD = [
    "reward=[rubric]",
    "reward.rubric.criteria=[{kind:length,max_chars:3,weight:1.0,fail:0.0,penalty_per_unit:0.1}]",
]
BASE = [
    *TINY,
    "model.lora=true",
    "trainer.max_steps=3",
    "trainer.lr=1e-2",
    "trainer.warmup_steps=0",
    "trainer.lr_schedule=constant",  # a resume that extends max_steps keeps the same learning rates
    "trainer.prompts_per_step=4",
    "trainer.micro_batch_size=2",
    *REWARD,
]
TIMING = ("step_time", "generation_time", "tokens_per_s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "rlvr",
        "train",
        *args,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def outputs(run_dir: Path) -> tuple[list[dict], list[dict], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    metrics = [
        {k: v for k, v in json.loads(line).items() if k not in TIMING and not k.startswith("memory/")}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    completions = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    return metrics, completions, load_file(str(run_dir / "final" / "adapter_model.safetensors"))


def assert_same_run(one: Path, two: Path) -> None:
    m1, c1, w1 = outputs(one)
    m2, c2, w2 = outputs(two)
    assert [m["step"] for m in m1] == [1, 2, 3]
    assert c1 == c2  # prompts, completions, each reward, advantages
    assert len(m1) == len(m2)
    for a, b in zip(m1, m2):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)
    assert m1[0]["reward/std"] > 0 and m1[0]["grad_norm"] > 0  # there was something to learn
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) <= 1e-5
    assert max(float(w1[k].abs().max()) for k in w1 if "lora_B" in k) > 1e-3  # the adapters did move


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("one") / "run"
    proc = run_cli("train", *BASE, "trainer.advantage_scaling=batch", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_two_processes_ddp_equal_one_process(ddp_reference, tmp_path):
    run_dir = tmp_path / "two"
    proc = torchrun(2, *BASE, "trainer.advantage_scaling=batch", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_run(ddp_reference, run_dir)
    assert (run_dir / "checkpoints" / "checkpoint-3" / "COMPLETE").is_file()


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-decode-and-update"])
def test_two_processes_with_dynamic_sampling_and_curriculum_equal_one_process(tmp_path, bf16):
    """trainer.dynamic_sampling=refill: the filtering decision is taken on the whole batch's rewards and the kept
    groups are re-split over the ranks, so 2 processes keep, refill and train exactly what 1 process does. Also
    with bfloat16 decoding and a bfloat16 (autocast) update."""
    common = [*BASE, "trainer.dynamic_sampling=refill", "trainer.curriculum=true"]
    if bf16:
        common += ["engine.decode_dtype=bfloat16", "trainer.update_dtype=bfloat16"]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_cli("train", *common, f"hydra.run.dir={one}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun(2, *common, f"hydra.run.dir={two}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_run(one, two)
    m1 = outputs(one)[0]
    assert sum(m["dynamic/refill_rounds"] for m in m1) >= 1 and all(m["dynamic/groups_trained"] == 4 for m in m1)


@pytest.mark.slow
def test_two_processes_fsdp2_equal_one_process_and_resume(tmp_path):
    common = [*BASE, "loss=dapo", "trainer.save_steps=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_cli("train", *common, f"hydra.run.dir={one}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 2 steps, then a second launch resumes from the sharded checkpoint-2 and runs step 3
    proc = torchrun(2, *common, "trainer.distributed=fsdp", "trainer.max_steps=2", f"hydra.run.dir={two}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (two / "checkpoints" / "checkpoint-2" / distributed.SHARDED_DIR).is_dir()
    alone = tmp_path / "alone"  # the same sharded checkpoint, resumed by one process
    shutil.copytree(two, alone)
    proc = torchrun(2, *common, "trainer.distributed=fsdp", f"hydra.run.dir={two}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from" in proc.stdout and "checkpoint-2" in proc.stdout
    assert_same_run(one, two)
    proc = run_cli("train", *common, f"hydra.run.dir={alone}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    assert_same_run(one, alone)


def test_group_slices_cover_the_batch_in_order():
    for world in (1, 2, 3, 4):
        for groups in range(world, 11):
            parts = [distributed.Dist(rank=r, world_size=world).groups(groups) for r in range(world)]
            assert [i for s in parts for i in range(groups)[s]] == list(range(groups))
            sizes = [s.stop - s.start for s in parts]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_one_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = distributed.setup("auto")
    assert not d.enabled and d.is_main and d.gather(3) == [3] and d.sum(2.5) == 2.5 and d.broadcast("x") == "x"
    assert distributed.wrap(torch.nn.Linear(2, 2), d, "fsdp") is None


@pytest.mark.parametrize("field,value", [("distributed", "zero3"), ("dist_backend", "mpi")])
def test_bad_distributed_settings_fail_early(field, value):
    with pytest.raises(ValueError, match=f"trainer.{field}"):
        validate_trainer(TrainerConfig(**{field: value}))


def test_slurm_environment_becomes_torchrun_environment(monkeypatch):
    """RLVR_DIST_FROM_SLURM=1 (the hydra/launcher=slurm example): SLURM's task variables become torchrun's."""
    pytest.importorskip("submitit")
    saved = dict(os.environ)
    try:
        for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(k, None)
        os.environ.update(
            {
                "RLVR_DIST_FROM_SLURM": "1",
                "SLURM_JOB_ID": "4242",
                "SLURM_PROCID": "0",
                "SLURM_NTASKS": "1",
                "SLURM_LOCALID": "0",
                "SLURM_NODEID": "0",
                "SLURM_JOB_NUM_NODES": "1",
                "SLURM_JOB_NODELIST": "gpu-node-7",
            }
        )
        d = distributed.setup("gloo")
        assert not d.enabled  # one task: no process group, but the variables are set as torchrun sets them
        assert (os.environ["WORLD_SIZE"], os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("1", "0", "0")
        assert os.environ["MASTER_ADDR"] == "gpu-node-7" and int(os.environ["MASTER_PORT"]) > 0
    finally:
        os.environ.clear()
        os.environ.update(saved)


EPISODE_SCRIPT = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import rlvr
from tests.conftest import end_turns_often

t = rlvr.Trainer(rlvr.compose(sys.argv[2:]), run_dir=sys.argv[1])
end_turns_often(t)
t.train()
"""


def test_two_processes_with_episodes_per_turn_rewards_and_dynamic_sampling_equal_one_process(tmp_path):
    """env=guess (multi-turn episodes), a per-turn reward and dynamic sampling: 2 processes run, refill and train
    exactly what 1 process does (episodes are seeded per group; per-turn scores are gathered with the table)."""
    script = tmp_path / "episodes.py"
    script.write_text(EPISODE_SCRIPT)
    over = [
        "model=tiny",
        "model.lora=true",
        "env=guess",
        "env.max_turns=3",
        "task=guess",
        "reward=[guess_valid]",
        "reward.guess_valid.per_turn=true",
        "trainer.max_steps=3",
        "trainer.prompts_per_step=4",
        "trainer.num_generations=2",
        "trainer.micro_batch_size=2",
        "trainer.lr=1e-2",
        "trainer.warmup_steps=0",
        "trainer.dynamic_sampling=refill",
        "engine.decode_dtype=float32",
        "trainer.update_dtype=float32",
        "engine.max_new_tokens=6",
        "trainer.eval_steps=0",
        "trainer.progress=false",
        "trainer.threads=1",
        "logger=[jsonl]",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(one), *over], cwd=REPO, capture_output=True, text=True, env=env, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    cmd += ["--master-port", str(free_port()), str(script), str(two), *over]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (m1, c1, w1), (m2, c2, w2) = outputs(one), outputs(two)
    assert c1 == c2  # prompts, whole episodes, each reward, advantages
    assert [sorted(k for k in m if "seconds" not in k) for m in m1] == [
        sorted(k for k in m if "seconds" not in k) for m in m2
    ]
    for a, b in zip(m1, m2):
        for k in a:
            if "seconds" not in k:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)
    assert any(m["env/turns/mean"] > 1 for m in m1)  # multi-turn episodes
    assert sum(m["dynamic/groups_filtered"] for m in m1) >= 1  # dynamic sampling dropped something
    # a short step (3 informative groups) splits 2/1 over the ranks: each rank holds a different number of
    # micro-batches (this hung DDP before its forwards went inside no_sync) and pads its rows to its own longest
    # completion, so matmul shapes differ from one process's and rounding differs; Adam at lr 1e-2 turns that
    # into weight differences of ~2e-5 where a gradient is near 0 (losses and grad norms agree to 1e-7)
    assert any(m["dynamic/groups_trained"] % 2 for m in m1)  # the uneven split happened
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) <= 1e-4
    assert max(float(w1[k].abs().max()) for k in w1 if "lora_B" in k) > 1e-3  # the adapters did move
