"""Kernels: chunked fused-linear log-probs (see docs/kernels.md).

* :func:`token_logprobs` — log-probs (and entropy) of chosen tokens under ``softmax((h @ W.T + b) / T)``,
  never holding more than ``chunk_tokens`` rows of logits; Triton on CUDA, PyTorch elsewhere.
* :func:`reference_token_logprobs` — the same from full logits, for tests and benchmarks.

The model-level helpers built on them (a causal LM's completion log-probs, the shared-prompt forward,
checkpointing and offload) live in :mod:`rlvr.modeling`.
"""

from rlvr.kernels.logprobs import reference_token_logprobs, token_logprobs, triton_available

__all__ = ["token_logprobs", "reference_token_logprobs", "triton_available"]
