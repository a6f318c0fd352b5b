"""workers: trials per hour of one study with 1 ``run`` process against 2 on the same host.

Real CLI processes (``python -m sweeps run +study=... store_dir=...``) on the local default
storage (the Optuna journal): one process with TensorFlow free to use every core, against two
started together with ``train.threads=1`` each, sharing the study. Two studies: the quickstart
(small trials, where graph building, evaluation and logging leave cores idle) and the age_gap
model on a generated folder (a CNN that keeps both cores busy alone on the full LAG folder).
Runs alternate one, two, one, two ... Trials per hour are counted two ways: over the wall time
from launch to the last exit (what a user waits), and over the span from the first trial's
start to the last trial's end in the storage (the steady state, without process start-up).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    Result,
    child_env,
    compose,
    epochs_trained,
    fmt,
    image_folder,
    median,
)


@dataclass(frozen=True)
class Workload:
    """Overrides per study; age_gap also gets a generated folder of ``per_class`` images.

    ``statement_trials`` are the two study sizes whose difference gives the RDB statements of
    one more trial; ``histories`` the finished-trial counts TPE samples against.
    """

    studies: dict[str, list[str]]
    per_class: dict[str, int]
    repeats: int
    statement_trials: tuple[int, int]
    histories: tuple[int, ...]


FULL = Workload(
    studies={"quickstart": ["sweep.n_trials=24", "train.verbose=0"],
             "age_gap": ["sweep.n_trials=12", "train.epochs=2", "train.verbose=0"]},
    per_class={"train": 300, "validation": 150, "test": 50},
    repeats=3,
    statement_trials=(5, 25),
    histories=(100, 1000),
)  # fmt: skip
# CI smoke test: the quickstart only, since every `run` process pays for its start-up.
QUICK = Workload({"quickstart": ["sweep.n_trials=2", "train.epochs=1", "train.verbose=0"]},
                 per_class={}, repeats=1, statement_trials=(1, 2), histories=(10,))  # fmt: skip
TARGETS = {"quickstart_two_over_one": ">= 1.3", "age_gap_two_over_one": ">= 0.9"}


def run(quick: bool, repeats: int | None = None) -> Result:
    """Runs each study with one process, then two, ``repeats`` times."""
    work = QUICK if quick else FULL
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        root = Path(tmp)
        studies = dict(work.studies)
        if "age_gap" in studies:
            studies["age_gap"] = _age_gap(studies["age_gap"], work.per_class, root)
        for r in range(repeats or work.repeats):
            for study, overrides in studies.items():
                for procs in (1, 2):
                    store = root / f"{study}-{procs}-{r}"
                    row = {"study": study, "processes": procs, "repeat": r,
                           **_run(study, overrides, procs, store)}  # fmt: skip
                    rows.append(row)
                    print(f"workers: {study} x{procs} repeat {r + 1}: {row['trials']} trials "
                          f"in {row['wall_s']:.0f}s", flush=True)  # fmt: skip
        service = service_costs(work, root / "service")
    return _result(work, studies, rows, service)


def _age_gap(extra: list[str], per_class: dict[str, int], root: Path) -> list[str]:
    """The age_gap overrides for a generated folder whose decoded cache is warmed once."""
    from sweeps.services import load_data

    folder = image_folder(root / "images", per_class, 100)
    overrides = [f"data.root={folder}", f"data.cache_dir={root / 'cache'}", *extra]
    load_data(compose("age_gap", *overrides, f"store_dir={root / 'warm'}"))
    return overrides


def command(study: str, overrides: list[str], procs: int) -> list[str]:
    """The command each process runs (``store_dir`` aside)."""
    threads = ["train.threads=1"] if procs > 1 else []
    return ["python", "-m", "sweeps", "run", f"+study={study}", *overrides, *threads]


def _run(study: str, overrides: list[str], procs: int, store: Path) -> dict[str, Any]:
    cmd = [sys.executable, *command(study, overrides, procs)[1:], f"store_dir={store}"]
    store.mkdir(parents=True)
    logs = [(store / f"worker-{i}.log").open("w") for i in range(procs)]
    start = time.perf_counter()
    workers = [subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=log,
                                stderr=subprocess.STDOUT) for log in logs]  # fmt: skip
    codes = [w.wait() for w in workers]
    wall = time.perf_counter() - start
    for log in logs:
        log.close()
    if any(codes):
        tail = (store / "worker-0.log").read_text().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd)} exited {codes}:\n" + "\n".join(tail))
    return _measure(study, store, wall)


def _measure(study: str, store: Path, wall: float) -> dict[str, Any]:
    """Trials, epochs and rates of the finished study, read back from its journal."""
    import optuna

    from sweeps.config import StorageConfig
    from sweeps.storage import open_storage

    storage = open_storage(StorageConfig(), store, lambda s, t: None)
    trials = optuna.load_study(study_name=study, storage=storage).trials
    span = (max(t.datetime_complete for t in trials)
            - min(t.datetime_start for t in trials)).total_seconds()  # fmt: skip
    epochs = sum(map(epochs_trained, trials))
    params = [tuple(sorted(t.params.items())) for t in trials]
    states = [t.state.name for t in trials]
    return {"trials": len(trials), "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"), "epochs": epochs,
            # Same parameters as an earlier trial: workers sampling the same points.
            "repeated_params": len(params) - len(set(params)),
            "wall_s": wall, "span_s": span, "per_hour": 3600 * len(trials) / wall,
            "per_hour_span": 3600 * len(trials) / span,
            "epochs_per_hour": 3600 * epochs / wall}  # fmt: skip


def _result(work: Workload, studies: dict[str, list[str]], rows: list[dict[str, Any]],
            service: dict[str, float]) -> Result:  # fmt: skip
    medians: dict[str, float] = dict(service)
    ratios: dict[str, float] = {}
    table = [["study", "processes", "trials/h", "trials/h (span)", "epochs/h", "wall s",
              "pruned", "repeated params", "two / one"]]  # fmt: skip
    keys = ("per_hour", "per_hour_span", "epochs_per_hour", "wall_s", "pruned", "repeated_params")
    for study in studies:
        for procs in (1, 2):
            mine = [r for r in rows if r["study"] == study and r["processes"] == procs]
            for key in keys:
                medians[f"{study}_{procs}_{key}"] = median(r[key] for r in mine)
        for key, name in (("per_hour", ""), ("per_hour_span", "_span"),
                          ("epochs_per_hour", "_epochs")):  # fmt: skip
            ratios[f"{study}_two_over_one{name}"] = _paired(rows, study, key)
        for procs in (1, 2):
            m = [medians[f"{study}_{procs}_{k}"] for k in keys]
            ratio = ratios[f"{study}_two_over_one"] if procs == 2 else 1.0
            table.append([study, str(procs), *(fmt(v, 0) for v in m), fmt(ratio, 3)])
    return Result(
        workload={
            "commands": {s: " ".join(command(s, o, 2)) for s, o in studies.items()},
            "one_process": "the same command without train.threads=1",
            "store_dir": "a fresh folder per run (journal storage, MLflow SQLite)",
            "age_gap_folder_images": {k: 2 * v for k, v in work.per_class.items()} or None,
            "repeats": len(rows) // (2 * len(studies)),
        },
        repeats=rows,
        medians=medians,
        ratios=ratios,
        targets={k: v for k, v in TARGETS.items() if k in ratios},
        table=table,
        notes=[
            "two / one is the median over repeats of paired trials-per-hour ratios (wall)",
            "each run samples its own trials, so the mix of cheap and costly configurations "
            "differs between runs; epochs/h and the repeats show how much",
            "rdb_statements_per_trial: SQL statements one more quickstart trial sends to the "
            "Optuna RDB storage (measured on SQLite: the same ORM statements as PostgreSQL)",
            "tpe_sample_ms_at_N: one ask + sample of the quickstart space by sweeps' TPE "
            "with N finished trials in the study",
        ],
    )


def _paired(rows: list[dict[str, Any]], study: str, key: str) -> float:
    one = {r["repeat"]: r[key] for r in rows if r["study"] == study and r["processes"] == 1}
    two = {r["repeat"]: r[key] for r in rows if r["study"] == study and r["processes"] == 2}
    return median(two[r] / one[r] for r in one)


# -- what one trial asks of the shared services, for the scaling estimate --------------------


def service_costs(work: Workload, root: Path) -> dict[str, float]:
    """RDB statements per trial and TPE sampling time against the study's size."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per in-memory study else
    small, large = work.statement_trials
    counts = [_statements(n, root / f"rdb-{n}") for n in (small, large)]
    costs = {"rdb_statements_per_trial": (counts[1] - counts[0]) / (large - small)}
    for n in work.histories:
        costs[f"tpe_sample_ms_at_{n}"] = _tpe_sample_ms(n)
    return costs


def _statements(n_trials: int, store: Path) -> int:
    """SQL statements a fresh quickstart study of ``n_trials`` sends to its RDB storage.

    The trainer is the test suite's scripted one: the storage sees exactly what a Keras trial
    sends (ask, attributes, one report per epoch, pruning checks, tell) in a fraction of a second.
    """
    import sqlalchemy

    from sweeps.runner import run_study
    from tests.fakes import FakeTrainer

    db = store / "optuna.db"
    cfg = compose("quickstart", f"storage.url=sqlite:///{db}", f"sweep.n_trials={n_trials}",
                  f"store_dir={store}")  # fmt: skip
    count = [0]

    def on_execute(conn: Any, *args: Any) -> None:
        if conn.engine.url.database == str(db):  # not MLflow's own SQLite database
            count[0] += 1

    store.mkdir(parents=True)
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", on_execute)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's experimental-heartbeat warnings
            run_study(cfg, trainer=FakeTrainer())
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", on_execute)
    return count[0]


def _tpe_sample_ms(history: int) -> float:
    """Median milliseconds of one ask + sample with ``history`` finished random trials."""
    import random

    import optuna

    from sweeps.space import sample
    from sweeps.storage import make_sampler

    cfg = compose("quickstart")
    rng = random.Random(0)
    past = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for _ in range(history):
        trial = past.ask()
        sample(trial, cfg.space)
        past.tell(trial, rng.random())
    study = optuna.create_study(direction="maximize",
                                sampler=make_sampler(cfg.sweep, cfg.space, cfg.seed))  # fmt: skip
    study.add_trials(past.trials)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        trial = study.ask()
        sample(trial, cfg.space)
        times.append(time.perf_counter() - start)
        study.tell(trial, rng.random())
    return 1000 * median(times)
