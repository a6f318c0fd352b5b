"""liar: TPE with and without the constant liar, with 4 workers sharing the quickstart study.

Each study is one real ``python -m sweeps run +study=quickstart sweep.workers=4`` (four
worker processes, ``train.threads=1`` each, on the local journal) of 24 trials, with
``sweep.constant_liar=true`` or ``false``; the two alternate within each seed (``seed=S``:
the models' initial weights, and through it every worker's sampler seed). The figure is the
best ``val_acc`` of the 24 trials, with how many trials sampled a point another trial had
already taken, and the mean of the five best trials (less noisy than the single best).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Result, child_env, fmt, median


@dataclass(frozen=True)
class Workload:
    workers: int
    overrides: list[str]
    seeds: int


FULL = Workload(4, ["sweep.n_trials=24", "train.verbose=0", "train.threads=1"], seeds=6)
QUICK = Workload(2, ["sweep.n_trials=2", "train.epochs=1", "train.verbose=0", "train.threads=1"],
                 seeds=1)  # fmt: skip


def command(work: Workload, liar: bool, seed: int) -> list[str]:
    liar_key = f"sweep.constant_liar={str(liar).lower()}"
    return ["python", "-m", "sweeps", "run", "+study=quickstart", f"sweep.workers={work.workers}",
            liar_key, f"seed={seed}", *work.overrides]  # fmt: skip


def run(quick: bool, repeats: int | None = None) -> Result:
    """Runs liar off and on for each seed, alternating which goes first."""
    work = QUICK if quick else FULL
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-liar-") as tmp:
        for seed in range(repeats or work.seeds):
            order = (False, True) if seed % 2 == 0 else (True, False)
            for liar in order:
                store = Path(tmp) / f"s{seed}-{'on' if liar else 'off'}"
                row = {"seed": seed, "liar": liar, **_run(work, liar, seed, store)}
                rows.append(row)
                print(f"liar: seed {seed} liar={liar}: best {row['best']:.4f} "
                      f"in {row['wall_s']:.0f}s", flush=True)  # fmt: skip
    return _result(work, rows)


def _run(work: Workload, liar: bool, seed: int, store: Path) -> dict[str, Any]:
    cmd = [sys.executable, *command(work, liar, seed)[1:], f"store_dir={store}"]
    store.mkdir(parents=True)
    log = store / "run.log"
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=REPO, env=child_env(), stdout=out,
                              stderr=subprocess.STDOUT).returncode  # fmt: skip
    wall = time.perf_counter() - start
    if code:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n" + "\n".join(tail))
    return {"wall_s": wall, **_measure(store)}


def _measure(store: Path) -> dict[str, Any]:
    import optuna

    from sweeps.config import StorageConfig
    from sweeps.storage import open_storage

    storage = open_storage(StorageConfig(), store, lambda s, t: None)
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials
    values = sorted((t.value for t in trials if t.value is not None), reverse=True)
    params = [tuple(sorted(t.params.items())) for t in trials]
    states = [t.state.name for t in trials]
    return {"trials": len(trials), "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "best": values[0],
            "top5_mean": statistics.fmean(values[:5]),
            "repeated_params": len(params) - len(set(params))}  # fmt: skip


def _result(work: Workload, rows: list[dict[str, Any]]) -> Result:
    by = {(r["seed"], r["liar"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    medians: dict[str, float] = {}
    for liar, name in ((True, "on"), (False, "off")):
        mine = [by[(s, liar)] for s in seeds]
        for key in ("best", "top5_mean", "pruned", "repeated_params", "wall_s"):
            medians[f"{name}_{key}"] = median(r[key] for r in mine)
        medians[f"{name}_best_mean"] = statistics.fmean(r["best"] for r in mine)
    wins = sum(by[(s, True)]["best"] > by[(s, False)]["best"] for s in seeds)
    ties = sum(by[(s, True)]["best"] == by[(s, False)]["best"] for s in seeds)
    medians["seeds_liar_better"], medians["seeds_tied"] = wins, ties
    ratios = {
        "best_on_over_off": median(by[(s, True)]["best"] / by[(s, False)]["best"] for s in seeds),
        "top5_on_over_off": median(
            by[(s, True)]["top5_mean"] / by[(s, False)]["top5_mean"] for s in seeds
        ),
    }
    table = [["seed", "best off", "best on", "top-5 off", "top-5 on", "repeats off/on"]]
    for s in seeds:
        off, on = by[(s, False)], by[(s, True)]
        table.append([str(s), fmt(off["best"], 4), fmt(on["best"], 4), fmt(off["top5_mean"], 4),
                      fmt(on["top5_mean"], 4),
                      f"{off['repeated_params']}/{on['repeated_params']}"])  # fmt: skip
    return Result(
        workload={"commands": {str(v): " ".join(command(work, v, 0)) for v in (False, True)},
                  "seeds": len(seeds), "workers": work.workers,
                  "store_dir": "a fresh folder per study (journal storage, MLflow SQLite)"},
        repeats=rows,
        medians=medians,
        ratios=ratios,
        table=table,
        notes=["best_on_over_off: median over seeds of best val_acc with the liar / without",
               "seed=S changes the initial weights and every worker's sampler seed; the "
               "workers' samplers also differ by process id, so no two runs are identical"],
    )  # fmt: skip
