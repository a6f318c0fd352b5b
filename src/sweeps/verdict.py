"""Verdicts of an ablation: every variant against the baseline, paired by seed, under a rule
fixed before the data.

Repeat r of every variant trains with seed ``seed + r``, as repeat r of the baseline does, so
the two runs share data order, augmentation stream and (where the architecture allows) the
initialisation. Each variant is compared with the baseline on its complete pairs only. A
row that sets ``seed`` itself trains with that seed + r: the baseline again under other
luck, a row with no real effect by construction (a null control).

- The **decision rule** (:class:`sweeps.stats.design.Rule`: the metric, alpha, margin, delta,
  min and max repeats, the spending functions, the procedure) is built from the config at the
  study's first ``run`` and recorded in the study (``sweeps.rule``); every later ``run``,
  ``report`` and worker decides under the recorded rule, and a command whose config asks for
  another is refused with one line naming the key (:func:`settle_rule`).
- On the decision metric, :func:`sweeps.stats.design.look` decides every row at once, with
  family-wise error control across rows and looks, non-binding futility stops at delta,
  repeated confidence intervals, adjusted p-values and P(variant > baseline) with its interval.
- The other metrics are described, not decided: each row's mean paired difference, its 95%
  t interval and unadjusted p-value, for reading beside the decision.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeps.config import RunConfig
from sweeps.errors import ConfigError, StudyMismatch
from sweeps.keys import RULE_ATTR, SPURIOUS_ATTR, ablation_key, replaced_numbers
from sweeps.stats.design import RowResult, Rule, claim, look
from sweeps.stats.paired import (
    BETTER,
    CONFIRMED,
    CONTRADICTED,
    EQUIVALENT,
    NAN,
    OPEN,
    UNDECIDED,
    WORSE,
    bootstrap_interval,
    p_better,
    p_two_sided,
    paired_stats,
    repeats_needed,
    t_interval,
)

__all__ = [
    "BETTER",
    "CONFIRMED",
    "CONTRADICTED",
    "EQUIVALENT",
    "OPEN",
    "UNDECIDED",
    "WORSE",
    "RuleMismatch",
    "Verdict",
    "measure",
    "paired_values",
    "rule_of",
    "settle_rule",
    "verdicts_for_study",
]

LOWER_IS_BETTER = frozenset({"test_loss", "val_loss", "train_loss"})
# The config key behind each field of the rule, for the one-line refusal.
RULE_KEYS = {
    "metric": "report.metric",
    "direction": "report.metric",
    "alpha": "report.alpha",
    "margin": "report.margin",
    "delta": "report.delta",
}
_LAST_K = re.compile(r"^(?P<base>\w+?)_last(?P<k>\d+)$")


class RuleMismatch(ConfigError):
    """The config asks for another decision rule than the study recorded at its first run."""


def lower_is_better(metric: str) -> bool:
    base = _LAST_K.match(metric)
    return (base.group("base") if base else metric) in LOWER_IS_BETTER


def rule_of(cfg: RunConfig) -> Rule | None:
    """The decision rule the config asks for; None with a single repeat (nothing to test)."""
    sweep = cfg.sweep
    low, high = (
        (sweep.min_repeats, sweep.max_repeats) if sweep.auto_repeats else (sweep.repeats,) * 2
    )
    if int(high) < 2:
        return None
    metric = cfg.report.metric
    try:
        return Rule(
            metric=metric,
            direction="minimize" if lower_is_better(metric) else "maximize",
            alpha=cfg.report.alpha,
            margin=cfg.report.margin,
            delta=cfg.report.delta,
            min_repeats=int(low),
            max_repeats=int(high),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _key(field: str, cfg: RunConfig) -> str:
    if field in RULE_KEYS:
        return RULE_KEYS[field]
    if field in ("min_repeats", "max_repeats"):
        return f"sweep.{field}" if cfg.sweep.auto_repeats else "sweep.repeats"
    return field


def settle_rule(study: Any, cfg: RunConfig, *, record: bool) -> Rule | None:
    """The study's decision rule: the recorded one, or (first run) the config's, recorded.

    Args:
        study: The Optuna study.
        cfg: The validated config of this command.
        record: Record the config's rule when the study has none (``run``); ``report`` only
            reads.

    Raises:
        RuleMismatch: one line naming the first differing key, the recorded value, the asked
            one and the ways out, when the study recorded another rule.
    """
    asked = rule_of(cfg)
    stored = study.user_attrs.get(RULE_ATTR)
    if stored is None:
        if record and asked is not None:
            study.set_user_attr(RULE_ATTR, asked.to_record())
        return asked
    try:
        recorded = Rule.from_record(stored)
    except (ValueError, TypeError) as exc:
        raise RuleMismatch(
            f"study '{cfg.sweep.name}' recorded a decision rule this version of sweeps cannot "
            f"read ({exc}); report it with the version that ran it, or start a new sweep.name"
        ) from None
    if asked is None:
        raise RuleMismatch(
            f"sweep.repeats={cfg.sweep.repeats}: study '{cfg.sweep.name}' recorded a rule of "
            f"{recorded.min_repeats} to {recorded.max_repeats} repeats at its first run; "
            f"give the same repeats, or start a new sweep.name"
        )
    changed = recorded.differences(asked)
    if changed:
        field, was, now = changed[0]
        key = _key(field, cfg)
        raise RuleMismatch(
            f"{key}={now} asks for another decision rule than study '{cfg.sweep.name}' "
            f"recorded at its first run ({field} {was}): run it with the recorded value, or "
            f"start a new study with sweep.name=NEW"
        )
    return recorded


# -- the values ------------------------------------------------------------------------------


def measure(trial: Any, metric: str) -> float:
    """A finished trial's value of ``metric``: a recorded metric (``test_acc``), or
    ``METRIC_lastK``, the mean of the last K epochs' METRIC from its history."""
    found = _LAST_K.match(metric)
    if found and metric not in trial.user_attrs:
        history = trial.user_attrs.get("history") or []
        values = [float(h[found["base"]]) for h in history if found["base"] in h]
        k = int(found["k"])
        return float(np.mean(values[-k:])) if len(values) >= k else NAN
    value = trial.user_attrs.get(metric)
    return NAN if value is None else float(value)


def paired_values(
    trials: Sequence[Any], metric: str, names: Sequence[str]
) -> dict[str, dict[int, float]]:
    """Per variant (``names`` first, in order), the metric of each COMPLETE repeat; a repeat
    finished twice (two workers raced) counts once, the lower trial number."""
    retried = replaced_numbers(trials)
    out: dict[str, dict[int, float]] = {name: {} for name in names}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state.name != "COMPLETE" or t.user_attrs.get(SPURIOUS_ATTR) or t.number in retried:
            continue
        name, repeat = ablation_key(t)
        if name is None or repeat is None:
            continue
        value = measure(t, metric)
        if not math.isnan(value):
            out.setdefault(name, {}).setdefault(int(repeat), value)
    return out


def pair_differences(values: Mapping[str, Mapping[int, float]], baseline: str,
                     rows: Sequence[str]) -> dict[str, list[float]]:  # fmt: skip
    """Each row's differences to the baseline on the repeats both finished, in repeat order."""
    base = values.get(baseline, {})
    return {
        row: [values[row][r] - base[r] for r in sorted(set(values.get(row, {})) & set(base))]
        for row in rows
    }


# -- one study's rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One variant against the baseline on one metric.

    On the decision metric (``decision``) the fields come from the recorded rule's look: the
    verdict, why the row stopped, the repeated confidence interval (``low``, ``high`` at
    ``confidence``), the family-adjusted p-value and P(variant > baseline) with its interval.
    On the other metrics they describe: a 95% t interval and the unadjusted p-value, no verdict.

    Attributes:
        diff: Mean of the per-seed differences variant - baseline; pairs: how many.
        boot_low, boot_high: A bootstrap interval of the mean difference (shown, not decided).
        p: The unadjusted paired t p-value (descriptive metrics); p_adjusted: the family's.
        level: The share of the family's alpha the row holds (decision metric).
        published_diff: The document's difference; claim: consistent, contradicted, open.
    """

    variant: str
    metric: str
    decision: bool = False
    pairs: int = 0
    diff: float = NAN
    sd: float = NAN
    low: float = NAN
    high: float = NAN
    confidence: float = NAN
    boot_low: float = NAN
    boot_high: float = NAN
    p: float = NAN
    p_adjusted: float = NAN
    level: float = NAN
    p_better: float = NAN
    p_better_low: float = NAN
    p_better_high: float = NAN
    verdict: str = ""
    stopped: str = ""
    repeats_needed: int | None = None
    published_diff: float = NAN
    claim: str = ""
    note: str = ""


def check_rows(state: Mapping[str, Any] | None, rows: Sequence[str], name: str) -> None:
    """Refuses rows other than those repeats=auto's looks were taken over.

    The family-wise rule splits alpha over the rows it started with: a row added or removed
    mid-study would change every row's share after the data were seen.

    Raises:
        StudyMismatch: ``state`` holds other rows than ``rows``.
    """
    held = list((state or {}).get("rows") or [])
    if held and held != list(rows):
        raise StudyMismatch(
            f"study '{name}' took its repeats=auto looks over the rows {', '.join(held)}; "
            f"this config has {', '.join(rows) or 'none'}: the error control covers the rows "
            "it started with, so run the changed rows as a new study (another sweep.name=...)"
        )


def verdicts_for_study(
    cfg: RunConfig,
    trials: Sequence[Any],
    metric: str,
    rule: Rule | None,
    state: Mapping[str, Any] | None = None,
    bootstrap: bool = True,
) -> dict[str, Verdict]:
    """Every variant but the baseline on ``metric``, as ``report`` prints them.

    Args:
        cfg: The validated config (its variants and their published numbers).
        trials: The study's trials; others than ablation are ignored.
        metric: The decision metric (``rule.metric``) is decided; any other is described.
        rule: The study's recorded rule (:func:`settle_rule`); None: nothing is decided.
        state: The look state recorded by repeats=auto (its stopped rows stand).
        bootstrap: Also compute the bootstrap intervals.
    """
    names = [v.name for v in cfg.variants]
    if len(names) < 2:
        return {}
    baseline, rows = names[0], names[1:]
    values = paired_values(trials, metric, names)
    diffs = pair_differences(values, baseline, rows)
    published = {v.name: v.published.get(metric, NAN) for v in cfg.variants}
    pub_diff = {r: float(published[r]) - float(published[baseline]) for r in rows}
    boots = {
        r: bootstrap_interval(d, [0.0] * len(d), paired=True) if bootstrap else (NAN, NAN)
        for r, d in diffs.items()
    }
    if rule is not None and metric == rule.metric:
        check_rows(state, rows, cfg.sweep.name)
        results, _ = look(rule, diffs, state)
        return {r: _decided(r, metric, results[r], boots[r], pub_diff[r], rule) for r in rows}
    return {r: _described(r, metric, diffs[r], boots[r], pub_diff[r]) for r in rows}


def _decided(name: str, metric: str, row: RowResult, boot: tuple[float, float],
             published_diff: float, rule: Rule) -> Verdict:  # fmt: skip
    needed = None
    if row.verdict == UNDECIDED and row.n >= 2 and row.sd and not math.isnan(row.sd):
        needed = repeats_needed(row.mean, row.sd, row.level, rule.margin)
    return Verdict(
        variant=name, metric=metric, decision=True, pairs=row.n, diff=row.mean, sd=row.sd,
        low=row.low, high=row.high, confidence=row.confidence, boot_low=boot[0],
        boot_high=boot[1], p_adjusted=row.p_adjusted, level=row.level, p_better=row.p_better,
        p_better_low=row.p_better_low, p_better_high=row.p_better_high, verdict=row.verdict,
        stopped=row.stopped, repeats_needed=needed, published_diff=published_diff,
        claim=claim(row, published_diff), note=row.note,
    )  # fmt: skip


def _described(name: str, metric: str, d: Sequence[float], boot: tuple[float, float],
               published_diff: float) -> Verdict:  # fmt: skip
    if len(d) < 2:
        note = f"{len(d)} complete pair(s)" if d else "no complete pair yet"
        return Verdict(variant=name, metric=metric, pairs=len(d),
                       diff=float(np.mean(d)) if d else NAN, published_diff=published_diff,
                       note=note)  # fmt: skip
    s = paired_stats(d)
    low, high = t_interval(s)
    lower = lower_is_better(metric)
    return Verdict(
        variant=name, metric=metric, pairs=len(d), diff=float(s.mean),
        sd=float(np.std(d, ddof=1)), low=float(low), high=float(high), confidence=0.95,
        boot_low=boot[0], boot_high=boot[1], p=float(p_two_sided(s)),
        p_better=p_better(d, [0.0] * len(d), paired=True, lower_is_better=lower),
        published_diff=published_diff,
    )  # fmt: skip
