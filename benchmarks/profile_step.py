"""Where one GRPO step of the vs-TRL setting spends its time, phase by phase.

    python benchmarks/profile_step.py                    # 1 warm-up step, then 3 timed steps, 2 threads
    python benchmarks/profile_step.py --steps 5 --ops 25 # + torch.profiler's operators by self CPU time
    python benchmarks/profile_step.py engine.compact_finished=false   # extra rlvr overrides

The trainer is built exactly as ``benchmarks/vs_trl.py`` builds it (SmolLM2-135M-Instruct float32, 2 prompts x
8 completions, <= 32 tokens, beta 0). Wall-clock timers wrap the trainer's phases and, inside them, the
engine's pieces: the prompt prefill (the model's forward, with the KV cache copied into the decoder's
buffers), packing the decode weights, the decode forward (``FastDecoder.step``), the sampling loop's own
work (log-softmax, inverse-CDF draw, bookkeeping: the decode loop minus its forwards), the update's forward
(``Trainer.logprobs``), its backward, the gradient clip and the optimizer step. Printed: the median over the
timed steps of each, with its page faults (a fresh allocation faults once per 4 KiB page it touches), ms per
decode step, and the load average.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import correct, load_average, rlvr_overrides  # noqa: E402

TIMES: dict[str, float] = defaultdict(float)
COUNTS: dict[str, int] = defaultdict(int)
FAULTS: dict[str, int] = defaultdict(int)


def minor_faults() -> int:
    """Page faults of this process so far (a fresh allocation faults once per 4 KiB page it touches)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def wrap(obj: Any, name: str, label: str) -> None:
    """Replace ``obj.name`` by a version that adds its wall time to TIMES[label] (classes: every instance)."""
    fn = getattr(obj, name)

    def timed(*a: Any, **k: Any) -> Any:
        t0, f0 = time.perf_counter(), minor_faults()
        try:
            return fn(*a, **k)
        finally:
            TIMES[label] += time.perf_counter() - t0
            COUNTS[label] += 1
            FAULTS[label] += minor_faults() - f0

    setattr(obj, name, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--ops", type=int, default=0, help="also run torch.profiler on the timed steps, show N operators")
    ap.add_argument("override", nargs="*", help="extra rlvr config overrides")
    args = ap.parse_args()

    import torch

    import rlvr
    from rlvr.plugins.engines import fast_decoder, hf

    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix="rlvr-profile-")
    cfg = rlvr.compose([*rlvr_overrides(args.threads, args.warmup + args.steps, out), *args.override])
    trainer = rlvr.Trainer(cfg, rewards=[correct])

    model_cls = type(trainer.policy.model)
    for obj, name, label in [
        (trainer, "rollout", "generation (rollout)"),
        (hf.HFEngine, "decoder_for", "  pack decode weights"),
        (fast_decoder.FastDecoder, "load_prompt_cache", "  copy prompt KV"),
        (model_cls, "__call__", "  prefill (model forward)"),
        (hf.HFEngine, "_decode", "  decode loop"),
        (fast_decoder.FastDecoder, "step", "    decode forward"),
        (fast_decoder.FastDecoder, "keep", "    compaction"),
        (trainer, "score", "score"),
        (trainer, "optimise", "optimise"),
        (trainer, "logprobs", "  update forward"),
        (torch.Tensor, "backward", "  update backward"),
        (torch.nn.utils, "clip_grad_norm_", "  grad clip"),
        (trainer.optimizer, "step", "  optimizer step"),
        (trainer, "step_metrics", "step metrics"),
    ]:
        wrap(obj, name, label)

    for _ in range(args.warmup):
        trainer.train_step()
    per_step: list[dict[str, float]] = []
    faults: list[dict[str, int]] = []
    lengths = []
    prof = None
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU])
        prof.__enter__()
    load0 = load_average()
    for _ in range(args.steps):
        TIMES.clear()
        COUNTS.clear()
        FAULTS.clear()
        t0, f0 = time.perf_counter(), minor_faults()
        m = trainer.train_step()
        TIMES["step"] = time.perf_counter() - t0
        FAULTS["step"] = minor_faults() - f0
        TIMES["decode steps"] = COUNTS["    decode forward"]
        per_step.append(dict(TIMES))
        faults.append(dict(FAULTS))
        lengths.append((m["completion_length/mean"], m["completion_length/max"]))
    if prof is not None:
        prof.__exit__(None, None, None)
    print(f"load average {load0} -> {load_average()}, threads {args.threads}, {args.steps} timed steps")
    print(f"completion length mean/max per step: {[f'{a:.1f}/{b:.0f}' for a, b in lengths]}")
    keys = list(per_step[0])
    med = {k: statistics.median(s.get(k, 0.0) for s in per_step) for k in keys}
    flt = {k: statistics.median(s.get(k, 0) for s in faults) for k in faults[0]}
    med["    sampling + bookkeeping"] = med["  decode loop"] - med["    decode forward"] - med.get("    compaction", 0)
    step = med["step"]
    order = [
        "step",
        "generation (rollout)",
        "  pack decode weights",
        "  prefill (model forward)",
        "  copy prompt KV",
        "  decode loop",
        "    decode forward",
        "    compaction",
        "    sampling + bookkeeping",
        "score",
        "optimise",
        "  update forward",
        "  update backward",
        "  grad clip",
        "  optimizer step",
        "step metrics",
    ]
    for k in order:
        if k in med:
            pages = f"{flt[k]:9.0f} page faults" if k in flt else ""
            print(f"  {k:<30} {med[k]:7.3f} s  {100 * med[k] / step:5.1f} %  {pages}")
    n = med["decode steps"]
    if n:
        print(f"  decode forward per step       {1e3 * med['    decode forward'] / n:7.1f} ms  ({n:.0f} steps)")
        print(f"  decode loop per step          {1e3 * med['  decode loop'] / n:7.1f} ms")
    from rlvr.core.resources import peak_rss_mib

    print(f"  peak resident memory          {peak_rss_mib() / 1024:7.2f} GiB")
    if prof is not None:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))


if __name__ == "__main__":
    main()
