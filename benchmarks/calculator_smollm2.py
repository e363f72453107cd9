"""SmolLM2-135M-Instruct learns to use the calculator tool (env=calculator, task=multiply3), on the CPU.

Three stages, each followed by a greedy evaluation on the same held-out 3-digit multiplications:

0. the untrained model;
1. format priming: a short SFT on ``--demos`` demonstration episodes (training rows only): the assistant
   calls ``calculator("a * b")``, the *real* environment answers, the assistant states the product. The loss
   is the cross-entropy of the assistant tokens (completion_mask 1) of exactly the tokens an episode holds;
2. GRPO with the rewards ``calculator_correct`` (final answer right) + ``tool_use`` (partial credit for
   well-formed calls) for ``--steps`` steps (the training curves are in RUN_DIR/metrics.jsonl).

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/calculator_smollm2.py --out /tmp/calc_run
Prints one JSON line per evaluation and a summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import rlvr
from rlvr.core.episodes import demonstrations, evaluate_env


def prime(policy, env, rows, epochs: int, batch: int, lr: float) -> list[float]:
    """SFT on demonstration episodes; returns the mean loss of each epoch."""
    demo = demonstrations(
        policy,
        env,
        rows,
        [
            [
                f'<tool_call>{{"name": "calculator", "arguments": {{"expression": '
                f'"{r["a"]} * {r["b"]}"}}}}</tool_call>',
                f"{r['a']} * {r['b']} = {r['answer']}",
            ]
            for r in rows
        ],
    )
    assert all(e["stop"] == "env_done" and e["tool_calls"] == 1 and not e["tool_errors"] for e in demo.episodes)
    from rlvr.modeling.shared_prompt import grouped_completion_logprobs

    opt = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=lr)
    policy.model.train()
    losses = []
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order, total = torch.randperm(len(rows), generator=g), 0.0
        for s in range(0, len(rows), batch):
            idx = order[s : s + batch]
            ids = torch.cat([demo.prompt_ids[idx], demo.completion_ids[idx]], 1)
            attn = torch.cat([demo.prompt_mask[idx], demo.attention_mask[idx]], 1)
            lp = grouped_completion_logprobs(policy.model, ids, attn, demo.prompt_ids.shape[1], 1)
            m = demo.completion_mask[idx].float()
            loss = -(lp * m).sum() / m.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(rows))
    policy.model.eval()
    return losses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/calc_run")
    ap.add_argument("--eval", type=int, default=100)
    ap.add_argument("--demos", type=int, default=24)
    ap.add_argument("--sft-epochs", type=int, default=2)
    ap.add_argument("--sft-lr", type=float, default=3e-5)
    ap.add_argument("--sft-batch", type=int, default=2, help="demonstrations per SFT step (memory grows with it)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--skip-untrained", action="store_true", help="do not evaluate the untrained model")
    ap.add_argument("--max-new", type=int, default=48, help="tokens per assistant turn")
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--generations", type=int, default=4)
    args = ap.parse_args()
    t0 = time.perf_counter()
    overrides = [
        "model=smollm2",
        "env=calculator",
        "task=multiply3",
        "reward=[calculator_correct,tool_use]",
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
        "env.max_tokens=120",
    ]
    cfg = rlvr.compose(overrides)
    policy = rlvr.create("model", "smollm2")
    env = rlvr.create("env", "calculator", max_turns=3, max_tokens=120)
    task = rlvr.create("task", "multiply3")
    engine = rlvr.create("engine", "hf", max_new_tokens=args.max_new, max_prompt_length=1024)
    rows = task.eval_rows[: args.eval]
    results = {}

    def ev(name: str) -> None:
        t = time.perf_counter()
        out = evaluate_env(policy, task, env, engine, limit=len(rows), batch_prompts=50)
        out["seconds"] = time.perf_counter() - t
        results[name] = out
        print(json.dumps({"stage": name, **out, "elapsed_s": time.perf_counter() - t0}), flush=True)

    if not args.skip_untrained:
        ev("untrained")
    losses = prime(policy, env, task.train_rows[: args.demos], args.sft_epochs, args.sft_batch, args.sft_lr)
    print(json.dumps({"stage": "sft", "losses": losses, "elapsed_s": time.perf_counter() - t0}), flush=True)
    ev("primed")
    trainer = rlvr.Trainer(cfg, run_dir=args.out, policy=policy)
    trainer.train()
    ev("grpo")
    curve = [json.loads(x) for x in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    print(
        json.dumps(
            {
                "stage": "curves",
                "calculator_correct": [c.get("rewards/calculator_correct/mean") for c in curve],
                "tool_use": [c.get("rewards/tool_use/mean") for c in curve],
            }
        )
    )
    print(
        json.dumps(
            {
                "stage": "summary",
                "total_s": time.perf_counter() - t0,
                **{
                    f"{k}/{m}": v[m]
                    for k, v in results.items()
                    for m in ("eval/accuracy", "eval/tool_use_rate", "eval/tool_error_rate")
                },
            }
        )
    )


if __name__ == "__main__":
    main()
