"""The ablation half of `report`: one row per variant, beside the document's numbers.

Each row: runs finished out of the repeats the study holds, mean and 95% confidence interval of
test accuracy, validation accuracy and test loss, the difference to the baseline with Welch's
t-test, the parameter count and the published numbers; printed, and written as CSV, Markdown
and a PNG (test accuracy with intervals and published markers, mean learning curves).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from sweeps.config import RunConfig, Variant
from sweeps.engine import REPEAT_PARAM, RUN_ID_ATTR, VARIANT_PARAM
from sweeps.report_files import number, pyplot, write_csv
from sweeps.stats import NAN, mean_curve, variant_stats

METRICS = ("test_acc", "val_acc", "test_loss", "train_acc")  # all in the CSV
SHOWN = ("test_acc", "val_acc", "test_loss")  # printed and in the Markdown
LABELS = {
    "test_acc": "test acc",
    "val_acc": "val acc",
    "test_loss": "test loss",
    "train_acc": "train acc",
}


def report_ablation(
    cfg: RunConfig, trials: list[Any], out: Path, console: Console, tracker: Any | None
) -> list[tuple[Path, str]]:
    """The per-variant table, printed and written as CSV, Markdown and PNG."""
    runs = variant_runs(trials, cfg.variants)
    rows = ablation_rows(runs)
    curves = {r.variant.name: mean_curve(_val_curves(r.complete, tracker)) for r in runs}
    title = f"ablation of {cfg.sweep.name}: test metrics of each run's best-val_acc epoch"
    console.print(_rich_table(title, rows))
    _legend_lines(rows, console.print)
    paths = [
        write_csv(rows, out / "ablation.csv"),
        write_markdown(title, rows, out / "ablation.md"),
        plot_ablation(rows, curves, out / "ablation.png"),
    ]
    return [(p, "report") for p in paths]


def _val_curves(trials: Sequence[Any], tracker: Any | None) -> list[list[float]]:
    curves = []
    for t in trials:
        history = t.user_attrs.get("history")
        if history:
            curves.append([h.get("val_acc", NAN) for h in history])
        elif tracker is not None and t.user_attrs.get(RUN_ID_ATTR):
            curves.append(
                [v for _, v in tracker.metric_history(t.user_attrs[RUN_ID_ATTR], "val_acc")]
            )
    return curves


@dataclass
class VariantRuns:
    """The trials one ablation variant has in the study.

    Attributes:
        repeats: Distinct repeats the study holds for it (queued, running or finished).
        complete: Its COMPLETE trials.
        pending: Count of its other trials by state name (RUNNING, WAITING, FAIL, PRUNED).
        reasons: Why its pruned or failed trials ended.
    """

    variant: Variant
    repeats: int = 0
    complete: list[Any] = field(default_factory=list)
    pending: Counter = field(default_factory=Counter)
    reasons: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``done``, ``not run``, or what is left, e.g. ``1 running, 1 waiting``."""
        if not self.repeats:
            return "not run"
        parts = [f"{n} {state.lower()}" for state, n in sorted(self.pending.items())]
        return ", ".join(parts) if parts else "done"


def ablation_key(trial: Any) -> tuple[str | None, int | None]:
    """``(variant, repeat)`` of an ablation trial, queued ones included; (None, None) otherwise."""
    queued = trial.system_attrs.get("fixed_params") or {}  # a waiting trial has no params yet
    params = trial.params if VARIANT_PARAM in trial.params else queued
    return params.get(VARIANT_PARAM), params.get(REPEAT_PARAM)


def variant_runs(trials: Sequence[Any], variants: Sequence[Variant]) -> list[VariantRuns]:
    """Groups ablation trials by variant: the config's variants first, in order, then any
    variant the study has that the config no longer declares. Failed trials already retried
    are left out: their retry stands for them."""
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    runs = {v.name: VariantRuns(v) for v in variants}
    repeats: dict[str, set] = defaultdict(set)
    for t in trials:
        name, repeat = ablation_key(t)
        if name is None or t.number in retried:
            continue
        entry = runs.setdefault(name, VariantRuns(Variant(name, {})))
        repeats[name].add(repeat)
        if t.state.name == "COMPLETE":
            entry.complete.append(t)
            continue
        entry.pending[t.state.name] += 1
        if t.user_attrs.get("sweeps.reason"):
            entry.reasons.append(str(t.user_attrs["sweeps.reason"]))
    for name, entry in runs.items():
        entry.repeats = len(repeats[name])
    return list(runs.values())


def metric_values(trials: Sequence[Any], metric: str) -> list[float]:
    """The metric of every trial that recorded it."""
    return [float(t.user_attrs[metric]) for t in trials if metric in t.user_attrs]


def ablation_rows(runs: Sequence[VariantRuns]) -> list[dict[str, Any]]:
    """One flat row per variant: counts, every metric's statistics, published numbers."""
    base = next((r for r in runs if r.variant.name == "baseline"), runs[0])
    base_values = {m: metric_values(base.complete, m) for m in METRICS}
    rows = []
    for r in runs:
        row: dict[str, Any] = {
            "variant": r.variant.name,
            "n": len(r.complete),
            "repeats": r.repeats,
            "status": r.status,
        }
        for m in METRICS:
            stats = variant_stats(metric_values(r.complete, m), [] if r is base else base_values[m])
            row.update({f"{m}_{k}": v for k, v in stats.items() if k != "n"})
            row[f"published_{m}"] = r.variant.published.get(m, NAN)
        counts = [t.user_attrs["param_count"] for t in r.complete if "param_count" in t.user_attrs]
        row["param_count"] = counts[0] if counts else None
        row["note"] = "; ".join([r.variant.note, *sorted(set(r.reasons))]).strip("; ")
        row["baseline"] = r is base
        rows.append(row)
    return rows


def _columns() -> list[str]:
    cols = ["variant", "runs"]
    for m in SHOWN:
        cols += [f"{LABELS[m]} ± 95% CI", "published"]
        if m == "test_acc":
            cols += ["Δ vs baseline", "p"]
    return cols + ["params"]


def _cells(row: dict[str, Any]) -> list[str]:
    runs = f"{row['n']}/{row['repeats']}" + (
        "" if row["status"] == "done" else f" ({row['status']})"
    )
    cells = [row["variant"], runs]
    for m in SHOWN:
        cells += [_ci_text(row, m), number(row[f"published_{m}"])]
        if m == "test_acc":
            cells += [
                "baseline" if row["baseline"] else _signed(row["test_acc_diff"]),
                "" if row["baseline"] else _p_text(row["test_acc_p_value"]),
            ]
    return cells + ["" if row["param_count"] is None else f"{row['param_count']:,}"]


def _ci_text(row: dict[str, Any], metric: str) -> str:
    mean, low, high = (row[f"{metric}_{k}"] for k in ("mean", "ci_low", "ci_high"))
    if math.isnan(mean):
        return "—"
    # The t-interval is symmetric, so its half-width says it all; the CSV has both ends.
    return f"{mean:.4f}" if math.isnan(low) else f"{mean:.4f} ± {(high - low) / 2:.4f}"


def _signed(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.4f}"


def _p_text(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _legend_lines(rows: Sequence[dict[str, Any]], emit: Any) -> None:
    emit(
        "p: Welch's two-sided t-test of test accuracy against the baseline (n/a: fewer than 2 "
        "runs on a side, or no spread). published: the source document's single run."
    )
    partial = [r["variant"] for r in rows if r["status"] != "done"]
    if partial:
        emit(f"partial rows (the study is still running, or runs failed): {', '.join(partial)}")


def _rich_table(title: str, rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in _columns():
        # Numbers never wrap: on a narrow terminal the variant names fold instead.
        table.add_column(
            col,
            justify="left" if col in ("variant", "runs") else "right",
            overflow="fold",
            no_wrap=col != "variant",
        )
    for row in rows:
        table.add_row(*_cells(row), style="dim" if row["status"] == "not run" else None)
    return table


def write_markdown(title: str, rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The printed table as Markdown, with each variant's note."""
    cols = [*_columns(), "note"]
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [*_cells(row), row["note"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    _legend_lines(rows, lines.append)
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_ablation(
    rows: Sequence[dict[str, Any]], curves: dict[str, np.ndarray], path: Path
) -> Path:
    """Test accuracy per variant with 95% intervals and published markers; mean val_acc curves."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 2 + 0.45 * len(rows)))
    ys = np.arange(len(rows))[::-1]
    for y, row in zip(ys, rows, strict=True):
        mean, low, high = row["test_acc_mean"], row["test_acc_ci_low"], row["test_acc_ci_high"]
        if not math.isnan(mean):
            err = None if math.isnan(low) else [[mean - low], [high - mean]]
            left.errorbar(mean, y, xerr=err, fmt="o", color="C0", capsize=3)
        if not math.isnan(row["published_test_acc"]):
            left.plot(row["published_test_acc"], y, "x", color="C3", markersize=9)
    low, high = left.get_xlim()
    left.set_xlim(max(low, 0.0), min(high, 1.0))  # an interval past 0 or 1 says "anything"
    left.set_yticks(ys, [r["variant"] for r in rows], fontsize=8)
    left.set_xlabel("test accuracy")
    left.grid(axis="x", alpha=0.3)
    left.legend(
        handles=[
            Line2D([], [], color="C0", marker="o", label="mean, 95% CI"),
            Line2D([], [], color="C3", marker="x", ls="", label="published"),
        ],
        fontsize=8,
    )
    colors = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for i, (name, curve) in enumerate(curves.items()):
        if curve.size:
            right.plot(np.arange(1, curve.size + 1), curve, marker=".", label=name, color=colors(i))
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_xlabel("epoch")
    right.set_ylabel("val accuracy (mean over runs)")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
