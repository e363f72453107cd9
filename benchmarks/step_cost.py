"""Per-step wall time, CPU time and page faults of rlvr in the vs-TRL setting, one JSON line per step.

    python benchmarks/step_cost.py new 5 >> ab.jsonl                              # this checkout
    (cd /tmp && PYTHONPATH=/path/to/other/checkout python /path/to/step_cost.py old 5) >> ab.jsonl
    python benchmarks/step_cost.py --summary ab.jsonl                             # medians per label, step 1 left out

On a shared machine the wall clock follows the other jobs' load; CPU time (user + system, both threads) and
minor page faults (a fresh 4 KiB page written for the first time) measure the work itself, so alternate the
variants (A, B, A, B, ...) and compare those. Extra arguments after STEPS are rlvr config overrides.
"""

from __future__ import annotations

import collections
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import correct, load_average, rlvr_overrides  # noqa: E402


def summary(paths: list[str]) -> None:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.startswith("{")]
    steps, peak = collections.defaultdict(list), collections.defaultdict(list)
    for r in rows:
        if "peak_mib" in r:
            peak[r["label"]].append(r["peak_mib"])
        elif r["step"] > 1:
            steps[r["label"]].append(r)
    for label, v in steps.items():
        med = {k: statistics.median(x[k] for x in v) for k in ("wall", "cpu", "sys", "faults", "generation")}
        print(
            f"{label}: {len(v)} steps, wall {med['wall']:.2f} s, CPU {med['cpu']:.2f} s (system {med['sys']:.2f}), "
            f"{med['faults']:.0f} page faults, generation {med['generation']:.2f} s, mean length "
            f"{statistics.mean(x['length'] for x in v):.1f}, peak {peak[label]} MiB"
        )


def main() -> None:
    if sys.argv[1:2] == ["--summary"]:
        summary(sys.argv[2:])
        return
    import torch

    import rlvr
    from rlvr.core.resources import peak_rss_mib

    label, steps = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    cfg = rlvr.compose(rlvr_overrides(2, steps, tempfile.mkdtemp(prefix="rlvr-cost-")) + sys.argv[3:])
    trainer = rlvr.Trainer(cfg, rewards=[correct])

    def snap() -> tuple[int, float, float]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_minflt, r.ru_utime + r.ru_stime, r.ru_stime

    for i in range(steps):
        f0, c0, s0 = snap()
        t0 = time.perf_counter()
        m = trainer.train_step()
        wall = time.perf_counter() - t0
        f1, c1, s1 = snap()
        row = dict(label=label, step=i + 1, wall=wall, cpu=c1 - c0, sys=s1 - s0, faults=f1 - f0)
        row.update(generation=m["generation_time"], length=m["completion_length/mean"], load=load_average())
        print(json.dumps(row), flush=True)
    print(json.dumps(dict(label=label, peak_mib=round(peak_rss_mib()))))


if __name__ == "__main__":
    main()
