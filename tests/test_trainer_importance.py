"""The trainer's importance-sampling correction (engine/trainer log-prob mismatch, rlvr.core.importance)."""

from __future__ import annotations

import pytest
import torch

import rlvr
from rlvr.core.importance import ImportanceSamplingConfig
from tests.conftest import EXACT

TINY = [
    "model=tiny",
    "trainer.prompts_per_step=2",
    "trainer.num_generations=2",
    "engine.max_new_tokens=6",
    "trainer.progress=false",
    "trainer.threads=1",
    "trainer.warmup_steps=0",
    *EXACT,
]


class OffEngine:
    """engine=hf whose sampling log-probs are shifted by a constant, as a mismatched engine's would be."""

    def __init__(self, inner, shift: float, mode: str) -> None:
        self.inner, self.shift = inner, shift
        self.cfg = inner.cfg
        self.importance_sampling = ImportanceSamplingConfig(mode=mode, cap=1.5)

    def release(self, policy):
        self.inner.release(policy)

    def generate(self, *args, **kwargs):
        ro = self.inner.generate(*args, **kwargs)
        ro.sampling_logps = (ro.sampling_logps - self.shift) * ro.completion_mask
        return ro


@pytest.mark.parametrize(
    "mode,shift,expected",
    [
        ("token_truncate", 1.0, 1.5),
        ("token_mask", 1.0, 0.0),
        ("token_truncate", -0.5, float(torch.tensor(-0.5).exp())),
        ("off", 1.0, None),
    ],
)
def test_trainer_weights_each_token_by_the_capped_ratio(tmp_path, mode, shift, expected):
    trainer = rlvr.Trainer(rlvr.compose(TINY + [f"trainer.output_dir={tmp_path}"]))
    trainer.engine = OffEngine(trainer.engine, shift, mode)
    metrics = trainer.train_step()
    if expected is None:
        assert "importance_sampling/mean" not in metrics
    else:  # ratio exp(old - sampling) = exp(shift) on every token, then capped at 1.5 or masked
        assert metrics["importance_sampling/mean"] == pytest.approx(expected, rel=1e-4)
        assert metrics["importance_sampling/max"] == pytest.approx(expected, rel=1e-4)
