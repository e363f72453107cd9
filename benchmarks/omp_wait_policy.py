"""Is ``OMP_WAIT_POLICY=PASSIVE`` (the ``rlvr`` command's default) slower than OpenMP's default on an unloaded run?

Runs the same short ``model=tiny`` training with each policy, alternating (A B A B ...), each in a fresh
process (the policy is read when PyTorch loads OpenMP), through the Python API so that the ``rlvr``
command's own default does not apply. Prints the median seconds per step (``step_time`` of metrics.jsonl,
steps after the first) and per process for each policy, and their ratio.

    python benchmarks/omp_wait_policy.py --repeats 3 --steps 6 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = """
import sys, rlvr
cfg = rlvr.compose(["model=tiny", "trainer.max_steps={steps}", "trainer.threads={threads}", "trainer.eval_steps=0",
                    "trainer.progress=false", "trainer.prompts_per_step=4", "trainer.num_generations=4",
                    "engine.max_new_tokens=32"])
rlvr.Trainer(cfg, run_dir=sys.argv[1]).train()
"""

POLICIES = {"default (unset)": None, "PASSIVE": "PASSIVE"}


def one_run(policy: str | None, steps: int, threads: int, root: Path, tag: str) -> tuple[float, list[float]]:
    """Wall seconds of one training process and the step times it logged."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    run_dir = root / tag
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", RUN.format(steps=steps, threads=threads), str(run_dir)],
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return wall, [float(r["step_time"]) for r in rows[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {k: [] for k in POLICIES}
    steps: dict[str, list[float]] = {k: [] for k in POLICIES}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, policy in POLICIES.items():
                wall, times = one_run(policy, args.steps, args.threads, Path(tmp), f"{i}-{policy or 'unset'}")
                walls[name].append(wall)
                steps[name].extend(times)
                print(f"run {i} {name:<16} {wall:6.2f} s/process  {statistics.median(times):.3f} s/step", flush=True)
    print(f"\n{args.repeats} alternating runs per policy, {args.steps} steps, {args.threads} threads, model=tiny")
    for name in POLICIES:
        print(
            f"{name:<16} median {statistics.median(steps[name]):.3f} s/step, {statistics.median(walls[name]):.2f} "
            f"s/process"
        )
    ratio = statistics.median(steps["PASSIVE"]) / statistics.median(steps["default (unset)"])
    print(f"PASSIVE / default step time: {ratio:.2f}x (below 1 = PASSIVE faster)")


if __name__ == "__main__":
    main()
