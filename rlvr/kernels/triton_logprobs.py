"""Triton implementation of :func:`rlvr.kernels.token_logprobs` (same formula, same outputs).

Forward is one fused kernel, a matrix product with an online log-sum-exp epilogue, in the
manner of flash attention: each program takes ``BM`` token rows and walks its share of the
vocabulary in ``BV``-wide tiles, computing each ``[BM, BV]`` logits tile in registers (float32
accumulation of ``h @ W.T``), folding it into a running max / sum / sum(p*z) / target logit, and
throwing it away. No logits reach memory at all; the vocabulary is split over ``NSPLIT`` programs
per row block when there are few rows, and the per-split partials are merged afterwards.

Backward runs over token chunks of ``chunk_tokens`` rows. For each chunk one kernel recomputes
the logits tile by tile and writes ``dL/d(h W^T + b)`` (the softmax gradient, using the saved
``logsumexp``) into a ``[chunk, V]`` buffer in the weight's dtype; cuBLAS then gives
``dh = G @ W`` and ``dW += G^T @ h`` (accumulated in float32).

float64 inputs are not handled here (Triton's dot has no float64 path on most GPUs);
:func:`token_logprobs` sends them to the PyTorch implementation. With ``TRITON_INTERPRET=1`` set
before Triton is imported, these kernels run on CPU tensors through Triton's interpreter (slowly;
that is how the tests check them without a GPU). Loop bounds (the hidden size, the vocabulary
share of a program) are compile-time constants: one compilation per model shape, and the
interpreter of older Triton releases (3.6 with NumPy >= 2.3) cannot loop to a runtime bound.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = ["triton_token_logprobs"]

Tensor = torch.Tensor


@triton.jit
def _tanh(x):
    # tanh through exp (libdevice is not available in the interpreter); saturates correctly
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _logits_tile(
    h_ptr,
    w_ptr,
    b_ptr,
    rows,
    cols,
    rmask,
    cmask,
    K: tl.constexpr,
    stride_hm,
    stride_hk,
    stride_wv,
    stride_wk,
    logit_scale,
    softcap,
    HAS_BIAS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BV: tl.constexpr,
    BK: tl.constexpr,
):
    """c = softcap*tanh((h[rows] @ W[cols].T + b[cols]) * logit_scale / softcap), float32 [BM, BV] (before temperature)."""
    acc = tl.zeros([BM, BV], dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        a = tl.load(
            h_ptr + rows[:, None] * stride_hm + ks[None, :] * stride_hk,
            mask=rmask[:, None] & kmask[None, :],
            other=0.0,
        )
        b = tl.load(
            w_ptr + cols[None, :] * stride_wv + ks[:, None] * stride_wk,
            mask=cmask[None, :] & kmask[:, None],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    acc = acc * logit_scale
    if SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return acc


@triton.jit
def _fwd_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    m_out,
    s_out,
    sz_out,
    tz_out,
    M,
    V,
    K: tl.constexpr,
    stride_hm,
    stride_hk,
    stride_wv,
    stride_wk,
    v_per_split: tl.constexpr,
    inv_temp,
    logit_scale,
    softcap,
    HAS_BIAS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ENTROPY: tl.constexpr,
    PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BV: tl.constexpr,
    BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < M
    tgt = tl.load(t_ptr + rows, mask=rmask, other=-1)
    v_lo = pid_s * v_per_split
    v_hi = tl.minimum(v_lo + v_per_split, V)  # every split holds at least one column (see _forward)
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    s_i = tl.zeros([BM], dtype=tl.float32)
    sz_i = tl.zeros([BM], dtype=tl.float32)
    tz_i = tl.zeros([BM], dtype=tl.float32)
    for v0 in range(0, v_per_split, BV):  # plain loop bounds; columns past v_hi are masked
        cols = v_lo + v0 + tl.arange(0, BV)
        cmask = cols < v_hi
        z = (
            _logits_tile(
                h_ptr,
                w_ptr,
                b_ptr,
                rows,
                cols,
                rmask,
                cmask,
                K,
                stride_hm,
                stride_hk,
                stride_wv,
                stride_wk,
                logit_scale,
                softcap,
                HAS_BIAS,
                SOFTCAP,
                PRECISION,
                BM,
                BV,
                BK,
            )
            * inv_temp
        )
        z = tl.where(cmask[None, :], z, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(z - m_new[:, None])
        s_i = s_i * alpha + tl.sum(p, 1)
        if ENTROPY:
            sz_i = sz_i * alpha + tl.sum(p * tl.where(cmask[None, :], z, 0.0), 1)
        tz_i += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), 1)
        m_i = m_new
    off = pid_s * M + rows
    tl.store(m_out + off, m_i, mask=rmask)
    tl.store(s_out + off, s_i, mask=rmask)
    tl.store(tz_out + off, tz_i, mask=rmask)
    if ENTROPY:
        tl.store(sz_out + off, sz_i, mask=rmask)


@triton.jit
def _grad_logits_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    lse_ptr,
    mu_ptr,
    glp_ptr,
    gent_ptr,
    g_ptr,
    M,
    V,
    K: tl.constexpr,
    stride_hm,
    stride_hk,
    stride_wv,
    stride_wk,
    stride_gm,
    stride_gv,
    inv_temp,
    logit_scale,
    softcap,
    HAS_BIAS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    HAS_GLP: tl.constexpr,
    HAS_GENT: tl.constexpr,
    PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BV: tl.constexpr,
    BK: tl.constexpr,
):
    """G[i, v] = d(sum_i glp_i*logp_i + gent_i*ent_i) / d(h_i W_v + b_v) for one token chunk."""
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_v * BV + tl.arange(0, BV)
    rmask = rows < M
    cmask = cols < V
    c = _logits_tile(
        h_ptr,
        w_ptr,
        b_ptr,
        rows,
        cols,
        rmask,
        cmask,
        K,
        stride_hm,
        stride_hk,
        stride_wv,
        stride_wk,
        logit_scale,
        softcap,
        HAS_BIAS,
        SOFTCAP,
        PRECISION,
        BM,
        BV,
        BK,
    )
    z = c * inv_temp
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    p = tl.exp(z - lse[:, None])
    tgt = tl.load(t_ptr + rows, mask=rmask, other=-1)
    coef = tl.zeros([BM, BV], dtype=tl.float32)
    if HAS_GLP:
        glp = tl.load(glp_ptr + rows, mask=rmask, other=0.0)
        glp = tl.where(tgt >= 0, glp, 0.0)
        coef += glp[:, None]
    if HAS_GENT:
        gent = tl.load(gent_ptr + rows, mask=rmask, other=0.0)
        mu = tl.load(mu_ptr + rows, mask=rmask, other=0.0)
        coef += gent[:, None] * (z - mu[:, None])
    g = -p * coef
    if HAS_GLP:
        g += tl.where(cols[None, :] == tgt[:, None], glp[:, None], 0.0)
    if SOFTCAP:
        th = c / softcap
        g = g * (1.0 - th * th)
    g = g * (inv_temp * logit_scale)
    tl.store(
        g_ptr + rows[:, None] * stride_gm + cols[None, :] * stride_gv,
        g.to(g_ptr.dtype.element_ty),
        mask=rmask[:, None] & cmask[None, :],
    )


_DW_TILE = 8192  # vocabulary rows of dW per float32 partial product in backward


def _blocks(dtype: torch.dtype, interpret: bool) -> Tuple[int, int, int, int]:
    """(BM, BV, BK, num_warps)."""
    if interpret:
        return 16, 32, 16, 4
    if dtype == torch.float32:
        return 64, 64, 32, 4
    return 64, 128, 64, 8


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _mm_f32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with a float32 result (float32 accumulation) whatever the input dtype."""
    if a.dtype == torch.float32:
        return a @ b
    try:
        return torch.mm(a, b, out_dtype=torch.float32)
    except (RuntimeError, TypeError, NotImplementedError):
        return (a @ b).float()


def _forward(
    h: Tensor,
    w: Tensor,
    b: Optional[Tensor],
    t: Tensor,
    inv_temp: float,
    softcap: Optional[float],
    logit_scale: float,
    want_entropy: bool,
) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    M, K = h.shape
    V = w.shape[0]
    interp = _interpreting()
    BM, BV, BK, nw = _blocks(w.dtype, interp)
    row_blocks = triton.cdiv(M, BM)
    if interp:
        nsplit = min(2, triton.cdiv(V, BV))
    else:
        sms = torch.cuda.get_device_properties(h.device).multi_processor_count
        nsplit = max(1, min(triton.next_power_of_2(triton.cdiv(2 * sms, row_blocks)), triton.cdiv(V, BV)))
    v_per = triton.cdiv(triton.cdiv(V, nsplit), BV) * BV
    nsplit = triton.cdiv(V, v_per)
    f32 = dict(dtype=torch.float32, device=h.device)
    m_p = torch.empty(nsplit, M, **f32)  # type: ignore[call-overload]
    s_p = torch.empty(nsplit, M, **f32)  # type: ignore[call-overload]
    tz_p = torch.empty(nsplit, M, **f32)  # type: ignore[call-overload]
    sz_p = torch.empty(nsplit, M, **f32) if want_entropy else s_p  # type: ignore[call-overload]
    prec = "ieee" if w.dtype == torch.float32 else "tf32"
    kw = {} if interp else dict(num_warps=nw, num_stages=3)
    _fwd_kernel[(row_blocks, nsplit)](
        h,
        w,
        b if b is not None else w,
        t,
        m_p,
        s_p,
        sz_p,
        tz_p,
        M,
        V,
        K,
        h.stride(0),
        h.stride(1),
        w.stride(0),
        w.stride(1),
        v_per,
        inv_temp,
        logit_scale,
        softcap or 1.0,
        HAS_BIAS=b is not None,
        SOFTCAP=softcap is not None,
        ENTROPY=want_entropy,
        PRECISION=prec,
        BM=BM,
        BV=BV,
        BK=BK,
        **kw,
    )
    m = m_p.amax(0)
    scale = torch.exp(m_p - m)
    S = (s_p * scale).sum(0)
    lse = m + S.log()
    valid = t >= 0
    logp = torch.where(valid, tz_p.sum(0) - lse, torch.zeros_like(lse))
    if want_entropy:
        mu = (sz_p * scale).sum(0) / S
        return logp, lse, lse - mu, mu
    return logp, lse, None, None


def _grad_logits(
    h: Tensor,
    w: Tensor,
    b: Optional[Tensor],
    t: Tensor,
    lse: Tensor,
    mu: Optional[Tensor],
    glp: Optional[Tensor],
    gent: Optional[Tensor],
    inv_temp: float,
    softcap: Optional[float],
    logit_scale: float,
) -> Tensor:
    M, K = h.shape
    V = w.shape[0]
    interp = _interpreting()
    BM, BV, BK, nw = _blocks(w.dtype, interp)
    G = torch.empty(M, V, dtype=w.dtype, device=h.device)
    prec = "ieee" if w.dtype == torch.float32 else "tf32"
    kw = {} if interp else dict(num_warps=nw, num_stages=3)
    _grad_logits_kernel[(triton.cdiv(M, BM), triton.cdiv(V, BV))](
        h,
        w,
        b if b is not None else w,
        t,
        lse,
        mu if mu is not None else lse,
        glp if glp is not None else lse,
        gent if gent is not None else lse,
        G,
        M,
        V,
        K,
        h.stride(0),
        h.stride(1),
        w.stride(0),
        w.stride(1),
        G.stride(0),
        G.stride(1),
        inv_temp,
        logit_scale,
        softcap or 1.0,
        HAS_BIAS=b is not None,
        SOFTCAP=softcap is not None,
        HAS_GLP=glp is not None,
        HAS_GENT=gent is not None,
        PRECISION=prec,
        BM=BM,
        BV=BV,
        BK=BK,
        **kw,
    )
    return G


class _TritonTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden2d, weight, bias, targets, temperature, chunk, want_entropy, softcap, logit_scale):
        h_dtype, w_dtype = hidden2d.dtype, weight.dtype
        if h_dtype != w_dtype:  # mixed inputs: compute in float32
            h, w = hidden2d.float(), weight.float()
        else:
            h, w = hidden2d, weight
        h = h.contiguous()
        w = w.contiguous()
        b = bias.contiguous() if bias is not None else None
        t = targets.long().contiguous()
        logp, lse, ent, mu = _forward(h, w, b, t, 1.0 / temperature, softcap, logit_scale, want_entropy)
        ctx.meta = (temperature, chunk, want_entropy, softcap, logit_scale, h_dtype, w_dtype)
        ctx.save_for_backward(h, w, b, t, lse, mu)
        return logp, (ent if ent is not None else lse.new_zeros(0))

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        temperature, chunk, want_entropy, softcap, logit_scale, h_dtype, w_dtype = ctx.meta
        h, w, b, t, lse, mu = ctx.saved_tensors
        if not want_entropy:
            g_ent = None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if (g_lp is None and g_ent is None) or not (need_h or need_w or need_b):
            return (None,) * 9
        g_lp = g_lp.float().contiguous() if g_lp is not None else None
        g_ent = g_ent.float().contiguous() if g_ent is not None else None
        M = h.shape[0]
        dh = torch.empty(h.shape, dtype=h.dtype, device=h.device) if need_h else None
        dw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        db = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need_b else None
        for s in range(0, M, chunk):
            e = min(s + chunk, M)
            G = _grad_logits(
                h[s:e],
                w,
                b,
                t[s:e],
                lse[s:e],
                None if mu is None else mu[s:e],
                None if g_lp is None else g_lp[s:e],
                None if g_ent is None else g_ent[s:e],
                1.0 / temperature,
                softcap,
                logit_scale,
            )
            if dh is not None:
                torch.mm(G, w, out=dh[s:e])
            if dw is not None:  # float32 partial products one vocabulary tile at a time (small temporaries)
                for v0 in range(0, G.shape[1], _DW_TILE):
                    dw[v0 : v0 + _DW_TILE] += _mm_f32(G[:, v0 : v0 + _DW_TILE].t(), h[s:e])
            if db is not None:
                db += G.sum(0, dtype=torch.float32)
            del G
        return (
            dh.to(h_dtype) if dh is not None else None,
            dw.to(w_dtype) if dw is not None else None,
            db.to(b.dtype) if db is not None else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def triton_token_logprobs(
    hidden2d: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    temperature: float,
    chunk_tokens: int,
    return_entropy: bool,
    softcap: Optional[float],
    logit_scale: float,
) -> Tuple[Tensor, Tensor]:
    """Triton path of :func:`rlvr.kernels.token_logprobs` on flattened inputs.

    ``hidden2d`` [M, H], ``weight`` [V, H], ``bias`` [V] or None, ``targets`` [M] (negative =
    ignored). Returns float32 ``(logp [M], entropy [M] or an empty tensor)``; differentiable.
    """
    return _TritonTokenLogprobs.apply(
        hidden2d, weight, bias, targets, temperature, chunk_tokens, return_entropy, softcap, logit_scale
    )
