"""Activation memory switches: gradient checkpointing of the decoder layers and offloading saved
activations to (pinned) CPU memory.

Two independent switches, meant for ``trainer.gradient_checkpointing`` and
``trainer.offload_activations``::

    from rlvr.modeling import enable_gradient_checkpointing, offload_activations

    if cfg.trainer.gradient_checkpointing:
        enable_gradient_checkpointing(model)              # once, after loading (peft or not)
    ...
    with offload_activations(model, enabled=cfg.trainer.offload_activations):
        logps = completion_logprobs(model, ids, mask, P)  # the forward whose activations are saved
        loss = loss_fn(logps, ...)
    loss.backward()                                       # inside or outside the block

* Checkpointing alone keeps one hidden state per layer (the layer's input) and recomputes the
  layer in backward (transformers' own mechanism, non-reentrant, so LoRA needs no
  ``enable_input_require_grads``). It acts only while ``model.training`` is True.
* Offload alone moves every tensor autograd saves in the block to pinned CPU memory and back in
  backward: the GPU then holds one tensor at a time instead of all activations.
* Both together: the checkpointed layers' saved inputs (autograd saves them through the same hook)
  go to CPU, so GPU activation memory no longer grows with the number of layers: about one
  layer's recompute at a time.

Unlike ``torch.autograd.graph.save_on_cpu`` the hook leaves parameters and buffers where they are
(a frozen 8B base would otherwise be copied to the host on every forward), skips small tensors,
copies a tensor saved several times (rotary cos/sin, masks) only once, and copies device to host
without blocking the CPU. On CPU tensors it does nothing (there is nowhere cheaper to put them).
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Iterable, Optional, Tuple

import torch

__all__ = ["enable_gradient_checkpointing", "offload_activations"]


def enable_gradient_checkpointing(model: Any, use_reentrant: bool = False) -> None:
    """Turn on transformers' per-layer activation checkpointing on a (possibly peft-wrapped) model.

    Non-reentrant by default: gradients reach LoRA adapters and parameters even when the layer
    inputs do not require grad. Only acts in training mode (``model.train()``), so generation is
    unaffected.
    """
    from rlvr.modeling.causal_lm import base_model

    base = base_model(model)
    kwargs = {"use_reentrant": use_reentrant}
    enable = getattr(base, "activation_checkpointing_enable", None)  # transformers >= 5.2x
    if callable(enable):
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if use_reentrant and hasattr(base, "enable_input_require_grads"):
        base.enable_input_require_grads()
    if getattr(base, "config", None) is not None and hasattr(base.config, "use_cache"):
        base.config.use_cache = False


def _storage_key(t: torch.Tensor) -> Optional[int]:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


class offload_activations(torch.autograd.graph.saved_tensors_hooks):
    """Context manager: tensors that autograd saves inside it live in pinned CPU memory until backward.

    Args:
        model: parameters and buffers of this module (or iterable of tensors) are never moved.
        enabled: False makes the block a no-op (so the switch can be passed straight through).
        min_bytes: tensors smaller than this stay on the device.
        pin_memory: page-locked host buffers (asynchronous copies); default: when CUDA is available.
        offload_cpu: also copy CPU tensors (for tests only: it shows what would move).

    Attributes ``count`` and ``bytes`` report how many tensors (and bytes) were moved.
    """

    def __init__(
        self,
        model: Any = None,
        enabled: bool = True,
        min_bytes: int = 1 << 20,
        pin_memory: Optional[bool] = None,
        offload_cpu: bool = False,
    ):
        self.enabled = enabled
        self.min_bytes = int(min_bytes)
        self.pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.offload_cpu = offload_cpu
        self.count = 0
        self.bytes = 0
        skip: set = set()
        tensors: Iterable[torch.Tensor] = ()
        if isinstance(model, torch.nn.Module):
            tensors = list(model.parameters()) + list(model.buffers())
        elif model is not None:
            tensors = list(model)
        for p in tensors:
            key = _storage_key(p)
            if key is not None:
                skip.add(key)
        self._skip = skip
        self._seen: Dict[Tuple, Any] = {}
        super().__init__(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> Any:
        if not self.enabled or t.layout != torch.strided:
            return t
        if t.device.type == "cpu" and not self.offload_cpu:
            return t
        nbytes = t.numel() * t.element_size()
        if nbytes < self.min_bytes:
            return t
        key = _storage_key(t)
        if key is None or key in self._skip:
            return t
        # the same memory saved again (rotary cos/sin views, masks): reuse the copy, but only while the
        # tensor that owns that memory is alive (a freed block's address can come back for new data)
        root = t._base if t._base is not None else t
        dedup = (key, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype, t._version)
        hit = self._seen.get(dedup)
        if hit is not None and hit[0]() is root:
            return hit[1]
        host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.pin and t.device.type != "cpu")
        host.copy_(t, non_blocking=self.pin)
        packed = (t.device, host)
        self._seen[dedup] = (weakref.ref(root), packed)
        self.count += 1
        self.bytes += nbytes
        return packed

    @staticmethod
    def _unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, tuple):
            device, host = packed
            return host.to(device, non_blocking=host.is_pinned())
        return packed

    def __enter__(self) -> "offload_activations":  # type: ignore[override]
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._seen = {}  # the packed objects stay referenced by the graph; only the dedup index goes
        return super().__exit__(*exc)
