"""Gradient checkpointing and activation offload: same log-probs and gradients, activations moved."""

from __future__ import annotations

import pytest
import torch

from rlvr.modeling import completion_logprobs, enable_gradient_checkpointing, offload_activations


def _run(gc: bool, offload: bool, lora: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).double()
    if lora:
        peft = pytest.importorskip("peft")
        model = peft.get_peft_model(
            model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
    model.train()
    if gc:
        enable_gradient_checkpointing(model)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with offload_activations(model, enabled=offload, min_bytes=1, offload_cpu=True) as off:
        lp = completion_logprobs(model, ids, mask, 4, chunk_tokens=5)
    (lp * torch.linspace(-1, 1, 8, dtype=lp.dtype)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return lp.detach(), grads, off


@pytest.mark.parametrize("lora", [False, True])
def test_checkpointing_and_offload_keep_values_and_gradients(lora):
    lp0, g0, _ = _run(False, False, lora)
    for gc, offload in [(True, False), (False, True), (True, True)]:
        lp, g, off = _run(gc, offload, lora)
        torch.testing.assert_close(lp, lp0, rtol=1e-12, atol=1e-12)
        assert len(g) == len(g0) > 0
        for a, b in zip(g, g0):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        if offload:
            assert off.count > 0 and off.bytes > 0
        else:
            assert off.count == 0


def test_offload_skips_parameters_small_tensors_and_cpu_by_default():
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(32, 64, requires_grad=True)
    with offload_activations(lin, min_bytes=1, offload_cpu=True) as off:
        y = torch.tanh(lin(x)).sum()
    assert off.count >= 1  # x / tanh output moved, the weight not
    assert off.bytes < 3 * 32 * 64 * 4
    with offload_activations(lin) as off2:  # CPU tensors stay put without offload_cpu
        lin(x).sum()
    assert off2.count == 0
    y.backward()
    assert x.grad is not None
