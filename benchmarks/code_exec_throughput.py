"""Throughput of the code_exec reward: N trivial completions (one assert test each), per sandbox mode.

    python benchmarks/code_exec_throughput.py [--n 64] [--workers 2] [--repeat 3] [--modes rlimit,bwrap]

Prints the best wall-clock time of ``--repeat`` calls per mode (the first call, which starts the
sandbox and probes bubblewrap, is not timed) and the CPU time the calls used (this process and
every sandbox process, reaped: less sensitive to other load on the machine than the wall clock).
Run it with another checkout's interpreter to compare two versions under the same load.
"""

from __future__ import annotations

import argparse
import resource
import time

import rlvr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="rlimit,bwrap")
    args = ap.parse_args()
    completion = "```python\ndef add(a, b):\n    return a + b\n```"
    for mode in args.modes.split(","):
        try:
            fn = rlvr.create("reward", "code_exec", sandbox=mode, max_workers=args.workers)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other modes
            print(f"{mode}: unavailable ({exc})")
            continue
        fn([completion], tests=["assert add(1, 2) == 3"])  # warm-up
        times, cpus = [], []
        for _ in range(args.repeat):
            cpu0 = _cpu()
            start = time.perf_counter()
            scores = fn([completion] * args.n, tests=["assert add(1, 2) == 3"] * args.n)
            times.append(time.perf_counter() - start)
            cpus.append(_cpu() - cpu0)
            assert scores == [1.0] * args.n, scores
        print(
            f"{mode}: {args.n} completions, max_workers={args.workers}: best {min(times):.2f} s wall "
            f"(all: {', '.join(f'{t:.2f}' for t in times)}); CPU {min(cpus):.2f} s "
            f"({1000 * min(cpus) / args.n:.1f} ms per completion)"
        )


def _cpu() -> float:
    """User + system CPU seconds of this process and of its reaped descendants."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
