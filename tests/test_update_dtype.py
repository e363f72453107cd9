"""trainer.update_dtype=bfloat16: the update's forward passes under torch.autocast, float32 master weights, float32
logits for the log-probs (rlvr/kernels/logprobs.py leaves autocast for the LM head)."""

from __future__ import annotations

import pytest
import torch

import rlvr
from rlvr.core.errors import ConfigError
from rlvr.kernels.logprobs import token_logprobs
from tests.conftest import TINY


def test_token_logprobs_leaves_autocast():
    torch.manual_seed(0)
    hidden, weight = torch.randn(6, 16), torch.randn(50, 16)
    targets = torch.randint(0, 50, (6,))
    plain = token_logprobs(hidden, weight, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = token_logprobs(hidden, weight, targets)
        bf16_logits = (hidden @ weight.T).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain)  # float32 logits: the same numbers as outside autocast
    assert bf16_logits.dtype == torch.bfloat16  # (what the head would have given under autocast)


def spread(completions: list[str], **_) -> list[float]:
    """A reward that differs within every group (the random tiny model's completions differ in length)."""
    return [float(len(c) % 5) for c in completions]


def test_bfloat16_update_trains_float32_weights_close_to_float32(tmp_path):
    """Same rollouts, one step each: the bfloat16 update moves the weights as the float32 one does (the gradients
    agree in direction), the master weights stay float32, and the log-probs are within bfloat16 rounding."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        trainer = rlvr.Trainer(
            rlvr.compose(
                list(TINY)
                + [
                    f"trainer.output_dir={tmp_path / dtype}",
                    f"trainer.update_dtype={dtype}",
                    "trainer.lr=1e-3",
                    "trainer.warmup_steps=0",
                    "trainer.num_generations=4",
                ]
            ),
            rewards=[spread],
        )
        before = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters()}
        batch = trainer.rollout(1)
        trainer.score(batch)
        trainer.compute_advantages(batch)
        trainer.reference_logprobs(batch)
        with torch.no_grad():
            logps = trainer.logprobs(trainer.policy.model, batch.rollouts, slice(0, batch.rollouts.num))
        trainer.optimise(batch)
        after = dict(trainer.policy.model.named_parameters())
        assert all(p.dtype == torch.float32 for p in after.values())
        delta = torch.cat([(after[n].detach() - before[n]).flatten() for n in before])
        runs[dtype] = (logps.float() * batch.mask, delta, batch.rollouts.completion_ids)
    (lp32, d32, ids32), (lp16, d16, ids16) = runs["float32"], runs["bfloat16"]
    assert torch.equal(ids32, ids16)  # the same rollouts (generation does not depend on update_dtype)
    assert float((lp32 - lp16).abs().max()) < 0.1 and not torch.equal(lp32, lp16)  # bf16 layers, f32 head
    assert d32.norm() > 0 and d16.norm() > 0
    assert float(torch.nn.functional.cosine_similarity(d32, d16, dim=0)) > 0.9


def test_update_dtype_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="trainer.update_dtype='float16'"):
        rlvr.Trainer(rlvr.compose(list(TINY) + [f"trainer.output_dir={tmp_path}", "trainer.update_dtype=float16"]))
