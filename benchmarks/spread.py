"""Which measure should an ablation decide on? The paired seed spread of each, on real data.

The rows of ``fashion_mnist_dropout`` (baseline, dropout) on real Fashion-MNIST through the
CLI, ``data.limit`` images per split (12,000 train, 12,000 validation, the full 10,000 test),
the study's 20 epochs, patience off, ``repeats`` seeds paired by seed. For every candidate
measure, from the trials' stored per-epoch history and test metrics:

- ``test_acc``: the test accuracy of the best-validation epoch's weights (the decision so far);
- ``val_acc_best``: the best epoch's validation accuracy (selected as the maximum: biased up,
  shown for comparison, never decided on);
- ``val_acc_last3`` / ``val_acc_last5``: the mean validation accuracy of the last 3 / 5 epochs
  (a fixed window, no selection: honest);

the mean paired difference (dropout - baseline) and its paired standard deviation, and the
repeats a paired t test would need to tell the observed difference from 0 at that spread.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Result, child_env, compose, fmt

STUDY = "fashion_mnist_dropout"
MEASURES = ("test_acc", "val_acc_best", "val_acc_last3", "val_acc_last5")


def val_curve(trial: Any) -> list[float]:
    """A finished trial's validation accuracy per epoch, from its stored history."""
    return [float(h["val_acc"]) for h in trial.user_attrs.get("history") or [] if "val_acc" in h]


def measures(trial: Any) -> dict[str, float]:
    """Every candidate measure of one finished trial."""
    val = val_curve(trial)
    return {
        "test_acc": float(trial.user_attrs.get("test_acc", math.nan)),
        "val_acc_best": float(trial.user_attrs.get("val_acc", max(val, default=math.nan))),
        "val_acc_last3": float(np.mean(val[-3:])) if val else math.nan,
        "val_acc_last5": float(np.mean(val[-5:])) if val else math.nan,
    }


def equal_spread_p(a: Any, b: Any) -> float:
    """Two-sided p of the Pitman-Morgan test that two paired samples have equal variances: the
    correlation of their sums and differences (Pitman 1939, Morgan 1939); nan below 3 pairs or
    when the two samples are the same."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or np.allclose(a, b) or np.ptp(a + b) == 0:
        return math.nan
    return float(stats.pearsonr(a + b, a - b).pvalue)


def repeats_to_decide(diff: float, sd: float, alpha: float = 0.05) -> int | None:
    """The smallest n whose paired t test rejects 0 at this mean and spread (None: > 200)."""
    from scipy import stats

    if sd == 0 or math.isnan(sd) or math.isnan(diff):
        return None
    for n in range(2, 201):
        if abs(diff) / (sd / math.sqrt(n)) > stats.t.ppf(1 - alpha / 2, n - 1):
            return n
    return None


def run(quick: bool = False, repeats: int | None = None) -> Result:
    repeats = repeats or (2 if quick else 5)
    limit, epochs = (600, 2) if quick else (12_000, 20)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        overrides = [
            "sweep.mode=ablation", f"sweep.repeats={repeats}", f"data.limit={limit}",
            f"train.epochs={epochs}", "train.patience=null", "train.precision=float32",
            f"store_dir={store}", "sweep.name=spread",
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sweeps", "run", f"+study={STUDY}", *overrides],
                       check=True, env=child_env(), timeout=6 * 3600)  # fmt: skip
        wall = time.perf_counter() - started
        cfg = compose(STUDY, *overrides)
        import optuna

        from sweeps.services import study_storage

        study = optuna.load_study(study_name="spread", storage=study_storage(cfg))
        trials = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    rows: dict[str, dict[int, dict[str, float]]] = {}
    curves: dict[str, dict[int, list[float]]] = {}  # per-epoch val_acc, for other windows later
    for t in trials:
        variant, seed = t.params["ablation.variant"], int(t.params["ablation.repeat"])
        rows.setdefault(variant, {})[seed] = measures(t)
        curves.setdefault(variant, {})[seed] = val_curve(t)
    base, dropout = rows.get("baseline", {}), rows.get("dropout", {})
    seeds = sorted(set(base) & set(dropout))
    table = [["measure", "mean diff (points)", "paired sd (points)", "repeats to decide"]]
    medians: dict[str, float] = {}
    per_seed = []
    paired: dict[str, Any] = {}
    for m in MEASURES:
        d = paired[m] = np.array([dropout[s][m] - base[s][m] for s in seeds])
        diff, sd = float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else math.nan
        need = repeats_to_decide(diff, sd)
        medians[f"{m}_diff"], medians[f"{m}_sd"] = diff, sd
        table.append([m, fmt(100 * diff), fmt(100 * sd), str(need or "> 200")])
    for s in seeds:
        per_seed.append(
            {
                "seed": s,
                "baseline": base[s],
                "dropout": dropout[s],
                "val_acc_per_epoch": {v: curves[v][s] for v in ("baseline", "dropout")},
            }
        )
    honest = ("test_acc", "val_acc_last3", "val_acc_last5")
    best = min(honest, key=lambda m: medians[f"{m}_sd"])
    medians["equal_sd_p_chosen_vs_test_acc"] = equal_spread_p(paired[best], paired["test_acc"])
    return Result(
        workload={
            "study": STUDY,
            "rows": ["baseline", "dropout"],
            "repeats": repeats,
            "limit_per_split": limit,
            "epochs": epochs,
            "patience": None,
            "precision": "float32",
            "wall_s": wall,
            "chosen_measure": best,
        },  # fmt: skip
        repeats=per_seed,
        medians=medians,
        # The lowest honest paired spread over the decision so far (test_acc): below 1, the
        # chosen measure decides in fewer repeats at the same difference.
        ratios={"chosen_sd_over_test_acc_sd": medians[f"{best}_sd"] / medians["test_acc_sd"]},
        table=table,
        notes=[
            f"lowest paired spread among the honest measures: {best}",
            "val_acc_best is the maximum over epochs (selected), shown only for comparison",
            f"{len(seeds)} seeds paired; {limit} images per split (test: all 10,000 when "
            "limit >= 10,000)",
        ],
    )
