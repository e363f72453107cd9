"""Chunked fused-linear token log-probabilities: the LM head without the (tokens x vocab) logits.

For hidden states ``h`` (``[..., H]``), an output projection ``W`` (``[V, H]``), an optional bias
``b`` (``[V]``) and the chosen tokens ``t`` (``[...]``), :func:`token_logprobs` returns::

    a = (h @ W.T + b) * logit_scale                    # [.., V], accumulated in float32
    c = softcap * tanh(a / softcap)   (or c = a when softcap is None)
    z = c / temperature
    logp[i] = z[i, t[i]] - logsumexp_v z[i, v]
    entropy[i] = logsumexp_v z[i, v] - sum_v softmax(z[i])_v * z[i, v]      (optional)

without ever holding more than one ``chunk_tokens x chunk_vocab`` tile of ``z``: the rows
(tokens, across the whole batch, so one 16K sequence costs what sixteen 1K ones do) are processed
one chunk at a time, the vocabulary one tile at a time with an online log-sum-exp, and the
backward pass recomputes each tile's logits instead of keeping them. Extra memory is
``O(chunk_tokens * chunk_vocab)`` plus the gradient buffers, whatever the sequence length.

Three ways of getting the gradient, picked automatically:

* *keep* (a gradient is needed, not *precompute*, and the ``tokens x V`` logits fit in
  ``keep_logits_bytes``, 256 MiB by default: e.g. 512 tokens of a 49 152-token vocabulary in float32,
  100 MB): forward writes all the logits into one buffer and keeps it; backward turns it into the
  gradient in place and produces ``dh``, ``dW`` and ``db``. Cost: 1 matmul forward, 2 backward.
* *recompute* (the weight or the bias needs a gradient, or the entropy is returned, and the logits
  are larger): forward keeps only ``logsumexp`` per token; backward recomputes each chunk's logits and
  produces ``dh``, ``dW`` and ``db`` from them. Cost: 1 matmul forward, 3 backward.
* *precompute* (only ``hidden`` needs a gradient, e.g. LoRA with a frozen LM head, and no
  entropy): since ``logp`` is a scalar per token, ``d logp_i / d h_i`` is a fixed ``H``-vector
  that forward computes while the chunk's probabilities are in hand (full-vocabulary rows,
  ``chunk_tokens * chunk_vocab / V`` of them at a time); backward multiplies it by the incoming
  per-token gradient. Cost: 2 matmuls forward, none backward; keeps ``[tokens, H]`` float32.

On CUDA, when Triton imports, the same function runs a Triton kernel (:mod:`rlvr.kernels.triton_logprobs`)
that never materialises logits in forward at all; everywhere else this PyTorch version runs.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import torch

__all__ = ["token_logprobs", "reference_token_logprobs", "triton_available"]

Tensor = torch.Tensor

# Keep the forward's logits for backward (instead of recomputing them there) when they take at most this many
# bytes: 512 tokens x 49 152 vocabulary in float32 is 100 MB, and keeping them saves one of the head's four
# (tokens x V x H) matmuls. Above it the logits are recomputed tile by tile (memory independent of length).
KEEP_LOGITS_BYTES = 256 * 2**20
KEEP_LSE_ROWS = 64  # rows per log-sum-exp block over kept logits (its temporary: 64 x V)


# ----------------------------------------------------------------------------------------------
# validation and dtype helpers
# ----------------------------------------------------------------------------------------------
def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """float64 when either operand is float64, else float32 (logits never accumulate in 16 bits)."""
    return torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32


def _check_inputs(
    hidden: Tensor,
    weight: Tensor,
    target_ids: Tensor,
    bias: Optional[Tensor],
    temperature: float,
    chunk_tokens: int,
    softcap: Optional[float],
    chunk_vocab: int = 1,
) -> None:
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise TypeError(
            f"token_logprobs: hidden and weight must be floating point, got {hidden.dtype} and {weight.dtype}"
        )
    if weight.dim() != 2:
        raise ValueError(f"token_logprobs: weight must be [V, H], got shape {tuple(weight.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"token_logprobs: hidden size {hidden.shape[-1]} does not match weight [V, H] = {tuple(weight.shape)}"
        )
    if tuple(target_ids.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"token_logprobs: target_ids shape {tuple(target_ids.shape)} must equal hidden.shape[:-1] = {tuple(hidden.shape[:-1])}"
        )
    if target_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"token_logprobs: target_ids must be an integer tensor, got {target_ids.dtype}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"token_logprobs: bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if not temperature > 0:
        raise ValueError(f"token_logprobs: temperature must be > 0, got {temperature}")
    if int(chunk_tokens) < 1 or int(chunk_vocab) < 1:
        raise ValueError(
            f"token_logprobs: chunk_tokens and chunk_vocab must be >= 1, got {chunk_tokens}, {chunk_vocab}"
        )
    if softcap is not None and not softcap > 0:
        raise ValueError(f"token_logprobs: softcap must be > 0 or None, got {softcap}")
    if hidden.device != weight.device or hidden.device != target_ids.device:
        raise ValueError(
            f"token_logprobs: hidden ({hidden.device}), weight ({weight.device}) and target_ids ({target_ids.device}) must share a device"
        )


# ----------------------------------------------------------------------------------------------
# per-chunk building blocks (shared by forward, backward and the reference)
# ----------------------------------------------------------------------------------------------
def _chunk_logits(
    h: Tensor,
    w: Tensor,
    b: Optional[Tensor],
    logit_scale: float,
    softcap: Optional[float],
    temperature: float,
    out: Optional[Tensor] = None,
) -> Tensor:
    """z = softcap*tanh(((h @ w.T + b) * logit_scale) / softcap) / temperature, a [C, V] tensor (``out`` when
    given, else new).

    ``h`` and ``w`` are already in the compute dtype; the result is in that dtype.
    """
    if out is not None:
        z = torch.addmm(b, h, w.t(), out=out) if b is not None else torch.mm(h, w.t(), out=out)
    else:
        z = torch.addmm(b, h, w.t()) if b is not None else h @ w.t()
    if logit_scale != 1.0:
        z.mul_(logit_scale)
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    if temperature != 1.0:
        z.div_(temperature)
    return z


def _dz_da_inplace(
    grad: Tensor, z: Tensor, logit_scale: float, softcap: Optional[float], temperature: float
) -> Tensor:
    """Turn d/dz into d/d(h @ w.T + b) in place: times (1 - tanh^2) / temperature * logit_scale."""
    if softcap is not None:
        # c = z * temperature = softcap * tanh(.): d c / d(a/softcap * softcap) = 1 - (c / softcap)^2
        t = z.mul(temperature / softcap)
        grad.mul_(t.mul_(t).neg_().add_(1.0))
        del t
    factor = logit_scale / temperature
    if factor != 1.0:
        grad.mul_(factor)
    return grad


def _grad_z_tile(
    z: Tensor,
    lse: Tensor,
    local_t: Tensor,
    hit: Tensor,
    g_lp: Optional[Tensor],
    g_ent: Optional[Tensor],
    mu: Optional[Tensor],
    keep_z: bool,
) -> Tensor:
    """d(sum_i g_lp_i*logp_i + g_ent_i*entropy_i)/dz for one [C, Vt] tile of logits ``z``.

    With ``p = exp(z - lse)`` and ``mu = sum_v p z = lse - entropy``::

        d logp_i / d z_iv = [v == t_i] - p_iv
        d H_i / d z_iv    = -p_iv * (z_iv - mu_i)

    ``local_t`` are the targets' column indices inside the tile (clamped) and ``hit`` says which
    rows' target lies in the tile (and is not ignored); ``g_lp`` is already zero on ignored rows.
    Overwrites ``z`` unless ``keep_z``.
    """
    if g_ent is None:
        p = z.sub(lse[:, None]) if keep_z else z.sub_(lse[:, None])
        p.exp_().mul_(g_lp.neg()[:, None])  # type: ignore[union-attr]
    else:
        p = z.sub(lse[:, None]).exp_()
        coef = z.sub(mu[:, None]) if keep_z else z.sub_(mu[:, None])  # type: ignore[index]
        coef.mul_(g_ent[:, None])
        if g_lp is not None:
            coef.add_(g_lp[:, None])
        p.mul_(coef).neg_()
        del coef
    if g_lp is not None:
        p.scatter_add_(1, local_t[:, None], torch.where(hit, g_lp, torch.zeros_like(g_lp))[:, None])
    return p


def _tile_targets(targets: Tensor, valid: Tensor, v0: int, v1: int) -> Tuple[Tensor, Tensor]:
    """(column of each row's target inside the vocabulary tile [v0, v1), clamped; whether it is there)."""
    hit = valid & (targets >= v0) & (targets < v1)
    return (targets - v0).clamp_(0, v1 - v0 - 1), hit


def _vocab_tiles(V: int, chunk_vocab: int):
    return [(v0, min(v0 + chunk_vocab, V)) for v0 in range(0, V, chunk_vocab)]


# ----------------------------------------------------------------------------------------------
# autograd function (PyTorch implementation)
# ----------------------------------------------------------------------------------------------
class _TokenLogprobs(torch.autograd.Function):
    """Chunks of ``chunk`` token rows x ``chunk_vocab`` vocabulary columns; online log-sum-exp."""

    @staticmethod
    def forward(
        ctx,
        hidden2d: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        targets: Tensor,
        temperature: float,
        chunk: int,
        want_entropy: bool,
        softcap: Optional[float],
        logit_scale: float,
        chunk_vocab: int,
        grad_needed: Tuple[bool, bool, bool],
        keep_bytes: int = KEEP_LOGITS_BYTES,
    ):
        cd = _compute_dtype(hidden2d, weight)
        M, H = hidden2d.shape
        V = weight.shape[0]
        dev = hidden2d.device
        targets = targets.long()
        valid = targets >= 0
        logp = torch.empty(M, dtype=cd, device=dev)
        lse = torch.empty(M, dtype=cd, device=dev)
        ent = torch.empty(M, dtype=cd, device=dev) if want_entropy else None
        need_h, need_w, need_b = grad_needed
        # frozen head (LoRA) and no entropy: d logp_i / d h_i is one H-vector per token; compute it
        # now, from full-vocabulary rows (same element budget: fewer rows per chunk), and skip backward
        precompute = need_h and not need_w and not need_b and not want_entropy
        if precompute:
            rows = max(1, (chunk * min(chunk_vocab, V)) // V)
            dh_unit = _precompute_forward(
                hidden2d, weight, bias, targets, valid, temperature, rows, softcap, logit_scale, logp, lse, cd
            )
            ctx.save_for_backward(dh_unit)
        elif keep_bytes >= M * V * torch.empty((), dtype=cd).element_size() and any(grad_needed):
            kept = _kept_logits_forward(
                hidden2d, weight, bias, targets, valid, temperature, chunk, softcap, logit_scale, logp, lse, ent, cd
            )
            ctx.save_for_backward(hidden2d, weight, bias, targets, lse, ent, kept)
        else:
            tiles = _vocab_tiles(V, chunk_vocab)
            for s in range(0, M, chunk):
                e = min(s + chunk, M)
                h = hidden2d[s:e].to(cd)
                t, ok = targets[s:e], valid[s:e]
                m = torch.full((e - s,), float("-inf"), dtype=cd, device=dev)
                ssum = torch.zeros(e - s, dtype=cd, device=dev)
                sz = torch.zeros(e - s, dtype=cd, device=dev) if want_entropy else None
                tz = torch.zeros(e - s, dtype=cd, device=dev)
                for v0, v1 in tiles:
                    z = _chunk_logits(
                        h,
                        weight[v0:v1].to(cd),
                        None if bias is None else bias[v0:v1].to(cd),
                        logit_scale,
                        softcap,
                        temperature,
                    )
                    local_t, hit = _tile_targets(t, ok, v0, v1)
                    tz += torch.where(hit, z.gather(1, local_t[:, None]).squeeze(1), torch.zeros_like(tz))
                    m_new = torch.maximum(m, z.amax(dim=1))
                    alpha = torch.exp(m - m_new)
                    if want_entropy:
                        ez = z.sub(m_new[:, None]).exp_()
                        ssum.mul_(alpha).add_(ez.sum(dim=1))
                        sz.mul_(alpha).add_(ez.mul_(z).sum(dim=1))  # type: ignore[union-attr]
                        del ez
                    else:
                        ssum.mul_(alpha).add_(z.sub_(m_new[:, None]).exp_().sum(dim=1))
                    m = m_new
                    del z
                lse_c = m + ssum.log()
                lse[s:e] = lse_c
                logp[s:e] = torch.where(ok, tz - lse_c, torch.zeros_like(tz))
                if want_entropy:
                    ent[s:e] = lse_c - sz / ssum  # type: ignore[arg-type,index,operator]
            ctx.save_for_backward(hidden2d, weight, bias, targets, lse, ent, None)
        ctx.meta = (
            temperature,
            chunk,
            want_entropy,
            softcap,
            logit_scale,
            chunk_vocab,
            precompute,
            hidden2d.dtype,
            weight.dtype,
        )
        return logp, (ent if ent is not None else lse.new_zeros(0))

    @staticmethod
    def backward(ctx, g_lp: Optional[Tensor], g_ent: Optional[Tensor]):
        temperature, chunk, want_entropy, softcap, logit_scale, chunk_vocab, precompute, h_dtype, w_dtype = ctx.meta
        nothing = (None,) * 12
        if precompute:
            (dh_unit,) = ctx.saved_tensors
            if g_lp is None or not ctx.needs_input_grad[0]:
                return nothing
            return ((dh_unit * g_lp.to(dh_unit.dtype)[:, None]).to(h_dtype),) + nothing[1:]
        hidden2d, weight, bias, targets, lse, ent, kept = ctx.saved_tensors
        if not want_entropy:
            g_ent = None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if (g_lp is None and g_ent is None) or not (need_h or need_w or need_b):
            return nothing
        cd = lse.dtype
        M, H = hidden2d.shape
        V = weight.shape[0]
        dev = hidden2d.device
        valid = targets >= 0
        if g_lp is not None:
            g_lp = torch.where(valid, g_lp.to(cd), torch.zeros((), dtype=cd, device=dev))
        g_ent = g_ent.to(cd) if g_ent is not None else None
        mu = (lse - ent) if g_ent is not None else None
        dh = torch.zeros(M, H, dtype=cd, device=dev) if need_h else None
        dw = torch.zeros(V, H, dtype=cd, device=dev) if need_w and (M > chunk or kept is None) else None
        dw_first = need_w and dw is None  # one row chunk: torch.mm writes dW (no zero-filled [V, H] first)
        db = torch.zeros(V, dtype=cd, device=dev) if need_b else None
        tiles = _vocab_tiles(V, V if kept is not None else chunk_vocab)
        for s in range(0, M, chunk):
            e = min(s + chunk, M)
            h = hidden2d[s:e].to(cd)
            t, ok = targets[s:e], valid[s:e]
            for v0, v1 in tiles:
                w = weight[v0:v1].to(cd)
                if kept is not None:  # the forward's logits (overwritten below: this backward runs once)
                    z = kept[s:e]
                else:
                    z = _chunk_logits(
                        h, w, None if bias is None else bias[v0:v1].to(cd), logit_scale, softcap, temperature
                    )
                local_t, hit = _tile_targets(t, ok, v0, v1)
                gz = _grad_z_tile(
                    z,
                    lse[s:e],
                    local_t,
                    hit,
                    None if g_lp is None else g_lp[s:e],
                    None if g_ent is None else g_ent[s:e],
                    None if mu is None else mu[s:e],
                    keep_z=softcap is not None,
                )
                _dz_da_inplace(gz, z, logit_scale, softcap, temperature)
                del z
                if dh is not None:
                    dh[s:e].addmm_(gz, w)
                if dw_first:
                    dw = torch.mm(gz.t(), h)
                elif dw is not None:
                    dw[v0:v1].addmm_(gz.t(), h)
                if db is not None:
                    db[v0:v1] += gz.sum(dim=0)
                del gz
        return (
            dh.to(h_dtype) if dh is not None else None,
            dw.to(w_dtype) if dw is not None else None,
            db.to(bias.dtype) if db is not None else None,
        ) + nothing[3:]


def _kept_logits_forward(
    hidden2d: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    valid: Tensor,
    temperature: float,
    chunk: int,
    softcap: Optional[float],
    logit_scale: float,
    logp: Tensor,
    lse: Tensor,
    ent: Optional[Tensor],
    cd: torch.dtype,
) -> Tensor:
    """Fill ``logp``/``lse`` (and ``ent``) and return the logits z ``[M, V]`` (compute dtype) for backward.

    One matmul per ``chunk`` rows over the whole vocabulary, written into the kept buffer; the log-sum-exp in
    blocks of :data:`KEEP_LSE_ROWS` rows (``lse = m + log sum exp(z - m)``, ``m`` the row max), so the only
    temporary is ``KEEP_LSE_ROWS x V``. Entropy: ``lse - sum_v softmax(z)_v z_v``."""
    M = hidden2d.shape[0]
    w = weight.to(cd)
    b = bias.to(cd) if bias is not None else None
    kept = torch.empty(M, w.shape[0], dtype=cd, device=hidden2d.device)
    for s in range(0, M, chunk):
        e = min(s + chunk, M)
        _chunk_logits(hidden2d[s:e].to(cd), w, b, logit_scale, softcap, temperature, out=kept[s:e])
    for s in range(0, M, KEEP_LSE_ROWS):
        e = min(s + KEEP_LSE_ROWS, M)
        z = kept[s:e]
        m = z.amax(dim=1)
        ez = z.sub(m[:, None]).exp_()
        ssum = ez.sum(dim=1)
        lse[s:e] = m + ssum.log()
        tz = z.gather(1, targets[s:e].clamp(min=0)[:, None]).squeeze(1)
        logp[s:e] = torch.where(valid[s:e], tz - lse[s:e], torch.zeros_like(tz))
        if ent is not None:
            ent[s:e] = lse[s:e] - ez.mul_(z).sum(dim=1) / ssum
        del ez
    return kept


def _precompute_forward(
    hidden2d: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    valid: Tensor,
    temperature: float,
    rows: int,
    softcap: Optional[float],
    logit_scale: float,
    logp: Tensor,
    lse: Tensor,
    cd: torch.dtype,
) -> Tensor:
    """Fill ``logp``/``lse`` and return ``d logp_i / d h_i`` ([M, H], compute dtype), full-vocab rows."""
    M, H = hidden2d.shape
    w = weight.to(cd)
    b = bias.to(cd) if bias is not None else None
    dh_unit = torch.empty(M, H, dtype=cd, device=hidden2d.device)
    for s in range(0, M, rows):
        e = min(s + rows, M)
        z = _chunk_logits(hidden2d[s:e].to(cd), w, b, logit_scale, softcap, temperature)
        zr = z.clone() if softcap is not None else None
        t, ok = targets[s:e], valid[s:e]
        m = z.amax(dim=1)
        z.sub_(m[:, None])
        tz = z.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
        z.exp_()
        ssum = z.sum(dim=1)
        logp[s:e] = torch.where(ok, tz - ssum.log(), torch.zeros_like(tz))
        lse[s:e] = m + ssum.log()
        p = z.div_(ssum[:, None])
        p.neg_().scatter_add_(1, t.clamp(min=0)[:, None], torch.ones_like(tz)[:, None])  # onehot - p
        _dz_da_inplace(p, zr if zr is not None else p, logit_scale, softcap, temperature)
        torch.mm(p, w, out=dh_unit[s:e])
        dh_unit[s:e] *= ok.to(cd)[:, None]
        del z, p, zr
    return dh_unit


# ----------------------------------------------------------------------------------------------
# Triton dispatch
# ----------------------------------------------------------------------------------------------
_TRITON_OK: Optional[bool] = None


def triton_available() -> bool:
    """True when the Triton implementation can be imported (Triton installed and loadable)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            from rlvr.kernels import triton_logprobs  # noqa: F401

            _TRITON_OK = True
        except Exception:  # ImportError, or a broken Triton install
            _TRITON_OK = False
    return _TRITON_OK


def _pick_backend(backend: str, hidden: Tensor) -> str:
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"token_logprobs: backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "auto":
        if os.environ.get("RLVR_KERNELS_BACKEND") in ("torch", "triton"):
            backend = os.environ["RLVR_KERNELS_BACKEND"]
        else:
            return "triton" if hidden.is_cuda and triton_available() else "torch"
    if backend == "triton" and not triton_available():
        raise RuntimeError("token_logprobs: backend='triton' asked for, but Triton cannot be imported")
    return backend


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    target_ids: Tensor,
    temperature: float = 1.0,
    bias: Optional[Tensor] = None,
    chunk_tokens: int = 1024,
    return_entropy: bool = False,
    softcap: Optional[float] = None,
    logit_scale: float = 1.0,
    *,
    chunk_vocab: int = 8192,
    backend: str = "auto",
    keep_logits_bytes: int = KEEP_LOGITS_BYTES,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Log-probabilities of ``target_ids`` under the LM head, without materialising the logits (unless they
    are small: ``keep_logits_bytes``).

    Formula (per token ``i``; see the module docstring)::

        z_i    = softcap * tanh((h_i @ W.T + b) * logit_scale / softcap) / temperature
        logp_i = z_i[t_i] - logsumexp(z_i)
        ent_i  = logsumexp(z_i) - sum_v softmax(z_i)_v * z_i[v]

    Args:
        hidden: ``[..., H]`` final hidden states (after the final norm), any float dtype.
        weight: ``[V, H]`` output projection (the LM head / tied embedding matrix), any float dtype.
        target_ids: ``[...]`` (``hidden.shape[:-1]``) integer token ids in ``[0, V)``; a negative id
            marks a position to ignore (its log-prob is 0 and it gets no gradient).
        temperature: divides the logits (after softcap), as the sampler does.
        bias: optional ``[V]`` bias of the projection.
        chunk_tokens: rows of logits held at once (memory ``~ chunk_tokens * V * 4`` bytes).
        return_entropy: also return the per-token entropy of ``softmax(z_i)`` (differentiable).
        softcap: Gemma-style final logit soft-capping, ``softcap * tanh(logits / softcap)``.
        logit_scale: multiplies the raw logits before the softcap.
        chunk_vocab: vocabulary columns per tile in the PyTorch implementation (online
            log-sum-exp across tiles); memory ``~ chunk_tokens * chunk_vocab * 4`` bytes per buffer.
        backend: ``"auto"`` (Triton on CUDA when importable, else PyTorch), ``"torch"`` or
            ``"triton"`` (also runs on CPU tensors under ``TRITON_INTERPRET=1``). The environment
            variable ``RLVR_KERNELS_BACKEND`` overrides ``"auto"``.
        keep_logits_bytes: PyTorch implementation, when a gradient is needed: if the ``tokens x V`` logits
            (compute dtype) take at most this many bytes, forward keeps them and backward reuses them
            (overwriting them: one backward per forward) instead of recomputing them; 0 = always recompute.

    Returns:
        ``logp`` ``[...]`` float32 (float64 when ``hidden`` or ``weight`` is float64), or
        ``(logp, entropy)`` when ``return_entropy``. Differentiable with respect to ``hidden``,
        ``weight`` and ``bias`` (gradients in their own dtypes, accumulated in float32). Under
        ``torch.autocast`` (``trainer.update_dtype=bfloat16``) this function runs outside it, ``hidden`` promoted
        to the weight's dtype: a float32 LM head keeps float32 logits while the layers below run in bfloat16.
    """
    if torch.is_autocast_enabled(hidden.device.type):  # the logits stay in the weights' precision (see Returns)
        with torch.autocast(hidden.device.type, enabled=False):
            return token_logprobs(
                hidden.to(torch.promote_types(hidden.dtype, weight.dtype)),
                weight,
                target_ids,
                temperature=temperature,
                bias=bias,
                chunk_tokens=chunk_tokens,
                return_entropy=return_entropy,
                softcap=softcap,
                logit_scale=logit_scale,
                chunk_vocab=chunk_vocab,
                backend=backend,
                keep_logits_bytes=keep_logits_bytes,
            )
    _check_inputs(hidden, weight, target_ids, bias, temperature, chunk_tokens, softcap, chunk_vocab)
    lead = tuple(hidden.shape[:-1])
    H = hidden.shape[-1]
    hidden2d = hidden.reshape(-1, H)
    targets = target_ids.reshape(-1)
    if bool((targets >= weight.shape[0]).any()):
        raise ValueError(
            f"token_logprobs: target id {int(targets.max())} out of range for a vocabulary of {weight.shape[0]}"
        )
    grad_on = torch.is_grad_enabled()
    grad_needed = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    softcap = float(softcap) if softcap is not None else None
    args = (float(temperature), int(chunk_tokens), bool(return_entropy), softcap, float(logit_scale))
    if _pick_backend(backend, hidden) == "triton":
        from rlvr.kernels.triton_logprobs import triton_token_logprobs

        logp, ent = triton_token_logprobs(hidden2d, weight, bias, targets, *args)
    else:
        logp, ent = _TokenLogprobs.apply(
            hidden2d, weight, bias, targets, *args, int(chunk_vocab), grad_needed, int(keep_logits_bytes)
        )
    logp = logp.reshape(lead)
    if return_entropy:
        return logp, ent.reshape(lead)
    return logp


def reference_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    target_ids: Tensor,
    temperature: float = 1.0,
    bias: Optional[Tensor] = None,
    return_entropy: bool = False,
    softcap: Optional[float] = None,
    logit_scale: float = 1.0,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """The naive computation :func:`token_logprobs` must match: full ``[..., V]`` logits in the
    compute dtype (float32, or float64), ``log_softmax`` and ``gather`` (what TRL does). For tests
    and benchmarks only: memory ``O(tokens * V)``."""
    cd = _compute_dtype(hidden, weight)
    a = torch.nn.functional.linear(hidden.to(cd), weight.to(cd), None if bias is None else bias.to(cd))
    if logit_scale != 1.0:
        a = a * logit_scale
    if softcap is not None:
        a = softcap * torch.tanh(a / softcap)
    z = a / temperature
    logsm = torch.log_softmax(z, dim=-1)
    valid = target_ids >= 0
    logp = logsm.gather(-1, target_ids.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    if return_entropy:
        ent = -(logsm.exp() * logsm).sum(-1)
        return logp, ent
    return logp
