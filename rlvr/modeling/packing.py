"""Completion log-probs without forward/backward on padding: rows bucketed by length.

The completions of a batch are right-padded to the longest one, so a plain forward over ``[N, P + T]``
spends ``N·T - Σ lengths`` token-passes (forward and backward) on padding; with lengths spread over
128–256 tokens that is a third of the work. :func:`packed_completion_logprobs` sorts the rows by
length, cuts them into buckets (:func:`length_buckets`: the split that minimises padded tokens plus a
fixed cost per extra forward) and runs each bucket trimmed to its own longest row (and its prompts'
longest, leading all-padding columns dropped). With groups of identical prompts the prompts run
once for the whole batch, and every bucket attends to its rows' copy of their prompt's keys/values
(``index_select`` is differentiable, so each completion's gradient flows back into the one prompt
pass), as in :mod:`rlvr.modeling.shared_prompt`.

With groups of identical prompts and a model whose attention takes a custom 4D mask (sdpa, eager), the short
completions of a group first share rows (:func:`group_bins`: first fit, longest first, into rows as wide as the
batch's longest completion), each attending to its prompt and its own earlier tokens only (an additive mask) at
the positions it has in the padded batch; the shared rows are then bucketed by their filled width. So a batch
whose longest completion hits the cap (one bucket) no longer pads every short completion to it.

The buckets' results are written back into ``[N, T]`` in the original row order, zeros on the padding
(masked by every loss). Values and gradients equal the padded forward's up to float rounding (tested);
when every row has the same length this is the padded forward, unchanged.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F

from rlvr.kernels.logprobs import token_logprobs
from rlvr.modeling.causal_lm import (
    base_model,
    completion_logprobs,
    decoder_of,
    lm_head_params,
    position_ids_from_mask,
)

Tensor = torch.Tensor

__all__ = ["completion_widths", "length_buckets", "packed_completion_logprobs", "BUCKET_OVERHEAD_TOKENS"]

# the fixed cost of one more forward/backward, in padded tokens (SmolLM2-135M, 2 CPU threads: a pass costs
# ~13 ms per token and ~30 layers × ~40 ops of overhead; small matmuls also run below peak)
BUCKET_OVERHEAD_TOKENS = 32
# shared rows need an additive [rows, 1, W, P + W] attention mask; above this size (long contexts) the rows stay
# apart and are length-bucketed instead
SHARED_ROWS_MASK_BYTES = 256 * 2**20


def completion_widths(completion_mask: Tensor) -> Tensor:
    """Columns each row needs: the index of its last completion token + 1 (0 for an empty row).

    ``completion_mask``: ``[N, T]`` (nonzero = token); returns long ``[N]``. The last token, not the count:
    a multi-turn mask may have holes (environment tokens inside a completion)."""
    cols = torch.arange(1, completion_mask.shape[1] + 1, device=completion_mask.device)
    return (
        ((completion_mask != 0).long() * cols).amax(dim=1)
        if completion_mask.numel()
        else torch.zeros(completion_mask.shape[0], dtype=torch.long)
    )


def length_buckets(widths: Sequence[int], overhead: int = BUCKET_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split rows into buckets minimising ``Σ_buckets (rows · longest width + overhead)``.

    ``widths``: each row's width (:func:`completion_widths`). Rows are sorted by width (longest first, ties
    by index); a bucket is a run of that order, cut only where the width changes (dynamic programming over
    the distinct widths, O(distinct²)). Returns the buckets' row indices, each list ascending; deterministic.
    """
    n = len(widths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (-int(widths[i]), i))
    starts = [0] + [k for k in range(1, n) if widths[order[k]] != widths[order[k - 1]]]  # runs of equal width
    bounds = starts + [n]
    m = len(starts)
    best = [0.0] + [float("inf")] * m  # best[j]: cost of the first j runs
    cut = [0] * (m + 1)
    for j in range(1, m + 1):
        for i in range(j):  # runs i..j-1 in one bucket, as wide as run i
            cost = best[i] + (bounds[j] - bounds[i]) * int(widths[order[bounds[i]]]) + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], m
    while j > 0:
        i = cut[j]
        out.append(sorted(order[bounds[i] : bounds[j]]))
        j = i
    return out[::-1]


def _cache_kw(decoder: Any, cache: Any) -> dict[str, Any]:
    return {"cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values": cache}


def _first_column(mask: Tensor) -> int:
    """The first column where any row of ``mask`` [n, P] is nonzero (left padding before it is dropped)."""
    cols = (mask != 0).any(dim=0).nonzero()
    return int(cols[0]) if cols.numel() else 0


def packed_completion_logprobs(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_length: int,
    group_size: int = 0,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    return_entropy: bool = False,
    backend: str = "auto",
    overhead: int = BUCKET_OVERHEAD_TOKENS,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """:func:`rlvr.kernels.completion_logprobs` of ``[prompt | completion]`` rows, padding skipped.

    Args:
        input_ids: ``[N, P + T]``, left-padded prompts then right-padded completions.
        attention_mask: ``[N, P + T]``, 1 on tokens.
        prompt_length: P.
        group_size: G when rows come in groups of G identical prompts (the prompts then run once per
            group, :func:`rlvr.modeling.shared_prompt.shared_prompt_applies`); 0 = no sharing.
        overhead: the cost of one more forward in padded tokens (:func:`length_buckets`).

    The other arguments are those of :func:`rlvr.kernels.completion_logprobs`. Returns float32 ``[N, T]``
    (and the entropies with ``return_entropy``), zeros where a row has no column (past its last token).
    """
    from rlvr.modeling.shared_prompt import grouped_completion_logprobs, shared_prompt_applies

    P = int(prompt_length)
    T = input_ids.shape[1] - P
    kw = {
        "temperature": temperature,
        "chunk_tokens": chunk_tokens,
        "return_entropy": return_entropy,
        "backend": backend,
    }
    widths = completion_widths(attention_mask[:, P:]).clamp(min=1)
    shared = bool(group_size) and shared_prompt_applies(model, input_ids[:, :P], group_size, attention_mask[:, :P])
    if shared and mask_accepts_4d(model):  # short completions of a group share a row
        bins = group_bins(widths.tolist(), group_size)
        mask_bytes = len(bins) * T * (P + T) * 4  # at most: the mask is in the model's dtype
        if len(bins) < len(widths) and mask_bytes <= SHARED_ROWS_MASK_BYTES:
            return _shared_bins(model, input_ids, attention_mask, P, group_size, bins, widths, kw, overhead)
    buckets = length_buckets(widths.tolist(), overhead)
    if len(buckets) == 1 and int(widths.max()) == T:  # nothing to skip: the padded forward as it was
        return grouped_completion_logprobs(model, input_ids, attention_mask, P, group_size, **kw)  # type: ignore[arg-type]
    if shared:
        parts = _shared_buckets(model, input_ids, attention_mask, P, group_size, buckets, widths, kw)
    else:
        parts = []
        for rows in buckets:
            r = torch.tensor(rows, device=input_ids.device)
            w = int(widths[r].max())
            start = _first_column(attention_mask[r, :P])
            parts.append(
                completion_logprobs(
                    model,
                    input_ids[r, start : P + w],
                    attention_mask[r, start : P + w],
                    P - start,
                    **kw,  # type: ignore[arg-type]
                )
            )
    order = torch.tensor([i for rows in buckets for i in rows], device=input_ids.device)
    back = torch.argsort(order)  # row i of the result is row back[i] of the concatenated buckets

    def assemble(pieces: list[Tensor]) -> Tensor:
        return torch.cat([F.pad(x, (0, T - x.shape[1])) for x in pieces]).index_select(0, back)

    if return_entropy:
        return assemble([p[0] for p in parts]), assemble([p[1] for p in parts])
    return assemble(parts)


def group_bins(widths: Sequence[int], group_size: int) -> list[list[tuple[int, int]]]:
    """Pack each group's completions into rows as wide as the widest completion of the batch (first fit,
    longest first): several short completions of a group share one row, one after the other.

    ``widths``: each row's width (:func:`completion_widths`), rows in groups of ``group_size`` (rows
    ``g·G … g·G+G-1`` share a prompt). Returns the bins, each a list of ``(row, offset)`` in row order of
    placement; every row appears in exactly one bin, at ``offset`` columns from the bin's start, and a bin only
    holds rows of one group. Deterministic."""
    n = len(widths)
    if n == 0:
        return []
    cap = max(int(w) for w in widths)
    bins: list[list[tuple[int, int]]] = []
    for g0 in range(0, n, group_size):
        rows = sorted(range(g0, min(g0 + group_size, n)), key=lambda i: (-int(widths[i]), i))
        fills: list[int] = []
        mine: list[list[tuple[int, int]]] = []
        for i in rows:
            w = int(widths[i])
            k = next((j for j, f in enumerate(fills) if f + w <= cap), len(fills))
            if k == len(fills):
                fills.append(0)
                mine.append([])
            mine[k].append((i, fills[k]))
            fills[k] += w
        bins.extend(mine)
    return bins


def mask_accepts_4d(model: Any) -> bool:
    """Whether the model's attention takes a custom additive ``[rows, 1, q, kv]`` mask (sdpa, eager)."""
    cfg = getattr(base_model(model), "config", None)
    return getattr(cfg, "_attn_implementation", None) in ("sdpa", "eager")


def _prompt_pass(
    model: Any, input_ids: Tensor, attention_mask: Tensor, P: int, G: int
) -> tuple[Tensor, int, Tensor, list[Any]]:
    """Each group's prompt (rows 0, G, 2G, ... of the first ``P`` columns), run once without its all-padding
    leading columns. Returns (prompt mask long [B, P'], the first column kept, last hidden states
    [B, P', H], each layer's (keys, values)) with P' = P − that column."""
    from transformers import DynamicCache

    p_mask = attention_mask[::G, :P]
    start = _first_column(p_mask)
    p_ids, p_mask = input_ids[::G, start:P], p_mask[:, start:]
    decoder = decoder_of(model)
    prompt_cache = DynamicCache()
    out = decoder(
        input_ids=p_ids,
        attention_mask=p_mask,
        position_ids=position_ids_from_mask(p_mask),
        use_cache=True,
        **_cache_kw(decoder, prompt_cache),
    )
    kv = [(layer.keys, layer.values) for layer in prompt_cache.layers]  # type: ignore[union-attr]
    return p_mask, start, out.last_hidden_state, kv


def _shared_buckets(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    P: int,
    G: int,
    buckets: list[list[int]],
    widths: Tensor,
    kw: dict[str, Any],
) -> list[Any]:
    """The buckets' log-probs with each group's prompt run once (for all buckets) and its KV selected per row."""
    from transformers import DynamicCache

    device = input_ids.device
    p_mask, start, hidden, kv = _prompt_pass(model, input_ids, attention_mask, P, G)
    last = hidden[:, -1:]  # [B, 1, H]: predicts each completion's first token
    decoder = decoder_of(model)
    weight, bias, softcap, scale = lm_head_params(model)
    parts = []
    for rows in buckets:
        r = torch.tensor(rows, device=device)
        g = torch.div(r, G, rounding_mode="floor")  # each row's group (its prompt's index)
        w = int(widths[r].max())
        cache = DynamicCache(ddp_cache_data=[(k.index_select(0, g), v.index_select(0, g)) for k, v in kv])  # type: ignore[union-attr]
        comp_ids = input_ids[r, P : P + w]
        full_mask = torch.cat([p_mask.index_select(0, g), attention_mask[r, P : P + w].to(p_mask.dtype)], dim=1)
        positions = position_ids_from_mask(full_mask)[:, P - start :]
        out = decoder(
            input_ids=comp_ids,
            attention_mask=full_mask,
            position_ids=positions,
            use_cache=True,
            **_cache_kw(decoder, cache),
        )
        hidden = torch.cat([last.index_select(0, g), out.last_hidden_state[:, :-1]], dim=1)
        parts.append(token_logprobs(hidden, weight, comp_ids, bias=bias, softcap=softcap, logit_scale=scale, **kw))
    return parts


def _shared_bins(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    P: int,
    G: int,
    bins: list[list[tuple[int, int]]],
    widths: Tensor,
    kw: dict[str, Any],
    overhead: int,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Log-probs ``[N, T]`` with each group's prompt run once and its completions packed into shared rows.

    ``bins`` (:func:`group_bins`): the completions of a row sit one after the other, each attending to its
    group's prompt and to its own earlier tokens only (an additive ``[rows, 1, W, P' + W]`` mask), at the
    positions it has in the padded forward; the rows are bucketed by their filled width (:func:`length_buckets`).
    Each token is predicted from the hidden state before it in its own completion (the first one from its
    prompt's last hidden state), so values and gradients equal the padded forward's up to float rounding."""
    from transformers import DynamicCache

    device = input_ids.device
    N, T = input_ids.shape[0], input_ids.shape[1] - P
    p_mask, start, hidden, kv = _prompt_pass(model, input_ids, attention_mask, P, G)
    Pp, B = P - start, p_mask.shape[0]
    last = hidden[:, -1]  # [B, H]: predicts each completion's first token
    decoder = decoder_of(model)
    weight, bias, softcap, scale = lm_head_params(model)
    group = torch.arange(N, device=device) // G
    c_mask = attention_mask[:, P:]
    positions = position_ids_from_mask(torch.cat([p_mask.index_select(0, group), c_mask.to(p_mask.dtype)], 1))[:, Pp:]
    fills = [sum(int(widths[n]) for n, _ in b) for b in bins]
    dtype = last.dtype
    dests: list[Tensor] = []
    parts: list[Any] = []
    for bucket in length_buckets(fills, overhead):
        R, W = len(bucket), max(fills[b] for b in bucket)
        ids = torch.zeros(R, W, dtype=input_ids.dtype, device=device)
        pos = torch.ones(R, W, dtype=positions.dtype, device=device)
        seg = torch.full((R, W), -1, dtype=torch.long, device=device)  # which completion each column holds
        key_ok = torch.zeros(R, W, dtype=torch.bool, device=device)  # attended (not a hole in the mask)
        rows_g = torch.empty(R, dtype=torch.long, device=device)
        pred, targ, dest = [], [], []
        for r, b in enumerate(bucket):
            for n, o in bins[b]:
                w = int(widths[n])
                ids[r, o : o + w] = input_ids[n, P : P + w]
                pos[r, o : o + w] = positions[n, :w]
                seg[r, o : o + w] = n
                key_ok[r, o : o + w] = c_mask[n, :w] != 0
                rows_g[r] = n // G
                k = torch.arange(w, device=device)
                # token k of row n is predicted by token k - 1 of the same completion (k = 0: the prompt's end)
                pred.append(torch.where(k == 0, n // G, B + r * W + o + k - 1))
                targ.append(input_ids[n, P : P + w])
                dest.append(n * T + k)
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
        causal = torch.ones(W, W, dtype=torch.bool, device=device).tril()
        allowed = same & causal & key_ok[:, None, :]
        allowed |= torch.eye(W, dtype=torch.bool, device=device) & (seg < 0)[:, :, None]  # padding: itself
        prompt_ok = (p_mask.index_select(0, rows_g) != 0)[:, None, :].expand(R, W, Pp)
        mask = torch.cat([prompt_ok, allowed], dim=2)[:, None]  # [R, 1, W, P' + W]
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, torch.finfo(dtype).min)
        cache = DynamicCache(ddp_cache_data=[(k.index_select(0, rows_g), v.index_select(0, rows_g)) for k, v in kv])  # type: ignore[union-attr]
        out = decoder(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **_cache_kw(decoder, cache)
        )
        hidden = torch.cat([last, out.last_hidden_state.reshape(R * W, -1)]).index_select(0, torch.cat(pred))
        parts.append(
            token_logprobs(hidden, weight, torch.cat(targ), bias=bias, softcap=softcap, logit_scale=scale, **kw)
        )
        dests.append(torch.cat(dest))
    where = (torch.cat(dests),)

    def assemble(pieces: list[Tensor]) -> Tensor:
        flat = torch.cat(pieces)
        return flat.new_zeros(N * T).index_put(where, flat).reshape(N, T)

    if kw.get("return_entropy"):
        return assemble([p[0] for p in parts]), assemble([p[1] for p in parts])
    return assemble(parts)
