"""Completion log-probs of a transformers causal LM without its ``[N, L, V]`` logits.

:func:`completion_logprobs` runs the model's decoder (embeddings, layers, final norm) to the last
hidden states, keeps the positions that predict completion tokens, and hands them with the
output-embedding matrix to :func:`rlvr.kernels.token_logprobs`. It works for a plain
``*ForCausalLM`` and for a peft-wrapped one (LoRA adapters inside the decoder are used as they
are; a LoRA adapter or ``modules_to_save`` copy on the LM head is folded into the head's weight),
reads Gemma's ``final_logit_softcapping``, Cohere's ``logit_scale`` and Granite's
``logits_scaling`` from the config, and gives tied embeddings their gradient through autograd
(the head weight *is* the embedding parameter).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch

from rlvr.kernels.logprobs import token_logprobs

__all__ = ["completion_logprobs", "lm_head_params", "decoder_of", "position_ids_from_mask"]

Tensor = torch.Tensor


def base_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper (LoRA layers stay injected), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and hasattr(model, "peft_config"):
        return get_base()
    return model


def decoder_of(model: Any) -> torch.nn.Module:
    """The module that maps input ids to the final (normed) hidden states: ``get_decoder()``."""
    base = base_model(model)
    get_dec = getattr(base, "get_decoder", None)
    dec = get_dec() if callable(get_dec) else None
    if dec is None or dec is base:
        for name in ("model", "transformer", "gpt_neox", "decoder"):
            cand = getattr(base, name, None)
            if isinstance(cand, torch.nn.Module):
                return cand
        raise TypeError(
            f"completion_logprobs: cannot find the decoder of {type(base).__name__} "
            "(no get_decoder() and no .model/.transformer attribute)"
        )
    return dec


def lora_head_weight(head: Any) -> Optional[Tensor]:
    """Effective weight of a peft LoRA-wrapped head (base + active deltas), or None if not LoRA."""
    base_layer = getattr(head, "base_layer", None)
    if base_layer is None or not hasattr(head, "get_delta_weight"):
        return None
    w = base_layer.weight
    if getattr(head, "disable_adapters", False) or getattr(head, "merged", False):
        return w
    for name in getattr(head, "active_adapters", []):
        if name in getattr(head, "lora_A", {}):
            w = w + head.get_delta_weight(name).to(w.dtype)
    return w


def lm_head_params(model: Any) -> Tuple[Tensor, Optional[Tensor], Optional[float], float]:
    """(weight [V, H], bias [V] or None, softcap or None, logit_scale) of a causal LM's output layer.

    ``weight`` is the live parameter (the embedding matrix when tied), so gradients reach it.
    """
    base = base_model(model)
    head = base.get_output_embeddings()
    if head is None:
        raise TypeError(
            f"completion_logprobs: {type(base).__name__} has no output embeddings (get_output_embeddings() is None)"
        )
    # peft modules_to_save: the trainable copy of the head for the active adapter
    mts = getattr(head, "modules_to_save", None)
    if mts is not None and hasattr(head, "original_module"):
        active = getattr(head, "active_adapter", None)
        active = active[0] if isinstance(active, (list, tuple)) and active else active
        disabled = getattr(head, "disable_adapters", False)
        head = mts[active] if (not disabled and active in mts) else head.original_module
    w = lora_head_weight(head)
    if w is None:
        w = head.weight
    bias = getattr(head, "bias", None)
    if getattr(head, "base_layer", None) is not None:
        bias = getattr(head.base_layer, "bias", None)
    cfg = getattr(base, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)  # Cohere: logits * logit_scale
    div = getattr(cfg, "logits_scaling", None)  # Granite: logits / logits_scaling
    if div:
        scale = scale / float(div)
    return w, bias, (float(softcap) if softcap else None), scale


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as transformers' ``generate`` computes them:
    ``cumsum(mask) - 1``, with padded positions set to 1."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill_(attention_mask == 0, 1)


def completion_logprobs(
    model: Any,
    input_ids: Tensor,
    attention_mask: Optional[Tensor],
    prompt_length: int,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    return_entropy: bool = False,
    *,
    position_ids: Optional[Tensor] = None,
    backend: str = "auto",
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Per-token log-probs of the completion part of ``input_ids`` under ``model``.

    Args:
        model: a transformers causal LM (``*ForCausalLM``), possibly peft-wrapped.
        input_ids: ``[N, P + T]`` long: left-padded prompts (``P`` columns) followed by the
            completions (``T`` columns, right-padded; padding gets a log-prob like any token and
            the loss masks it).
        attention_mask: ``[N, P + T]`` (1 = real token, 0 = padding) or None (all ones).
        prompt_length: ``P``, the number of prompt columns (``1 <= P < P + T``).
        temperature: sampling temperature; logits are divided by it.
        chunk_tokens: rows of logits held at once in :func:`token_logprobs`.
        return_entropy: also return the per-token entropy (for metrics or an entropy bonus).
        position_ids: ``[N, P + T]``; default :func:`position_ids_from_mask` (left padding
            skipped, as in generation).
        backend: passed to :func:`token_logprobs` ("auto" picks Triton on CUDA).

    Returns:
        float32 ``[N, T]`` where entry ``[n, t]`` is ``log p(input_ids[n, P + t] | input_ids[n, :P + t])``
        (float64 if the model is float64); with ``return_entropy`` also the ``[N, T]`` entropy of
        the same distributions. Gradients flow to the decoder, the head and (tied) embeddings.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"completion_logprobs: input_ids must be [N, P+T], got shape {tuple(input_ids.shape)}")
    L = input_ids.shape[1]
    P = int(prompt_length)
    if not 1 <= P < L:
        raise ValueError(
            f"completion_logprobs: prompt_length must satisfy 1 <= P < {L} (= input_ids.shape[1]), got {P}"
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"completion_logprobs: attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    decoder = decoder_of(model)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    hidden = hidden[:, P - 1 : L - 1]  # position j predicts token j + 1
    targets = input_ids[:, P:]
    weight, bias, softcap, scale = lm_head_params(model)
    return token_logprobs(
        hidden,
        weight,
        targets,
        temperature=temperature,
        bias=bias,
        chunk_tokens=chunk_tokens,
        return_entropy=return_entropy,
        softcap=softcap,
        logit_scale=scale,
        backend=backend,
    )
