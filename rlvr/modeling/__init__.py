"""Model helpers for the policy update, built on :mod:`rlvr.kernels` (see docs/kernels.md).

* :func:`completion_logprobs` — runs a transformers causal LM (peft or not) to its final hidden states and
  returns the completion tokens' log-probs through :func:`rlvr.kernels.token_logprobs`.
* :func:`grouped_completion_logprobs` — the same with each group's shared prompt computed once.
* :func:`base_model`, :func:`decoder_of`, :func:`lm_head_params`, :func:`lora_head_weight` — the parts of a
  (peft-wrapped) causal LM that the trainer and the engines need.
* :func:`enable_gradient_checkpointing` / :class:`offload_activations` — the
  ``trainer.gradient_checkpointing`` / ``trainer.offload_activations`` switches.
"""

from rlvr.modeling.causal_lm import (
    base_model,
    completion_logprobs,
    decoder_of,
    lm_head_params,
    lora_head_weight,
    position_ids_from_mask,
)
from rlvr.modeling.memory import enable_gradient_checkpointing, offload_activations
from rlvr.modeling.shared_prompt import grouped_completion_logprobs

__all__ = [
    "completion_logprobs",
    "grouped_completion_logprobs",
    "base_model",
    "decoder_of",
    "lm_head_params",
    "lora_head_weight",
    "position_ids_from_mask",
    "enable_gradient_checkpointing",
    "offload_activations",
]
