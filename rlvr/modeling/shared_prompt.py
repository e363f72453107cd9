"""Completion log-probs with the prompt computed once per group, gradients included.

GRPO scores G completions of the same prompt. :func:`rlvr.kernels.completion_logprobs` runs the
decoder over ``[N, P + T]`` (every completion with its own copy of the prompt); this runs it over
the B distinct prompts ``[B, P]`` once, repeats their keys/values G times (``repeat_interleave``
is differentiable, so every completion's gradient flows back into the shared prompt pass) and runs
the completions ``[B·G, T]`` against that cache. The result equals the full forward up to float
rounding, in value and gradient (tested), and the decoder work drops from ``N·(P+T)`` to
``B·P + N·T`` tokens: for the default run (P ≈ 31, T = 32, G = 8) 43 % fewer tokens.

It needs the KV cache in the training forward, so it does not combine with gradient
checkpointing (transformers turns the cache off there); :func:`shared_prompt_applies` says when
it can be used and :func:`grouped_completion_logprobs` picks the shared or the plain path.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Tuple, Union

import torch

from rlvr.kernels.logprobs import token_logprobs
from rlvr.modeling.causal_lm import completion_logprobs, decoder_of, lm_head_params, position_ids_from_mask

Tensor = torch.Tensor

__all__ = ["shared_prompt_logprobs", "shared_prompt_applies", "grouped_completion_logprobs"]


def shared_prompt_applies(
    model: Any, prompt_ids: Tensor, group_size: int, prompt_mask: Optional[Tensor] = None
) -> bool:
    """True when the rows come in groups of ``group_size`` identical prompts (ids and, when given, masks) and
    the model keeps a KV cache in training (no gradient checkpointing)."""
    n = prompt_ids.shape[0]
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if group_size < 2 or n % group_size or checkpointing:
        return False
    for t in (prompt_ids, prompt_mask):
        if t is not None:
            grouped = t.reshape(n // group_size, group_size, -1)
            if not bool((grouped == grouped[:, :1]).all()):
                return False
    return True


def shared_prompt_logprobs(
    model: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    group_size: int,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    return_entropy: bool = False,
    backend: str = "auto",
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Per-token log-probs of the completions, the prompt of each group run once.

    Args:
        prompt_ids: ``[N, P]`` left-padded prompts, rows in groups of ``group_size`` identical
            prompts (rows ``g·G … g·G+G-1``), as in :class:`rlvr.core.rollout.Rollouts`.
        prompt_mask: ``[N, P]`` their attention mask.
        completion_ids: ``[N, T]`` right-padded completions.
        completion_mask: ``[N, T]`` their mask.
        group_size: G, the rows per group.

    The other arguments are those of :func:`rlvr.kernels.completion_logprobs`.

    Returns:
        float32 ``[N, T]`` (and the entropies with ``return_entropy``), equal to
        ``completion_logprobs(model, cat(prompt, completion), cat(masks), P)``.
    """
    from transformers import DynamicCache

    G = int(group_size)
    N, P = prompt_ids.shape
    if N % G:
        raise ValueError(f"shared_prompt_logprobs: {N} rows are not groups of {G}")
    p_ids, p_mask = prompt_ids[::G], prompt_mask[::G]
    full_mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
    positions = position_ids_from_mask(full_mask)
    decoder = decoder_of(model)
    cache = DynamicCache()
    kw = {"cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values": cache}
    out = decoder(input_ids=p_ids, attention_mask=p_mask, position_ids=positions[::G, :P], use_cache=True, **kw)
    last = out.last_hidden_state[:, -1:].repeat_interleave(G, dim=0)  # predicts each completion's first token
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(G, dim=0)  # type: ignore[union-attr]
        layer.values = layer.values.repeat_interleave(G, dim=0)  # type: ignore[union-attr]
    out = decoder(
        input_ids=completion_ids, attention_mask=full_mask, position_ids=positions[:, P:], use_cache=True, **kw
    )
    hidden = torch.cat([last, out.last_hidden_state[:, :-1]], dim=1)
    weight, bias, softcap, scale = lm_head_params(model)
    return token_logprobs(
        hidden,
        weight,
        completion_ids,
        temperature=temperature,
        bias=bias,
        chunk_tokens=chunk_tokens,
        return_entropy=return_entropy,
        softcap=softcap,
        logit_scale=scale,
        backend=backend,
    )


def grouped_completion_logprobs(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_length: int,
    group_size: int = 0,
    pack: bool = False,
    **kwargs: Any,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """:func:`rlvr.kernels.completion_logprobs` of ``[prompt | completion]`` rows, through
    :func:`shared_prompt_logprobs` when the rows come in groups of ``group_size`` identical prompts
    (and the model keeps a KV cache in training); the same values either way, up to float rounding.
    ``pack``: skip the padding of completions of different lengths
    (:func:`rlvr.modeling.packing.packed_completion_logprobs`)."""
    P = int(prompt_length)
    if pack:
        from rlvr.modeling.packing import packed_completion_logprobs

        return packed_completion_logprobs(model, input_ids, attention_mask, P, group_size, **kwargs)
    if group_size and shared_prompt_applies(model, input_ids[:, :P], group_size, attention_mask[:, :P]):
        return shared_prompt_logprobs(
            model,
            input_ids[:, :P],
            attention_mask[:, :P],
            input_ids[:, P:],
            attention_mask[:, P:],
            group_size,
            **kwargs,
        )
    return completion_logprobs(model, input_ids, attention_mask, P, **kwargs)
