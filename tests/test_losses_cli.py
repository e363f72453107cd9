"""End to end: one training step of the tiny model through the CLI for every loss (``rlvr train loss=<name>``).

Each run is a fresh process (``python -m rlvr``) in a temporary directory; kept small (2 prompts x 2
completions, 8 new tokens, 1 step) so that the whole file takes well under a minute on a CPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = [
    "model=tiny",
    "trainer.max_steps=1",
    "trainer.prompts_per_step=2",
    "trainer.num_generations=2",
    "engine.max_new_tokens=8",
    "trainer.progress=false",
]

CASES = [
    ("grpo", []),
    ("bnpo", []),
    ("dr_grpo", []),
    ("dapo", []),
    ("gspo", []),
    ("ppo_clip", []),
    # options that change what the loop must provide
    ("grpo", ["loss.beta=0.04"]),  # reference log-probs (LoRA off / frozen copy)
    ("ppo_clip", ["loss.entropy_coef=0.01"]),  # per-token entropies
    ("dapo", ["loss.mask_truncated_completions=true", "trainer.micro_batch_size=2"]),  # num_tokens after masking
    ("gspo", ["trainer.num_iterations=2", "trainer.micro_batch_size=2"]),  # off-policy: old log-probs
]


def run_cli(tmp_path: Path, overrides: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "rlvr", "train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", CASES, ids=[" ".join([n, *e]) for n, e in CASES])
def test_train_one_step_with_each_loss(tmp_path: Path, name: str, extra: list[str]) -> None:
    proc = run_cli(tmp_path, [*SMALL, f"loss={name}", *extra])
    assert proc.returncode == 0, (
        f"rlvr train loss={name} {' '.join(extra)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    metrics = json.loads(lines[-1])
    assert metrics["step"] == 1
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert ("kl" in metrics) == any(e.startswith("loss.beta=") for e in extra)
    if "loss.entropy_coef=0.01" in extra:
        assert metrics["entropy"] > 0.0
    saved = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert f"name: {name}" in saved


def test_bad_loss_parameter_fails_before_training(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, [*SMALL, "loss=grpo", "loss.delta=1.1"])
    assert proc.returncode != 0
    assert "delta must exceed 1 + epsilon_high" in proc.stdout + proc.stderr
