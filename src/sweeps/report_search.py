"""The search half of `report`: the best trials and the parameter importances."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from sweeps.config import RunConfig
from sweeps.errors import one_line
from sweeps.report_ablation import DESCRIBED as METRICS
from sweeps.report_files import number, pyplot, write_csv
from sweeps.stats.summary import NAN


def report_search(
    cfg: RunConfig, study: Any, trials: list[Any], top_k: int, out: Path, console: Console
) -> list[tuple[Path, str]]:
    """The best trials and the parameter importances, printed and written."""
    maximize = study.direction.name == "MAXIMIZE"
    ranked = sorted(trials, key=lambda t: t.value, reverse=maximize)
    importance, why_not = importances(ranked, study.direction)
    metric = cfg.sweep.metric
    md = _search_markdown(cfg, ranked[:top_k], importance, why_not, out / "search.md")
    if not console.is_terminal:  # a pipe or a CI log: the Markdown tables, never wrapped
        title = (f"search of {cfg.sweep.name}: best {min(top_k, len(ranked))} of "
                 f"{len(ranked)} complete trials by {metric}")  # fmt: skip
        console.print(title, markup=False, highlight=False)
        for line in md.read_text().splitlines()[1:]:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return _files(study, trials, ranked, importance, metric, md, out)
    table = Table(
        title=f"search of {cfg.sweep.name}: best {min(top_k, len(ranked))} of "
        f"{len(ranked)} complete trials by {metric}"
    )
    for col in ("trial", metric, "test acc", "test loss", "params"):
        table.add_column(col, justify="right", no_wrap=True)  # a number never breaks
    # Wraps between parameters at the console's width; folds only a single overlong one.
    table.add_column("hyperparameters", overflow="fold", ratio=1, min_width=16)
    for t in ranked[:top_k]:
        table.add_row(*_search_cells(t))
    console.print(table)
    if importance:
        imp = Table(title="parameter importances (fANOVA)")
        imp.add_column("parameter", overflow="fold")
        imp.add_column("importance", justify="right", no_wrap=True)
        for name, value in importance.items():
            imp.add_row(name, f"{value:.3f}")
        console.print(imp)
    else:
        console.print(f"parameter importances: not computed ({why_not})")
    return _files(study, trials, ranked, importance, metric, md, out)


def _files(study: Any, trials: list[Any], ranked: list[Any], importance: dict[str, float],
           metric: str, md: Path, out: Path) -> list[tuple[Path, str]]:  # fmt: skip
    paths = [
        _search_csv(ranked, out / "search.csv"),
        md,
        plot_search(study, trials, importance, metric, out / "search.png"),
    ]
    return [(p, "report") for p in paths]


def importances(trials: Sequence[Any], direction: Any) -> tuple[dict[str, float], str]:
    """fANOVA importances over the given complete trials, or ({}, why they cannot be had).

    The trials are copied into an in-memory study, so ablation trials of the same study and
    parameters that never varied do not take part.
    """
    import optuna

    if len(trials) < 2:
        return {}, "needs at least 2 complete trials"
    seen: dict[str, set] = defaultdict(set)
    for t in trials:
        for name, value in t.params.items():
            seen[name].add(json.dumps(value, sort_keys=True, default=str))
    varying = [name for name, values in seen.items() if len(values) > 1]
    if not varying:
        return {}, "no parameter took more than one value"
    scratch = optuna.create_study(direction=direction)
    scratch.add_trials(trials)
    try:
        return optuna.importance.get_param_importances(
            scratch,
            params=varying,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        ), ""
    except (RuntimeError, ValueError) as exc:
        return {}, one_line(exc)


def _search_cells(t: Any) -> list[str]:
    attrs = t.user_attrs
    params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
    count = attrs.get("param_count")
    return [
        str(t.number),
        f"{t.value:.4f}",
        number(attrs.get("test_acc", NAN)),
        number(attrs.get("test_loss", NAN)),
        "" if count is None else f"{count:,}",
        params,
    ]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _search_csv(ranked: Sequence[Any], path: Path) -> Path:
    names = sorted({name for t in ranked for name in t.params})
    rows = []
    for rank, t in enumerate(ranked, start=1):
        row = {"rank": rank, "trial": t.number, "value": t.value}
        row.update({m: t.user_attrs.get(m, NAN) for m in METRICS})
        row["param_count"] = t.user_attrs.get("param_count")
        row.update({f"param.{n}": t.params.get(n, "") for n in names})
        rows.append(row)
    return write_csv(rows, path)


def _search_markdown(
    cfg: RunConfig, top: Sequence[Any], importance: dict[str, float], why_not: str, path: Path
) -> Path:
    cols = ["trial", cfg.sweep.metric, "test acc", "test loss", "params", "hyperparameters"]
    lines = [
        f"# search of {cfg.sweep.name}: best trials",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(_search_cells(t)) + " |" for t in top]
    lines += ["", "## parameter importances (fANOVA)", ""]
    if importance:
        lines += ["| parameter | importance |", "|---|---|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in importance.items()]
    else:
        lines.append(f"not computed: {why_not}")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_search(
    study: Any, trials: Sequence[Any], importance: dict[str, float], metric: str, path: Path
) -> Path:
    """The metric of every complete trial with the best so far, and the importances."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    ordered = sorted(trials, key=lambda t: t.number)
    values = np.array([t.value for t in ordered])
    best = (
        np.maximum.accumulate(values)
        if study.direction.name == "MAXIMIZE"
        else (np.minimum.accumulate(values))
    )
    numbers = [t.number for t in ordered]
    left.plot(numbers, values, "o", alpha=0.6, label="trial")
    left.step(numbers, best, where="post", color="C3", label="best so far")
    left.set_xlabel("trial")
    left.set_ylabel(metric)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    if importance:
        names = list(importance)[::-1]
        right.barh(names, [importance[n] for n in names])
        right.set_xlabel("importance (fANOVA)")
        right.tick_params(axis="y", labelsize=8)
    else:
        right.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
