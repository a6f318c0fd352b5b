"""overhead: what one sweeps trial costs over the same training written by hand.

Seed 001's baseline CNN (conf/study/age_gap.yaml) trains four ways on one generated folder,
with the same data loader, tf.data pipeline (``sweeps.data.make_dataset``), model builder,
epochs and batch size, so that only the service around the training differs:

- ``bare``: what a careful user writes: ``model.fit`` with a best-by-val_acc
  ``ModelCheckpoint``, then the best model on the test split;
- ``sweeps``: one trial through the real engine (``run_study`` with ``sweep.n_trials=1``):
  sampling, journal storage, MLflow tracking, plots, checkpoint, test evaluation;
- ``sweeps_subprocess``: the same with ``train.subprocess=true``, as the GPU workers of
  docker-compose.yml run: every trial in a fresh process;
- ``autolog``: the common recipe: Optuna with ``mlflow.keras.autolog()`` and nested runs.

Each run is a fresh process, as a user's script or ``sweeps run`` is (autolog also patches
Keras for the rest of a process), and the ways alternate a b c d a b c d ... so the drift of a
shared machine spreads over all of them. "trial" runs from Optuna's ask to the queued end of
the trial's MLflow run for sweeps, over the objective for autolog, and over build-fit-test for
bare; "call" adds loading the data and, for sweeps, opening the storage and the tracker and
flushing the uploads at the end.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Result,
    child_result,
    compose,
    emit,
    fmt,
    image_folder,
    median,
    paired_ratio,
)

WAYS = ("bare", "sweeps", "sweeps_subprocess", "autolog")
STUDY = "age_gap"
# A one-point space: the single trial trains exactly the study's baseline.
SPACE = {"model": {"kernel_size": "choice(3)"}}


@dataclass(frozen=True)
class Workload:
    per_class: dict[str, int]
    size: int
    epochs: int
    repeats: int
    ways: tuple[str, ...] = WAYS

    def overrides(self, folder: Path, cache: Path) -> list[str]:
        return [f"data.root={folder}", f"data.cache_dir={cache}",
                f"data.image_size=[{self.size},{self.size}]",
                f"model.input_size=[{self.size},{self.size}]",
                f"train.epochs={self.epochs}", "train.verbose=0", "sweep.n_trials=1"]  # fmt: skip


# 2,400 train / 1,200 validation images as in the LAG folder, whose test split is 110 + 110.
FULL = Workload({"train": 1200, "validation": 600, "test": 110}, size=100, epochs=3, repeats=5)
# CI smoke test: tests/test_isolated.py covers train.subprocess, which costs a process start.
QUICK = Workload({"train": 16, "validation": 8, "test": 4}, size=32, epochs=1, repeats=1,
                 ways=("bare", "sweeps", "autolog"))  # fmt: skip


def run(quick: bool, repeats: int | None = None) -> Result:
    """Runs every way ``repeats`` times, interleaved, each run in a fresh process."""
    work = QUICK if quick else FULL
    n = repeats or work.repeats
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        root = Path(tmp)
        overrides = work.overrides(image_folder(root / "images", work.per_class, work.size),
                                   root / "cache")  # fmt: skip
        _warm_cache(overrides, root)
        if not quick:
            child_result("overhead", "warmup")  # pages the libraries into the OS cache, untimed
        rows = []
        for r in range(n):
            row: dict[str, Any] = {"repeat": r}
            for way in work.ways:
                got = child_result("overhead", way, f"store_dir={root / f'{way}-{r}'}", *overrides)
                row.update({f"{way}_{key}": value for key, value in got.items()})
            rows.append(row)
            print(f"overhead: repeat {r + 1}/{n}: " + ", ".join(
                f"{w} {row[f'{w}_trial_s']:.1f}s ({row[f'{w}_trial_cpu_s']:.1f}s CPU)"
                for w in work.ways), flush=True)  # fmt: skip
    return _result(work, overrides, rows)


def _warm_cache(overrides: list[str], root: Path) -> None:
    """Decodes the folder once into the shared cache, so no way pays for decoding."""
    from sweeps.services import load_data

    load_data(compose(STUDY, *overrides, f"store_dir={root / 'warm'}", space=SPACE))


def _result(work: Workload, overrides: list[str], rows: list[dict[str, Any]]) -> Result:
    keys = [k for k in rows[0] if k != "repeat"]
    medians = {k: median(row[k] for row in rows) for k in keys}
    ratios = {}
    for way in work.ways[1:]:
        ratios[f"{way}_over_bare"] = paired_ratio(rows, f"{way}_trial_s", "bare_trial_s")
        ratios[f"{way}_cpu_over_bare"] = paired_ratio(rows, f"{way}_trial_cpu_s",
                                                      "bare_trial_cpu_s")  # fmt: skip
        ratios[f"{way}_call_over_bare"] = paired_ratio(rows, f"{way}_call_s", "bare_call_s")
    sizes = "/".join(str(2 * work.per_class[s]) for s in ("train", "validation", "test"))
    return Result(
        workload={
            "study": STUDY,
            "model": "baseline CNN (618,593 parameters at 100x100)",
            "images_train_validation_test": sizes,
            "image_size": work.size,
            "epochs": work.epochs,
            "batch_size": 16,
            "augment": "flip, shear 0.2, zoom 0.2",
            "repeats": len(rows),
            "sweeps_overrides": overrides,
            "space": SPACE,
        },
        repeats=rows,
        medians=medians,
        ratios=ratios,
        targets={"sweeps_over_bare": "<= 1.03", "sweeps_cpu_over_bare": "<= 1.03"},
        table=_table(work.ways, medians, ratios),
        notes=[
            "ratios are medians of per-repeat ratios (the ways of a repeat ran back to back)",
            "CPU seconds count every thread of the process and its ended children; they move "
            "less than wall seconds when other jobs share the cores",
            "sweeps call = run_study(): sweeps_setup_s before the trial and sweeps_teardown_s "
            "after it (MLflow uploads flushed) are paid once per worker process, not per trial",
        ],
    )


def _table(ways: tuple[str, ...], medians: dict[str, float],
           ratios: dict[str, float]) -> list[list[str]]:  # fmt: skip
    table = [["way", "trial s", "trial CPU s", "call s", "trial / bare", "CPU / bare",
              "call / bare", "val_acc", "test_acc"]]  # fmt: skip
    for way in ways:
        m = {k: medians[f"{way}_{k}"] for k in ("trial_s", "trial_cpu_s", "call_s")}
        r = [ratios.get(f"{way}{k}_over_bare", 1.0) for k in ("", "_cpu", "_call")]
        table.append([way, fmt(m["trial_s"]), fmt(m["trial_cpu_s"]), fmt(m["call_s"]),
                      *(fmt(x, 3) for x in r), fmt(medians[f"{way}_val_acc"], 4),
                      fmt(medians[f"{way}_test_acc"], 4)])  # fmt: skip
    return table


# -- the children: one way, one fresh process ------------------------------------------------


def child(way: str, overrides: list[str]) -> dict[str, Any]:
    """Runs one way and returns its timings and accuracies."""
    # Imported before any clock starts: every way needs TensorFlow and the pipeline.
    import keras  # noqa: F401
    import sweeps.data.pipeline  # noqa: F401
    from sweeps.models.compile import compile_model  # noqa: F401

    extra = ["train.subprocess=true"] if way == "sweeps_subprocess" else []
    cfg = compose(STUDY, *overrides, *extra, space=SPACE)
    load = {"load_average": os.getloadavg()[0]}  # how busy the shared machine was
    run = {"bare": _bare, "sweeps": _sweeps, "sweeps_subprocess": _sweeps, "autolog": _autolog}
    return load | run[way](cfg)


def _bare(cfg: Any) -> dict[str, Any]:
    from sweeps.services import load_data

    call = _Clock()
    data = load_data(cfg)
    trial = _Clock()
    val_acc, test_acc = train_by_hand(cfg, data, cfg.store_dir / "best.keras")
    return {**trial.read("trial"), **call.read("call"), "val_acc": val_acc, "test_acc": test_acc}


class _Clock:
    """Wall and CPU seconds since creation."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), _cpu()

    def read(self, name: str) -> dict[str, float]:
        return {f"{name}_s": time.perf_counter() - self.wall, f"{name}_cpu_s": _cpu() - self.cpu}


def _cpu() -> float:
    """CPU seconds of every thread of this process and of its ended child processes.

    The children count: a trial's own process (``train.subprocess``), and the one autolog
    starts to infer the model's pip requirements.
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def train_by_hand(cfg: Any, data: Any, checkpoint: Path) -> tuple[float, float]:
    """Seed, build, fit keeping the best epoch by val_acc on disk, test that best model.

    Returns:
        The best val_acc and the test accuracy of the best epoch's model.
    """
    import keras
    from sweeps.data import AugmentSpec, make_dataset
    from sweeps.models import create_model
    from sweeps.models.compile import compile_model

    keras.utils.set_random_seed(cfg.seed)
    size = tuple(cfg.model["input_size"])
    shape = (*size, data.image_shape[2])
    kwargs = {k: v for k, v in cfg.model.items() if k not in ("name", "input_size")}
    model = create_model(cfg.model["name"], input_shape=shape, num_classes=data.num_classes,
                         **kwargs)  # fmt: skip
    compile_model(model, optimizer=cfg.train.optimizer, learning_rate=cfg.train.learning_rate,
                  num_classes=data.num_classes, jit_compile=cfg.train.jit_compile)  # fmt: skip
    common = {"batch_size": cfg.train.batch_size, "image_size": size, "channels": shape[2]}
    train = make_dataset(data.train, augment=AugmentSpec.from_dict(cfg.train.augment),
                         shuffle=True, seed=cfg.seed, **common)  # fmt: skip
    best = keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_acc", mode="max",
                                           save_best_only=True)  # fmt: skip
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    history = model.fit(train, validation_data=make_dataset(data.validation, **common),
                        epochs=cfg.train.epochs, callbacks=[best], verbose=0)  # fmt: skip
    best_model = keras.models.load_model(checkpoint)
    _, test_acc = best_model.evaluate(make_dataset(data.test, **common), verbose=0)
    return max(history.history["val_acc"]), float(test_acc)


def _sweeps(cfg: Any) -> dict[str, Any]:
    import optuna

    from sweeps.engine import Engine
    from sweeps.runner import run_study
    from sweeps.storage import open_storage

    clocked = _clock_each_trial(Engine)
    call = _Clock()
    if run_study(cfg) != 0:
        raise RuntimeError("run_study was interrupted")
    called = call.read("call")
    storage = open_storage(cfg.storage, cfg.store_dir, lambda study, trial: None)
    trial = optuna.load_study(study_name=cfg.sweep.name, storage=storage).trials[0]
    if trial.state.name != "COMPLETE":
        raise RuntimeError(f"the trial ended {trial.state.name}: {trial.user_attrs}")
    ((trial_start, timed),) = clocked
    setup = trial_start - call.wall
    return {**timed, **called, "setup_s": setup,
            "teardown_s": called["call_s"] - setup - timed["trial_s"],
            "val_acc": trial.value, "test_acc": trial.user_attrs["test_acc"]}  # fmt: skip


def _clock_each_trial(engine: type) -> list[tuple[float, dict[str, float]]]:
    """Wraps ``Engine.run_one`` to clock each trial, from ask to its run's queued end.

    Instrumentation only: the method runs unchanged. Returns the list it fills with each
    trial's start and its wall and CPU seconds.
    """
    clocked: list[tuple[float, dict[str, float]]] = []
    run_one = engine.run_one

    def timed(self: Any) -> str:
        clock = _Clock()
        try:
            return run_one(self)
        finally:
            clocked.append((clock.wall, clock.read("trial")))

    engine.run_one = timed
    return clocked


def _autolog(cfg: Any) -> dict[str, Any]:
    call = _Clock()
    # The recipe being compared, so mlflow is imported here; the service itself talks to
    # MLflow only through sweeps.tracking.
    import mlflow
    import optuna

    from sweeps.services import load_data

    data = load_data(cfg)
    store = cfg.store_dir.resolve()
    store.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.create_experiment(cfg.sweep.name, artifact_location=(store / "artifacts").as_uri())
    mlflow.set_experiment(cfg.sweep.name)
    mlflow.keras.autolog()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        clock = _Clock()
        trial.suggest_categorical("kernel_size", [3])
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params(trial.params)  # autolog logs the fit arguments itself
            val_acc, test_acc = train_by_hand(cfg, data, store / "best.keras")
            mlflow.log_metrics({"best_val_acc": val_acc, "test_acc": test_acc})
        trial.set_user_attr("test_acc", test_acc)
        trial.set_user_attr("clock", clock.read("trial"))
        return val_acc

    with mlflow.start_run(run_name=cfg.sweep.name):
        study = optuna.create_study(direction="maximize")
        study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    return {**trial.user_attrs["clock"], **call.read("call"), "val_acc": trial.value,
            "test_acc": trial.user_attrs["test_acc"]}  # fmt: skip


def _warmup() -> dict[str, Any]:
    import keras  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import optuna  # noqa: F401

    return {}


if __name__ == "__main__":
    way, *rest = sys.argv[1:]
    emit(_warmup() if way == "warmup" else child(way, rest))
