"""rlvr.kernels: chunked fused-linear log-probs and the causal-LM helper against the naive computation."""

from __future__ import annotations

import pytest
import torch

from rlvr.kernels import reference_token_logprobs, token_logprobs
from rlvr.kernels.logprobs import KEEP_LOGITS_BYTES
from rlvr.modeling.causal_lm import completion_logprobs, lm_head_params, position_ids_from_mask

F64 = torch.float64


def _grads(outs, weights, params):
    total = sum((o * w).sum() for o, w in zip(outs, weights))
    return torch.autograd.grad(total, params)


def _compare(
    kw,
    N,
    T,
    H,
    V,
    chunk,
    bias,
    entropy,
    weight_grad,
    dtype=F64,
    tol=1e-10,
    ignore=True,
    seed=0,
    chunk_vocab=16,
    keep_logits_bytes=KEEP_LOGITS_BYTES,
):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, T, H, generator=g, dtype=F64).to(dtype).requires_grad_(True)
    W = (torch.randn(V, H, generator=g, dtype=F64) * 0.5).to(dtype).requires_grad_(weight_grad)
    b = (torch.randn(V, generator=g, dtype=F64)).to(dtype).requires_grad_(weight_grad) if bias else None
    t = torch.randint(0, V, (N, T), generator=g)
    if ignore:
        t[0, min(1, T - 1)] = -100
    out = token_logprobs(
        h,
        W,
        t,
        bias=b,
        chunk_tokens=chunk,
        return_entropy=entropy,
        chunk_vocab=chunk_vocab,
        keep_logits_bytes=keep_logits_bytes,
        **kw,
    )
    ref = reference_token_logprobs(h, W, t, bias=b, return_entropy=entropy, **kw)
    out, ref = (out if entropy else (out,)), (ref if entropy else (ref,))
    for o, r in zip(out, ref):
        assert o.shape == (N, T)
        assert o.dtype == (F64 if dtype == F64 else torch.float32)
        torch.testing.assert_close(o.double(), r.double(), rtol=tol, atol=tol)
    ws = [torch.randn(N, T, generator=g, dtype=o.dtype) for o in out]
    params = [x for x in (h, W, b) if x is not None and x.requires_grad]
    for a, r, p in zip(_grads(out, ws, params), _grads(ref, ws, params), params):
        assert a.dtype == p.dtype
        torch.testing.assert_close(a.double(), r.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "N,T,H,V,chunk,chunk_vocab",
    [(2, 7, 16, 50, 4, 16), (1, 33, 8, 31, 8, 8192), (3, 5, 12, 40, 1024, 7), (4, 9, 16, 64, 5, 64)],
)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("keep", [KEEP_LOGITS_BYTES, 0])  # logits kept for backward / recomputed there
def test_values_and_gradients_match_naive_float64(N, T, H, V, chunk, chunk_vocab, temperature, bias, keep):
    _compare(
        dict(temperature=temperature),
        N,
        T,
        H,
        V,
        chunk,
        bias,
        entropy=False,
        weight_grad=True,
        chunk_vocab=chunk_vocab,
        keep_logits_bytes=keep,
    )


@pytest.mark.parametrize("entropy", [False, True])
@pytest.mark.parametrize("weight_grad", [False, True])  # False: frozen head (LoRA) -> precompute path
@pytest.mark.parametrize("kw", [dict(), dict(temperature=1.3), dict(softcap=4.0, logit_scale=1.5, temperature=0.8)])
@pytest.mark.parametrize("keep", [KEEP_LOGITS_BYTES, 0])
def test_entropy_softcap_scale_and_frozen_head(entropy, weight_grad, kw, keep):
    _compare(kw, 2, 11, 16, 45, 4, bias=True, entropy=entropy, weight_grad=weight_grad, keep_logits_bytes=keep)


def test_kept_logits_equal_recomputed_float32():
    """The kept-logits backward (one full-vocabulary tile) equals the tiled recompute within float32 rounding,
    and it is picked by size: a budget below the logits' bytes recomputes."""
    g = torch.Generator().manual_seed(5)
    h = torch.randn(24, 32, generator=g, requires_grad=True)
    W = (torch.randn(3000, 32, generator=g) * 0.2).requires_grad_(True)
    t = torch.randint(0, 3000, (24,), generator=g)
    adv = torch.randn(24, generator=g)
    outs, kept = [], []
    for keep in (24 * 3000 * 4, 24 * 3000 * 4 - 1):
        lp = token_logprobs(h, W, t, chunk_tokens=7, chunk_vocab=1000, keep_logits_bytes=keep)
        node = lp.grad_fn
        while "TokenLogprobs" not in node.name():
            node = node.next_functions[0][0]
        kept.append(node.saved_tensors[-1])
        outs.append((lp.detach(), *torch.autograd.grad((lp * adv).sum(), (h, W))))
    assert kept[0].shape == (24, 3000) and kept[1] is None  # one byte short of the budget: recomputed
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_kept_logits_second_backward_fails_loudly():
    """Backward overwrites the kept logits: a second backward through the same graph raises (never a wrong
    gradient)."""
    h = torch.randn(5, 8, requires_grad=True)
    W = torch.randn(40, 8, requires_grad=True)
    lp = token_logprobs(h, W, torch.randint(0, 40, (5,)))
    lp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        lp.sum().backward()


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 3, 5, generator=g, dtype=F64, requires_grad=True)
    W = torch.randn(7, 5, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=F64, requires_grad=True)
    t = torch.randint(0, 7, (2, 3), generator=g)

    def f(h, W, b):
        lp, ent = token_logprobs(h, W, t, temperature=0.9, bias=b, chunk_tokens=4, return_entropy=True, softcap=3.0)
        return lp, ent

    assert torch.autograd.gradcheck(f, (h, W, b))


def test_tied_weights_get_both_gradients():
    """The head weight is also the input embedding: autograd adds both contributions."""
    g = torch.Generator().manual_seed(2)
    E = torch.randn(30, 8, generator=g, dtype=F64, requires_grad=True)
    ids = torch.randint(0, 30, (2, 6), generator=g)
    lin = torch.randn(8, 8, generator=g, dtype=F64)

    def run(fn):
        h = torch.tanh(E[ids[:, :-1]] @ lin)
        lp = fn(h, E, ids[:, 1:], temperature=0.9)
        return torch.autograd.grad((lp * torch.arange(5, dtype=F64)).sum(), E)[0]

    torch.testing.assert_close(
        run(lambda *a, **k: token_logprobs(*a, chunk_tokens=3, **k)),
        run(reference_token_logprobs),
        rtol=1e-10,
        atol=1e-10,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 20, 32, generator=g).to(dtype)
    W = (torch.randn(100, 32, generator=g) * 0.3).to(dtype)
    t = torch.randint(0, 100, (3, 20), generator=g)
    out = token_logprobs(h, W, t, chunk_tokens=7)
    assert out.dtype == torch.float32
    ref = reference_token_logprobs(h.double(), W.double(), t)  # the same (rounded) inputs, exactly
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    hq = h.clone().requires_grad_(True)
    Wq = W.clone().requires_grad_(True)
    gh, gW = torch.autograd.grad(token_logprobs(hq, Wq, t, chunk_tokens=7).sum(), (hq, Wq))
    assert gh.dtype == dtype and gW.dtype == dtype


def test_ignored_targets_and_no_grad():
    h = torch.randn(2, 4, 8, dtype=F64, requires_grad=True)
    W = torch.randn(10, 8, dtype=F64, requires_grad=True)
    t = torch.full((2, 4), -100)
    t[1, 2] = 3
    lp = token_logprobs(h, W, t)
    assert lp[0].abs().max() == 0 and lp[1, 2] < 0
    (gh,) = torch.autograd.grad(lp.sum(), h)
    assert gh[0].abs().max() == 0 and gh[1, 2].abs().max() > 0
    with torch.no_grad():
        assert token_logprobs(h, W, t).grad_fn is None


def test_bad_inputs_fail_clearly():
    h, W = torch.randn(2, 3, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="hidden size"):
        token_logprobs(torch.randn(2, 3, 7), W, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="target_ids shape"):
        token_logprobs(h, W, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        token_logprobs(h, W, torch.full((2, 3), 10))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(h, W, torch.zeros(2, 3, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="backend"):
        token_logprobs(h, W, torch.zeros(2, 3, dtype=torch.long), backend="cuda")


# ------------------------------------------------------------------------------------------------
# causal LM helper
# ------------------------------------------------------------------------------------------------
def _tiny_llama(tied: bool, dtype=F64, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).to(dtype)


def _batch(N=3, P=5, T=6, V=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (N, P + T), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left-padded prompts
    mask[1, :1] = 0
    return ids, mask, P


def _naive_completion_logprobs(model, ids, mask, P, temperature=1.0):
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logits = logits[:, P - 1 : -1].float() if logits.dtype != F64 else logits[:, P - 1 : -1]
    return torch.log_softmax(logits / temperature, -1).gather(-1, ids[:, P:, None]).squeeze(-1)


@pytest.mark.parametrize("tied", [True, False])
def test_completion_logprobs_matches_full_logits(tied):
    model = _tiny_llama(tied)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    ids, mask, P = _batch()
    lp, ent = completion_logprobs(model, ids, mask, P, temperature=0.8, chunk_tokens=4, return_entropy=True)
    ref = _naive_completion_logprobs(model, ids, mask, P, temperature=0.8)
    assert lp.shape == (3, 6) and ent.shape == (3, 6)
    torch.testing.assert_close(lp, ref, rtol=1e-10, atol=1e-10)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(lp.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_completion_logprobs_float32_model():
    model = _tiny_llama(True, dtype=torch.float32)
    ids, mask, P = _batch()
    lp = completion_logprobs(model, ids, mask, P)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, _naive_completion_logprobs(model, ids, mask, P), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "targets,mts", [(["q_proj", "v_proj"], None), (["q_proj", "lm_head"], None), (["q_proj"], ["lm_head"])]
)
def test_completion_logprobs_peft(targets, mts):
    peft = pytest.importorskip("peft")
    model = _tiny_llama(False)
    pm = peft.get_peft_model(
        model,
        peft.LoraConfig(r=4, target_modules=targets, modules_to_save=mts, init_lora_weights=False, lora_dropout=0.0),
    )
    with torch.no_grad():  # make a modules_to_save copy differ from the original head
        for n, p in pm.named_parameters():
            if "modules_to_save" in n:
                p.add_(0.1)
    ids, mask, P = _batch()
    lp = completion_logprobs(pm, ids, mask, P)
    ref = _naive_completion_logprobs(pm, ids, mask, P)
    torch.testing.assert_close(lp, ref, rtol=1e-10, atol=1e-10)
    params = [p for p in pm.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(lp.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with pm.disable_adapter(), torch.no_grad():  # the reference policy: adapters off
        torch.testing.assert_close(
            completion_logprobs(pm, ids, mask, P), _naive_completion_logprobs(pm, ids, mask, P), rtol=1e-10, atol=1e-10
        )


def test_lm_head_params_reads_softcap_and_scale():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    cfg.final_logit_softcapping = 30.0
    cfg.logits_scaling = 4.0
    w, b, cap, scale = lm_head_params(LlamaForCausalLM(cfg))
    assert w.shape == (11, 8) and b is None and cap == 30.0 and scale == 0.25


def test_completion_logprobs_rejects_bad_prompt_length():
    model = _tiny_llama(True)
    ids, mask, _ = _batch()
    with pytest.raises(ValueError, match="prompt_length"):
        completion_logprobs(model, ids, mask, ids.shape[1])


def test_tiny_grpo_step_same_loss_and_gradients():
    """End to end: a GRPO-style loss from the kernel and from naive full-logit log-probs agree."""
    model = _tiny_llama(True, dtype=torch.float32, seed=4)
    ids, mask, P = _batch(N=4, P=5, T=9, seed=4)
    comp_mask = torch.ones(4, 9)
    comp_mask[2, 6:] = 0
    adv = torch.tensor([1.0, -0.5, 0.3, -0.8])

    def loss_of(logps):
        old = logps.detach()
        ratio = torch.exp(logps - old)
        per_tok = -torch.min(ratio * adv[:, None], ratio.clamp(0.8, 1.28) * adv[:, None])
        return ((per_tok * comp_mask).sum(1) / comp_mask.sum(1)).mean()

    params = list(model.parameters())
    l1 = loss_of(completion_logprobs(model, ids, mask, P, temperature=0.9, chunk_tokens=8))
    g1 = torch.autograd.grad(l1, params)
    l2 = loss_of(_naive_completion_logprobs(model, ids, mask, P, temperature=0.9))
    g2 = torch.autograd.grad(l2, params)
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-7)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
