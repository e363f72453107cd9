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


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtypes_follow_the_cpu(monkeypatch, native):
    """auto: bfloat16 decode and update for float32 weights on a CPU that multiplies bfloat16 in hardware, float32
    elsewhere; the engine asks for the importance-sampling correction exactly when it decoded in bfloat16."""
    from rlvr.core import resources
    from rlvr.core.trainer import resolve_update_dtype
    from rlvr.plugins.engines import hf

    monkeypatch.setattr(resources, "cpu_has_native_bfloat16", lambda: native)
    torch.manual_seed(0)
    policy = rlvr.create("model", "tiny", num_layers=2, hidden_size=64)
    want = "bfloat16" if native else "float32"
    assert resolve_update_dtype("auto", policy) == want
    assert resolve_update_dtype("float32", policy) == "float32"
    engine = hf.HFEngine(hf.HFEngineConfig(max_new_tokens=4))  # decode_dtype=auto
    engine.generate(policy, ["2 + 3 ="], 2, [1])
    assert engine.last_decode_dtype == want
    assert (engine.importance_sampling is not None) == native
    exact = hf.HFEngine(hf.HFEngineConfig(max_new_tokens=4, decode_dtype="float32"))
    exact.generate(policy, ["2 + 3 ="], 2, [1])
    assert exact.last_decode_dtype == "float32" and exact.importance_sampling is None
    policy.model.to(torch.bfloat16)  # bfloat16 weights: nothing to cast, the update runs without autocast
    assert resolve_update_dtype("auto", policy) == "float32"


def test_the_auto_choice_is_printed_when_it_picks_bfloat16(monkeypatch, tmp_path, capsys):
    from rlvr.core import resources

    monkeypatch.setattr(resources, "cpu_has_native_bfloat16", lambda: True)
    auto = [o for o in TINY if "dtype" not in o]
    trainer = rlvr.Trainer(rlvr.compose(auto + [f"trainer.output_dir={tmp_path}", "trainer.max_steps=1"]))
    trainer.train()
    out = capsys.readouterr().out
    assert "this run decodes and updates in bfloat16" in out and "trainer.update_dtype=float32" in out
    exact = rlvr.Trainer(
        rlvr.compose(list(TINY) + [f"trainer.output_dir={tmp_path / 'exact'}", "trainer.max_steps=1"])
    )
    exact.train()
    assert exact.precision_notice() is None and "bfloat16" not in capsys.readouterr().out
