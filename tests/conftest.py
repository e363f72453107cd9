"""Shared helpers: the CLI runner and small configs that keep tests fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GSM8K_DIR = Path(os.environ.get("RLVR_GSM8K_DIR") or REPO.parent / "shared" / "data" / "gsm8k")
if (GSM8K_DIR / "train.jsonl").is_file():  # task=gsm8k without data_dir reads the local copy (no network here)
    os.environ.setdefault("RLVR_GSM8K_DIR", str(GSM8K_DIR))

# a tiny, fast run: tiny model, 2 prompts x 2 generations, 8 new tokens. It pins the exact plain-GRPO path (no
# dynamic sampling, float32 decode and update) so that a test sees the same numbers on every CPU (`auto` dtypes
# follow the CPU's bfloat16 support); the tests of dynamic sampling and bfloat16 ask for them explicitly.
EXACT = ["trainer.dynamic_sampling=off", "engine.decode_dtype=float32", "trainer.update_dtype=float32"]
TINY = [
    "model=tiny",
    "trainer.prompts_per_step=2",
    "trainer.num_generations=2",
    "engine.max_new_tokens=8",
    "trainer.progress=false",
    "trainer.threads=1",
    "trainer.eval_steps=0",
    *EXACT,
]


def run_cli(
    *args: str, cwd: Path | None = None, timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m rlvr <args>`` in a subprocess and return the completed process."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rlvr", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


def end_turns_often(trainer, p: float = 0.3) -> None:
    """Make ``trainer``'s engine end a turn on a share ``p`` of its tokens: the random tiny model rarely samples its
    end-of-turn token, so multi-turn episodes need this. Drawn from each episode's own generator (deterministic)."""
    import torch

    orig, eos = trainer.engine.sample, trainer.policy.tokenizer.eos_token_id

    def sample(logits, gens, greedy):
        tok, lp = orig(logits, gens, greedy)
        flip = torch.tensor([float(torch.rand(1, generator=g)) < p for g in gens])
        return torch.where(flip, torch.full_like(tok, eos), tok), lp

    trainer.engine.sample = sample
