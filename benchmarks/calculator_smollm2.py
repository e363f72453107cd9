"""SmolLM2-135M-Instruct learns to use the calculator tool (env=calculator, task=multiply3), on the CPU: learning
curves of held-out accuracy and well-formed tool-call rate.

Stages, with a greedy evaluation on the same ``--eval`` held-out 3-digit multiplications at every point:

0. the untrained model;
1. format priming: SFT on ``--demos`` demonstration episodes (training rows only, ``--sft-batch`` per step,
   evaluated every ``--sft-eval-every`` steps): the assistant calls ``calculator("a * b")``, the *real*
   environment answers, the assistant states the product; the loss is the cross-entropy of the assistant tokens
   (completion_mask 1) of exactly the tokens an episode holds;
2. GRPO with ``--rewards`` (default ``calculator_correct``: the final answer is right; ``tool_use`` adds partial
   credit for well-formed calls) for ``--steps`` steps, evaluated every ``--eval-every`` steps.

Each evaluation reports accuracy, tool_use_rate (episodes with a call that ran) and tool_error_rate with Wilson
95 % intervals. Writes OUT/curve.json (every point, the GRPO steps' training metrics, load averages, wall time)
and the plot ``--plot`` (accuracy and tool-call rate vs wall time, 95 % bands).

Usage::

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 python benchmarks/calculator_smollm2.py --out /tmp/calc_run

(measured: docs/environments.md, "SmolLM2 and the calculator"; the points are in benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

import rlvr
from rlvr.core.episodes import demonstrations, evaluate_env
from rlvr.core.evaluate import wilson_interval
from rlvr.modeling.shared_prompt import grouped_completion_logprobs


def demo_turns(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The scripted assistant turns of a demonstration: the call, then the product."""
    return [
        [
            f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{r["a"]} * {r["b"]}"}}}}</tool_call>',
            f"{r['a']} * {r['b']} = {r['answer']}",
        ]
        for r in rows
    ]


def sft_step(policy: Any, opt: torch.optim.Optimizer, demo: Any, idx: torch.Tensor) -> float:
    """One SFT step on the demonstrations ``idx``: mean cross-entropy of their assistant tokens."""
    ids = torch.cat([demo.prompt_ids[idx], demo.completion_ids[idx]], 1)
    attn = torch.cat([demo.prompt_mask[idx], demo.attention_mask[idx]], 1)
    policy.model.train()
    lp = grouped_completion_logprobs(policy.model, ids, attn, demo.prompt_ids.shape[1], 1)
    m = demo.completion_mask[idx].float()
    loss = -(lp * m).sum() / m.sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
    opt.step()
    policy.model.eval()
    return float(loss.detach())


def with_intervals(out: dict[str, float]) -> dict[str, Any]:
    """Counts and Wilson 95 % intervals of accuracy / tool-use rate (per episode) and tool-error rate (per call)."""
    n = int(out["eval/num_prompts"])
    calls = round(out["eval/tool_calls/mean"] * n)
    res: dict[str, Any] = {"n": n, "calls": calls}
    for key, denom in (("accuracy", n), ("tool_use_rate", n), ("tool_error_rate", calls)):
        k = round(out[f"eval/{key}"] * denom)
        res[key] = k / denom if denom else None
        res[f"{key}_ci"] = list(wilson_interval(k, denom)) if denom else None
    res["truncated"] = out["eval/episode_truncated"]
    res["turns"] = out["eval/turns/mean"]
    return res


def plot(points: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.6))
    t = [p["elapsed_s"] / 60 for p in points]
    for key, label, colour in (
        ("accuracy", "accuracy", "tab:blue"),
        ("tool_use_rate", "tool-call rate", "tab:orange"),
    ):
        y = [p[key] for p in points]
        lo = [p[f"{key}_ci"][0] for p in points]
        hi = [p[f"{key}_ci"][1] for p in points]
        ax.plot(t, y, "o-", color=colour, label=label)
        ax.fill_between(t, lo, hi, color=colour, alpha=0.18, linewidth=0)
    for p, x in zip(points, t):
        ax.annotate(
            p["label"],
            (x, p["accuracy"]),
            textcoords="offset points",
            xytext=(0, -13),
            ha="center",
            fontsize=7,
            color="tab:blue",
        )
    spans = {}
    for p, x in zip(points, t):
        spans.setdefault(p["stage"], [x, x])[1] = x
    if "sft" in spans:
        start = max((x for p, x in zip(points, t) if p["stage"] == "untrained"), default=0.0)
        ax.axvspan(start, spans["sft"][1], color="0.9", zorder=0)
        ax.text((start + spans["sft"][1]) / 2, 1.03, "SFT priming", ha="center", fontsize=8)
    if "grpo" in spans:
        start = spans.get("sft", spans["grpo"])[1]
        ax.text((start + spans["grpo"][1]) / 2, 1.03, "GRPO", ha="center", fontsize=8)
    ax.set_ylim(-0.03, 1.1)
    ax.set_xlabel("wall time (minutes, evaluations included)")
    ax.set_ylabel("held-out rate (greedy), 95 % Wilson band")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def title(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """The plot's title: the run's settings, wall time and load averages."""
    return (
        f"SmolLM2-135M-Instruct + calculator tool: {args.eval} held-out 3-digit multiplications (greedy)\n"
        f"{args.demos} SFT demos, {args.steps} GRPO steps (reward {getattr(args, 'rewards', 'calculator_correct,tool_use')}, "
        f"lr {args.lr})\n{result['total_s'] / 60:.0f} min on 2 shared CPU cores, load average "
        f"{result['load_before'][0]:.1f} → {result['load_after'][0]:.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/calc_run")
    ap.add_argument("--plot", default="docs/img/calculator-curve.png")
    ap.add_argument("--eval", type=int, default=100, help="held-out prompts per evaluation")
    ap.add_argument("--eval-batch", type=int, default=100, help="held-out prompts decoded together")
    ap.add_argument("--demos", type=int, default=4)
    ap.add_argument("--sft-batch", type=int, default=2, help="demonstrations per SFT step")
    ap.add_argument("--sft-lr", type=float, default=3e-5)
    ap.add_argument("--sft-eval-every", type=int, default=2, help="evaluate every N SFT steps")
    ap.add_argument("--steps", type=int, default=12, help="GRPO steps")
    ap.add_argument("--eval-every", type=int, default=3, help="evaluate every N GRPO steps")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument(
        "--rewards",
        default="calculator_correct",
        help="GRPO rewards, comma-separated (tool_use: partial credit for calls, which GRPO can exploit by calling "
        "again instead of answering)",
    )
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=40, help="tokens per assistant turn (a call is 34)")
    ap.add_argument("--max-tokens", type=int, default=96, help="env.max_tokens: tokens per episode after the prompt")
    ap.add_argument("--replot", help="only redraw the plot from this curve.json (no training)")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        plot(saved["points"], Path(args.plot), title(argparse.Namespace(**saved["args"]), saved))
        return
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    cfg = rlvr.compose(
        [
            "model=smollm2",
            "env=calculator",
            "task=multiply3",
            f"reward=[{args.rewards}]",
            f"engine.max_new_tokens={args.max_new}",
            "engine.max_prompt_length=1024",
            f"trainer.max_steps={args.steps}",
            f"trainer.prompts_per_step={args.prompts_per_step}",
            f"trainer.num_generations={args.generations}",
            f"trainer.lr={args.lr}",
            "trainer.warmup_steps=0",
            "trainer.eval_steps=0",
            "trainer.progress=false",
            "trainer.resume=none",
            "logger=[jsonl]",
            "env.max_turns=3",
            f"env.max_tokens={args.max_tokens}",
        ]
    )
    policy = rlvr.create("model", "smollm2")
    env = rlvr.create("env", "calculator", max_turns=3, max_tokens=args.max_tokens)
    task = rlvr.create("task", "multiply3")
    engine = rlvr.create("engine", "hf", max_new_tokens=args.max_new, max_prompt_length=1024)
    points: list[dict[str, Any]] = []
    result: dict[str, Any] = {"args": vars(args), "load_before": load0, "points": points, "grpo_steps": []}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def ev(stage: str, label: str, step: int) -> None:
        t = time.perf_counter()
        raw = evaluate_env(policy, task, env, engine, limit=args.eval, batch_prompts=args.eval_batch)
        p = {"stage": stage, "label": label, "step": step, **with_intervals(raw)}
        p["eval_s"] = time.perf_counter() - t
        p["elapsed_s"] = time.perf_counter() - t0
        p["load"] = os.getloadavg()[0]
        points.append(p)
        print(json.dumps(p), flush=True)
        (out_dir / "curve.json").write_text(json.dumps(result, indent=1))

    ev("untrained", "0", 0)
    rows = task.train_rows[: args.demos]
    demo = demonstrations(policy, env, rows, demo_turns(rows))
    assert all(e["stop"] == "env_done" and e["tool_calls"] == 1 and not e["tool_errors"] for e in demo.episodes)
    opt = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=args.sft_lr)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    n_sft = (len(rows) + args.sft_batch - 1) // args.sft_batch
    result["sft_losses"] = []
    for s in range(n_sft):
        result["sft_losses"].append(sft_step(policy, opt, demo, order[s * args.sft_batch : (s + 1) * args.sft_batch]))
        if (s + 1) % args.sft_eval_every == 0 or s + 1 == n_sft:
            ev("sft", f"S{s + 1}", s + 1)
    del opt
    trainer = rlvr.Trainer(cfg, run_dir=args.out, policy=policy)
    while trainer.step < args.steps:
        m = trainer.train_step()
        keep = (
            "rewards/calculator_correct/mean",
            "rewards/tool_use/mean",
            "env/tool_use_rate",
            "env/episode_truncated",
        )
        keep += ("step_time", "loss")
        result["grpo_steps"].append({"step": trainer.step, **{k: m.get(k) for k in keep}})
        print(json.dumps(result["grpo_steps"][-1]), flush=True)
        if trainer.step % args.eval_every == 0 or trainer.step == args.steps:
            ev("grpo", f"G{trainer.step}", trainer.step)
    result["total_s"] = time.perf_counter() - t0
    result["load_after"] = os.getloadavg()
    (out_dir / "curve.json").write_text(json.dumps(result, indent=1))
    plot(points, Path(args.plot), title(args, result))
    print(
        json.dumps(
            {
                "stage": "summary",
                "total_s": result["total_s"],
                "load_before": load0,
                "load_after": result["load_after"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
