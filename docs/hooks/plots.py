"""Figures of the benchmark pages, drawn from ``benchmarks/results/NAME.json`` at build time.

Each figure shows every repeat as a dot over the median bar, so the spread the tables
summarise stays visible.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

Result = dict[str, Any]
COLOURS = ["#3f6fb5", "#e08a2c", "#4e9a58", "#b5443f", "#7d5fa8"]


@dataclass(frozen=True)
class Plot:
    alt: str
    draw: Callable[[Result], Figure]


def render(name: str, result: Result) -> bytes:
    """The PNG of benchmark `name`'s figure."""
    fig = PLOTS[name].draw(result)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _bars(
    ax: Axes, labels: list[str], samples: list[list[float]], horizontal: bool = False
) -> None:
    """Median bars with each sample as a dot."""
    positions = range(len(labels))
    medians = [statistics.median(s) for s in samples]
    colours = [COLOURS[i % len(COLOURS)] for i in positions]
    if horizontal:
        ax.barh(positions, medians, color=colours, alpha=0.55)
        for i, s in enumerate(samples):
            ax.plot(s, [i] * len(s), "o", color=colours[i], markersize=4)
        ax.set_yticks(list(positions), labels)
        ax.invert_yaxis()
    else:
        ax.bar(positions, medians, color=colours, alpha=0.55)
        for i, s in enumerate(samples):
            ax.plot([i] * len(s), s, "o", color=colours[i], markersize=4)
        ax.set_xticks(list(positions), labels)
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)
    ax.set_axisbelow(True)


def overhead(r: Result) -> Figure:
    ways = {
        "bare": "bare Keras",
        "sweeps": "sweeps",
        "sweeps_subprocess": "sweeps,\ntrain.subprocess=true",
        "autolog": "Optuna +\nmlflow autolog",
    }
    fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
    _bars(
        ax,
        list(ways.values()),
        [[rep[f"{w}_trial_s"] for rep in r["repeats"]] for w in ways],
        horizontal=True,
    )
    ax.set_xlabel("seconds per trial (wall), each dot one repeat")
    return fig


def pruning(r: Result) -> Figure:
    names = {"grid": "grid", "tpe_median": "TPE + median", "tpe_hyperband": "TPE + Hyperband"}
    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    for i, (key, label) in enumerate(names.items()):
        reps = [rep for rep in r["repeats"] if rep["strategy"] == key]
        ax.plot(
            [rep["epochs"] for rep in reps],
            [rep["best_val_acc"] for rep in reps],
            "o",
            color=COLOURS[i],
            label=label,
            markersize=7,
            alpha=0.8,
        )
    ax.set_xlabel("epochs trained by the study")
    ax.set_ylabel("best val_acc")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


def workers(r: Result) -> Figure:
    studies = {"quickstart": "quickstart", "age_gap": "age_gap CNN"}
    fig, axes = plt.subplots(1, 2, figsize=(7, 3), layout="constrained")
    for ax, (study, title) in zip(axes, studies.items(), strict=True):
        runs = [rep for rep in r["repeats"] if rep["study"] == study]
        samples = [[rep["per_hour"] for rep in runs if rep["processes"] == n] for n in (1, 2)]
        _bars(ax, ["1 process", "2 processes"], samples)
        ax.set_title(title)
    axes[0].set_ylabel("trials per hour")
    return fig


def liar(r: Result) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
    seeds = sorted({rep["seed"] for rep in r["repeats"]})
    for on, label, colour in (
        (False, "constant liar off", COLOURS[0]),
        (True, "constant liar on", COLOURS[1]),
    ):
        best = {rep["seed"]: rep["best"] for rep in r["repeats"] if rep["liar"] is on}
        ax.plot(seeds, [best[s] for s in seeds], "o-", color=colour, label=label, alpha=0.8)
    ax.set_xticks(seeds, [f"seed {s}" for s in seeds])
    ax.set_ylabel("best val_acc of 24 trials")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


def startup(r: Result) -> Figure:
    commands = r["workload"]["commands"]
    keys = list(commands)
    fig, ax = plt.subplots(figsize=(7, 2.8), layout="constrained")
    _bars(
        ax,
        [commands[k] for k in keys],
        [[rep[k] for rep in r["repeats"]] for k in keys],
        horizontal=True,
    )
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale)")
    return fig


def backends(r: Result) -> Figure:
    models = {"age_gap": "age_gap CNN, 100x100", "fashion": "Fashion-MNIST CNN, 28x28"}
    backs = r["workload"]["backends"]
    precisions = r["workload"]["precisions"]
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2), layout="constrained")
    width = 0.8 / len(precisions)
    for ax, (model, title) in zip(axes, models.items(), strict=True):
        for j, precision in enumerate(precisions):
            xs = [i + (j - (len(precisions) - 1) / 2) * width for i in range(len(backs))]
            key = "{}_{}_{}_epoch_s"
            ax.bar(
                xs,
                [r["medians"][key.format(model, b, precision)] for b in backs],
                width,
                color=COLOURS[j],
                alpha=0.7,
                label=precision,
            )
            for x, b in zip(xs, backs, strict=True):
                reps = [rep[key.format(model, b, precision)] for rep in r["repeats"]]
                ax.plot([x] * len(reps), reps, "o", color=COLOURS[j], markersize=3)
        ax.set_xticks(range(len(backs)), backs)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_ylabel("seconds per epoch")
    axes[1].legend(frameon=False)
    return fig


def answer(r: Result) -> Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.5, 3), layout="constrained")
    ways = [rep for rep in r["repeats"] if rep.get("kind") == "way"]
    names = list(dict.fromkeys(rep["way"] for rep in ways))  # in the order they first ran
    _bars(left, names, [[w["cpu_s"] for w in ways if w["way"] == n] for n in names])
    left.set_ylabel("CPU seconds, run + report")
    left.set_title("the ablation, to its verdicts")
    _bars(right, names, [[w["epochs"] for w in ways if w["way"] == n] for n in names])
    right.set_ylabel("epochs trained")
    right.set_title("every row, every repeat")
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=8)
    return fig


def packing(r: Result) -> Figure:
    studies = r["workload"]["studies"]
    fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
    width = 0.38
    kinds = (("measured", "measured (CPU)"), ("analytic", "from shapes"))
    for j, (kind, label) in enumerate(kinds):
        xs = [i + (j - 0.5) * width for i in range(len(studies))]
        ax.bar(
            xs,
            [r["medians"][f"{s}_{kind}_mb"] for s in studies],
            width,
            color=COLOURS[j],
            alpha=0.7,
            label=label,
        )
    ax.set_xticks(range(len(studies)), studies)
    ax.set_ylabel("MB per trial (float32)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(frameon=False)
    return fig


PLOTS: dict[str, Plot] = {
    "overhead": Plot("Seconds per trial: bare Keras, sweeps, in a subprocess, autolog", overhead),
    "pruning": Plot("Epochs spent against the best val_acc, per strategy and seed", pruning),
    "workers": Plot("Trials per hour with one and two worker processes", workers),
    "liar": Plot("Best validation accuracy per seed, constant liar off and on", liar),
    "startup": Plot("Start-up time of each command, log scale", startup),
    "backends": Plot("Seconds per epoch on each Keras backend and precision", backends),
    "answer": Plot("CPU seconds and epochs to the verdicts, each way (a dot per round)", answer),
    "packing": Plot("GPU memory per trial, measured and computed from the layer shapes", packing),
}
