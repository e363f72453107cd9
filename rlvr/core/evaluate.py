"""Held-out accuracy: greedy pass@1 and sampled pass@1 (mean correctness over k samples)."""
from __future__ import annotations

from typing import Any

from rlvr.core.confidence import accuracy_interval
from rlvr.core.policy import Policy
from rlvr.core.task import Task


def evaluate(policy: Policy, task: Task, engine: Any, num_samples: int = 4, batch_prompts: int = 16,
             limit: int = 0, seed: int = 0) -> dict[str, float]:
    """Accuracy of ``policy`` on ``task.eval_rows``.

    Returns ``{"eval/greedy_accuracy", "eval/sampled_pass@1", "eval/num_prompts"}``; sampled pass@1
    is the fraction of correct completions among ``num_samples`` per prompt (0 skips sampling). Each
    accuracy comes with its 95 % interval, ``<name>_ci_low`` / ``<name>_ci_high`` (rlvr/core/confidence.py).
    """
    rows = task.eval_rows[:limit] if limit else task.eval_rows
    greedy_ok, sampled_ok, sampled_n = 0, 0, 0
    greedy_hits: list[float] = []
    sampled_hits: list[float] = []  # per prompt: fraction of its samples that are correct
    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start:start + batch_prompts]
        prompts = [task.render(r, policy.tokenizer) for r in chunk]
        seeds = [seed * 1_000_003 + start + i for i in range(len(chunk))]
        greedy = engine.generate(policy, prompts, 1, seeds, greedy=True)
        greedy_hits += [float(task.is_correct(c, r)) for c, r in zip(greedy.completions, chunk)]
        greedy_ok = int(sum(greedy_hits))
        if num_samples > 0:
            sampled = engine.generate(policy, prompts, num_samples, seeds)
            rep = [r for r in chunk for _ in range(num_samples)]
            ok = [float(task.is_correct(c, r)) for c, r in zip(sampled.completions, rep)]
            sampled_ok += int(sum(ok))
            sampled_hits += [sum(ok[i:i + num_samples]) / num_samples for i in range(0, len(ok), num_samples)]
            sampled_n += len(rep)
    out = {"eval/greedy_accuracy": greedy_ok / max(len(rows), 1), "eval/num_prompts": float(len(rows))}
    if num_samples > 0:
        out["eval/sampled_pass@1"] = sampled_ok / max(sampled_n, 1)
    for name, hits in (("eval/greedy_accuracy", greedy_hits), ("eval/sampled_pass@1", sampled_hits)):
        if name in out:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = accuracy_interval(hits)
    return out
