"""How OpenMP's waiting threads (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) change a training step, idle and loaded.

Runs the same short training (``model=tiny`` unless ``--model``) under each waiting policy, alternating
(A B C A B C ...), each in a fresh process (libgomp reads the variables when PyTorch loads it), through the
Python API so that the ``rlvr`` command's own default does not apply. ``--busy N`` starts N busy Python loops
beside the runs (the "cores shared with another busy process" case). Prints the median seconds per step
(``step_time`` of metrics.jsonl, steps after the first) and per process for each policy, and each policy's
step time against the first one's.

    python benchmarks/omp_wait_policy.py --repeats 3 --steps 6 --threads 2
    python benchmarks/omp_wait_policy.py --repeats 3 --steps 4 --threads 2 --model smollm2   # the default model
    python benchmarks/omp_wait_policy.py --busy 1 --policy spin=GOMP_SPINCOUNT=10000           # one busy neighbour

A policy is ``LABEL=VAR=VALUE[,VAR=VALUE...]`` (``LABEL=`` for none of the variables set); the defaults are
OpenMP's own (nothing set) and ``OMP_WAIT_POLICY=PASSIVE``.
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
cfg = rlvr.compose(["model={model}", "trainer.max_steps={steps}", "trainer.threads={threads}", "trainer.eval_steps=0",
                    "trainer.progress=false", "trainer.prompts_per_step=4", "trainer.num_generations=4",
                    "engine.max_new_tokens=32"])
rlvr.Trainer(cfg, run_dir=sys.argv[1]).train()
"""

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
DEFAULT_POLICIES = ["default (unset)=", "PASSIVE=OMP_WAIT_POLICY=PASSIVE"]


def parse_policy(text: str) -> tuple[str, dict[str, str]]:
    """``LABEL=VAR=VALUE[,VAR=VALUE...]`` -> (label, variables)."""
    label, _, assignments = text.partition("=")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    unknown = set(env) - set(WAIT_VARIABLES)
    if not label or unknown:
        raise SystemExit(f"--policy {text!r}: expected LABEL=VAR=VALUE[,...] with VAR in {', '.join(WAIT_VARIABLES)}")
    return label, env


def one_run(
    policy: dict[str, str], model: str, steps: int, threads: int, root: Path, tag: str
) -> tuple[float, list[float]]:
    """Wall seconds of one training process and the step times it logged."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update({"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
    env.update(policy)
    run_dir = root / tag
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", RUN.format(model=model, steps=steps, threads=threads), str(run_dir)],
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
    parser.add_argument("--model", default="tiny", help="model=... config (tiny, or smollm2 for the default model)")
    parser.add_argument("--busy", type=int, default=0, help="busy Python loops running beside the measured runs")
    parser.add_argument("--policy", action="append", default=[], help="LABEL=VAR=VALUE[,...] (repeat; see above)")
    args = parser.parse_args()
    policies = dict(parse_policy(p) for p in DEFAULT_POLICIES + args.policy)
    walls: dict[str, list[float]] = {k: [] for k in policies}
    steps: dict[str, list[float]] = {k: [] for k in policies}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats):
                for n, (name, env) in enumerate(policies.items()):
                    wall, times = one_run(env, args.model, args.steps, args.threads, Path(tmp), f"{i}-{n}")
                    walls[name].append(wall)
                    steps[name].extend(times)
                    print(
                        f"run {i} {name:<16} {wall:6.2f} s/process  {statistics.median(times):.3f} s/step", flush=True
                    )
    finally:
        for p in busy:
            p.kill()
    print(
        f"\n{args.repeats} alternating runs per policy, {args.steps} steps, {args.threads} threads, "
        f"model={args.model}, {args.busy} busy loop(s) beside"
    )
    first = next(iter(policies))
    for name, env in policies.items():
        ratio = statistics.median(steps[name]) / statistics.median(steps[first])
        print(
            f"{name:<16} median {statistics.median(steps[name]):.3f} s/step, {statistics.median(walls[name]):.2f} "
            f"s/process, step time {ratio:.2f}x {first}'s  ({','.join(f'{k}={v}' for k, v in env.items()) or 'unset'})"
        )


if __name__ == "__main__":
    main()
