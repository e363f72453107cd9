"""Optimizer construction details shared by the trainer."""

from __future__ import annotations

from typing import Iterable

import torch

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fused_adamw_supported(params: Iterable[torch.Tensor]) -> bool:
    """Whether ``torch.optim.AdamW(..., fused=True)`` can update ``params``: plain (not sharded DTensor) floating
    tensors on the CPU or a CUDA device. The fused kernel does the whole update in one pass over each tensor:
    on SmolLM2-135M (2 CPU threads) 0.3–0.45 s per step against 2.0 s for the per-tensor loop (TRL's default
    optimizer through transformers is the fused one too). The result equals the loop's up to float rounding."""
    params = list(params)
    return bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES and not hasattr(p, "device_mesh") for p in params
    )
