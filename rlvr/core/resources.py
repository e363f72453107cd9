"""Peak memory of the training process, as step metrics (``memory/...`` in metrics.jsonl).

``rlvr report`` shows them per run and compares them across a sweep.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

MIB = 2**20


def peak_rss_mib() -> float:
    """The largest resident set size this process has had since it started, in MiB.

    Linux: ``VmHWM`` of /proc/self/status (the kernel's high-water mark, up to date; ``getrusage``'s
    ``ru_maxrss`` is updated lazily and can lag it by tens of MiB). Elsewhere ``getrusage(RUSAGE_SELF)
    .ru_maxrss`` (bytes on macOS, KiB otherwise).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def peak_memory() -> dict[str, float]:
    """Peak memory so far, in MiB: ``memory/peak_rss_mib`` (host) and, once CUDA is in use,
    ``memory/peak_gpu_allocated_mib`` (tensors, ``torch.cuda.max_memory_allocated``) and
    ``memory/peak_gpu_reserved_mib`` (what PyTorch's caching allocator holds; close to what nvidia-smi shows
    for this process, without vLLM's share) on the current device."""
    out = {"memory/peak_rss_mib": peak_rss_mib()}
    torch = sys.modules.get("torch")  # never import torch just to learn that CUDA is unused
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["memory/peak_gpu_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
        out["memory/peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
    return out


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * MIB  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2)


def reuse_freed_memory(keep: int = 2**31 - 1) -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the OS (glibc only).

    A training step allocates and frees the same large tensors every time (activations, gradients, the decode
    weights' packed copy): 300k+ fresh 4 KiB pages per step for SmolLM2-135M, each page faulting once when
    first written (~3 us apiece here, 0.5-1 s of system time per step). By default glibc returns every block
    of 128 KiB-32 MiB it frees to the OS (``mmap``/``munmap``, and trimming the top of the heap), so the next
    step faults on all of it again. This sets ``M_MMAP_THRESHOLD`` to its maximum (32 MiB: smaller blocks come
    from the heap) and ``M_TRIM_THRESHOLD`` to ``keep`` bytes (the heap's free top is kept): the next step
    writes into pages it already has. Peak memory does not grow (freed blocks are reused, not added to);
    memory freed at the end of a phase stays with the process instead of going back to the OS.

    Returns True when applied; False (nothing changed) off Linux/glibc or when ``mallopt`` refuses.
    """
    import ctypes
    import platform

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, int(keep)))


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where bfloat16 matmuls run about
    twice as fast as float32 ones (docs/performance.md). Without it oneDNN emulates bfloat16, slower than
    float32, so ``auto`` dtypes stay float32 there."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def bfloat16_pays(weights: Any) -> bool:
    """What ``auto`` dtypes (``engine.decode_dtype``, ``trainer.update_dtype``) decide: bfloat16 for float32 weights
    on a CPU that multiplies bfloat16 in hardware; float32 anywhere else (GPUs included: load the model in bfloat16
    there, or set the dtype)."""
    import torch

    return weights.device.type == "cpu" and weights.dtype == torch.float32 and cpu_has_native_bfloat16()
