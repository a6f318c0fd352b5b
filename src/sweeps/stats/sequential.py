"""Group-sequential looks: the decision level of each look at the data.

Pure functions of numbers; nothing here knows about studies, trials or configs.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from sweeps.stats.paired import ALPHA


def obf_spending(t: float, alpha: float = ALPHA) -> float:
    """Lan-DeMets spending function of O'Brien-Fleming type: 2 - 2 Phi(z_(alpha/2) / sqrt(t))."""
    from scipy import stats

    return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(t)))


@lru_cache(maxsize=32)
def sequential_levels(min_repeats: int, max_repeats: int, alpha: float = ALPHA) -> dict[int, float]:
    """Nominal two-sided level of the paired t test at each look n = min_repeats..max_repeats.

    Lan & DeMets (1983) alpha spending with the O'Brien-Fleming-type function, information
    fraction n / max_repeats: the boundary of each look is set so that, with no real
    difference, the chance of crossing it for the first time there equals the alpha spent
    between the previous look and this one; the chance of crossing at any look is alpha.
    The crossing chances are those of the t statistics themselves, not the usual normal
    approximation, which lets too much through at 3 to 5 repeats: with no real difference the
    sequence of t statistics has a distribution free of the spread, so it is simulated once
    (400,000 seeded paths, cached; the levels are reproducible to about 2%).
    Stopping for equivalence does not change the boundaries (it only removes chances to err).
    """
    from scipy import stats

    looks = range(min_repeats, max_repeats + 1)
    if len(looks) == 1:
        return {min_repeats: alpha}
    paths = 400_000
    rng = np.random.default_rng(20_241_201)
    d = rng.standard_normal((paths, max_repeats))
    sums, squares = np.cumsum(d, axis=1), np.cumsum(d * d, axis=1)
    del d
    running = np.ones(paths, dtype=bool)
    levels: dict[int, float] = {}
    spent = 0.0
    for n in looks:
        mean = sums[:, n - 1] / n
        var = (squares[:, n - 1] - n * mean * mean) / (n - 1)
        t = np.abs(mean) / np.sqrt(var / n)
        total = obf_spending(n / max_repeats, alpha)
        k = max(int(round((total - spent) * paths)), 1)
        spent = total
        ranked = np.sort(t[running])[::-1]
        c = float((ranked[k - 1] + ranked[k]) / 2)  # k paths of all cross here first
        running &= t <= c
        levels[n] = float(2 * stats.t.sf(c, n - 1))
    return levels
