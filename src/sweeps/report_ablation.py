"""The ablation half of `report`: a verdict per variant, beside the document's numbers.

Per metric (test accuracy, validation accuracy, test loss) one row per variant: runs finished,
the difference to the baseline paired by seed with its 95% t interval, the Holm-corrected
p-value, P(variant beats baseline), the verdict (better, worse, equivalent, undecided, with the
repeats that would decide it), the document's number and whether its claim is confirmed,
contradicted or open. The statistics are in :mod:`sweeps.verdict`. Printed to fit 80 columns
(one table per metric), and written in full as CSV, Markdown and a PNG (paired differences
with their intervals and the equivalence band, mean learning curves).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from sweeps.config import RunConfig, Variant
from sweeps.keys import RUN_ID_ATTR, SPURIOUS_ATTR, ablation_key, replaced_numbers
from sweeps.repeat_plan import with_recorded_rule
from sweeps.report_files import number, pyplot, write_csv
from sweeps.stats.summary import NAN, mean_ci, mean_curve
from sweeps.verdict import (
    ALPHA,
    DECISION_METRIC,
    UNDECIDED,
    Verdict,
    decided_verdicts,
    verdicts_for_study,
)

METRICS = ("test_acc", "val_acc", "test_loss", "train_acc")  # all in the CSV
SHOWN = ("test_acc", "val_acc", "test_loss")  # printed, in the Markdown and the PNG (accuracies)
LABELS = {
    "test_acc": "test acc",
    "val_acc": "val acc",
    "test_loss": "test loss",
    "train_acc": "train acc",
}


def report_ablation(
    cfg: RunConfig,
    trials: list[Any],
    out: Path,
    console: Console,
    tracker: Any | None,
    auto: Mapping[str, Any] | None = None,
) -> list[tuple[Path, str]]:
    """The per-metric verdict tables, printed and written as CSV, Markdown and PNG.

    Args:
        auto: The study's repeats=auto record (``sweeps.keys.AUTO_ATTR``), if any.
    """
    cfg = with_recorded_rule(cfg, auto)
    runs = variant_runs(trials, cfg.variants)
    rows = ablation_rows(cfg, runs, trials, auto)
    curves = {r.variant.name: mean_curve(_val_curves(r.complete, tracker)) for r in runs}
    title = f"ablation of {cfg.sweep.name}: each variant against the baseline, paired by seed"
    console.print(f"[bold]{title}[/bold] (test metrics of each run's best-val_acc epoch)")
    for metric in SHOWN:
        console.print()
        console.print(_rich_table(metric, rows, console.width))
    _legend_lines(cfg, rows, console.print)
    paths = [
        write_csv(rows, out / "ablation.csv"),
        write_markdown(cfg, title, rows, out / "ablation.md"),
        plot_ablation(rows, curves, cfg.report.margin, out / "ablation.png"),
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


def variant_runs(trials: Sequence[Any], variants: Sequence[Variant]) -> list[VariantRuns]:
    """Groups ablation trials by variant: the config's variants first, in order, then any
    variant the study has that the config no longer declares. Failed trials already retried
    are left out (their retry stands for them), and so are duplicates dropped unrun."""
    retried = replaced_numbers(trials)
    runs = {v.name: VariantRuns(v) for v in variants}
    repeats: dict[str, set] = defaultdict(set)
    for t in trials:
        name, repeat = ablation_key(t)
        if name is None or t.number in retried or t.user_attrs.get(SPURIOUS_ATTR):
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


def ablation_rows(
    cfg: RunConfig,
    runs: Sequence[VariantRuns],
    trials: Sequence[Any],
    auto: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One flat row per variant: counts, each metric's own mean and interval, its verdict
    against the baseline, the published numbers, and (repeats=auto) why it stopped."""
    base = runs[0]
    auto = dict(auto or {})
    verdicts = {
        m: verdicts_for_study(cfg, trials, m, decided_verdicts(auto) if auto else None)
        for m in METRICS
    }
    rows = []
    for r in runs:
        name = r.variant.name
        row: dict[str, Any] = {"variant": name, "n": len(r.complete), "repeats": r.repeats}
        row["status"] = r.status
        for m in METRICS:
            mean, low, high = mean_ci(metric_values(r.complete, m))
            row.update({f"{m}_mean": mean, f"{m}_ci_low": low, f"{m}_ci_high": high})
            row.update(_verdict_columns(m, verdicts[m].get(name)))
            row[f"published_{m}"] = r.variant.published.get(m, NAN)
        counts = [t.user_attrs["param_count"] for t in r.complete if "param_count" in t.user_attrs]
        row["param_count"] = counts[0] if counts else None
        entry = auto.get(name) if isinstance(auto.get(name), Mapping) else {}
        row["auto_repeats"] = entry.get("repeats", "")
        row["auto_stopped"] = _stopped_text(entry)
        notes = [r.variant.note, *sorted(set(r.reasons))]
        for m in SHOWN:
            v = verdicts[m].get(name)
            if v is not None and v.note:
                notes.append(f"{LABELS[m]}: {v.note}")
        row["note"] = "; ".join(n for n in notes if n)
        row["baseline"] = r is base
        rows.append(row)
    return rows


def _verdict_columns(metric: str, v: Verdict | None) -> dict[str, Any]:
    """The CSV columns of one metric's verdict; empty (nan) for the baseline."""
    v = v or Verdict(variant="", metric=metric, n=0, n_base=0, verdict="")
    return {
        f"{metric}_diff": v.diff,
        f"{metric}_diff_low": v.low,
        f"{metric}_diff_high": v.high,
        f"{metric}_boot_low": v.boot_low,
        f"{metric}_boot_high": v.boot_high,
        f"{metric}_test": v.test,
        f"{metric}_pairs": v.pairs if v.variant else "",
        f"{metric}_p_value": v.p,
        f"{metric}_p_holm": v.p_holm,
        f"{metric}_p_equiv_holm": v.p_equiv_holm,
        f"{metric}_level": v.level,
        f"{metric}_p_better": v.p_better,
        f"{metric}_verdict": v.verdict,
        f"{metric}_repeats_needed": "" if v.repeats_needed is None else v.repeats_needed,
        f"published_{metric}_diff": v.published_diff,
        f"{metric}_claim": v.claim,
    }


def _stopped_text(entry: Mapping[str, Any]) -> str:
    stopped = str(entry.get("stopped") or "")
    if stopped == "decided":
        return f"{entry.get('verdict')} at {entry.get('at')} repeats"
    return stopped


# -- cells ---------------------------------------------------------------------------------------


def _runs_text(row: dict[str, Any], detail: bool = True) -> str:
    done = "" if row["status"] == "done" or not detail else f" ({row['status']})"
    return f"{row['n']}/{row['repeats']}{done}"


def _pm(mean: float, low: float, high: float, signed: bool = False) -> str:
    if math.isnan(mean):
        return "—"
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    # A t interval is symmetric: its half-width says it all; the CSV has both ends.
    return text if math.isnan(low) else f"{text} ± {_half(low, high)}"


def _half(low: float, high: float) -> str:
    return "" if math.isnan(low) else f"{(high - low) / 2:.4f}"


def _p_text(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _share(p: float) -> str:
    return "—" if math.isnan(p) else f"{p:.2f}"


def _verdict_text(row: dict[str, Any], metric: str) -> str:
    verdict = row[f"{metric}_verdict"]
    if verdict == UNDECIDED and math.isnan(row[f"{metric}_p_value"]):
        return "too few runs"
    return verdict


def _needed(row: dict[str, Any], metric: str) -> str:
    needed = row[f"{metric}_repeats_needed"]
    return "" if needed == "" else f"~{needed}"


_HEADERS = ("variant", "runs", "Δ", "± 95%", "p Holm", "P(>)", "verdict", "need", "pub.", "claim")
_RIGHT = {"runs", "Δ", "± 95%", "p Holm", "P(>)", "need", "pub."}


def _cells(row: dict[str, Any], metric: str) -> list[str]:
    """One printed row: the variant's difference to the baseline (the baseline: its mean)."""
    published = number(row[f"published_{metric}"])
    if row["baseline"]:
        mean, low, high = (row[f"{metric}_{k}"] for k in ("mean", "ci_low", "ci_high"))
        return [row["variant"], _runs_text(row, False), number(mean), _half(low, high),
                "", "", "(baseline)", "", published, ""]  # fmt: skip
    low, high = row[f"{metric}_diff_low"], row[f"{metric}_diff_high"]
    diff = row[f"{metric}_diff"]
    return [
        row["variant"],
        _runs_text(row, False),
        "—" if math.isnan(diff) else f"{diff:+.4f}",
        _half(low, high),
        _p_text(row[f"{metric}_p_holm"]),
        _share(row[f"{metric}_p_better"]),
        _verdict_text(row, metric),
        _needed(row, metric),
        published,
        row[f"{metric}_claim"] or "—",
    ]


def _breakable(name: str, width: int) -> str:
    """A variant name folded onto lines of at most ``width`` at its ``+`` joints, and at its
    ``_`` joints where a part is still too long, so a narrow column never splits a number
    inside it (``dropout_0.2``)."""
    parts: list[str] = []
    for part in _joints(name, "+"):
        parts += [part] if len(part) <= width else _joints(part, "_")
    lines, line = [], ""
    for part in parts:
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    return "\n".join([*lines, line])


def _joints(name: str, joint: str) -> list[str]:
    """``name`` cut after every ``joint`` character, which stays with the part before it."""
    pieces = name.split(joint)
    return [p + joint for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def _rich_table(metric: str, rows: Sequence[dict[str, Any]], width: int) -> Table:
    """One metric's verdicts, sized to the console: every other column keeps its width (a
    number never wraps) and the variant names fold at their joints into what is left."""
    cells = [_cells(row, metric) for row in rows]
    others = sum(max(len(c[i]) for c in [*cells, list(_HEADERS)]) for i in range(1, len(_HEADERS)))
    longest = max(len(c[0]) for c in [*cells, list(_HEADERS)])
    # The box draws one space between columns, none at the edges.
    name_width = max(8, min(longest, width - others - (len(_HEADERS) - 1)))
    table = Table(
        title=f"{LABELS[metric]}: variant − baseline, paired by seed",
        box=box.SIMPLE_HEAD,
        padding=0,
        show_edge=False,
        title_justify="left",
    )
    for col in _HEADERS:
        variant = col == "variant"
        table.add_column(
            col,
            justify="right" if col in _RIGHT else "left",
            no_wrap=not variant,
            overflow="fold",
            min_width=name_width if variant else None,
            max_width=name_width if variant else None,
        )
    for row, cell in zip(rows, cells, strict=True):
        cell[0] = _breakable(cell[0], name_width)
        table.add_row(*cell, style="dim" if row["status"] == "not run" else None)
    return table


def _legend_lines(cfg: RunConfig, rows: Sequence[dict[str, Any]], emit: Callable) -> None:
    margin = cfg.report.margin
    variants = len(rows) - 1
    if cfg.sweep.auto_repeats:
        sweep = cfg.sweep
        level = (
            f"levels per look from Lan-DeMets O'Brien-Fleming-type alpha spending over "
            f"{sweep.min_repeats} to {sweep.max_repeats} repeats (overall {ALPHA})"
        )
    else:
        level = f"level {ALPHA}"
    emit(
        "Δ ± 95%: variant − baseline, mean of the per-seed differences, and the half-width "
        "of its 95% t interval (Welch's where a seed is missing on one side); the baseline row "
        "gives its own mean. p Holm: two-sided paired t-test, "
        f"Holm-corrected across the {variants} variant(s). P(>): share of seeds on which the "
        f"variant beats the baseline. verdict at {level}; equivalent: both one-sided tests "
        f"within ±{margin:g} (accuracies). claim: the document's published difference "
        "against the verdict. need: repeats that would decide an undecided row at the "
        "observed spread. pub.: the document's single run. "
        f"repeats=auto decides on {LABELS[DECISION_METRIC]}."
    )
    if cfg.sweep.auto_repeats:
        parts = [
            f"{r['variant']} {r['auto_repeats']} ({r['auto_stopped'] or 'open'})"
            for r in rows
            if r["auto_repeats"] != ""
        ]
        if parts:
            emit("repeats=auto, repeats each variant got: " + ", ".join(parts))
    for r in rows:
        if r["note"] and not r["baseline"]:
            emit(f"{r['variant']}: {r['note']}")
    partial = [f"{r['variant']} {_runs_text(r)}" for r in rows if r["status"] != "done"]
    if partial:
        emit(f"partial rows (the study is still running, or runs failed): {', '.join(partial)}")


# -- files -------------------------------------------------------------------------------------


_MD_HEADERS = (
    "variant",
    "runs",
    "mean ± 95% CI",
    "Δ ± 95% CI (t)",
    "Δ 95% bootstrap",
    "test",
    "p",
    "p Holm",
    "P(>)",
    "verdict",
    "repeats to decide",
    "published",
    "published Δ",
    "claim",
)


def _md_cells(row: dict[str, Any], metric: str) -> list[str]:
    mean = _pm(*(row[f"{metric}_{k}"] for k in ("mean", "ci_low", "ci_high")))
    published = number(row[f"published_{metric}"])
    if row["baseline"]:
        return [row["variant"], _runs_text(row), mean, *[""] * 6, "baseline", "", published]
    low, high = row[f"{metric}_boot_low"], row[f"{metric}_boot_high"]
    boot = "—" if math.isnan(low) else f"[{low:+.4f}, {high:+.4f}]"
    pub_diff = row[f"published_{metric}_diff"]
    return [
        row["variant"],
        _runs_text(row),
        mean,
        _pm(*(row[f"{metric}_{k}"] for k in ("diff", "diff_low", "diff_high")), signed=True),
        boot,
        row[f"{metric}_test"] or "—",
        _p_text(row[f"{metric}_p_value"]),
        _p_text(row[f"{metric}_p_holm"]),
        _share(row[f"{metric}_p_better"]),
        _verdict_text(row, metric),
        str(row[f"{metric}_repeats_needed"]),
        published,
        "—" if math.isnan(pub_diff) else f"{pub_diff:+.4f}",
        row[f"{metric}_claim"] or "—",
    ]


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for cells in rows:
        padded = [*cells, *[""] * (len(headers) - len(cells))]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in padded) + " |")
    return lines


def write_markdown(cfg: RunConfig, title: str, rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """One table per metric with every statistic, then the variants' counts and notes."""
    lines = [f"# {title}", ""]
    for metric in SHOWN:
        lines += [f"## {LABELS[metric]}", ""]
        lines += _md_table(_MD_HEADERS, [_md_cells(row, metric) for row in rows])
        lines.append("")
    lines += ["## variants", ""]
    counts = [
        [
            r["variant"],
            "" if r["param_count"] is None else f"{r['param_count']:,}",
            str(r["auto_repeats"]),
            r["auto_stopped"],
            r["note"],
        ]
        for r in rows
    ]
    lines += _md_table(["variant", "params", "repeats (auto)", "stopped", "note"], counts)
    lines.append("")
    _legend_lines(cfg, rows, lines.append)
    path.write_text("\n".join(lines) + "\n")
    return path


_COLOURS = {"better": "C2", "worse": "C3", "equivalent": "C0", "undecided": "0.45"}


def plot_ablation(
    rows: Sequence[dict[str, Any]], curves: dict[str, np.ndarray], margin: float, path: Path
) -> Path:
    """Paired differences to the baseline with their 95% intervals, the ±margin band and the
    published differences, one panel per accuracy, coloured by verdict; mean val_acc curves."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    accuracies = [m for m in SHOWN if m.endswith("_acc")]
    fig, axes = plt.subplots(
        1, len(accuracies) + 1, figsize=(7 * (len(accuracies) + 1), 2 + 0.5 * len(rows))
    )
    ys = np.arange(len(rows))[::-1]
    for ax, metric in zip(axes, accuracies, strict=False):
        ax.axvspan(-margin, margin, color="C0", alpha=0.12)
        ax.axvline(0.0, color="black", lw=0.8)
        for y, row in zip(ys, rows, strict=True):
            if row["baseline"]:
                continue
            diff = row[f"{metric}_diff"]
            verdict = row[f"{metric}_verdict"] or "undecided"
            if not math.isnan(diff):
                low, high = row[f"{metric}_diff_low"], row[f"{metric}_diff_high"]
                err = None if math.isnan(low) else [[diff - low], [high - diff]]
                colour = _COLOURS.get(verdict, "0.45")
                ax.errorbar(diff, y, xerr=err, fmt="o", color=colour, capsize=3)
                ax.annotate(
                    verdict, (1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=7, color=colour,
                )  # fmt: skip
            published = row[f"published_{metric}_diff"]
            if not math.isnan(published):
                ax.plot(published, y, "x", color="C1", markersize=8)
        ax.set_yticks(ys, [r["variant"] for r in rows], fontsize=8)
        ax.set_xlabel(f"{LABELS[metric]}: variant − baseline (paired by seed)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(
            handles=[
                Line2D([], [], color="0.3", marker="o", label="mean difference, 95% t interval"),
                Line2D([], [], color="C1", marker="x", ls="", label="published difference"),
                Patch(color="C0", alpha=0.12, label=f"equivalence band ±{margin:g}"),
            ],
            fontsize=7,
            loc="best",
        )
    right = axes[-1]
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
