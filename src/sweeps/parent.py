"""The study's summary on its MLflow parent run, so the UI shows the answer at first glance.

Recomputed from the Optuna study every time a worker stops, so whichever worker finishes the
study last writes the final numbers, and writing them twice changes nothing.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sweeps.config import RunConfig
from sweeps.errors import one_line
from sweeps.keys import REPEAT_PARAM, VARIANT_PARAM
from sweeps.stats.summary import mean_ci

TEST_METRICS = ("test_acc", "test_loss", "test_macro_f1")

log = logging.getLogger("sweeps.engine")


@dataclass
class StudySummary:
    """What the parent run carries: metrics, the best trial's parameters, tags."""

    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def summarize(
    trials: Sequence[Any], metric: str, maximize: bool, variants: Sequence[str] = ()
) -> StudySummary:
    """The summary of the study's counted trials (retried and surplus ones left out).

    Args:
        trials: Optuna frozen trials of this mode.
        metric: The optimised metric (``sweep.metric``).
        maximize: Whether a higher ``metric`` is better.
        variants: Ablation variant names, in the study's order; empty for a search.
    """
    counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
    for t in trials:
        if t.state.name in counts:
            counts[t.state.name] += 1
    out = StudySummary(
        metrics={
            "trials_complete": counts["COMPLETE"],
            "trials_pruned": counts["PRUNED"],
            "trials_failed": counts["FAIL"],
        }
    )
    complete = [t for t in trials if t.state.name == "COMPLETE" and _finite(t.value)]
    if complete:
        best = (max if maximize else min)(complete, key=lambda t: (t.value, -t.number))
        out.metrics[f"best_{metric}"] = float(best.value)
        out.metrics["best_trial"] = best.number
        for key in TEST_METRICS:
            if _finite(best.user_attrs.get(key)):
                out.metrics[f"best_{key}"] = float(best.user_attrs[key])
        out.params = {f"best.{k}": v for k, v in best.params.items()}
        out.tags["sweeps.best_trial"] = str(best.number)
    out.tags["mlflow.note.content"] = _description(out.metrics, metric, variants)
    for name in variants:
        values = [
            float(t.user_attrs["test_acc"])
            for t in complete
            if t.params.get(VARIANT_PARAM) == name and _finite(t.user_attrs.get("test_acc"))
        ]
        if not values:
            continue
        mean, low, high = mean_ci(values)
        key = metric_name(name)
        out.metrics[f"{key}.runs"] = len(values)
        out.metrics[f"{key}.test_acc_mean"] = mean
        out.metrics[f"{key}.test_acc_ci_low"] = low  # nan below 2 runs: not logged
        out.metrics[f"{key}.test_acc_ci_high"] = high
    return out


def view_columns(metric: str, variants: Sequence[str], params: Sequence[str]) -> list[str]:
    """The runs-table columns of the study's saved MLflow view, in order.

    The parent run and its trials share ``best_<metric>`` (the study's best trial on the
    parent, each trial's best epoch on the trials); then the parent's best-trial test metric and
    counts, the trials' test accuracy, and for an ablation the variant and repeat of each trial
    and the parent's per-variant means, for a search the parameters that vary.
    """

    def col(kind: str, key: str) -> str:  # the UI's column key
        return f"{kind}.`{key}`"

    columns = [col("metrics", f"best_{metric_name(metric)}")]
    columns += [col("metrics", k) for k in ("best_test_acc", "test_acc", "best_trial")]
    columns += [col("metrics", f"trials_{state}") for state in ("complete", "pruned", "failed")]
    if variants:
        columns += [col("params", VARIANT_PARAM), col("params", REPEAT_PARAM)]
        columns += [col("metrics", f"{metric_name(name)}.test_acc_mean") for name in variants]
    else:
        columns += [col("params", name) for name in params]
    return columns


def _description(metrics: dict[str, float], metric: str, variants: Sequence[str]) -> str:
    """The run's Description in the MLflow UI: what the parent and its child runs are."""
    counts = (
        f"{metrics['trials_complete']} complete, {metrics['trials_pruned']} pruned, "
        f"{metrics['trials_failed']} failed"
    )
    lines = [f"Study summary ({counts}). Each child run is one trial."]
    if "best_trial" in metrics:
        best = f"Best trial: {int(metrics['best_trial'])}, {metric} {metrics[f'best_{metric}']:.4f}"
        if "best_test_acc" in metrics:
            best += f", test_acc {metrics['best_test_acc']:.4f}"
        lines.append(best + " (metrics `best_*`, parameters `best.*`).")
    if variants:
        lines.append(
            "Ablation: per variant `VARIANT.test_acc_mean` with its 95% interval "
            "(`_ci_low`, `_ci_high`); group the child runs by `ablation.variant`."
        )
    return "\n\n".join(lines)


def metric_name(text: str) -> str:
    """``text`` with what MLflow refuses in a metric name (``=``, ``,``, ...) made ``_``."""
    return re.sub(r"[^\w.\- /]", "_", text)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def write_summary(
    tracker: Any,
    parent_run: str,
    cfg: RunConfig,
    counted: Sequence[Any],
    state: str,
    end: str | None,
    *,
    maximize: bool,
) -> str:
    """Writes the summary of the counted trials on the parent run, saves the study's view of
    the runs table, and ends the run with status ``end`` (None: left running); returns the
    view's key ("" when MLflow refused: the study's results are in Optuna whatever it says).
    """
    variants = [v.name for v in cfg.variants] if cfg.sweep.mode == "ablation" else []
    result = summarize(counted, cfg.sweep.metric, maximize, variants)
    try:
        tracker.summarize_run(parent_run, result.metrics, result.params,
                              {**result.tags, "sweeps.state": state})  # fmt: skip
        names = [k.removeprefix("best.") for k in result.params]
        key = tracker.save_view(
            f"{cfg.sweep.name}-{cfg.sweep.mode}",
            view_columns(cfg.sweep.metric, variants, names),
        )
        if end is not None:
            tracker.end_run(parent_run, end)
        return key
    except Exception as exc:
        log.warning("could not write the study's summary to MLflow: %s", one_line(exc))
        return ""
