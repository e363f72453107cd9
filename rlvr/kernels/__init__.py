"""Memory-lean building blocks for the policy update (see docs/kernels.md).

* :func:`token_logprobs` — chunked fused-linear log-probs (and entropy) of chosen tokens, never
  holding more than ``chunk_tokens`` rows of logits; Triton on CUDA, PyTorch elsewhere.
* :func:`completion_logprobs` — runs a transformers causal LM (peft or not) to its final hidden
  states and returns the completion tokens' log-probs through :func:`token_logprobs`.
* :func:`enable_gradient_checkpointing` / :class:`offload_activations` — the
  ``trainer.gradient_checkpointing`` / ``trainer.offload_activations`` switches.
"""
from rlvr.kernels.causal_lm import completion_logprobs, lm_head_params, position_ids_from_mask
from rlvr.kernels.logprobs import reference_token_logprobs, token_logprobs, triton_available
from rlvr.kernels.memory import enable_gradient_checkpointing, offload_activations

__all__ = ["token_logprobs", "reference_token_logprobs", "triton_available", "completion_logprobs",
           "lm_head_params", "position_ids_from_mask", "enable_gradient_checkpointing", "offload_activations"]
