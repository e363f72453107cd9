"""Learning per wall-clock second: held-out accuracy against training time for several runs, in one plot.

Reads each run directory's ``metrics.jsonl`` (written by ``rlvr train`` with ``trainer.eval_steps`` > 0) and
puts, for every step that evaluated, the held-out accuracy (greedy and sampled pass@1, with their 95 %
intervals) against the run's cumulative training time: the sum of ``step_time`` up to that step
(generation, refills, scoring and the update; the evaluations themselves are not counted, they cost the same
in every run). Prints a table and writes a PNG.

    python benchmarks/learning_per_second.py --run baseline=RUN_DIR_A --run dynamic=RUN_DIR_B --out docs/img/x.png
    python benchmarks/learning_per_second.py --x step --run ... # against the step instead (same-algorithm runs)

A third panel shows the training reward per step (the mean over every completion the step generated,
``dynamic/reward_all_mean`` with dynamic sampling, else ``reward/mean``) against the same x axis.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def timed_steps(run_dir: Path) -> list[tuple[float, dict]]:
    """Each line of the run's ``metrics.jsonl`` with the training time up to that step (the sum of ``step_time``)."""
    out, elapsed = [], 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        elapsed += float(m.get("step_time") or 0.0)
        out.append((elapsed, m))
    return out


def reward_curve(steps: list[tuple[float, dict]]) -> list[dict[str, float]]:
    """One row per step: step, train_s, reward (mean over everything generated)."""
    out = []
    for elapsed, m in steps:
        reward = m.get("dynamic/reward_all_mean", m.get("reward/mean"))
        if reward is not None:
            out.append({"step": m["step"], "train_s": elapsed, "reward": float(reward)})
    return out


def curve(steps: list[tuple[float, dict]]) -> list[dict[str, float]]:
    """One row per evaluating step: step, train_s, the eval metrics and prompts consumed."""
    out, prompts = [], 0.0
    for elapsed, m in steps:
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
    ap.add_argument("--x", choices=("time", "step"), default="time", help="x axis: training time or step")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    x_key = "train_s" if args.x == "time" else "step"
    for label, path in (r.split("=", 1) for r in args.run):
        steps = timed_steps(Path(path))
        rows = curve(steps)
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
        t = [r[x_key] for r in rows]
        rewards = reward_curve(steps)
        axes[2].plot([r[x_key] for r in rewards], [r["reward"] for r in rewards], marker=".", label=label)
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
    titles = ("held-out greedy accuracy (95 % interval)", "held-out sampled pass@1 (95 % interval)", "training reward")
    for ax, title in zip(axes, titles):
        ax.set_xlabel("training wall-clock time (s, evaluations excluded)" if args.x == "time" else "step")
        ax.set_title(title)
        ax.grid(alpha=0.3)

    axes[0].legend(fontsize="small")  # one legend: the runs are the same in every panel
    axes[0].set_ylabel("accuracy")
    axes[1].sharey(axes[0])
    if not axes[1].lines:  # no run sampled during its evaluations
        axes[1].set_visible(False)
    axes[2].set_ylabel("mean reward of the step's completions")
    fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
