"""Packed (length-bucketed) completion log-probs equal the padded forward, in value and gradient."""

from __future__ import annotations

import pytest
import torch

import rlvr
from rlvr.modeling.causal_lm import completion_logprobs
from rlvr.modeling.packing import completion_widths, group_bins, length_buckets, packed_completion_logprobs
from rlvr.modeling.shared_prompt import grouped_completion_logprobs

G, B, P, T = 3, 2, 7, 12


def batch(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """B groups of G rows: left-padded prompts (identical within a group), completions of lengths 2..T with a
    hole in one row's mask (a multi-turn environment's tokens)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, vocab, (B, P), generator=gen)
    p_mask = torch.ones(B, P, dtype=torch.long)
    p_mask[0, :3] = 0  # the first prompt is shorter
    prompts = prompts.masked_fill(p_mask == 0, 0)
    comp = torch.randint(3, vocab, (B * G, T), generator=gen)
    lengths = torch.tensor([T, 2, 5, 9, 2, 11])
    c_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    c_mask[3, 4:6] = 0  # a hole inside row 3
    comp = comp.masked_fill(c_mask == 0, 0)
    comp[3, 4:6] = 5  # tokens under the hole exist but are not trained on
    ids = torch.cat([prompts.repeat_interleave(G, 0), comp], 1)
    mask = torch.cat([p_mask.repeat_interleave(G, 0), c_mask], 1)
    return ids, mask


@pytest.mark.parametrize("lora,group_size,entropy", [(False, G, False), (True, G, True), (False, 0, True)])
def test_packed_equals_padded_values_and_gradients(lora, group_size, entropy):
    torch.manual_seed(0)
    policy = rlvr.create("model", "tiny", lora=lora)
    model = policy.model.train()
    ids, mask = batch(policy.model.config.vocab_size)
    c_mask = mask[:, P:].float()
    weights = torch.randn(c_mask.shape, generator=torch.Generator().manual_seed(1)) * c_mask
    params = [p for p in model.parameters() if p.requires_grad]

    def run(fn):
        model.zero_grad()
        out = fn()
        lp, ent = out if entropy else (out, None)
        loss = (lp * weights).sum() + (0.1 * (ent * c_mask).sum() if ent is not None else 0.0)
        loss.backward()
        return lp.detach(), None if ent is None else ent.detach(), [p.grad.clone() for p in params]

    padded, e_pad, g_pad = run(
        lambda: completion_logprobs(model, ids, mask, P, temperature=0.9, return_entropy=entropy)
    )
    packed, e_pack, g_pack = run(
        lambda: packed_completion_logprobs(
            model, ids, mask, P, group_size, temperature=0.9, return_entropy=entropy, overhead=0
        )
    )
    assert packed.shape == padded.shape == (B * G, T)
    torch.testing.assert_close(packed * c_mask, padded * c_mask, atol=1e-5, rtol=1e-5)
    widths = completion_widths(mask[:, P:])
    assert all(float(packed[i, int(w) :].abs().sum()) == 0 for i, w in enumerate(widths))  # no work past a row's end
    if entropy:
        torch.testing.assert_close(e_pack * c_mask, e_pad * c_mask, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_pad, g_pack):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the trainer's entry point (pack=True) takes the same path
        via = grouped_completion_logprobs(model, ids, mask, P, group_size, pack=True, temperature=0.9)
    torch.testing.assert_close(via * c_mask, padded * c_mask, atol=1e-5, rtol=1e-5)
    model.eval()


def test_equal_lengths_take_the_padded_path_unchanged():
    torch.manual_seed(0)
    policy = rlvr.create("model", "tiny")
    ids, mask = batch(policy.model.config.vocab_size)
    mask[:, P:] = 1
    with torch.no_grad():
        packed = packed_completion_logprobs(policy.model, ids, mask, P, G)
        grouped = grouped_completion_logprobs(policy.model, ids, mask, P, G)
    assert torch.equal(packed, grouped)


def test_completion_widths_use_the_last_token_not_the_count():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert completion_widths(mask).tolist() == [2, 3, 0, 4]


def test_length_buckets_cover_every_row_once_and_trade_padding_against_passes():
    widths = [256, 130, 250, 128, 129, 256, 140, 200]
    for overhead in (0, 32, 10_000):
        buckets = length_buckets(widths, overhead)
        assert sorted(i for b in buckets for i in b) == list(range(len(widths)))
        assert all(b == sorted(b) for b in buckets)
    assert len(length_buckets(widths, 10_000)) == 1  # a pass costs more than any padding: one bucket
    assert len(length_buckets(widths, 0)) == len(set(widths))  # passes are free: one bucket per width
    two = length_buckets([100, 100, 10, 10], 5)  # 2·100 + 2·10 + 2·5 = 230 < 4·100 + 5 = 405
    assert two == [[0, 1], [2, 3]]
    assert length_buckets([100, 98], 5) == [[0, 1]]  # 2 padded tokens < one more pass
    assert length_buckets([], 5) == []


def test_trainer_step_with_and_without_packing_agree(tmp_path):
    """Two steps of the real loop: packing on and off give the same completions and metrics within rounding."""
    from tests.conftest import TINY

    metrics = {}
    for pack in (True, False):
        cfg = rlvr.compose(
            [
                *TINY,
                "trainer.max_steps=2",
                "trainer.prompts_per_step=2",
                "trainer.num_generations=4",
                "engine.max_new_tokens=12",
                "trainer.lr=1e-2",
                "trainer.warmup_steps=0",
                f"trainer.pack_completions={pack}",
                "reward=[rubric]",
                "reward.rubric.criteria=[{kind:length,max_chars:3,weight:1.0,fail:0.0,penalty_per_unit:0.1}]",
                f"trainer.output_dir={tmp_path / str(pack)}",
            ]
        )
        trainer = rlvr.Trainer(cfg)
        eos = list(range(3, 259, 4))  # a random model then stops at different lengths
        trainer.policy.model.generation_config.eos_token_id = eos
        metrics[pack] = [trainer.train_step() for _ in range(2)]
    assert any(m["completion_length/max"] > m["completion_length/mean"] for m in metrics[True])  # lengths varied
    for a, b in zip(metrics[True], metrics[False]):
        for k in ("reward/mean", "loss", "grad_norm", "completion_length/mean"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


def test_group_bins_place_every_row_once_within_its_group():
    widths = [12, 2, 5, 9, 2, 11, 3, 3, 3]
    bins = group_bins(widths, 3)
    placed = sorted(n for b in bins for n, _ in b)
    assert placed == list(range(len(widths)))
    for b in bins:
        assert len({n // 3 for n, _ in b}) == 1  # one group per row
        spans = sorted((o, o + widths[n]) for n, o in b)
        assert spans[0][0] == 0 and all(a[1] == c[0] for a, c in zip(spans, spans[1:]))  # back to back
        assert spans[-1][1] <= max(widths)
    assert len(bins) == 2 + 2 + 1  # [12] [5, 2] | [11] [9, 2] | [3, 3, 3]
    assert group_bins([4, 4, 4, 4], 2) == [[(0, 0)], [(1, 0)], [(2, 0)], [(3, 0)]]  # nothing fits twice
    assert group_bins([], 4) == []


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_rows_path_is_taken_and_equals_padded(attn, monkeypatch):
    """Short completions of a group share a row (additive 4D mask): the path runs and gives the padded values."""
    import rlvr.modeling.packing as packing

    torch.manual_seed(0)
    policy = rlvr.create("model", "tiny")
    model = policy.model
    model.config._attn_implementation = attn
    calls = []
    real = packing._shared_bins
    monkeypatch.setattr(packing, "_shared_bins", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids, mask = batch(model.config.vocab_size, seed=3)
    c_mask = mask[:, P:].float()
    with torch.no_grad():
        padded = completion_logprobs(model, ids, mask, P, temperature=0.9)
        packed = packed_completion_logprobs(model, ids, mask, P, G, temperature=0.9)
    assert calls == [1]
    torch.testing.assert_close(packed * c_mask, padded * c_mask, atol=1e-5, rtol=1e-5)
    model.config._attn_implementation = "sdpa"


def test_shared_rows_need_a_small_mask(monkeypatch):
    """Long contexts would need a huge 4D mask: above SHARED_ROWS_MASK_BYTES the rows stay apart (buckets)."""
    import rlvr.modeling.packing as packing

    torch.manual_seed(0)
    policy = rlvr.create("model", "tiny")
    calls = []
    real = packing._shared_bins
    monkeypatch.setattr(packing, "_shared_bins", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(packing, "SHARED_ROWS_MASK_BYTES", 0)
    ids, mask = batch(policy.model.config.vocab_size, seed=3)
    with torch.no_grad():
        padded = completion_logprobs(policy.model, ids, mask, P)
        packed = packed_completion_logprobs(policy.model, ids, mask, P, G)
    assert calls == []
    c_mask = mask[:, P:].float()
    torch.testing.assert_close(packed * c_mask, padded * c_mask, atol=1e-5, rtol=1e-5)
