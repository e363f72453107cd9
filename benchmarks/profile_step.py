"""Where one GRPO step spends its time: torch.profiler on a real step of the vs-TRL configuration.

    python benchmarks/profile_step.py                  # 1 warm-up step, then 1 profiled step, 2 threads
    python benchmarks/profile_step.py --steps 2 --rows 25

Prints the time of each phase (generation: prefill + decode loop; rewards; the policy update's
forward + backward; the optimizer step) from ``record_function`` ranges wrapped around the
trainer's methods, then the operators by self CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import LR, MAX_NEW, NUM_GENERATIONS, PROMPTS_PER_STEP, SEED, load_average  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1, help="profiled steps")
    ap.add_argument("--rows", type=int, default=20, help="operators shown")
    ap.add_argument("override", nargs="*", help="extra rlvr config overrides")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import rlvr

    torch.set_num_threads(args.threads)
    cfg = rlvr.compose(
        [
            f"engine.max_new_tokens={MAX_NEW}",
            f"trainer.prompts_per_step={PROMPTS_PER_STEP}",
            f"trainer.num_generations={NUM_GENERATIONS}",
            f"trainer.lr={LR}",
            "trainer.warmup_steps=0",
            "trainer.adam_beta2=0.99",
            f"trainer.threads={args.threads}",
            f"trainer.seed={SEED}",
            "trainer.progress=false",
            f"trainer.output_dir={tempfile.mkdtemp(prefix='rlvr-profile-')}",
            *args.override,
        ]
    )
    trainer = rlvr.Trainer(cfg)

    def wrap(obj, name, label):
        fn = getattr(obj, name)

        def wrapped(*a, **k):
            with record_function(label):
                return fn(*a, **k)

        setattr(obj, name, wrapped)

    wrap(trainer, "generate", "phase: generation")
    wrap(trainer, "logprobs", "phase: update forward")
    wrap(trainer.optimizer, "step", "phase: optimizer step")
    for _ in range(args.warmup):
        trainer.train_step()
    print(f"load average {load_average()}, threads {args.threads}")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        metrics = [trainer.train_step() for _ in range(args.steps)]
    events = {e.key: e for e in prof.key_averages()}
    step = sum(m["step_time"] for m in metrics) / args.steps
    print(
        f"step {step:.2f} s (profiled), completion length {metrics[-1]['completion_length/mean']:.1f}, "
        f"max {metrics[-1]['completion_length/max']:.0f}"
    )
    phases = {k: events[k].cpu_time_total / 1e6 / args.steps for k in events if k.startswith("phase:")}
    backward = (
        sum(e.cpu_time_total for k, e in events.items() if k.startswith("autograd::engine::evaluate_function"))
        / 1e6
        / args.steps
    )
    for k, v in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {k[7:]:<22} {v:6.2f} s  {100 * v / step:4.0f} %")
    print(f"  {'update backward':<22} {backward:6.2f} s  {100 * backward / step:4.0f} %")
    with contextlib.suppress(Exception):
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
