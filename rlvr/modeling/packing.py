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
from rlvr.modeling.causal_lm import completion_logprobs, decoder_of, lm_head_params, position_ids_from_mask

Tensor = torch.Tensor

__all__ = ["completion_widths", "length_buckets", "packed_completion_logprobs", "BUCKET_OVERHEAD_TOKENS"]

# the fixed cost of one more forward/backward, in padded tokens (SmolLM2-135M, 2 CPU threads: a pass costs
# ~13 ms per token and ~30 layers × ~40 ops of overhead; small matmuls also run below peak)
BUCKET_OVERHEAD_TOKENS = 32


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
    buckets = length_buckets(widths.tolist(), overhead)
    if len(buckets) == 1 and int(widths.max()) == T:  # nothing to skip: the padded forward as it was
        return grouped_completion_logprobs(model, input_ids, attention_mask, P, group_size, **kw)  # type: ignore[arg-type]
    shared = bool(group_size) and shared_prompt_applies(model, input_ids[:, :P], group_size, attention_mask[:, :P])
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
    last = out.last_hidden_state[:, -1:]  # [B, 1, H]: predicts each completion's first token
    kv = [(layer.keys, layer.values) for layer in prompt_cache.layers]  # type: ignore[union-attr]
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
