"""Held-out accuracy: greedy pass@1 and sampled pass@1 (mean correctness over k samples)."""
from __future__ import annotations

from typing import Any

from rlvr.core.policy import Policy
from rlvr.core.task import Task


def evaluate(policy: Policy, task: Task, engine: Any, num_samples: int = 4, batch_prompts: int = 16,
             limit: int = 0, seed: int = 0) -> dict[str, float]:
    """Accuracy of ``policy`` on ``task.eval_rows``.

    Returns ``{"eval/greedy_accuracy", "eval/sampled_pass@1", "eval/num_prompts"}``; sampled pass@1
    is the fraction of correct completions among ``num_samples`` per prompt (0 skips sampling).
    """
    rows = task.eval_rows[:limit] if limit else task.eval_rows
    greedy_ok, sampled_ok, sampled_n = 0, 0, 0
    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start:start + batch_prompts]
        prompts = [task.render(r, policy.tokenizer) for r in chunk]
        seeds = [seed * 1_000_003 + start + i for i in range(len(chunk))]
        greedy = engine.generate(policy, prompts, 1, seeds, greedy=True)
        greedy_ok += sum(task.is_correct(c, r) for c, r in zip(greedy.completions, chunk))
        if num_samples > 0:
            sampled = engine.generate(policy, prompts, num_samples, seeds)
            rep = [r for r in chunk for _ in range(num_samples)]
            sampled_ok += sum(task.is_correct(c, r) for c, r in zip(sampled.completions, rep))
            sampled_n += len(rep)
    out = {"eval/greedy_accuracy": greedy_ok / max(len(rows), 1), "eval/num_prompts": float(len(rows))}
    if num_samples > 0:
        out["eval/sampled_pass@1"] = sampled_ok / max(sampled_n, 1)
    return out
