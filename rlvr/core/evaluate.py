"""Held-out evaluation: greedy accuracy, sampled pass@1, pass@k and maj@k, with confidence intervals.

:func:`evaluate` generates (a greedy completion and ``num_samples`` sampled ones per held-out prompt),
judges each with the task's correctness check (:mod:`rlvr.core.correctness`), and summarises. The
statistics are pure functions of the per-prompt verdicts:

- ``pass@k`` — unbiased estimator of Chen et al. (2021): per prompt with ``n`` samples of which ``c``
  are correct, ``1 - C(n-c, k) / C(n, k)``, averaged over prompts;
- ``maj@k`` — majority vote over the final answers of the first ``k`` samples (the answer
  :func:`rlvr.core.answers.extract_final_answer` finds, else the completion's text; compared by
  :func:`rlvr.core.answers.answer_key`; ties go to the answer seen first; an empty sample does not
  vote), correct when the winning answer's first sample is correct;
- confidence intervals (95 %): Wilson score interval for greedy accuracy (one verdict per prompt);
  percentile bootstrap over prompts (2,000 resamples, seeded) for sampled pass@1, because the samples
  of one prompt are not independent.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Optional, Sequence

from rlvr.core.policy import Policy
from rlvr.core.task import Task

Z95 = 1.959963984540054


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, Codex paper),
    computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` for numerical stability. Needs ``1 <= k <= n``."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n and 0 <= c <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_correct(keys: Sequence[Optional[str]], correct: Sequence[bool]) -> bool:
    """Whether the majority answer among ``keys`` (None = no answer, no vote) is a correct one.

    Ties go to the answer that appears first. No answer at all: False."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return False
    best = max(counts, key=lambda k: (counts[k], -first[k]))
    return bool(correct[first[best]])


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n`` (``(0, 1)`` when ``n == 0``)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    values: Sequence[float], resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per prompt), seeded."""
    if not values:
        return 0.0, 1.0
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int(math.floor((1 - level) / 2 * (resamples - 1)))]
    hi = means[int(math.ceil((1 + level) / 2 * (resamples - 1)))]
    return lo, hi


def k_values(n: int) -> list[int]:
    """The k reported for ``n`` samples: 1, 2, 4, 8, … up to ``n``, and ``n`` itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


def summarise(
    greedy: Sequence[bool],
    sampled: Sequence[Sequence[bool]],
    sampled_keys: Sequence[Sequence[Optional[str]]],
    seed: int = 0,
) -> dict[str, float]:
    """Metrics from per-prompt verdicts: ``greedy[p]``; ``sampled[p][j]`` and ``sampled_keys[p][j]`` for
    the j-th sample of prompt p (every prompt has the same number of samples, possibly 0)."""
    n_prompts = len(greedy)
    out: dict[str, float] = {"eval/num_prompts": float(n_prompts)}
    ok = sum(bool(g) for g in greedy)
    out["eval/greedy_accuracy"] = ok / max(n_prompts, 1)
    lo, hi = wilson_interval(ok, n_prompts)
    out["eval/greedy_accuracy_ci_low"], out["eval/greedy_accuracy_ci_high"] = lo, hi
    n = len(sampled[0]) if sampled else 0
    if n == 0:
        return out
    if any(len(s) != n for s in sampled):
        raise ValueError("every prompt needs the same number of samples")
    per_prompt = [sum(map(bool, s)) / n for s in sampled]
    out["eval/sampled_pass@1"] = sum(per_prompt) / n_prompts
    lo, hi = bootstrap_interval(per_prompt, seed=seed)
    out["eval/sampled_pass@1_ci_low"], out["eval/sampled_pass@1_ci_high"] = lo, hi
    out["eval/num_samples"] = float(n)
    for k in k_values(n):
        out[f"eval/pass@{k}"] = sum(pass_at_k(n, sum(map(bool, s)), k) for s in sampled) / n_prompts
        out[f"eval/maj@{k}"] = (
            sum(majority_correct(keys[:k], s[:k]) for keys, s in zip(sampled_keys, sampled)) / n_prompts
        )
    return out


def evaluate(
    policy: Policy,
    task: Task,
    engine: Any,
    num_samples: int = 4,
    batch_prompts: int = 16,
    limit: int = 0,
    seed: int = 0,
    check: Optional[Callable[..., list[bool]]] = None,
    records: Optional[list[dict[str, Any]]] = None,
) -> dict[str, float]:
    """Accuracy of ``policy`` on ``task.eval_rows`` (the first ``limit`` when > 0).

    Returns ``eval/greedy_accuracy`` (+ ``_ci_low`` / ``_ci_high``), ``eval/num_prompts`` and, when
    ``num_samples > 0``, ``eval/sampled_pass@1`` (+ bootstrap CI), ``eval/pass@k`` and ``eval/maj@k`` for
    k in :func:`k_values`. ``check(completions, rows, prompts) -> list[bool]`` defaults to the task's
    (:func:`rlvr.core.correctness.task_check`). When ``records`` is a list, one dict per completion is
    appended to it (prompt index, kind greedy/sampled, sample index, prompt, completion, extracted
    answer, reference, correct).
    """
    from rlvr.core.answers import answer_key, exact_answer, extract_final_answer
    from rlvr.core.correctness import task_check

    def final(completion: str) -> Optional[str]:  # the answer a completion votes for (text tasks: its text)
        found = extract_final_answer(completion)
        return found if found is not None else (exact_answer(completion).strip()[:200] or None)

    check = check or task_check(task)
    rows = task.eval_rows[:limit] if limit else task.eval_rows
    answer_col = getattr(task.config, "answer_column", "answer")
    greedy_ok: list[bool] = []
    sampled_ok: list[list[bool]] = []
    sampled_keys: list[list[Optional[str]]] = []

    def record(
        kind: str, p: int, j: int, prompt: str, completion: str, row: dict, ok: bool, answer: Optional[str]
    ) -> None:
        if records is not None:
            records.append(
                {
                    "prompt_index": p,
                    "kind": kind,
                    "sample": j,
                    "prompt": prompt,
                    "completion": completion,
                    "answer": answer,
                    "reference": row.get(answer_col),
                    "correct": ok,
                }
            )

    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start : start + batch_prompts]
        prompts = [task.render(r, policy.tokenizer) for r in chunk]
        seeds = [seed * 1_000_003 + start + i for i in range(len(chunk))]
        greedy = engine.generate(policy, prompts, 1, seeds, greedy=True)
        verdicts = check(greedy.completions, chunk, prompts)
        greedy_ok += verdicts
        for i, (c, ok) in enumerate(zip(greedy.completions, verdicts)):
            record("greedy", start + i, 0, prompts[i], c, chunk[i], ok, final(c))
        if num_samples > 0:
            sampled = engine.generate(policy, prompts, num_samples, seeds)
            rep_rows = [r for r in chunk for _ in range(num_samples)]
            rep_prompts = [p for p in prompts for _ in range(num_samples)]
            verdicts = check(sampled.completions, rep_rows, rep_prompts)
            for i in range(len(chunk)):
                comps = sampled.completions[i * num_samples : (i + 1) * num_samples]
                oks = verdicts[i * num_samples : (i + 1) * num_samples]
                extracted = [final(c) for c in comps]
                sampled_ok.append(list(oks))
                sampled_keys.append([answer_key(a) for a in extracted])
                for j, (c, ok, a) in enumerate(zip(comps, oks, extracted)):
                    record("sampled", start + i, j, prompts[i], c, chunk[i], ok, a)
    return summarise(greedy_ok, sampled_ok if num_samples > 0 else [], sampled_keys, seed=seed)
