"""engine=hf: shapes, EOS and truncation, sampling log-probs, determinism, top-k/top-p/min-p, prefix sharing."""

from __future__ import annotations

import pytest
import torch

import rlvr
from rlvr.modeling.causal_lm import completion_logprobs
from rlvr.modeling.shared_prompt import grouped_completion_logprobs, shared_prompt_applies, shared_prompt_logprobs
from rlvr.plugins.engines.hf import HFEngine, HFEngineConfig, fast_decoder_reason, filter_logits, sample_inverse_cdf

PROMPTS = ["What is 2 + 3?", "Add seven and eleven, then tell me the result please."]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return rlvr.create("model", "tiny", num_layers=2, hidden_size=64)


def engine(**kw) -> HFEngine:
    return HFEngine(HFEngineConfig(**{"max_new_tokens": 10, "decode_dtype": "float32", **kw}))


def teacher_forced(policy, ro, temperature: float = 1.0) -> torch.Tensor:
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    mask = torch.cat([ro.prompt_mask, ro.completion_mask], 1)
    with torch.no_grad():
        return completion_logprobs(policy.model, ids, mask, ro.prompt_ids.shape[1], temperature=temperature)


def test_shapes_groups_and_fields(tiny):
    ro = engine().generate(tiny, PROMPTS, 3, [1, 2])
    N = 6
    assert ro.num == N and ro.completion_ids.shape[0] == N and ro.completion_ids.shape[1] <= 10
    assert ro.prompt_ids.shape == ro.prompt_mask.shape and ro.prompt_ids.shape[0] == N
    assert ro.completion_mask.shape == ro.completion_ids.shape == ro.sampling_logps.shape
    assert ro.group.tolist() == [0, 0, 0, 1, 1, 1] and ro.prompts == [p for p in PROMPTS for _ in range(3)]
    assert len(ro.completions) == N and ro.truncated.dtype == torch.bool and ro.truncated.shape == (N,)
    assert ro.sampling_logps.dtype == torch.float32
    # left padding: the shorter prompt's mask starts with zeros, every prompt ends with a real token
    assert ro.prompt_mask[:, -1].all() and not ro.prompt_mask[0].all()


@pytest.mark.parametrize("decoder", ["fast", "transformers"])
def test_eos_and_truncation(tiny, decoder):
    policy = tiny
    eos_ids = list(range(3, 259, 3))  # a third of the vocabulary ends a completion: some rows stop, some don't
    old = policy.model.generation_config.eos_token_id
    policy.model.generation_config.eos_token_id = eos_ids
    try:
        ro = engine(max_new_tokens=6, decoder=decoder).generate(policy, PROMPTS, 8, [5, 6])
    finally:
        policy.model.generation_config.eos_token_id = old
    eos = torch.tensor(eos_ids + [policy.tokenizer.eos_token_id])
    lengths = ro.completion_mask.sum(1)
    assert ro.truncated.any() and (~ro.truncated).any()
    assert ro.completion_mask.shape[1] == int(lengths.max())  # trimmed to the longest completion
    for i in range(ro.num):
        n = int(lengths[i])
        toks = ro.completion_ids[i]
        assert ro.completion_mask[i, :n].all() and not ro.completion_mask[i, n:].any()  # contiguous
        assert not torch.isin(toks[: n - 1], eos).any()  # no EOS before the end
        if ro.truncated[i]:
            assert n == 6 and not torch.isin(toks[n - 1], eos)
        else:
            assert torch.isin(toks[n - 1], eos)  # the EOS is part of the completion (masked in)
        assert (toks[n:] == policy.tokenizer.pad_token_id).all()
        assert (ro.sampling_logps[i, n:] == 0).all() and (ro.sampling_logps[i, :n] < 0).all()


@pytest.mark.parametrize("decoder,temperature", [("fast", 1.0), ("fast", 0.7), ("transformers", 0.7)])
def test_sampling_logps_match_teacher_forcing(tiny, decoder, temperature):
    ro = engine(decoder=decoder, temperature=temperature, top_k=20).generate(tiny, PROMPTS, 4, [3, 4])
    ref = teacher_forced(tiny, ro, temperature)
    # the log-probs are of softmax(logits / T) before top-k (the distribution the trainer uses)
    torch.testing.assert_close(ro.sampling_logps, ref * ro.completion_mask, atol=1e-5, rtol=1e-5)


def test_seeded_determinism(tiny):
    a = engine().generate(tiny, PROMPTS, 4, [11, 12])
    b = engine().generate(tiny, PROMPTS, 4, [11, 12])
    c = engine().generate(tiny, PROMPTS, 4, [13, 14])
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.sampling_logps, b.sampling_logps)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    # the G rows of a group are different samples, not copies
    assert len({tuple(r.tolist()) for r in a.completion_ids[:4]}) > 1


def test_filter_logits_small_vocabulary():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda **kw: torch.isfinite(filter_logits(logits, **kw))[0].tolist()  # noqa: E731
    assert kept() == [True] * 4
    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_k=1) == [True, False, False, False]
    assert kept(top_p=0.7) == [True, True, False, False]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert kept(top_p=0.5) == [True, False, False, False]
    assert kept(top_p=0.96) == [True, True, True, True]
    assert kept(top_p=0.01) == [True, False, False, False]  # the most likely token always stays
    assert kept(min_p=0.4) == [True, True, False, False]  # p >= 0.4 * 0.5
    assert kept(min_p=0.2) == [True, True, True, False]
    assert kept(top_k=3, top_p=0.7) == [True, True, False, False]


def test_inverse_cdf_frequencies_follow_the_filtered_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, 4)
    gen = torch.Generator().manual_seed(0)
    for kw, expected in (
        ({}, probs),
        ({"top_k": 2}, torch.tensor([0.625, 0.375, 0, 0])),
        ({"min_p": 0.2}, torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95),
    ):
        p = filter_logits(logits, **kw).softmax(-1)
        draws = sample_inverse_cdf(p, torch.rand(20000, generator=gen))
        freq = torch.bincount(draws, minlength=4).float() / 20000
        torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)


def test_top_k_one_is_greedy(tiny):
    greedy = engine().generate(tiny, PROMPTS, 2, [1, 2], greedy=True)
    top1 = engine(top_k=1).generate(tiny, PROMPTS, 2, [1, 2])
    assert torch.equal(greedy.completion_ids, top1.completion_ids)


def test_prefix_shared_cache_equals_generating_each_sequence_alone(tiny):
    ro = engine(max_new_tokens=8).generate(tiny, PROMPTS, 3, [0, 0], greedy=True)
    tok = tiny.tokenizer
    for b, prompt in enumerate(PROMPTS):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]  # alone: no padding
        with torch.no_grad():
            alone = tiny.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=8,
                pad_token_id=tok.pad_token_id,
            )[0, ids.shape[1] :]
        for g in range(3):
            row = b * 3 + g
            n = int(ro.completion_mask[row].sum())
            assert ro.completion_ids[row, :n].tolist() == alone[:n].tolist()


@pytest.mark.parametrize(
    "family,lora", [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", False), ("qwen3", True)]
)
def test_fast_decoder_equals_transformers_path(family, lora):
    """Qwen2: q/k/v biases; Qwen3: q/k norms, untied head; LoRA: adapters folded into the packed weights."""
    policy = rlvr.create("model", "tiny_family", family=family, lora=lora)
    if lora:
        with torch.no_grad():  # non-zero adapters, so the folded weights differ from the base
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
    assert fast_decoder_reason(policy.model, 64) is None
    outs = {}
    for decoder, packed in (("transformers", "off"), ("fast", "off"), ("fast", "auto")):
        e = engine(decoder=decoder, packed_weights=packed, temperature=0.9)
        outs[(decoder, packed)] = e.generate(policy, PROMPTS, 3, [7, 8])
        assert e.last_decoder == decoder
    ref = outs[("transformers", "off")]
    for key, ro in outs.items():
        assert torch.equal(ro.completion_ids, ref.completion_ids), key
        torch.testing.assert_close(ro.sampling_logps, ref.sampling_logps, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(
        ref.sampling_logps, teacher_forced(policy, ref, 0.9) * ref.completion_mask, atol=2e-5, rtol=1e-5
    )


@pytest.mark.parametrize("family", ["gemma3", "phi3", "mistral"])
def test_auto_falls_back_for_other_architectures(family):
    """Gemma 3 (sliding layers, scaled embeddings), Phi-3 (fused projections), Mistral with a window shorter
    than prompt + completion: the transformers loop, with the same sampling and log-probs."""
    policy = rlvr.create("model", "tiny_family", family=family)
    assert fast_decoder_reason(policy.model, 64) is not None
    e = engine(max_new_tokens=4)
    ro = e.generate(policy, PROMPTS, 2, [1, 2])
    assert e.last_decoder == "transformers" and ro.num == 4
    torch.testing.assert_close(
        ro.sampling_logps, teacher_forced(policy, ro) * ro.completion_mask, atol=2e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="decoder=fast cannot run"):
        engine(decoder="fast").generate(policy, PROMPTS, 2, [1, 2])


def test_config_errors():
    with pytest.raises(ValueError, match="engine.decoder"):
        HFEngine(HFEngineConfig(decoder="vllm"))
    with pytest.raises(ValueError, match="top_p"):
        HFEngine(HFEngineConfig(top_p=0.0))


def test_generation_restores_training_mode_and_frees_buffers(tiny):
    tiny.model.train()
    e = engine()
    e.generate(tiny, PROMPTS, 2, [1, 2])
    assert tiny.model.training and e._fast is None
    tiny.model.eval()


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_logprobs_equal_full_forward_values_and_gradients(lora):
    policy = rlvr.create("model", "tiny", lora=lora)
    ro = engine(max_new_tokens=8).generate(policy, PROMPTS, 3, [1, 2])
    model = policy.model.train()
    assert shared_prompt_applies(model, ro.prompt_ids, 3) and not shared_prompt_applies(model, ro.prompt_ids, 2)
    weights = torch.randn(ro.completion_ids.shape, generator=torch.Generator().manual_seed(0)) * ro.completion_mask
    params = [p for p in model.parameters() if p.requires_grad]

    def run(fn):
        model.zero_grad()
        lp = fn()
        (lp * weights).sum().backward()
        return lp.detach(), [p.grad.clone() for p in params]

    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    mask = torch.cat([ro.prompt_mask, ro.completion_mask], 1)
    full, g_full = run(lambda: completion_logprobs(model, ids, mask, ro.prompt_ids.shape[1], temperature=0.8))
    shared, g_shared = run(
        lambda: shared_prompt_logprobs(
            model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, 3, temperature=0.8
        )
    )
    torch.testing.assert_close(shared * ro.completion_mask, full * ro.completion_mask, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_full, g_shared):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the dispatcher the trainer and the DDP/FSDP wrapper call
        grouped = grouped_completion_logprobs(model, ids, mask, ro.prompt_ids.shape[1], 3, temperature=0.8)
        plain = grouped_completion_logprobs(model, ids, mask, ro.prompt_ids.shape[1], 0, temperature=0.8)
        mixed = grouped_completion_logprobs(
            model, ids, mask, ro.prompt_ids.shape[1], 2, temperature=0.8
        )  # not groups of 2
    torch.testing.assert_close(grouped, shared, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(plain, full, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mixed, full, atol=1e-6, rtol=1e-6)
    model.eval()


def test_finished_rows_leave_the_decode_batch_without_changing_the_samples(tiny):
    """compact_finished drops finished rows from the fast decoder's batch: same tokens, same log-probs, fewer rows."""
    policy = tiny
    old = policy.model.generation_config.eos_token_id
    policy.model.generation_config.eos_token_id = list(range(3, 259, 5))  # rows stop at different steps
    try:
        runs = {}
        for compact in (False, True):
            eng = engine(max_new_tokens=12, decoder="fast", compact_finished=compact)
            runs[compact] = (eng.generate(policy, PROMPTS, 8, [7, 8]), eng.decode_rows)
    finally:
        policy.model.generation_config.eos_token_id = old
    (plain, rows_plain), (compact, rows_compact) = runs[False], runs[True]
    lengths = plain.completion_mask.sum(1)
    assert lengths.min() < lengths.max()  # some rows finished early: there was something to drop
    assert torch.equal(plain.completion_ids, compact.completion_ids)
    assert torch.equal(plain.completion_mask, compact.completion_mask)
    assert torch.equal(plain.truncated, compact.truncated)
    torch.testing.assert_close(compact.sampling_logps, plain.sampling_logps, atol=1e-5, rtol=1e-5)
    assert rows_compact < rows_plain
    ref = teacher_forced(policy, compact)  # the compacted cache still gives the right log-probs
    torch.testing.assert_close(compact.sampling_logps, ref * compact.completion_mask, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "rows,active,expected",
    [(16, 16, False), (16, 13, False), (16, 12, True), (16, 0, False), (4, 3, False), (4, 2, True), (2, 1, False)],
)
def test_should_compact_rule(rows, active, expected):
    from rlvr.plugins.engines.fast_decoder import should_compact

    assert should_compact(rows, active) is expected


def test_bfloat16_decode_samples_close_to_float32_and_asks_for_the_importance_correction(tiny):
    """decode_dtype=bfloat16: packed bf16 matmuls, float32 master weights; log-probs near the trainer's, and the
    engine asks the trainer for the truncated importance-sampling correction."""
    from rlvr.plugins.engines.fast_decoder import onednn_linear_available

    if not onednn_linear_available():
        pytest.skip("needs PyTorch's oneDNN packed linear ops")
    eng = engine(decoder="fast", decode_dtype="bfloat16")
    ro = eng.generate(tiny, PROMPTS, 4, [3, 4])
    assert eng.importance_sampling is not None and eng.importance_sampling.enabled
    assert eng.last_decode_dtype == "bfloat16"
    exact = engine()
    exact.generate(tiny, PROMPTS, 2, [3, 4])
    assert exact.importance_sampling is None and exact.last_decode_dtype == "float32"
    assert next(tiny.model.parameters()).dtype == torch.float32  # the master weights are untouched
    ref = teacher_forced(tiny, ro) * ro.completion_mask
    diff = (ro.sampling_logps - ref).abs()
    assert float(diff.max()) < 0.1 and float(diff.max()) > 0  # bf16 rounding: close, not equal
    with pytest.raises(ValueError, match="decode_dtype"):
        engine(decode_dtype="float16")
    with pytest.raises(ValueError, match="fast decoder only"):
        engine(decode_dtype="bfloat16", decoder="transformers")


@pytest.mark.parametrize("decoder", ["fast", "transformers"])
def test_min_new_tokens_holds_back_eos(tiny, decoder):
    """engine.min_new_tokens: no row ends before it (EOS is removed from the sampling distribution), later steps
    sample as usual, and sampling_logps stay the trainer's (unfiltered) log-probs."""
    policy = tiny
    eos_ids = list(range(3, 259, 3))  # a third of the vocabulary ends a completion: most rows would stop early
    old = policy.model.generation_config.eos_token_id
    policy.model.generation_config.eos_token_id = eos_ids
    try:
        free = engine(max_new_tokens=8, decoder=decoder).generate(policy, PROMPTS, 8, [5, 6])
        held = engine(max_new_tokens=8, min_new_tokens=5, decoder=decoder).generate(policy, PROMPTS, 8, [5, 6])
    finally:
        policy.model.generation_config.eos_token_id = old
    eos = torch.tensor(eos_ids + [policy.tokenizer.eos_token_id])
    assert (free.completion_mask.sum(1) < 5).any()  # the check below can fail
    lengths = held.completion_mask.sum(1)
    assert (lengths >= 5).all() and (lengths < 8).any()  # EOS comes only from the 6th token on, and does come
    assert not torch.isin(held.completion_ids[:, :4], eos).any()
    ref = teacher_forced(policy, held)
    torch.testing.assert_close(held.sampling_logps, ref * held.completion_mask, atol=2e-5, rtol=1e-5)


def test_min_new_tokens_config_errors(tiny):
    from rlvr.core.errors import ConfigError

    with pytest.raises(ConfigError, match="min_new_tokens=40"):
        engine(max_new_tokens=32, min_new_tokens=40)
    with pytest.raises(ConfigError, match="single-turn"):
        engine(min_new_tokens=2).generate_episodes(tiny, None, [], 2, [])
