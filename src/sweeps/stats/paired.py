"""Paired comparisons of two arms over seeds: t statistics, tests, intervals, Holm.

Pure functions of numbers, vectorised over leading axes (the last axis holds the variants or
the repeats), so simulations of thousands of studies run the very functions a report uses.
Nothing here knows about studies, trials or configs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

ALPHA = 0.05
UNDECIDED, BETTER, WORSE, EQUIVALENT = "undecided", "better", "worse", "equivalent"
WORDS = (UNDECIDED, BETTER, WORSE, EQUIVALENT)
CONFIRMED, CONTRADICTED, OPEN = "confirmed", "contradicted", "open"
NAN = float("nan")


# -- t statistics, vectorised --------------------------------------------------------------------


class TStats(NamedTuple):
    """Mean difference, its standard error and degrees of freedom (arrays of one shape)."""

    mean: np.ndarray
    se: np.ndarray
    df: np.ndarray


def paired_stats(diffs: Any) -> TStats:
    """t statistics of paired differences; the last axis holds the pairs (at least 2)."""
    d = np.asarray(diffs, dtype=float)
    n = d.shape[-1]
    mean = d.mean(axis=-1)
    se = d.std(axis=-1, ddof=1) / math.sqrt(n)
    return TStats(mean, se, np.full(mean.shape, n - 1.0))


def welch_stats(a: Sequence[float], b: Sequence[float]) -> TStats:
    """t statistics of mean(a) - mean(b) with Welch-Satterthwaite degrees of freedom."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1)) if se > 0 else x.size - 1
    return TStats(np.array(x.mean() - y.mean()), np.array(se), np.array(float(df)))


def p_two_sided(s: TStats) -> np.ndarray:
    """Two-sided p-value of ``mean == 0``; 0 when the differences do not vary and are not 0."""
    from scipy import stats

    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(s.mean) / s.se
        p = 2 * stats.t.sf(t, s.df)
    degenerate = s.se == 0
    return np.where(degenerate, np.where(s.mean == 0, 1.0, 0.0), p)


def t_interval(s: TStats, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The t interval of the mean difference at ``confidence``."""
    from scipy import stats

    half = stats.t.ppf((1 + confidence) / 2, s.df) * s.se
    return s.mean - half, s.mean + half


def tost_p(s: TStats, margin: float) -> np.ndarray:
    """p-value of two one-sided tests that the true difference lies within +/- margin.

    Below ``level`` exactly when the whole ``1 - 2 level`` t interval is inside the margin.
    """
    from scipy import stats

    with np.errstate(divide="ignore", invalid="ignore"):
        above_low = stats.t.sf((s.mean + margin) / s.se, s.df)  # H0: diff <= -margin
        below_high = stats.t.cdf((s.mean - margin) / s.se, s.df)  # H0: diff >= +margin
    p = np.maximum(above_low, below_high)
    return np.where(s.se == 0, np.where(np.abs(s.mean) < margin, 0.0, 1.0), p)


def holm(p: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values along the last axis; nan entries stay out of it."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1)
    m = np.sum(~np.isnan(p), axis=-1, keepdims=True)
    factor = m - np.arange(p.shape[-1])
    with np.errstate(invalid="ignore"):
        scaled = np.where(np.isnan(ranked), -np.inf, ranked * factor)
    adjusted = np.minimum(np.maximum.accumulate(scaled, axis=-1), 1.0)
    adjusted = np.where(np.isnan(ranked), np.nan, adjusted)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def holm_factor(p: Any) -> np.ndarray:
    """Holm's divisor of each p-value: m for the smallest, m - 1 for the next, ..."""
    p = np.asarray(p, dtype=float)
    key = np.where(np.isnan(p), np.inf, p)
    rank = np.argsort(np.argsort(key, axis=-1, kind="stable"), axis=-1, kind="stable")
    m = np.sum(~np.isnan(p), axis=-1, keepdims=True)
    return np.where(np.isnan(p), np.nan, m - rank)


class Decision(NamedTuple):
    """What :func:`decide` finds for each row (arrays shaped like the inputs)."""

    p: np.ndarray
    p_holm: np.ndarray
    p_equiv: np.ndarray
    p_equiv_holm: np.ndarray
    code: np.ndarray  # index into (undecided, better, worse, equivalent)


def decide(s: TStats, level: Any, margin: float | None, lower_is_better: bool = False) -> Decision:
    """Verdict codes of variants (last axis) against the baseline at a per-row ``level``.

    ``better``/``worse``: Holm-adjusted p below the level, in that direction; since the level
    is at most 0.05, the 95% interval shown beside it excludes 0. ``equivalent``: Holm-adjusted
    TOST p below the level, and the shown 95% interval inside +/- margin too. Rows with a nan
    level or nan statistics stay undecided.
    """
    level = np.asarray(level, dtype=float)
    usable = ~np.isnan(s.mean) & ~np.isnan(s.se) & ~np.isnan(level)
    p = np.where(usable, p_two_sided(s), np.nan)
    p_holm = holm(p)
    gain = -s.mean if lower_is_better else s.mean
    with np.errstate(invalid="ignore"):
        code = np.where(p_holm < level, np.where(gain > 0, 1, 2), 0)
        if margin is None:
            p_eq = p_eq_holm = np.full(p.shape, np.nan)
        else:
            p_eq = np.where(usable, tost_p(s, margin), np.nan)
            p_eq_holm = holm(p_eq)
            equivalent = (p_eq_holm < level) & (p_eq < (1 - 0.95) / 2)
            code = np.where((code == 0) & equivalent, 3, code)
    return Decision(p, p_holm, p_eq, p_eq_holm, np.where(usable, code, 0))


def word(code: int) -> str:
    return WORDS[int(code)]


# -- per-row extras (scalar) ---------------------------------------------------------------------


def p_better(
    a: Sequence[float], b: Sequence[float], paired: bool, lower_is_better: bool = False
) -> float:
    """P(A > B): share of pairs (seeds, or all a x b when unpaired) where A beats B; ties 1/2."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        return NAN
    gain = x - y if paired else x[:, None] - y[None, :]
    if lower_is_better:
        gain = -gain
    return float(np.mean((gain > 0) + 0.5 * (gain == 0)))


def bootstrap_interval(
    a: Sequence[float], b: Sequence[float], paired: bool, confidence: float = 0.95
) -> tuple[float, float]:
    """``scipy.stats.bootstrap`` interval of the mean difference (BCa, percentile if BCa fails).

    Seeded, so a report is reproducible. Too narrow at 3 repeats: shown, never decided on.
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return NAN, NAN
    if paired:
        data: tuple[np.ndarray, ...] = (x - y,)

        def statistic(d: np.ndarray, axis: int = -1) -> np.ndarray:
            return d.mean(axis=axis)
    else:
        data = (x, y)

        def statistic(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
            return u.mean(axis=axis) - v.mean(axis=axis)

    if all(np.ptp(d) == 0 for d in data):
        value = float(statistic(*data))
        return value, value
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples at n = 3 warn, and are caught
            res = stats.bootstrap(
                data,
                statistic,
                n_resamples=2000,
                confidence_level=confidence,
                method=method,
                vectorized=True,
                rng=np.random.default_rng(0),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isnan(low) or math.isnan(high)):
            return low, high
    return NAN, NAN


def repeats_needed(
    mean: float, sd: float, level: float, margin: float | None, paired: bool = True
) -> int | None:
    """Repeats (pairs) at which this mean and spread would reach a verdict at ``level``.

    A rough planning figure: the smallest n where the t test would reject, or the t interval
    would fit inside the margin, if the observed mean and spread held. None when out of reach
    (over 1,000) or not computable. Unpaired rows need n runs per side.
    """
    from scipy import stats

    if any(math.isnan(v) for v in (mean, sd, level)) or sd == 0 or level <= 0:
        return None
    n = np.arange(2, 1001)
    se = sd / np.sqrt(n) * (1.0 if paired else math.sqrt(2.0))
    reject = np.abs(mean) / se > stats.t.ppf(1 - level / 2, n - 1)
    ok = reject
    if margin is not None:
        eq_level = min(level, 0.025)
        ok = ok | (np.abs(mean) + stats.t.ppf(1 - eq_level, n - 1) * se < margin)
    return int(n[ok][0]) if ok.any() else None


def claim(verdict: str, published_diff: float, margin: float | None, lower_is_better: bool) -> str:
    """Whether the document's published difference agrees with the verdict.

    ``confirmed`` when the published difference lies where the verdict puts the truth (above
    0 for better, below for worse, within the margin for equivalent), ``contradicted`` when it
    does not, ``open`` while undecided, ``""`` when the document gave no number to compare.
    """
    if math.isnan(published_diff):
        return ""
    gain = -published_diff if lower_is_better else published_diff
    if verdict == BETTER:
        return CONFIRMED if gain > 0 else CONTRADICTED
    if verdict == WORSE:
        return CONFIRMED if gain < 0 else CONTRADICTED
    if verdict == EQUIVALENT and margin is not None:
        return CONFIRMED if abs(published_diff) < margin else CONTRADICTED
    return OPEN
