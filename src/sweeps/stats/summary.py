"""The statistics of an ablation report: small pure functions, checked against scipy and by hand."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

NAN = float("nan")


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and its t-distribution confidence interval; the interval is nan below 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return NAN, NAN, NAN
    mean = float(x.mean())
    if x.size < 2:
        return mean, NAN, NAN
    from scipy import stats

    half = stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return mean, mean - float(half), mean + float(half)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test; nan when a side has < 2 values or neither varies."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2 or (x.std() == 0 and y.std() == 0):
        return NAN
    from scipy import stats

    with warnings.catch_warnings():  # near-identical runs (all 1.0 but one) warn, yet are fine
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def variant_stats(values: Sequence[float], baseline_values: Sequence[float]) -> dict[str, float]:
    """n, mean, 95% interval, and the difference to the baseline's mean with Welch's p-value.

    Pass no baseline values for the baseline itself: its difference and p-value are nan.
    """
    mean, low, high = mean_ci(values)
    base = float(np.mean(baseline_values)) if len(baseline_values) else NAN
    return {
        "n": len(values),
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "diff": mean - base,
        "p_value": welch_p(values, baseline_values),
    }


def mean_curve(histories: Sequence[Sequence[float]]) -> np.ndarray:
    """Epoch-by-epoch mean of curves of unequal length (each epoch over the runs that got there)."""
    if not histories:
        return np.array([])
    padded = np.full((len(histories), max(len(h) for h in histories)), np.nan)
    for i, h in enumerate(histories):
        padded[i, : len(h)] = h
    return np.array([np.nanmean(col) for col in padded.T])
