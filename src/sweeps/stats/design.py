"""Group-sequential, family-wise decisions for the rows of one ablation, fixed before the data.

A study compares m variants ("rows") with one baseline on paired per-seed differences of one
metric (repeat r of every arm trains with seed ``seed + r``), looking at the data after every
round: first at ``min_repeats`` pairs, then after each further pair, up to ``max_repeats``.
This module is the whole decision procedure; a study loop calls :func:`look` after each round.

The rule (:class:`Rule`) is recorded at the study's first run and never recomputed. Procedures,
all published:

- **Test.** The paired t statistic ``T = mean / (sd / sqrt(n))`` of each row's differences.
  Only complete pairs enter: a missing baseline repeat is queued by the caller, never replaced
  by Welch's test mid-sequence (the boundaries below are those of the paired t).
- **Per-row group-sequential boundaries.** Lan & DeMets (1983, Biometrika 70:659-663) alpha
  spending, O'Brien-Fleming type by default, at information fraction ``n / max_repeats``, with
  one look at every n. The boundaries are those of the t statistic itself, not the normal
  approximation (which lets too much through at 2 to 4 degrees of freedom): under "no
  difference" the path of t statistics does not depend on the spread, so its crossing chances
  are computed once, on 200,000 seeded null paths (the exact route, numerical integration, is
  Jennison & Turnbull 1991, Biometrika 78:133-141). The first look is exact (t distribution);
  at a later look the chance of a first crossing is the exact marginal chance less the chance
  of crossing after an earlier crossing, and only that overlap is estimated, by conditional
  Monte Carlo (given a path's first n - 1 differences, crossing at n is a normal integral over
  the roots of a quadratic), and used less two standard errors: a look spends its share, up to
  a small conservative Monte Carlo error. Looking less often than at every n only lowers the
  error; so does a row that stops early.
- **Family-wise error across rows and looks:** the graphical approach for group-sequential
  designs (Maurer & Bretz 2013, Statistics in Biopharmaceutical Research 5:311-320) with Holm
  weights (Holm 1979, Scand J Statist 6:65-70; Bretz et al. 2009, Stat Med 28:586-604): each
  of the m hypotheses "no difference" starts with alpha / m; when one is rejected its alpha is
  passed on equally to all not rejected, so with r rejections each holds alpha / (m - r), and
  its boundaries become those of a design spending that level from the start. Rows stopped
  for equivalence, futility or the budget keep their share (the graph is fixed before the
  data) and are never rejected later, which only lowers the error. Family-wise error <= alpha
  across all rows and all looks, whatever the correlation between rows (they share the
  baseline).
- **Repeated confidence intervals** (Jennison & Turnbull 1989, JRSS B 51:305-361; Jennison &
  Turnbull 2000, Group Sequential Methods with Applications to Clinical Trials, ch. 9):
  ``mean +/- c_n(level) * se`` with the same boundary, so the intervals cover the true
  difference at every look at once with probability >= 1 - level, whatever the stopping rule,
  and the interval excludes 0 exactly when the row is rejected: a row is ``better`` or
  ``worse`` when its interval at the level it holds excludes 0.
- **Equivalence:** the repeated interval at alpha / m (the initial Holm share: recycled alpha
  is never spent on equivalence) inside +/- margin; the group-sequential form of two one-sided
  tests (Jennison & Turnbull 1993, Biometrics 49:31-43).
- **Non-binding futility** at the smallest effect of interest delta: beta spending (Pampallona &
  Tsiatis 1994, J Stat Plan Inf 42:19-35) written as repeated confidence bounds (Jennison &
  Turnbull 2000, ch. 9): ``mean +/- f_n * se`` where f_n are one-sided t boundaries spending
  beta over the looks (Lan-DeMets Pocock type by default), so each end is a one-sided
  repeated bound at 1 - beta and the interval a two-sided one at 1 - 2 beta. A row stops with
  ``no effect >= delta`` when that interval lies inside (-delta, +delta) and holds 0 (a row
  whose interval excludes 0 runs on, so the efficacy test can decide it). A row whose true
  difference is delta or more, of either sign, stops so with probability <= beta (0.2, as
  in a design with 80% power). Non-binding: the efficacy boundaries ignore futility stops.
- **Adjusted p-value** of a row: its repeated p-value (the smallest level whose repeated
  interval at that look excludes 0; Jennison & Turnbull 2000, ch. 9) times the Holm factor
  it had, ``m - r``, made monotone in the order of rejection (Wright 1992, Biometrics
  48:1005-1013). It is <= alpha exactly when the row was rejected; a stopped row keeps that of
  its stopping look.
- **P(variant better than baseline) on a fresh seed:** Phi(mean / sd) of the paired differences
  (the probability of superiority, or common-language effect size, of McGraw & Wong 1992,
  Psychol Bull 111:361-365: the normal-model form of the probability of outperforming of
  Bouthillier et al. 2021, MLSys), with a noncentral-t interval (Steiger & Fouladi 1997, in
  Harlow et al., What If There Were No Significance Tests?) at the nominal level of the row's
  repeated interval at that look, so the interval on P(>) holds 1/2 exactly when the repeated
  interval holds 0.

``delta`` defaults to 0.02 (2 accuracy points): larger than the seed spreads of 0.5-2 points
the studies show, so one lucky run is not an effect of interest, and the size of the
differences the documents claim (2 to 8 points between the age_gap rows). At a one-point seed
spread, 10 pairs put the standard error of a difference near 0.45 points: 2 points is about
4.5 standard errors, 1 point about 2, too few once alpha is split over ten rows. It is in the
metric's units: set it (and ``margin``) for losses.

Pure: numbers in, numbers out; imports numpy and scipy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

PROCEDURE = "graphical Holm group-sequential paired t (Maurer & Bretz 2013), v1"
BETTER, WORSE, EQUIVALENT = "better", "worse", "equivalent"
NO_EFFECT, UNDECIDED = "no effect >= delta", "undecided"
DECIDED, FUTILITY, BUDGET, OPEN = "decided", "futility", "budget spent", ""
CONSISTENT, CONTRADICTED, CLAIM_OPEN = "consistent", "contradicted", "open"
NO_SPREAD = "no spread: is the variant identical to the baseline?"
NAN = float("nan")

PATHS = 200_000  # null t paths the boundaries are computed on
PATH_SEED = 20_250_317
MAX_LOOKS = 20  # max_repeats above this would need more memory for the paths
_BASE_GRID = tuple(float(x) for x in np.geomspace(1e-7, 0.5, 25))  # levels for p-values

# Codes of the vectorised state: a row is open, or stopped with one of these.
_OPEN, _BETTER, _WORSE, _EQUIV, _NOEFF, _BUDGET = range(6)
_WORD = {
    _OPEN: UNDECIDED,
    _BETTER: BETTER,
    _WORSE: WORSE,
    _EQUIV: EQUIVALENT,
    _NOEFF: NO_EFFECT,
    _BUDGET: UNDECIDED,
}
_STOP = {
    _OPEN: OPEN,
    _BETTER: DECIDED,
    _WORSE: DECIDED,
    _EQUIV: DECIDED,
    _NOEFF: FUTILITY,
    _BUDGET: BUDGET,
}


# -- the rule ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """The decision rule of one study, recorded at its first run and never recomputed.

    Attributes:
        metric: The metric decided on (``test_acc``...).
        direction: ``maximize`` (accuracy) or ``minimize`` (losses).
        alpha: Family-wise error over all rows and looks (two-sided).
        margin: Equivalence band half-width, in the metric's units (0.01 = 1 accuracy point).
        delta: Smallest effect of interest, in the metric's units; futility stops claim no
            effect of this size (see the module docstring for the default of 2 points).
        beta: Chance that futility stops a row whose true difference is +/- delta or beyond.
        min_repeats: Pairs at the first look (at least 2).
        max_repeats: Pairs at the last look; information fraction is n / max_repeats.
        efficacy_spending: ``obf`` (Lan-DeMets O'Brien-Fleming type), ``pocock`` (Lan-DeMets
            Pocock type), ``power:RHO`` (Kim-DeMets) or ``hsd:GAMMA`` (Hwang-Shih-DeCani).
        futility_spending: The same choice, for beta.
        test: The test statistic; only ``paired t``.
        procedure: Name and version of this procedure; a record of another is refused.
    """

    metric: str = "test_acc"
    direction: str = "maximize"
    alpha: float = 0.05
    margin: float = 0.01
    delta: float = 0.02
    beta: float = 0.2
    min_repeats: int = 3
    max_repeats: int = 10
    efficacy_spending: str = "obf"
    futility_spending: str = "pocock"
    test: str = "paired t"
    procedure: str = PROCEDURE

    def __post_init__(self) -> None:
        problems = []
        if self.direction not in ("maximize", "minimize"):
            problems.append(f"direction={self.direction!r}: maximize or minimize")
        if not 0 < self.alpha <= 0.5:
            problems.append(f"alpha={self.alpha!r}: a number in (0, 0.5]")
        if not 0 < self.beta < 0.5:
            problems.append(f"beta={self.beta!r}: a number in (0, 0.5)")
        if not 0 < self.margin <= self.delta:
            problems.append(f"margin={self.margin!r}, delta={self.delta!r}: 0 < margin <= delta")
        if not 2 <= self.min_repeats <= self.max_repeats <= MAX_LOOKS:
            problems.append(
                f"min_repeats={self.min_repeats!r}, max_repeats={self.max_repeats!r}: "
                f"2 <= min_repeats <= max_repeats <= {MAX_LOOKS}"
            )
        for key in ("efficacy_spending", "futility_spending"):
            try:
                spending(getattr(self, key), 0.5, 0.05)
            except (ValueError, TypeError):
                problems.append(f"{key}={getattr(self, key)!r}: obf, pocock, power:RHO, hsd:G")
        if self.test != "paired t":
            problems.append(f"test={self.test!r}: only 'paired t'")
        if self.procedure != PROCEDURE:
            problems.append(f"procedure={self.procedure!r}: this code runs {PROCEDURE!r}")
        if problems:
            raise ValueError("decision rule: " + "; ".join(problems))

    def to_record(self) -> dict[str, Any]:
        """The rule as a JSON-serialisable dict (every field)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Rule:
        """The rule a study recorded; raises ValueError naming an unknown or missing key."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(record) - set(names))
        missing = [k for k in names if k not in record]
        if unknown or missing:
            raise ValueError(f"decision rule record: unknown keys {unknown}, missing {missing}")
        return cls(**{k: record[k] for k in names})

    def differences(self, other: Rule) -> list[tuple[str, Any, Any]]:
        """``(key, recorded, asked)`` for each field where ``other`` (asked) differs from this
        (recorded) rule, in field order; empty when they agree."""
        return [
            (f.name, getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]

    @property
    def sign(self) -> float:
        """+1 when larger is better, -1 for losses."""
        return 1.0 if self.direction == "maximize" else -1.0


# -- spending and boundaries -------------------------------------------------------------------


def spending(name: str, t: Any, level: float) -> np.ndarray:
    """Share of ``level`` spent by information fraction ``t`` (0 at t = 0, level at t = 1).

    ``obf``: Lan & DeMets (1983) O'Brien-Fleming type, 2 - 2 Phi(z_(level/2) / sqrt(t)).
    ``pocock``: Lan & DeMets (1983) Pocock type, level ln(1 + (e - 1) t).
    ``power:RHO``: Kim & DeMets (1987), level t^RHO. ``hsd:G``: Hwang, Shih & DeCani (1990),
    level (1 - e^(-G t)) / (1 - e^(-G)).
    """
    from scipy import stats

    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    kind, _, arg = name.partition(":")
    if kind == "obf" and not arg:
        with np.errstate(divide="ignore"):
            return 2 * stats.norm.sf(stats.norm.isf(level / 2) / np.sqrt(t))
    if kind == "pocock" and not arg:
        return level * np.log1p((math.e - 1) * t)
    if kind == "power" and float(arg) > 0:
        return level * t ** float(arg)
    if kind == "hsd":
        g = float(arg)
        return level * t if g == 0 else level * -np.expm1(-g * t) / -math.expm1(-g)
    raise ValueError(f"unknown spending function {name!r}")


@lru_cache(maxsize=4)
def _null_paths(max_repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """Running sums and sums of squares of seeded standard normal paths (paths x max)."""
    d = np.random.default_rng(PATH_SEED).standard_normal((PATHS, max_repeats))
    return np.cumsum(d, axis=1), np.cumsum(d * d, axis=1)


def _t_of(s: np.ndarray, q: np.ndarray, n: int) -> np.ndarray:
    var = np.maximum(q - s * s / n, 0.0) / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return s / math.sqrt(n) / np.sqrt(var)


def _cross_given_past(s: np.ndarray, q: np.ndarray, n: int, c: float, sides: int) -> np.ndarray:
    """P(|T_n| > c) (two-sided) or P(T_n > c) given the first n - 1 values of each path.

    With S, Q the sum and sum of squares so far and x ~ N(0, 1) the next value, T_n^2 > c^2
    is a quadratic inequality in x, so the chance is a normal integral over its roots.
    """
    from scipy import special

    c = 1.0 + 1e-9 if abs(c - 1.0) < 1e-9 else c  # c = 1 makes the quadratic linear
    c2 = c * c
    a = (n - 1) * (1 - c2)
    b = 2 * s * (n - 1 + c2)
    e = s * s * (n - 1 + c2) - c2 * n * q
    disc = b * b - 4 * a * e
    root = np.sqrt(np.maximum(disc, 0.0))
    lo, hi = np.sort(np.stack([(-b + root) / (2 * a), (-b - root) / (2 * a)]), axis=0)
    real = disc > 0
    between = special.ndtr(hi) - special.ndtr(lo)
    if a < 0:  # c > 1: |T_n| > c on one interval, on the side of the sign of S
        if sides == 2:
            return np.where(real, between, 0.0)
        return np.where(real & (s + (lo + hi) / 2 > 0), between, 0.0)
    if sides == 2:  # c < 1: outside the roots
        return np.where(real, 1 - between, 1.0)
    return special.ndtr(-hi)  # T_n > c >= 0: beyond the larger root (x = -S lies between)


@lru_cache(maxsize=16)
def _design(levels: tuple[float, ...], lo: int, hi: int, spend: str, sides: int) -> np.ndarray:
    """Boundaries ``c[level, look]`` for |T| (sides=2) or T (sides=1) at n = lo..hi.

    Each level is its own design: the chance, with no real difference, that the t statistic
    first crosses at look n equals the level spent between the previous look and n.
    """
    from scipy import stats

    looks = range(lo, hi + 1)
    cum = np.array([[float(spending(spend, n / hi, g)) for n in looks] for g in levels])
    inc = np.diff(cum, axis=1, prepend=0.0)
    out = np.empty(cum.shape)
    if lo == hi:
        out[:, 0] = stats.t.isf(inc[:, 0] / sides, lo - 1)
        return out
    s_all, q_all = _null_paths(hi)
    crossed = np.zeros((len(levels), PATHS), dtype=bool)
    for k, n in enumerate(looks):
        with np.errstate(divide="ignore"):
            c = stats.t.isf(inc[:, k] / sides, n - 1)  # ignoring earlier crossings: >= exact
        if k > 0:
            for g in range(len(levels)):
                idx = np.flatnonzero(crossed[g])
                if idx.size and inc[g, k] > 0:
                    c[g] = _solve(
                        s_all[idx, n - 2], q_all[idx, n - 2], n, sides, inc[g, k], cum[g, k], c[g]
                    )
        # Larger levels never get larger boundaries (guards Monte Carlo noise, conservatively).
        c = np.maximum.accumulate(c[::-1])[::-1]
        out[:, k] = c
        t = _t_of(s_all[:, n - 1], q_all[:, n - 1], n)
        stat = np.abs(t) if sides == 2 else t
        crossed |= stat[None, :] > c[:, None]
    return out


def _solve(
    s: np.ndarray, q: np.ndarray, n: int, sides: int, inc: float, cum: float, upper: float
) -> float:
    """The boundary c at look n where first crossings spend ``inc``.

    First crossing = marginal crossing (exact, t distribution) - crossing after an earlier
    crossing (estimated on the crossed paths ``s``, ``q``, less two standard errors).
    """
    from scipy import stats

    def excess(c: float) -> float:
        p = _cross_given_past(s, q, n, c, sides)
        mean = p.sum() / PATHS
        se = math.sqrt(max((p * p).sum() / PATHS - mean * mean, 0.0) / PATHS)
        return sides * float(stats.t.sf(c, n - 1)) - max(mean - 2 * se, 0.0) - inc

    lower = float(stats.t.isf(min(cum, 0.999) / sides, n - 1))
    f_up, f_lo = excess(upper), excess(lower)
    while f_lo < 0 and lower > 1e-6:
        lower /= 2
        f_lo = excess(lower)
    if f_up >= 0 or f_lo < 0:
        return upper
    a, b, fa, fb, side = math.log(lower), math.log(upper), f_lo, f_up, 0
    for _ in range(60):  # Illinois regula falsi on log c
        x = (a * fb - b * fa) / (fb - fa)
        fx = excess(math.exp(x))
        if abs(fx) <= 1e-5 * inc or b - a < 1e-12:
            return math.exp(x) if fx <= 0 else math.exp(b)
        if fx > 0:
            a, fa = x, fx
            fb = fb / 2 if side == 1 else fb
            side = 1
        else:
            b, fb = x, fx
            fa = fa / 2 if side == -1 else fa
            side = -1
    return math.exp(b)  # f(b) <= 0: spends at most inc


def boundaries(
    level: float, min_repeats: int, max_repeats: int, spend: str = "obf", sides: int = 2
) -> dict[int, float]:
    """Boundary of the t statistic at each look n = min_repeats..max_repeats.

    Two-sided: reject at look n when |T| >= c_n; one-sided: when T >= c_n. One look gives
    the t quantile at ``level`` itself.
    """
    c = _design((float(level),), min_repeats, max_repeats, spend, sides)[0]
    return {n: float(c[k]) for k, n in enumerate(range(min_repeats, max_repeats + 1))}


@dataclass(frozen=True)
class _Tables:
    """Every boundary one rule needs, looked up by (level index, look index)."""

    lo: int
    hi: int
    grid: np.ndarray  # levels, ascending
    eff: np.ndarray  # two-sided efficacy boundaries, grid x looks
    fut: np.ndarray  # one-sided futility boundaries (beta), per look
    share: np.ndarray  # share[j]: index in grid of alpha / j (j = 1..J)


def _grid(alpha: float, rows: int) -> tuple[float, ...]:
    shares = [alpha / j for j in range(1, max(rows, 10) + 1)]
    values = sorted(set(_BASE_GRID) | set(shares))
    return tuple(values)


@lru_cache(maxsize=8)
def _tables(rule: Rule, rows: int) -> _Tables:
    grid = _grid(rule.alpha, rows)
    eff = _design(grid, rule.min_repeats, rule.max_repeats, rule.efficacy_spending, 2)
    fut = _design((rule.beta,), rule.min_repeats, rule.max_repeats, rule.futility_spending, 1)[0]
    g = np.asarray(grid)
    share = np.zeros(max(rows, 10) + 1, dtype=int)
    for j in range(1, share.size):
        share[j] = grid.index(rule.alpha / j)
    return _Tables(rule.min_repeats, rule.max_repeats, g, eff, fut, share)


def _unlocked_tables(rule: Rule, rows: int, first_max: int) -> _Tables:
    """The old, unlocked behaviour: looks up to ``first_max`` under the boundaries of a design
    planned for max_repeats = first_max, later looks under those planned for max_repeats."""
    early = _tables(dataclasses.replace(rule, max_repeats=first_max), rows)
    late = _tables(rule, rows)
    k = first_max - rule.min_repeats + 1
    eff = np.concatenate([early.eff[:, :k], late.eff[:, k:]], axis=1)
    fut = np.concatenate([early.fut[:k], late.fut[k:]])
    return dataclasses.replace(late, eff=eff, fut=fut)


def _repeated_p(tab: _Tables, abs_t: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Smallest single-hypothesis level whose boundary at look index k is <= |T|.

    Interpolated (log level, linear boundary) between the grid, exact on it; floored at the
    grid's smallest level, and p-values above the largest grid level (0.5) are approximate.
    """
    out = np.full(abs_t.shape, NAN)
    if tab.lo == tab.hi:  # one look: the plain t test's p-value, exactly
        from scipy import stats

        return 2 * stats.t.sf(abs_t, tab.lo - 1)
    ys = np.concatenate([[0.0], np.log(tab.grid[::-1])])
    for look in np.unique(k):
        sel = k == look
        xs = np.concatenate([[0.0], tab.eff[::-1, look]])
        out[sel] = np.exp(np.interp(abs_t[sel], xs, ys))
    return out


# -- one look ------------------------------------------------------------------------------------


@dataclass
class _Family:
    """Vectorised state of many studies (leading axis) of m rows each."""

    code: np.ndarray  # (S, m) row codes
    n: np.ndarray  # repeats at the stop, or now while open
    mean: np.ndarray
    sd: np.ndarray
    low: np.ndarray
    high: np.ndarray
    confidence: np.ndarray
    p_adj: np.ndarray
    share: np.ndarray  # j: the row holds (or held at its stop) alpha / j
    rejected: np.ndarray  # (S,) rejections so far
    p_max: np.ndarray  # (S,) largest adjusted p among them

    @classmethod
    def empty(cls, studies: int, rows: int) -> _Family:
        full = np.full((studies, rows), NAN)
        return cls(
            np.zeros((studies, rows), dtype=np.int8),
            np.zeros((studies, rows), int),
            full.copy(),
            full.copy(),
            full.copy(),
            full.copy(),
            full.copy(),
            full.copy(),
            np.full((studies, rows), rows),
            np.zeros(studies, int),
            np.zeros(studies),
        )


def _step(
    rule: Rule, tab: _Tables, fam: _Family, n: np.ndarray, mean: np.ndarray, sd: np.ndarray
) -> None:
    """One look at every open row of every study: ``n``, ``mean``, ``sd`` of its differences.

    Rejects in Holm order at the levels the rows hold, recycling alpha; then stops the rest
    for equivalence, futility or the budget; updates ``fam`` in place (stopped rows keep their
    values).
    """
    studies, m = fam.code.shape
    rows = np.arange(studies)
    live = fam.code == _OPEN
    fam.n = np.where(live, n, fam.n)
    fam.mean, fam.sd = np.where(live, mean, fam.mean), np.where(live, sd, fam.sd)
    k = np.clip(n - tab.lo, 0, tab.eff.shape[1] - 1)
    testable = live & (n >= tab.lo) & np.isfinite(mean) & np.isfinite(sd) & (sd > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.where(testable, sd / np.sqrt(np.maximum(n, 1)), NAN)
        abs_t = np.where(testable, np.abs(mean) / se, 0.0)
    p_rep = np.where(testable, _repeated_p(tab, abs_t, k), NAN)
    for _ in range(m):  # Holm: the smallest repeated p among those over their boundary
        j = np.maximum(m - fam.rejected, 1)
        c = tab.eff[tab.share[j][:, None], k]
        over = testable & (fam.code == _OPEN) & (abs_t >= c)
        hit = over.any(axis=1)
        if not hit.any():
            break
        s = rows[hit]
        r = np.argmin(np.where(over, p_rep, np.inf)[hit], axis=1)
        js = j[hit]
        gain = rule.sign * mean[s, r]
        fam.code[s, r] = np.where(gain > 0, _BETTER, _WORSE)
        half = c[s, r] * se[s, r]
        fam.low[s, r], fam.high[s, r] = mean[s, r] - half, mean[s, r] + half
        fam.confidence[s, r] = 1 - rule.alpha / js
        fam.p_adj[s, r] = np.maximum(fam.p_max[s], np.minimum(1.0, js * p_rep[s, r]))
        fam.p_max[s] = fam.p_adj[s, r]
        fam.share[s, r] = js
        fam.rejected[s] += 1
    live = fam.code == _OPEN
    j = np.broadcast_to(np.maximum(m - fam.rejected, 1)[:, None], (studies, m))
    c_now = tab.eff[tab.share[j], k]
    c_eq = tab.eff[tab.share[m], k]
    with np.errstate(invalid="ignore"):
        equivalent = testable & live & (np.abs(mean) + c_eq * se < rule.margin)
        half_f = tab.fut[k] * se
        futile = testable & live & ~equivalent & (np.abs(mean) + half_f < rule.delta)
        # ... and holds 0: a row whose interval excludes 0 runs on, so efficacy can decide.
        futile &= np.abs(mean) <= half_f
    budget = live & ~equivalent & ~futile & (n >= tab.hi)
    half = np.where(equivalent, c_eq, np.where(futile, tab.fut[k], c_now)) * se
    conf = np.where(
        equivalent, 1 - rule.alpha / m, np.where(futile, 1 - 2 * rule.beta, 1 - rule.alpha / j)
    )
    fam.low = np.where(live, mean - half, fam.low)
    fam.high = np.where(live, mean + half, fam.high)
    fam.confidence = np.where(live, np.where(testable, conf, NAN), fam.confidence)
    p_now = np.maximum(fam.p_max[:, None], np.minimum(1.0, j * p_rep))
    fam.p_adj = np.where(live, p_now, fam.p_adj)
    fam.share = np.where(live, np.where(equivalent, m, j), fam.share)
    code = np.where(equivalent, _EQUIV, np.where(futile, _NOEFF, np.where(budget, _BUDGET, 0)))
    fam.code = np.where(live, code, fam.code).astype(np.int8)


def _p_better(rule: Rule, tab: _Tables, fam: _Family) -> tuple[np.ndarray, ...]:
    """P(variant better on a fresh seed) = Phi(gain / sd), with its noncentral-t interval at
    the nominal level of the row's repeated interval at the level it holds."""
    from scipy import special, stats

    n, sd = fam.n, fam.sd
    ok = np.isfinite(fam.mean) & np.isfinite(sd) & (sd > 0) & (n >= tab.lo)
    est, low, high = (np.full(n.shape, NAN) for _ in range(3))
    if not ok.any():
        return est, low, high
    nn, gain, s = n[ok], rule.sign * fam.mean[ok], sd[ok]
    k = np.clip(nn - tab.lo, 0, tab.eff.shape[1] - 1)
    c = tab.eff[tab.share[fam.share[ok]], k]
    nominal = 2 * stats.t.sf(c, nn - 1)  # the repeated interval is the t interval at this level
    t = gain / (s / np.sqrt(nn))
    lam_low = special.nctdtrinc(nn - 1, 1 - nominal / 2, t)
    lam_high = special.nctdtrinc(nn - 1, nominal / 2, t)
    est[ok] = special.ndtr(gain / s)
    low[ok] = special.ndtr(lam_low / np.sqrt(nn))
    high[ok] = special.ndtr(lam_high / np.sqrt(nn))
    return est, low, high


# -- the caller's API ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RowResult:
    """One row (variant minus baseline) after a look.

    Attributes:
        verdict: better, worse, equivalent, ``no effect >= delta`` or undecided.
        stopped: ``decided``, ``futility``, ``budget spent``, or ``""`` while open.
        n: Complete pairs used (at the stop, for a stopped row).
        mean, sd: Mean and standard deviation of the paired differences (metric units).
        low, high, confidence: The interval that carries the verdict: the repeated
            confidence interval at the level the row holds (better, worse, undecided), at
            alpha / m (equivalent), or the futility interval at 1 - 2 beta (no effect >= delta).
        p_adjusted: Family-adjusted p-value; <= alpha exactly when better or worse.
        p_better, p_better_low, p_better_high: P(variant better than baseline on a fresh
            seed), Phi(mean / sd), with its interval.
        level: The share of the family's alpha the row holds (or held when it stopped).
        note: Why a row cannot be tested, or what its interval means.
    """

    verdict: str
    stopped: str
    n: int
    mean: float = NAN
    sd: float = NAN
    low: float = NAN
    high: float = NAN
    confidence: float = NAN
    p_adjusted: float = NAN
    p_better: float = NAN
    p_better_low: float = NAN
    p_better_high: float = NAN
    level: float = NAN
    note: str = ""

    def to_record(self) -> dict[str, Any]:
        """JSON-serialisable (nan as None)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RowResult:
        values = {f.name: record[f.name] for f in dataclasses.fields(cls)}
        floats = {f.name for f in dataclasses.fields(cls) if f.type == "float"}
        return cls(**{k: (NAN if k in floats and v is None else v) for k, v in values.items()})


def needs_more(row: RowResult) -> bool:
    """Whether the caller should queue another repeat (with its baseline partner) for it."""
    return row.stopped == OPEN


def _differences_stats(values: Sequence[float]) -> tuple[int, float, float]:
    d = np.asarray(values, dtype=float)
    if d.size == 0:
        return 0, NAN, NAN
    sd = float(d.std(ddof=1)) if d.size >= 2 else NAN
    if d.size >= 2 and float(np.ptp(d)) == 0.0:
        sd = 0.0  # exactly equal differences: the rounding of std must not hide it
    return int(d.size), float(d.mean()), sd


def look(
    rule: Rule, diffs: Mapping[str, Sequence[float]], state: Mapping[str, Any] | None = None
) -> tuple[dict[str, RowResult], dict[str, Any]]:
    """One look at every row: verdicts, intervals, adjusted p-values, and the new state.

    Args:
        rule: The study's recorded rule.
        diffs: Per row, in report order, its complete paired differences so far (variant
            minus baseline, in repeat order). Only complete pairs: when a baseline repeat is
            missing, the caller queues it and leaves that repeat out until it finishes.
        state: What the previous look returned (JSON-serialisable), None at the first look.

    Returns:
        Per row its :class:`RowResult` (stopped rows as they were at their stopping look),
        and the state to record for the next look.

    Raises:
        ValueError: The state is of another rule or other rows, or an open row has more
            than ``max_repeats`` differences.
    """
    names = list(diffs)
    m = len(names)
    state = dict(state or {})
    if state:
        if state.get("rule") != rule.to_record():
            recorded = Rule.from_record(state["rule"])
            changed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in recorded.differences(rule))
            raise ValueError(f"state was recorded under another rule ({changed})")
        if state.get("rows") != names:
            raise ValueError(f"state holds rows {state.get('rows')}, asked for {names}")
    stopped = {k: RowResult.from_record(v) for k, v in (state.get("stopped") or {}).items()}
    tab = _tables(rule, m)
    fam = _Family.empty(1, m)
    fam.rejected[0] = int(state.get("rejected", 0))
    fam.p_max[0] = float(state.get("p_max") or 0.0)
    n, mean, sd = np.zeros((1, m), int), np.full((1, m), NAN), np.full((1, m), NAN)
    for i, name in enumerate(names):
        if name in stopped:
            fam.code[0, i] = _BETTER  # any stopped code: the step leaves it alone
            continue
        n[0, i], mean[0, i], sd[0, i] = _differences_stats(diffs[name])
        if n[0, i] > rule.max_repeats:
            raise ValueError(
                f"row {name!r}: {n[0, i]} differences, max_repeats is {rule.max_repeats}"
            )
    _step(rule, tab, fam, n, mean, sd)
    p_est, p_low, p_high = _p_better(rule, tab, fam)
    results: dict[str, RowResult] = {}
    for i, name in enumerate(names):
        if name in stopped:
            results[name] = stopped[name]
            continue
        code = int(fam.code[0, i])
        row = RowResult(
            verdict=_WORD[code],
            stopped=_STOP[code],
            n=int(fam.n[0, i]),
            mean=float(fam.mean[0, i]),
            sd=float(fam.sd[0, i]),
            low=float(fam.low[0, i]),
            high=float(fam.high[0, i]),
            confidence=float(fam.confidence[0, i]),
            p_adjusted=float(fam.p_adj[0, i]),
            p_better=float(p_est[0, i]),
            p_better_low=float(p_low[0, i]),
            p_better_high=float(p_high[0, i]),
            level=rule.alpha / int(fam.share[0, i]),
            note=_note(rule, code, int(fam.n[0, i]), float(fam.sd[0, i])),
        )
        results[name] = row
        if row.stopped:
            stopped[name] = row
    held = rule.alpha / (m - int(fam.rejected[0])) if fam.rejected[0] < m else 0.0
    new_state = {
        "procedure": rule.procedure,
        "rule": rule.to_record(),
        "rows": names,
        "looks": int(state.get("looks", 0)) + 1,
        "rejected": int(fam.rejected[0]),
        "p_max": float(fam.p_max[0]),
        # Holm weights: every row not rejected holds the same share, futile ones included.
        "alpha_held": {k: (0.0 if results[k].verdict in (BETTER, WORSE) else held) for k in names},
        "stopped": {k: stopped[k].to_record() for k in names if k in stopped},
    }
    return results, new_state


def _note(rule: Rule, code: int, n: int, sd: float) -> str:
    if n < rule.min_repeats:
        return f"{rule.min_repeats - n} more complete pair(s) before the first look"
    if sd == 0:
        return NO_SPREAD
    if code == _NOEFF:
        return (
            f"{1 - 2 * rule.beta:.0%} repeated interval (each end a one-sided "
            f"{1 - rule.beta:.0%} bound) inside +/-{rule.delta:g}: no effect of that size"
        )
    if code == _EQUIV:
        return f"repeated interval inside +/-{rule.margin:g}"
    return ""


def claim(row: RowResult, published_diff: float) -> str:
    """The document's published difference against the row's interval.

    ``contradicted``: outside the interval (as a claim about the expected difference the data
    rule it out; one published run may still have seen it by seed luck). ``consistent``:
    inside the interval of a row that reached a verdict (better, worse, equivalent, no effect
    >= delta). ``open``: inside the interval of an undecided row, whose interval also holds 0,
    so the data cannot yet tell the published difference from none. ``""``: nothing published,
    or no interval yet.
    """
    if math.isnan(published_diff) or math.isnan(row.low) or math.isnan(row.high):
        return ""
    if not row.low <= published_diff <= row.high:
        return CONTRADICTED
    return CLAIM_OPEN if row.verdict == UNDECIDED else CONSISTENT


# -- simulation ----------------------------------------------------------------------------------


def _run(rule: Rule, tab: _Tables, diffs: np.ndarray) -> _Family:
    """Every look of many studies at once: ``diffs`` is (studies, rows, max_repeats)."""
    studies, m, _ = diffs.shape
    fam = _Family.empty(studies, m)
    for n in range(rule.min_repeats, rule.max_repeats + 1):
        d = diffs[:, :, :n]
        _step(rule, tab, fam, np.full((studies, m), n), d.mean(axis=2), d.std(axis=2, ddof=1))
        if not (fam.code == _OPEN).any():
            break
    return fam


def _estimate(values: np.ndarray) -> dict[str, float]:
    """Mean over studies (first axis) with its Monte Carlo standard error."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"estimate": NAN, "se": NAN}
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else NAN
    return {"estimate": float(v.mean()), "se": se}


def simulate(
    rule: Rule,
    effects: Sequence[float],
    spread: float,
    studies: int,
    seed: int,
    *,
    first_max: int | None = None,
    p_better_studies: int = 1000,
) -> dict[str, Any]:
    """Error rates, power and repeats of the rule on scripted studies where the truth is known.

    Each run's metric is its row's true effect (the baseline's is 0) plus independent normal
    seed noise of sd ``spread``; every row shares the baseline's runs (as in a study), so a
    paired difference has sd ``spread * sqrt(2)`` (no help from pairing: the hard case).

    Args:
        rule: The rule; ``max_repeats`` looks at most.
        effects: True difference of each row from the baseline, in metric units.
        spread: Seed standard deviation of one run's metric.
        studies: Simulated studies.
        seed: Of the simulation's random numbers.
        first_max: Simulate the old, unlocked behaviour instead: looks up to ``first_max``
            under boundaries planned for max_repeats = first_max, later ones under the rule's.
        p_better_studies: Studies on which the P(>) interval's coverage is measured (slow).

    Returns:
        Every figure as ``{"estimate", "se"}`` (Monte Carlo standard error over studies):
        ``fwer`` (any row with no effect called better or worse), per row ``rows[i]`` (power:
        the right verdict; repeats; each verdict's share), pooled ``null`` (repeats, shares)
        and ``at_delta`` (rows whose |effect| is delta: power, repeats, and the share stopped
        for futility, at most beta by design), ``coverage`` (repeated
        interval at the family level, the reported interval, the P(>) interval, at the
        stopping look), and ``runs`` (training runs per study, baseline included).
    """
    from scipy import special

    eff = np.asarray(effects, dtype=float)
    m, big = eff.size, rule.max_repeats
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, spread, (studies, 1, big))
    diffs = eff[None, :, None] + rng.normal(0.0, spread, (studies, m, big)) - base
    del base
    tab = _tables(rule, m) if first_max is None else _unlocked_tables(rule, m, first_max)
    fam = _run(rule, tab, diffs)
    code, n = fam.code, fam.n
    null = eff == 0
    wrong = np.isin(code, (_BETTER, _WORSE))
    right = np.where(rule.sign * eff > 0, code == _BETTER, code == _WORSE)
    k = np.clip(n - tab.lo, 0, tab.eff.shape[1] - 1)
    se = fam.sd / np.sqrt(n)
    half = tab.eff[tab.share[fam.share], k] * se
    in_rci = np.abs(fam.mean - eff) <= half
    in_reported = (fam.low <= eff) & (eff <= fam.high)
    runs = n.max(axis=1) + n.sum(axis=1)
    sub = slice(0, min(p_better_studies, studies))
    part = dataclasses.replace(
        fam, **{f: getattr(fam, f)[sub] for f in ("code", "n", "mean", "sd", "share")}
    )
    _, p_low, p_high = _p_better(rule, tab, part)
    truth = special.ndtr(rule.sign * eff / (spread * math.sqrt(2)))[None, :]
    in_p = (p_low <= truth) & (truth <= p_high)
    rows = []
    for i in range(m):
        shares = {
            _WORD[c] if c != _BUDGET else "budget spent": _estimate(code[:, i] == c)
            for c in (_BETTER, _WORSE, _EQUIV, _NOEFF, _BUDGET)
        }
        rows.append(
            {
                "effect": float(eff[i]),
                "power": _estimate(right[:, i]) if eff[i] else None,
                "repeats": _estimate(n[:, i]),
                "verdicts": shares,
            }
        )

    def pooled(mask: np.ndarray, values: np.ndarray) -> dict[str, float]:
        # Per-study mean over the selected rows: rows of one study are correlated.
        return _estimate(values[:, mask].mean(axis=1)) if mask.any() else _estimate(np.array([]))

    at_delta = np.isclose(np.abs(eff), rule.delta)
    return {
        "effects": eff.tolist(),
        "spread": spread,
        "studies": studies,
        "seed": seed,
        "first_max": first_max,
        "fwer": _estimate(wrong[:, null].any(axis=1)) if null.any() else _estimate(np.array([])),
        "rows": rows,
        "null": {
            "repeats": pooled(null, n),
            "no_effect": pooled(null, code == _NOEFF),
            "equivalent": pooled(null, code == _EQUIV),
            "undecided": pooled(null, code == _BUDGET),
            "better_or_worse": pooled(null, wrong),
        },
        "at_delta": {
            "power": pooled(at_delta, right),
            "repeats": pooled(at_delta, n),
            "no_effect": pooled(at_delta, code == _NOEFF),
        },
        "coverage": {
            "rci": _estimate(in_rci.mean(axis=1)),
            "reported": _estimate(in_reported.mean(axis=1)),
            "p_better": _estimate(in_p.mean(axis=1)),
        },
        "runs": _estimate(runs),
        "runs_exhaustive": (m + 1) * big,
    }
