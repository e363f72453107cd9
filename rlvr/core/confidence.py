"""Confidence intervals for held-out accuracies (pure functions, no dependencies)."""
from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``p̂ = successes / n``::

        centre = (p̂ + z²/2n) / (1 + z²/n),   half = z / (1 + z²/n) · sqrt(p̂(1-p̂)/n + z²/4n²)

    Returns ``(low, high)`` within [0, 1]; ``(0.0, 1.0)`` when ``n`` is 0.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1.0 - p) / n + z * z / (4 * n * n), 0.0))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(per_prompt: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """95 % interval of a mean accuracy over prompts, each prompt's score in [0, 1] (its fraction correct).

    All scores 0 or 1 (one sample per prompt, or greedy): the Wilson interval. Otherwise (several samples
    per prompt, which are correlated within a prompt) the normal interval of the mean over prompts,
    ``mean ± z · s / sqrt(n)`` with ``s`` the sample standard deviation of the per-prompt scores, clipped to [0, 1].
    """
    n = len(per_prompt)
    if n == 0:
        return 0.0, 1.0
    if all(x in (0.0, 1.0) for x in per_prompt):
        return wilson_interval(sum(per_prompt), n, z)
    mean = sum(per_prompt) / n
    var = sum((x - mean) ** 2 for x in per_prompt) / (n - 1) if n > 1 else 0.0
    half = z * math.sqrt(var / n)
    return max(0.0, mean - half), min(1.0, mean + half)
