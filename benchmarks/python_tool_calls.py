"""Cost of one ``python`` tool call (env=python): a fresh sandboxed interpreter per call.

For each sandbox mode, runs ``--calls`` calls of a small program (a GSM8K-style computation) through the tool
function after one untimed warm-up call, and prints the median and mean wall-clock seconds per call and the
calls that failed.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/python_tool_calls.py --calls 20 --modes bwrap,rlimit
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import rlvr
from rlvr.core.tools import ToolCall, run_tool

CODE = "april = 48\nmay = april / 2\nprint(april + may)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--modes", default="bwrap,rlimit")
    args = ap.parse_args()
    for mode in args.modes.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                env = rlvr.create("env", "python", sandbox=mode, tool_timeout=10.0)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other modes
                print(json.dumps({"mode": mode, "skipped": str(exc)}))
                continue
        tools = {"python": env.tools[0]}
        run_tool(ToolCall("python", {"code": CODE}), tools, 10.0)  # warm-up (byte-compiles the supervisor)
        times, failed = [], 0
        for _ in range(args.calls):
            t0 = time.perf_counter()
            r = run_tool(ToolCall("python", {"code": CODE}), tools, 10.0)
            times.append(time.perf_counter() - t0)
            failed += r.error or r.content != "72.0\n"
        print(
            json.dumps(
                {
                    "mode": env.sandbox.mode,
                    "cgroups": env.sandbox.cgroups is not None,
                    "calls": args.calls,
                    "median_s": round(statistics.median(times), 4),
                    "mean_s": round(statistics.mean(times), 4),
                    "failed": failed,
                }
            )
        )


if __name__ == "__main__":
    main()
