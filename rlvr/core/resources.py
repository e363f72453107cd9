"""Peak memory of the training process, as step metrics (``memory/...`` in metrics.jsonl).

``rlvr report`` shows them per run and compares them across a sweep.
"""

from __future__ import annotations

import resource
import sys

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
