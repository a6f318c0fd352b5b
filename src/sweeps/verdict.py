"""Verdicts of an ablation: every variant against the baseline, paired by seed.

Repeat r of every variant trains with seed ``seed + r``, as repeat r of the baseline does, so
the two runs share data order, augmentation stream and (where the architecture allows) the
initialisation. Each variant is compared with the baseline on the per-repeat differences:

- the mean difference with its 95% t interval (the decision's own procedure) and a
  ``scipy.stats.bootstrap`` interval beside it;
- the two-sided p-value of the paired t-test, Welch's test where a repeat the variant finished
  has no finished baseline partner;
- Holm's correction across the study's variants, per metric;
- two one-sided tests (TOST) against +/- ``report.margin`` for equivalence;
- P(A > B): the share of seeds on which the variant beats the baseline (Bouthillier et al.,
  "Accounting for Variance in Machine Learning Benchmarks", MLSys 2021);
- a verdict word, the repeats that would decide an open row, and whether the document's
  published difference is confirmed, contradicted or still open.

With ``sweep.repeats=auto`` every round is a look at the data: the decision level of a look at
n repeats comes from Lan-DeMets alpha spending with an O'Brien-Fleming-type function
(:func:`sequential_levels`), so that looking after every round does not inflate false findings.

The statistics are vectorised over leading axes (the last axis holds the variants, or the
repeats), so simulations of thousands of studies run the very functions the report uses.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from sweeps.errors import ConfigError

ALPHA = 0.05
DEFAULT_MARGIN = 0.01
DECISION_METRIC = "test_acc"  # the documents' headline number; what repeats=auto decides on
LOWER_IS_BETTER = frozenset({"test_loss", "val_loss", "train_loss"})
AUTO_ATTR = "sweeps.auto_repeats"  # study user attr: per variant, repeats held and why it stopped
RULE_KEY = "_rule"  # in that record: the min_repeats and max_repeats the study ran under

UNDECIDED, BETTER, WORSE, EQUIVALENT = "undecided", "better", "worse", "equivalent"
_WORDS = (UNDECIDED, BETTER, WORSE, EQUIVALENT)
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
    return _WORDS[int(code)]


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


# -- sequential looks ----------------------------------------------------------------------------


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


def level_function(cfg: Any) -> Callable[[int], float]:
    """The decision level of a look at n repeats: alpha for fixed repeats, else the schedule.

    nan below the repeats a row needs (2 for fixed repeats, ``sweep.min_repeats`` for auto).
    """
    sweep = cfg.sweep
    if getattr(sweep, "repeats", None) == "auto":
        low, high = int(sweep.min_repeats), int(sweep.max_repeats)
        levels = sequential_levels(low, high, ALPHA)
        return lambda n: NAN if n < low else levels[min(n, high)]
    return lambda n: NAN if n < 2 else ALPHA


def margin_of(cfg: Any) -> float:
    """``report.margin``: half-width of the equivalence band, in accuracy (0.01 = 1 point)."""
    value = (cfg.raw.get("report") or {}).get("margin", DEFAULT_MARGIN)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(
            f"report.margin={value!r}: must be a number > 0 and < 1 (accuracy, 0.01 = 1 point)"
        )
    return float(value)


# -- one study -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One variant against the baseline on one metric.

    Attributes:
        diff: Mean difference variant - baseline (paired: mean of per-seed differences).
        low, high: Its 95% t interval; boot_low, boot_high: the bootstrap interval.
        test: ``paired t`` or ``Welch`` (or ``""`` with too few runs).
        pairs: Seeds both sides finished (paired rows).
        p: Two-sided p-value; p_holm: Holm-adjusted across the study's variants.
        level: The decision level of this look (before Holm); nan with too few runs.
        p_better: P(variant beats baseline on a fresh seed), estimated.
        verdict: better, worse, equivalent or undecided.
        repeats_needed: For undecided rows, repeats that would decide at the observed spread.
        claim: confirmed, contradicted, open, or "" when nothing was published.
        note: Why a row is unpaired, has too few runs, or was decided at an earlier look.
    """

    variant: str
    metric: str
    n: int
    n_base: int
    test: str = ""
    pairs: int = 0
    diff: float = NAN
    low: float = NAN
    high: float = NAN
    boot_low: float = NAN
    boot_high: float = NAN
    p: float = NAN
    p_holm: float = NAN
    p_equiv_holm: float = NAN
    level: float = NAN
    p_better: float = NAN
    verdict: str = UNDECIDED
    repeats_needed: int | None = None
    published: float = NAN
    published_diff: float = NAN
    claim: str = ""
    note: str = ""
    sd: float = field(default=NAN, repr=False)


def compare_study(
    values: Mapping[str, Mapping[int, float]],
    metric: str,
    *,
    baseline: str = "baseline",
    margin: float | None = DEFAULT_MARGIN,
    level_of: Callable[[int], float] = lambda n: ALPHA if n >= 2 else NAN,
    published: Mapping[str, float] | None = None,
    decided: Mapping[str, str] | None = None,
    bootstrap: bool = True,
) -> dict[str, Verdict]:
    """Verdicts of every variant against the baseline on one metric.

    Args:
        values: Per variant (in report order), the metric of each finished repeat.
        metric: Its name; losses count lower as better.
        baseline: The baseline's name in ``values``.
        margin: Equivalence band half-width; None for no equivalence (losses).
        level_of: Decision level of a look at n repeats (nan: too few to decide).
        published: The document's number per variant.
        decided: Verdicts already reached at an earlier look (repeats=auto): they stand.
        bootstrap: Also compute the bootstrap intervals (off in the round decisions).

    Returns:
        One :class:`Verdict` per variant other than the baseline, in order.
    """
    lower = metric in LOWER_IS_BETTER
    published = published or {}
    decided = decided or {}
    base = dict(values.get(baseline, {}))
    names = [v for v in values if v != baseline]
    rows: list[dict[str, Any]] = []
    means, ses, dfs, levels = [], [], [], []
    for name in names:
        mine = dict(values[name])
        common = sorted(set(mine) & set(base))
        lone = sorted(set(mine) - set(base))
        row: dict[str, Any] = {"variant": name, "metric": metric, "n": len(mine)}
        row["n_base"] = len(base)
        s, n_look = None, 0
        if not lone and len(common) >= 2:
            a, b = [mine[r] for r in common], [base[r] for r in common]
            d = np.subtract(a, b)
            s, n_look = paired_stats(d), len(common)
            row.update(test="paired t", pairs=len(common), sd=float(np.std(d, ddof=1)))
        elif len(mine) >= 2 and len(base) >= 2:
            a, b = list(mine.values()), list(base.values())
            s, n_look = welch_stats(a, b), min(len(a), len(b))
            row.update(test="Welch", pairs=len(common), sd=float(s.se) * math.sqrt(n_look / 2))
            row["note"] = f"unpaired: no finished baseline run for repeat {_listed(lone)}"
        else:
            a = b = []
            row["note"] = f"too few finished runs ({len(mine)} here, {len(base)} baseline)"
        level = level_of(n_look) if s is not None else NAN
        if s is not None and math.isnan(level):
            row["note"] = f"too few finished repeats to decide ({n_look})"
        if s is not None:
            low, high = t_interval(s)
            row.update(diff=float(s.mean), low=float(low), high=float(high))
            row["p_better"] = p_better(a, b, row["test"] == "paired t", lower)
            if bootstrap:
                row["boot_low"], row["boot_high"] = bootstrap_interval(
                    a, b, row["test"] == "paired t"
                )
        rows.append(row)
        means.append(float(s.mean) if s is not None else NAN)
        ses.append(float(s.se) if s is not None else NAN)
        dfs.append(float(s.df) if s is not None else NAN)
        levels.append(level)
    if not rows:
        return {}
    stats_ = TStats(np.array(means), np.array(ses), np.array(dfs))
    found = decide(stats_, np.array(levels), margin, lower)
    factors = holm_factor(found.p)
    out: dict[str, Verdict] = {}
    for i, row in enumerate(rows):
        verdict = word(found.code[i])
        if row["variant"] in decided and decided[row["variant"]] != UNDECIDED:
            if verdict != decided[row["variant"]]:
                row["note"] = "; ".join(
                    x for x in (row.get("note"), "decided at an earlier look") if x
                )
            verdict = decided[row["variant"]]
        needed = None
        if verdict == UNDECIDED and not math.isnan(factors[i]):
            needed = repeats_needed(
                row["diff"], row.get("sd", NAN), levels[i] / factors[i], margin,
                paired=row["test"] == "paired t",
            )  # fmt: skip
        pub = float(published.get(row["variant"], NAN))
        pub_diff = pub - float(published.get(baseline, NAN))
        out[row["variant"]] = Verdict(
            **row,
            p=float(found.p[i]),
            p_holm=float(found.p_holm[i]),
            p_equiv_holm=float(found.p_equiv_holm[i]),
            level=float(levels[i]),
            verdict=verdict,
            repeats_needed=needed,
            published=pub,
            published_diff=pub_diff,
            claim=claim(verdict, pub_diff, margin, lower),
        )
    return out


def _listed(repeats: Sequence[int]) -> str:
    return ", ".join(str(r) for r in repeats)


def finished_values(
    trials: Sequence[Any], metric: str, names: Sequence[str]
) -> dict[str, dict[int, float]]:
    """Per variant (``names`` first, in order, then any other), the metric of each COMPLETE
    repeat; a repeat finished twice (two workers raced) counts once, the lower trial number."""
    from sweeps.lifecycle import REPEAT_PARAM, VARIANT_PARAM

    out: dict[str, dict[int, float]] = {name: {} for name in names}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state.name != "COMPLETE" or t.user_attrs.get("sweeps.spurious"):
            continue
        name, repeat = t.params.get(VARIANT_PARAM), t.params.get(REPEAT_PARAM)
        if name is None or metric not in t.user_attrs:
            continue
        out.setdefault(name, {}).setdefault(int(repeat), float(t.user_attrs[metric]))
    return out


def verdicts_for_study(
    cfg: Any,
    trials: Sequence[Any],
    metric: str = DECISION_METRIC,
    decided: Mapping[str, str] | None = None,
    bootstrap: bool = True,
) -> dict[str, Verdict]:
    """Verdicts of a study's ablation variants on one metric, as ``report`` prints them.

    Args:
        cfg: The validated :class:`sweeps.config.RunConfig` (variants, sweep.repeats, margin).
        trials: The study's trials (``study.get_trials()``); others than ablation are ignored.
        metric: ``test_acc`` (the default and the decision metric), ``val_acc``, ``test_loss``...
        decided: Verdicts that stand from an earlier look (repeats=auto); by default the ones
            recorded in the study, when the caller passes them from ``decided_verdicts``.
        bootstrap: Also compute the bootstrap intervals.

    Returns:
        Variant name -> :class:`Verdict`, for every variant but the baseline.
    """
    names = [v.name for v in cfg.variants]
    values = finished_values(trials, metric, names)
    baseline = names[0] if names else "baseline"
    return compare_study(
        values,
        metric,
        baseline=baseline,
        margin=margin_of(cfg) if metric.endswith("_acc") else None,
        level_of=level_function(cfg),
        published={v.name: v.published.get(metric, NAN) for v in cfg.variants},
        decided=decided if metric == DECISION_METRIC else None,
        bootstrap=bootstrap,
    )


def decided_verdicts(record: Mapping[str, Any] | None) -> dict[str, str]:
    """The verdicts repeats=auto stopped on, from the study's ``AUTO_ATTR`` record."""
    return {
        name: str(entry.get("verdict"))
        for name, entry in (record or {}).items()
        if isinstance(entry, Mapping) and entry.get("stopped") == "decided"
    }


# -- repeats=auto ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoPlan:
    """The next round of a repeats=auto ablation.

    Attributes:
        enqueue: ``(variant, repeat)`` to queue now (the baseline's included).
        record: Per variant: ``repeats`` it holds (with this round), ``finished`` runs,
            ``stopped`` (``decided``, ``budget spent``, or ``""`` while open), ``verdict``
            and ``at`` (the repeats it was decided at).
        open: Variants still undecided.
    """

    enqueue: list[tuple[str, int]]
    record: dict[str, dict[str, Any]]
    open: list[str]


def held_repeats(trials: Sequence[Any]) -> tuple[dict[str, set[int]], set[str]]:
    """Per variant, the repeats the study holds in any state (not failed trials already
    retried, nor dropped duplicates); and the variants with a trial waiting or running."""
    from sweeps.lifecycle import ablation_key
    from sweeps.storage import replaced_numbers

    retried = replaced_numbers(trials)
    held: dict[str, set[int]] = {}
    unfinished: set[str] = set()
    for t in trials:
        if t.user_attrs.get("sweeps.spurious") or t.number in retried:
            continue
        name, repeat = ablation_key(t)
        if name is None or repeat is None:
            continue
        held.setdefault(name, set()).add(int(repeat))
        if t.state.name in ("WAITING", "RUNNING"):
            unfinished.add(name)
    return held, unfinished


def auto_plan(cfg: Any, trials: Sequence[Any], record: Mapping[str, Any] | None = None) -> AutoPlan:
    """What repeats=auto does after a round: who gets another repeat, who stopped and why.

    A variant stops once its verdict on :data:`DECISION_METRIC` is reached (it then stands,
    whatever later rounds of other variants do to Holm's correction) or once it holds
    ``sweep.max_repeats`` repeats. Every open variant gets its lowest repeat index not yet
    held; the baseline gets every index an open variant gets, so the pairs stay complete.
    """
    names = [v.name for v in cfg.variants]
    if not names:
        return AutoPlan([], {}, [])
    base, budget = names[0], int(cfg.sweep.max_repeats)
    held, unfinished = held_repeats(trials)
    record = dict(record or {})
    verdicts = verdicts_for_study(
        cfg, trials, DECISION_METRIC, decided_verdicts(record), bootstrap=False
    )
    enqueue: list[tuple[str, int]] = []
    out: dict[str, dict[str, Any]] = {}
    still_open: list[str] = []
    for name in names[1:]:
        v, got = verdicts[name], held.get(name, set())
        before = record.get(name) if isinstance(record.get(name), Mapping) else {}
        entry = {"repeats": len(got), "finished": v.n, "verdict": v.verdict, "stopped": ""}
        if v.verdict != UNDECIDED:
            decided_before = before.get("stopped") == "decided"
            entry.update(stopped="decided", at=before.get("at") if decided_before else v.pairs)
        elif len(got) >= budget:
            entry["stopped"] = "budget spent"
        else:
            still_open.append(name)
            if name not in unfinished:
                repeat = min(set(range(budget)) - got)
                enqueue.append((name, repeat))
                entry["repeats"] += 1
        out[name] = entry
    base_got = held.get(base, set())
    needed = sorted({r for _, r in enqueue} - base_got)
    enqueue = [(base, r) for r in needed] + enqueue
    finished_base = len(finished_values(trials, DECISION_METRIC, [base]).get(base, {}))
    out[base] = {
        "repeats": len(base_got) + len(needed),
        "finished": finished_base,
        "verdict": "baseline",
        "stopped": "" if still_open else "every variant stopped",
    }
    record_out: dict[str, Any] = {name: out[name] for name in names}
    # The rule this study runs under, so `report` computes the same levels without being told.
    record_out[RULE_KEY] = {"min_repeats": cfg.sweep.min_repeats, "max_repeats": budget}
    return AutoPlan(enqueue, record_out, still_open)


def with_recorded_rule(cfg: Any, record: Mapping[str, Any] | None) -> Any:
    """``cfg`` with the repeats=auto rule a study recorded, so its verdicts use the levels of
    the looks it really took, whatever ``sweep.repeats`` the caller passed; else ``cfg``."""
    import dataclasses

    rule = (record or {}).get(RULE_KEY)
    if not isinstance(rule, Mapping):
        return cfg
    sweep = dataclasses.replace(
        cfg.sweep,
        repeats="auto",
        min_repeats=int(rule["min_repeats"]),
        max_repeats=int(rule["max_repeats"]),
    )
    return dataclasses.replace(cfg, sweep=sweep)
