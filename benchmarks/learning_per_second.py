"""Learning per wall-clock second: held-out accuracy against training time for several runs, in one plot.

Reads each run directory's ``metrics.jsonl`` (written by ``rlvr train`` with ``trainer.eval_steps`` > 0) and
puts, for every step that evaluated, the held-out accuracy (greedy and sampled pass@1, with their 95 %
intervals) against the run's cumulative training time: the sum of ``step_time`` up to that step
(generation, refills, scoring and the update; the evaluations themselves are not counted, they cost the same
in every run). Prints a table and writes a PNG.

    python benchmarks/learning_per_second.py --run baseline=RUN_DIR_A --run dynamic=RUN_DIR_B --out docs/img/x.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(run_dir: Path) -> list[dict[str, float]]:
    """One row per evaluating step: step, train_s (cumulative step_time), the eval metrics and prompts consumed."""
    out, elapsed, prompts = [], 0.0, 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        elapsed += float(m.get("step_time") or 0.0)
        prompts = float(m.get("dynamic/prompts_consumed_total") or prompts)
        if m.get("eval/greedy_accuracy") is not None:
            out.append(
                {
                    "step": m["step"],
                    "train_s": elapsed,
                    "prompts": prompts,
                    **{k: v for k, v in m.items() if k.startswith("eval/")},
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR (repeat)")
    ap.add_argument("--out", default="learning-per-second.png")
    ap.add_argument("--title", default="Held-out accuracy against training time")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for label, path in (r.split("=", 1) for r in args.run):
        rows = curve(Path(path))
        print(f"{label} ({path})")
        print("  step  train_s  prompts  greedy [95% CI]          sampled pass@1 [95% CI]")
        for r in rows:
            s = r.get("eval/sampled_pass@1")
            sampled = (
                f"{s:.3f} [{r['eval/sampled_pass@1_ci_low']:.3f}, {r['eval/sampled_pass@1_ci_high']:.3f}]"
                if s is not None
                else "n/a"
            )
            print(
                f"  {r['step']:>4}  {r['train_s']:7.0f}  {r['prompts']:7.0f}  {r['eval/greedy_accuracy']:.3f} "
                f"[{r['eval/greedy_accuracy_ci_low']:.3f}, {r['eval/greedy_accuracy_ci_high']:.3f}]   {sampled}"
            )
        t = [r["train_s"] for r in rows]
        for ax, key in zip(axes, ("eval/greedy_accuracy", "eval/sampled_pass@1")):
            if not rows or key not in rows[0]:
                continue
            (line,) = ax.plot(t, [r[key] for r in rows], marker="o", label=label)
            ax.fill_between(
                t,
                [r[f"{key}_ci_low"] for r in rows],
                [r[f"{key}_ci_high"] for r in rows],
                color=line.get_color(),
                alpha=0.15,
            )
    for ax, name in zip(axes, ("greedy accuracy", "sampled pass@1")):
        ax.set_xlabel("training wall-clock time (s, evaluations excluded)")
        ax.set_title(f"held-out {name} (95 % interval)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("accuracy")
    fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
