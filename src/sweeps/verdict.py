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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sweeps.keys import REPEAT_PARAM, SPURIOUS_ATTR, VARIANT_PARAM
from sweeps.stats.paired import (  # noqa: F401  (re-exported: the verdict words)
    ALPHA,
    BETTER,
    CONFIRMED,
    CONTRADICTED,
    EQUIVALENT,
    NAN,
    OPEN,
    UNDECIDED,
    WORSE,
    TStats,
    bootstrap_interval,
    claim,
    decide,
    holm_factor,
    p_better,
    paired_stats,
    repeats_needed,
    t_interval,
    welch_stats,
    word,
)
from sweeps.stats.sequential import sequential_levels

DEFAULT_MARGIN = 0.01
DECISION_METRIC = "test_acc"  # the documents' headline number; what repeats=auto decides on
LOWER_IS_BETTER = frozenset({"test_loss", "val_loss", "train_loss"})


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
    out: dict[str, dict[int, float]] = {name: {} for name in names}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state.name != "COMPLETE" or t.user_attrs.get(SPURIOUS_ATTR):
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
        margin=cfg.report.margin if metric.endswith("_acc") else None,
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
