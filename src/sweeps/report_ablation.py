"""The ablation half of `report`: a verdict per variant, beside the document's numbers.

The decision metric's table (the study's recorded rule, :mod:`sweeps.verdict`) gives per
variant: the pairs it ran and why it stopped, the paired difference to the baseline with its
repeated confidence interval, the family-adjusted p-value, P(variant beats baseline) with its
interval, the verdict (better, worse, equivalent, no effect >= delta, undecided), the
document's difference and whether it is consistent with the interval. The other metrics (test
and validation accuracy, test loss) are described beside it: paired difference, 95% t interval,
unadjusted p-value, no verdict. Printed to fit the terminal, and written in full as CSV,
Markdown and a PNG (paired differences with their intervals and the equivalence band, mean
learning curves).
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
from sweeps.repeat_plan import STATE_KEY
from sweeps.report_files import number, pyplot, write_csv
from sweeps.stats.design import Rule
from sweeps.stats.summary import NAN, mean_ci, mean_curve
from sweeps.verdict import UNDECIDED, Verdict, measure, verdicts_for_study

DESCRIBED = ("test_acc", "val_acc", "test_loss", "train_acc")  # in the CSV beside the decision
SHOWN = ("test_acc", "val_acc", "test_loss")  # printed, in the Markdown and the PNG (accuracies)
LABELS = {
    "test_acc": "test acc",
    "val_acc": "val acc",
    "test_loss": "test loss",
    "train_acc": "train acc",
}


def label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def decision_metric(rule: Rule | None) -> str:
    return rule.metric if rule is not None else "test_acc"


def metrics_of(rule: Rule | None) -> tuple[list[str], list[str]]:
    """The metrics in the CSV and the ones printed: the decision metric first."""
    first = decision_metric(rule)
    return [first, *(m for m in DESCRIBED if m != first)], [
        first,
        *(m for m in SHOWN if m != first),
    ]


def report_ablation(
    cfg: RunConfig,
    trials: list[Any],
    out: Path,
    console: Console,
    tracker: Any | None,
    auto: Mapping[str, Any] | None = None,
    rule: Rule | None = None,
    markdown: bool = False,
) -> list[tuple[Path, str]]:
    """The decision table and the described metrics, printed and written as CSV, Markdown, PNG.

    Args:
        auto: The study's repeats=auto record (``sweeps.keys.AUTO_ATTR``), if any.
        rule: The study's recorded decision rule (None: a single repeat, nothing decided).
        markdown: Print Markdown tables (a pipe or a CI log) instead of the terminal's.
    """
    runs = variant_runs(trials, cfg.variants)
    rows = ablation_rows(cfg, runs, trials, auto, rule)
    curves = {r.variant.name: mean_curve(_val_curves(r.complete, tracker)) for r in runs}
    title = f"ablation of {cfg.sweep.name}: each variant against the baseline, paired by seed"
    console.print(f"[bold]{title}[/bold] (test metrics of each run's best-val_acc epoch)")
    for metric in metrics_of(rule)[1]:
        decided = rule is not None and metric == rule.metric
        console.print()
        if markdown:
            console.print(f"{_title(metric, decided)}\n", markup=False, highlight=False)
            for line in _md_table(
                _md_headers(decided), [_md_cells(r, metric, decided) for r in rows]
            ):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(_rich_table(metric, rows, console.width, decided))
    _legend_lines(cfg, rows, console.print, rule)
    paths = [
        write_csv(rows, out / "ablation.csv"),
        write_markdown(cfg, title, rows, out / "ablation.md", rule),
        plot_ablation(rows, curves, cfg.report.margin, out / "ablation.png", rule),
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
    rule: Rule | None = None,
) -> list[dict[str, Any]]:
    """One flat row per variant: counts, each metric's own mean and interval, the decision
    (or the description) against the baseline, the published numbers, why a row stopped."""
    base = runs[0]
    auto = dict(auto or {})
    state = auto.get(STATE_KEY) if cfg.sweep.auto_repeats else None
    metrics, shown = metrics_of(rule)
    verdicts = {m: verdicts_for_study(cfg, trials, m, rule, state) for m in metrics}
    rows = []
    for r in runs:
        name = r.variant.name
        row: dict[str, Any] = {"variant": name, "n": len(r.complete), "repeats": r.repeats}
        row["status"] = r.status
        for m in metrics:
            mean, low, high = mean_ci([measure(t, m) for t in r.complete if _has(t, m)])
            row.update({f"{m}_mean": mean, f"{m}_ci_low": low, f"{m}_ci_high": high})
            row.update(_verdict_columns(m, verdicts[m].get(name)))
            row[f"published_{m}"] = r.variant.published.get(m, NAN)
        counts = [t.user_attrs["param_count"] for t in r.complete if "param_count" in t.user_attrs]
        row["param_count"] = counts[0] if counts else None
        entry = auto.get(name) if isinstance(auto.get(name), Mapping) else {}
        decided = verdicts[metrics[0]].get(name)
        row["auto_repeats"] = entry.get("repeats", "")
        row["auto_stopped"] = _stopped_text(entry) if entry else _stopped_text(
            {"stopped": decided.stopped, "verdict": decided.verdict, "at": decided.pairs}
            if decided is not None else {}
        )  # fmt: skip
        notes = [r.variant.note, *sorted(set(r.reasons))]
        for m in shown:
            v = verdicts[m].get(name)
            if v is not None and v.note:
                notes.append(f"{label(m)}: {v.note}")
        row["note"] = "; ".join(n for n in notes if n)
        row["baseline"] = r is base
        rows.append(row)
    return rows


def _has(trial: Any, metric: str) -> bool:
    return not math.isnan(measure(trial, metric))


def _verdict_columns(metric: str, v: Verdict | None) -> dict[str, Any]:
    """The CSV columns of one metric's verdict; empty (nan) for the baseline."""
    v = v or Verdict(variant="", metric=metric)
    return {
        f"{metric}_diff": v.diff,
        f"{metric}_diff_low": v.low,
        f"{metric}_diff_high": v.high,
        f"{metric}_confidence": v.confidence,
        f"{metric}_boot_low": v.boot_low,
        f"{metric}_boot_high": v.boot_high,
        f"{metric}_pairs": v.pairs if v.variant else "",
        f"{metric}_p_value": v.p,
        f"{metric}_p_adjusted": v.p_adjusted,
        f"{metric}_level": v.level,
        f"{metric}_p_better": v.p_better,
        f"{metric}_p_better_low": v.p_better_low,
        f"{metric}_p_better_high": v.p_better_high,
        f"{metric}_verdict": v.verdict,
        f"{metric}_stopped": v.stopped,
        f"{metric}_repeats_needed": "" if v.repeats_needed is None else v.repeats_needed,
        f"published_{metric}_diff": v.published_diff,
        f"{metric}_claim": v.claim,
    }


def _stopped_text(entry: Mapping[str, Any]) -> str:
    stopped = str(entry.get("stopped") or "")
    if stopped in ("decided", "futility"):
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
    if verdict == UNDECIDED and row[f"{metric}_pairs"] in ("", 0, 1):
        return "too few runs"
    return verdict or "—"


def _needed(row: dict[str, Any], metric: str) -> str:
    needed = row[f"{metric}_repeats_needed"]
    return "" if needed == "" else f"~{needed}"


def _p_better_text(row: dict[str, Any], metric: str, decided: bool) -> str:
    share = _share(row[f"{metric}_p_better"])
    low, high = row[f"{metric}_p_better_low"], row[f"{metric}_p_better_high"]
    if not decided or math.isnan(low):
        return share
    return f"{share} ({low:.2f}-{high:.2f})"


def _headers(decided: bool) -> tuple[str, ...]:
    if decided:
        return ("variant", "runs", "Δ", "± RCI", "p adj", "P(>)", "verdict", "pub. Δ", "claim")
    return ("variant", "runs", "Δ", "± 95%", "p", "P(>)", "pub.")


_RIGHT = {"runs", "Δ", "± 95%", "± RCI", "p adj", "p", "P(>)", "pub.", "pub. Δ"}


def _cells(row: dict[str, Any], metric: str, decided: bool) -> list[str]:
    """One printed row: the variant's difference to the baseline (the baseline: its mean)."""
    published = number(row[f"published_{metric}"])
    if row["baseline"]:
        mean, low, high = (row[f"{metric}_{k}"] for k in ("mean", "ci_low", "ci_high"))
        cells = [row["variant"], _runs_text(row, False), number(mean), _half(low, high), "", ""]
        return [*cells, "(baseline)", "", ""] if decided else [*cells, published]
    low, high = row[f"{metric}_diff_low"], row[f"{metric}_diff_high"]
    diff = row[f"{metric}_diff"]
    cells = [
        row["variant"],
        _runs_text(row, False),
        "—" if math.isnan(diff) else f"{diff:+.4f}",
        _half(low, high),
        _p_text(row[f"{metric}_p_adjusted" if decided else f"{metric}_p_value"]),
        _p_better_text(row, metric, decided),
    ]
    if not decided:
        return [*cells, published]
    pub_diff = row[f"published_{metric}_diff"]
    return [
        *cells,
        _verdict_text(row, metric),
        "—" if math.isnan(pub_diff) else f"{pub_diff:+.4f}",
        row[f"{metric}_claim"] or "—",
    ]


def _title(metric: str, decided: bool) -> str:
    if decided:
        return f"{label(metric)}: variant − baseline, paired by seed (the decision)"
    return f"{label(metric)}: variant − baseline, paired by seed (described, not decided)"


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


def _rich_table(metric: str, rows: Sequence[dict[str, Any]], width: int, decided: bool) -> Table:
    """One metric's table, sized to the console: every other column keeps its width (a
    number never wraps) and the variant names fold at their joints into what is left."""
    headers = _headers(decided)
    cells = [_cells(row, metric, decided) for row in rows]
    others = sum(max(len(c[i]) for c in [*cells, list(headers)]) for i in range(1, len(headers)))
    longest = max(len(c[0]) for c in [*cells, list(headers)])
    # The box draws one space between columns, none at the edges.
    name_width = max(8, min(longest, width - others - (len(headers) - 1)))
    table = Table(
        title=_title(metric, decided),
        box=box.SIMPLE_HEAD,
        padding=0,
        show_edge=False,
        title_justify="left",
    )
    for col in headers:
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


def _legend_lines(
    cfg: RunConfig, rows: Sequence[dict[str, Any]], emit: Callable, rule: Rule | None
) -> None:
    if rule is None:
        emit("a single repeat per variant: nothing is decided (sweep.repeats >= 2 to compare)")
    else:
        m = len(rows) - 1
        emit(
            f"The decision ({label(rule.metric)}), by the rule recorded at the study's first "
            f"run: {rule.procedure}; family-wise error {rule.alpha:g} over {m} row(s) and "
            f"every look, {rule.min_repeats} to {rule.max_repeats} repeats, equivalence "
            f"within ±{rule.margin:g}, futility at delta {rule.delta:g} (beta {rule.beta:g})."
        )
        emit(
            "Δ: variant − baseline, mean of the per-seed differences (complete pairs only); "
            "± RCI: half-width of its repeated confidence interval at the level the row holds "
            "(it excludes 0 exactly when the verdict is better or worse; for no effect >= delta "
            f"the {1 - 2 * rule.beta:.0%} futility interval). p adj: family-adjusted p-value. "
            "P(>): P(variant beats baseline on a fresh seed), Phi(mean/sd), with its interval. "
            "claim: the document's published difference against the interval (consistent, "
            "contradicted, open). The other tables describe, at 95%, unadjusted: no verdict."
        )
    parts = [f"{r['variant']} {r['n']} ({r['auto_stopped'] or 'open'})"
             for r in rows if not r["baseline"]]  # fmt: skip
    if parts:
        emit("pairs each variant ran, and why it stopped: " + ", ".join(parts))
    for r in rows:
        if r["note"] and not r["baseline"]:
            emit(f"{r['variant']}: {r['note']}")
    partial = [f"{r['variant']} {_runs_text(r)}" for r in rows if r["status"] != "done"]
    if partial:
        emit(f"partial rows (the study is still running, or runs failed): {', '.join(partial)}")


# -- files -------------------------------------------------------------------------------------


def _md_headers(decided: bool) -> tuple[str, ...]:
    if decided:
        return ("variant", "runs", "stopped", "mean ± 95% CI", "Δ [RCI]", "confidence",
                "Δ 95% bootstrap", "p adj", "P(>) [interval]", "verdict", "repeats to decide",
                "published", "published Δ", "claim")  # fmt: skip
    return ("variant", "runs", "mean ± 95% CI", "Δ ± 95% CI (t)", "Δ 95% bootstrap", "p",
            "P(>)", "published", "published Δ")  # fmt: skip


def _md_cells(row: dict[str, Any], metric: str, decided: bool = True) -> list[str]:
    mean = _pm(*(row[f"{metric}_{k}"] for k in ("mean", "ci_low", "ci_high")))
    published = number(row[f"published_{metric}"])
    if row["baseline"]:
        # Decided: 14 columns, published is the 12th; described: 9, published the 8th.
        blanks = 7 if decided else 4
        cells = [row["variant"], _runs_text(row)] + (["", mean] if decided else [mean])
        return [*cells, *[""] * blanks, published] + (["", ""] if decided else [""])
    low, high = row[f"{metric}_boot_low"], row[f"{metric}_boot_high"]
    boot = "—" if math.isnan(low) else f"[{low:+.4f}, {high:+.4f}]"
    pub_diff = row[f"published_{metric}_diff"]
    pub = "—" if math.isnan(pub_diff) else f"{pub_diff:+.4f}"
    diff, d_low, d_high = (row[f"{metric}_{k}"] for k in ("diff", "diff_low", "diff_high"))
    if not decided:
        return [row["variant"], _runs_text(row), mean, _pm(diff, d_low, d_high, signed=True),
                boot, _p_text(row[f"{metric}_p_value"]), _share(row[f"{metric}_p_better"]),
                published, pub]  # fmt: skip
    interval = "—" if math.isnan(diff) else (
        f"{diff:+.4f}" + ("" if math.isnan(d_low) else f" [{d_low:+.4f}, {d_high:+.4f}]")
    )  # fmt: skip
    confidence = row[f"{metric}_confidence"]
    return [
        row["variant"],
        _runs_text(row),
        row["auto_stopped"] or "open",
        mean,
        interval,
        "—" if math.isnan(confidence) else f"{confidence:.2%}",
        boot,
        _p_text(row[f"{metric}_p_adjusted"]),
        _p_better_text(row, metric, True),
        _verdict_text(row, metric),
        str(row[f"{metric}_repeats_needed"]),
        published,
        pub,
        row[f"{metric}_claim"] or "—",
    ]


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for cells in rows:
        padded = [*cells, *[""] * (len(headers) - len(cells))]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in padded) + " |")
    return lines


def write_markdown(cfg: RunConfig, title: str, rows: Sequence[dict[str, Any]], path: Path,
                   rule: Rule | None = None) -> Path:  # fmt: skip
    """The decision table, then one table per described metric, the variants and notes."""
    lines = [f"# {title}", ""]
    for metric in metrics_of(rule)[1]:
        decided = rule is not None and metric == rule.metric
        lines += [f"## {_title(metric, decided)}", ""]
        lines += _md_table(_md_headers(decided), [_md_cells(row, metric, decided) for row in rows])
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
    _legend_lines(cfg, rows, lines.append, rule)
    path.write_text("\n".join(lines) + "\n")
    return path


_COLOURS = {"better": "C2", "worse": "C3", "equivalent": "C0", "no effect >= delta": "C4",
            "undecided": "0.45"}  # fmt: skip


def plot_ablation(
    rows: Sequence[dict[str, Any]],
    curves: dict[str, np.ndarray],
    margin: float,
    path: Path,
    rule: Rule | None = None,
) -> Path:
    """Paired differences to the baseline with their intervals (the decision's repeated
    interval, 95% t elsewhere), the ±margin band and the published differences, one panel per
    accuracy, coloured by verdict; mean val_acc curves."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    accuracies = [m for m in metrics_of(rule)[1] if "_acc" in m]
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
            verdict = row[f"{metric}_verdict"] or "described"
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
        ax.set_xlabel(f"{label(metric)}: variant − baseline (paired by seed)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(
            handles=[
                Line2D([], [], color="0.3", marker="o", label="mean difference, its interval"),
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
