"""The trainer's AdamW runs fused when every parameter allows it, and equals the per-tensor loop."""

from __future__ import annotations

import torch

from rlvr.core.optim import fused_adamw_supported


def test_fused_only_for_plain_floating_tensors():
    assert fused_adamw_supported([torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))])
    assert not fused_adamw_supported([])
    assert not fused_adamw_supported([torch.zeros(3, dtype=torch.int64)])

    class Sharded(torch.Tensor):  # stands in for an FSDP2 DTensor parameter
        device_mesh = object()

    assert not fused_adamw_supported([torch.zeros(3).as_subclass(Sharded)])


def test_fused_update_equals_the_loop():
    torch.manual_seed(0)
    init, grads = [torch.randn(5, 4), torch.randn(7)], [[torch.randn(5, 4), torch.randn(7)] for _ in range(3)]
    out = {}
    for fused in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01, fused=fused)
        for g in grads:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
        out[fused] = [p.detach() for p in params]
    for a, b in zip(out[False], out[True]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
