"""SmolLM2-135M-Instruct with the python tool on GSM8K (env=python, task=gsm8k_python), on the CPU.

Stages, each followed by a greedy evaluation on the same held-out GSM8K test questions:

0. the untrained model (``--skip-untrained`` to leave it out);
1. format priming: a short SFT on ``--demos`` demonstration episodes from training rows: the assistant calls
   ``python`` with a program made of the reference solution's ``<<expression=value>>`` steps, the *real*
   sandbox runs it, the assistant states the answer. The loss is the cross-entropy of the assistant tokens
   (completion_mask 1) of exactly the tokens an episode holds;
2. GRPO with the rewards ``python_correct`` + ``python_tool_use`` for ``--steps`` steps (the training curves are
   in RUN_DIR/metrics.jsonl).

Needs GSM8K as jsonl (``--data-dir``, default ``$RLVR_GSM8K_DIR``). Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/python_smollm2.py --data-dir ../shared/data/gsm8k --out /tmp/py_run

Prints one JSON line per stage and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import torch

import rlvr
from rlvr.core.episodes import demonstrations, evaluate_env

STEP = re.compile(r"<<([^<>=]+)=([^<>]*)>>")
SAFE = re.compile(r"^[0-9.+\-*/()% ]+$")


def demo_program(row: dict[str, Any]) -> Optional[str]:
    """A program of the reference solution's calculator steps (``s1 = 48/2`` ... ``print(sN)``), or None when the
    solution has no steps, a step is not plain arithmetic, or the last step is not the answer."""
    steps = [e.strip() for e, _ in STEP.findall(str(row["solution"]))]
    if not steps or not all(SAFE.match(s) for s in steps):
        return None
    try:
        value = eval(steps[-1], {"__builtins__": {}})  # noqa: S307 - the dataset's own arithmetic, checked above
        if Fraction(str(value)) != Fraction(str(row["answer"])):
            return None
    except Exception:  # noqa: BLE001 - a step that does not evaluate: no demonstration from this row
        return None
    lines = [f"s{i} = {s}" for i, s in enumerate(steps, 1)]
    return "\n".join(lines + [f"print(s{len(steps)})"])


def prime(policy: Any, env: Any, rows: list[dict[str, Any]], epochs: int, batch: int, lr: float) -> list[float]:
    """SFT on demonstration episodes; returns the mean loss of each epoch."""
    turns = [
        [
            "<tool_call>" + json.dumps({"name": "python", "arguments": {"code": demo_program(r)}}) + "</tool_call>",
            f"The answer is {r['answer']}.",
        ]
        for r in rows
    ]
    demo = demonstrations(policy, env, rows, turns)
    ok = [e["stop"] == "env_done" and e["tool_calls"] == 1 and not e["tool_errors"] for e in demo.episodes]
    assert all(ok), [e["messages"][-2:] for e, good in zip(demo.episodes, ok) if not good][:2]
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
    ap.add_argument("--data-dir", default=os.environ.get("RLVR_GSM8K_DIR", ""))
    ap.add_argument("--out", default="/tmp/py_run")
    ap.add_argument("--eval", type=int, default=30, help="held-out GSM8K test questions")
    ap.add_argument("--demos", type=int, default=32)
    ap.add_argument("--sft-epochs", type=int, default=1)
    ap.add_argument("--sft-lr", type=float, default=3e-5)
    ap.add_argument("--sft-batch", type=int, default=2, help="demonstrations per SFT step (memory grows with it)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--skip-untrained", action="store_true", help="do not evaluate the untrained model")
    ap.add_argument("--max-new", type=int, default=96, help="tokens per assistant turn")
    ap.add_argument("--max-tokens", type=int, default=320, help="tokens per episode (env.max_tokens)")
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--generations", type=int, default=4)
    args = ap.parse_args()
    if not args.data_dir:
        ap.error("give --data-dir (a folder with GSM8K train.jsonl / test.jsonl) or set RLVR_GSM8K_DIR")
    t0 = time.perf_counter()
    env_kw = {"max_turns": 3, "max_tokens": args.max_tokens, "tool_timeout": 5.0}
    overrides = [
        "model=smollm2",
        "env=python",
        "task=gsm8k_python",
        f"task.data_dir={args.data_dir}",
        "reward=[python_correct,python_tool_use]",
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
        *[f"env.{k}={v}" for k, v in env_kw.items()],
    ]
    cfg = rlvr.compose(overrides)
    policy = rlvr.create("model", "smollm2")
    env = rlvr.create("env", "python", **env_kw)
    task = rlvr.create("task", "gsm8k_python", data_dir=args.data_dir)
    engine = rlvr.create("engine", "hf", max_new_tokens=args.max_new, max_prompt_length=1024)
    rows = task.eval_rows[: args.eval]
    demo_rows = [r for r in task.train_rows[: args.demos * 4] if demo_program(r) is not None][: args.demos]
    results = {}

    def ev(name: str) -> None:
        t = time.perf_counter()
        out = evaluate_env(policy, task, env, engine, limit=len(rows), batch_prompts=len(rows))
        out["seconds"] = time.perf_counter() - t
        results[name] = out
        print(json.dumps({"stage": name, **out, "elapsed_s": time.perf_counter() - t0}), flush=True)

    if not args.skip_untrained:
        ev("untrained")
    t = time.perf_counter()
    losses = prime(policy, env, demo_rows, args.sft_epochs, args.sft_batch, args.sft_lr)
    print(
        json.dumps(
            {
                "stage": "sft",
                "demos": len(demo_rows),
                "losses": losses,
                "seconds": time.perf_counter() - t,
                "elapsed_s": time.perf_counter() - t0,
            }
        ),
        flush=True,
    )
    ev("primed")
    trainer = rlvr.Trainer(cfg, run_dir=args.out, policy=policy)
    trainer.train()
    ev("grpo")
    curve = [json.loads(x) for x in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    print(
        json.dumps(
            {
                "stage": "curves",
                "python_correct": [c.get("rewards/python_correct/mean") for c in curve],
                "python_tool_use": [c.get("rewards/python_tool_use/mean") for c in curve],
                "tool_error_rate": [c.get("env/tool_error_rate") for c in curve],
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
                    for m in ("eval/accuracy", "eval/tool_use_rate", "eval/tool_error_rate", "eval/episode_truncated")
                },
            }
        )
    )


if __name__ == "__main__":
    main()
