"""The Triton implementation of token_logprobs against the naive computation.

On a machine without a GPU the kernels run through Triton's interpreter (``TRITON_INTERPRET=1``,
which must be set before Triton is imported, hence a child process) at small sizes. With CUDA
available the same checks also run on the GPU, in float32 and bfloat16, at larger sizes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

CASES = [
    # (N, T, H, V, chunk, kwargs, bias, entropy)
    (2, 7, 40, 70, 8, {}, False, False),
    (1, 21, 24, 50, 8, dict(temperature=0.7), True, False),
    (3, 5, 40, 70, 4, dict(temperature=0.9), True, True),
    (2, 6, 16, 33, 5, dict(softcap=5.0, logit_scale=1.3, temperature=0.8), True, True),
]


def _check(device: str, dtype: torch.dtype, scale_up: int = 1, tol: float = 2e-5) -> None:
    from rlvr.kernels import reference_token_logprobs, token_logprobs

    for i, (N, T, H, V, chunk, kw, bias, entropy) in enumerate(CASES):
        g = torch.Generator().manual_seed(i)
        N, T, V = N * scale_up, T * scale_up, V * scale_up
        h = (torch.randn(N, T, H, generator=g) * 0.5).to(device=device, dtype=dtype).requires_grad_(True)
        W = (torch.randn(V, H, generator=g) * 0.5).to(device=device, dtype=dtype).requires_grad_(True)
        b = torch.randn(V, generator=g).to(device=device, dtype=dtype).requires_grad_(True) if bias else None
        t = torch.randint(0, V, (N, T), generator=g).to(device)
        t[0, 1] = -100
        out = token_logprobs(
            h, W, t, bias=b, chunk_tokens=chunk * scale_up, return_entropy=entropy, backend="triton", **kw
        )
        ref = reference_token_logprobs(
            h.double(), W.double(), t, bias=None if b is None else b.double(), return_entropy=entropy, **kw
        )
        out, ref = (out if entropy else (out,)), (ref if entropy else (ref,))
        ws = [torch.randn(N, T, generator=g).to(device) for _ in out]
        params = [x for x in (h, W, b) if x is not None]
        g1 = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, ws)), params)
        g2 = torch.autograd.grad(sum((o * w.double()).sum() for o, w in zip(ref, ws)), params)
        for o, r in zip(out, ref):
            assert o.dtype == torch.float32 and o.shape == (N, T)
            torch.testing.assert_close(o.double(), r, rtol=tol, atol=tol)
        for a, r, p in zip(g1, g2, params):
            assert a.dtype == p.dtype
            # bf16 gradients: the softmax gradient tile is stored in bf16 before the cuBLAS products
            gtol = tol if dtype == torch.float32 else 3e-2
            torch.testing.assert_close(a.double(), r.double(), rtol=gtol, atol=gtol * max(1.0, r.abs().max().item()))


def test_triton_interpreter_matches_naive():
    """Runs _check on CPU tensors in a child process with TRITON_INTERPRET=1."""
    env = dict(
        os.environ,
        TRITON_INTERPRET="1",
        PYTHONPATH=os.pathsep.join(
            filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH")])
        ),
    )
    code = (
        "import sys, torch; sys.path.insert(0, %r); import test_kernels_triton as m; "
        "m._check('cpu', torch.float32); print('ok')" % os.path.dirname(os.path.abspath(__file__))
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_gpu_matches_naive(dtype):
    _check("cuda", dtype, scale_up=8, tol=2e-5 if dtype == torch.float32 else 1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_backend_picks_triton_on_cuda():
    from rlvr.kernels import token_logprobs, triton_available

    assert triton_available()
    h = torch.randn(2, 3, 16, device="cuda", requires_grad=True)
    W = torch.randn(20, 16, device="cuda")
    out = token_logprobs(h, W, torch.zeros(2, 3, dtype=torch.long, device="cuda"))
    assert "Triton" in type(out.grad_fn).__name__ or "Triton" in str(out.grad_fn.next_functions)
