"""The `run` command: builds every service once, in one place, and hands them to the engine."""

from __future__ import annotations

import logging
import os
import subprocess
import zlib
from pathlib import Path
from typing import Any

from sweeps.config import RunConfig, check_own_code
from sweeps.errors import ConfigError
from sweeps.precision import describe as describe_precision

log = logging.getLogger("sweeps.run")


def load_data(cfg: RunConfig) -> Any:
    """Loads the study's dataset, failing before any trial with the path and layout expected."""
    from sweeps.data import load_dataset

    own = {"name", "loader"}  # the registry name, or a user's own loader's module:function
    kwargs = {k: v for k, v in cfg.data.items() if k not in own and v is not None}
    if kwargs.get("root") == "???":
        raise ConfigError(
            f"data.root is not set: give data.root=/path/to/images for study '{cfg.study}' "
            f"({_layout_hint(cfg.data)})"
        )
    return load_dataset(cfg.data.get("loader") or cfg.data["name"], **kwargs)


def remove_empty_dirs(folder: Path, top: Path) -> None:
    """Removes ``folder`` and its parents below ``top`` while they are empty (a folder still
    in use by another worker holds its trial folders, so it stays)."""
    top = top.resolve()
    path = folder.resolve()
    while path != top and path.is_relative_to(top):
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def _layout_hint(data: dict[str, Any]) -> str:
    if data.get("layout") == "classes":
        return "layout: DIR/<class>/*.jpg"
    return "layout: DIR/{train,validation,test}/<class>/*.jpg"


def data_info(data: Any) -> dict[str, Any]:
    """What the run records about its dataset (tags on every MLflow run)."""
    sizes = {name: len(getattr(data, name).y) for name in ("train", "validation", "test")}
    return {
        "fingerprint": data.fingerprint,
        "source": data.source,
        "skipped_files": data.skipped,
        "sizes": "/".join(str(sizes[k]) for k in ("train", "validation", "test")),
        "classes": ",".join(data.class_names),
    }


def git_commit() -> str:
    """The commit of the sweeps code that runs: ``SWEEPS_GIT_COMMIT`` (set when the worker
    image is built), else the checkout's HEAD, else ''."""
    if os.environ.get("SWEEPS_GIT_COMMIT"):
        return os.environ["SWEEPS_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def sampler_seed(cfg: RunConfig) -> int:
    """``sweep.sampler_seed``, else one derived from ``seed`` and this worker process."""
    if cfg.sweep.sampler_seed is not None:
        return cfg.sweep.sampler_seed
    from sweeps.storage import worker_id

    return (cfg.seed * 1_000_003 + zlib.crc32(worker_id().encode())) % 2**31


def open_tracker(cfg: RunConfig) -> Any:
    from sweeps.tracking import Tracker, default_uri

    uri = cfg.tracking.uri or default_uri(cfg.store_dir)
    local = cfg.tracking.uri is None
    return Tracker(
        uri,
        cfg.sweep.name,
        artifact_root=(cfg.store_dir / "artifacts") if local or uri.startswith("sqlite") else None,
        spool_dir=cfg.store_dir / "spool",
    )


def run_study(cfg: RunConfig, trainer: Any = None, progress: Any = None) -> int:
    """Runs the study; returns the exit code (0, or 130/143 when interrupted).

    Args:
        cfg: The validated config.
        trainer: A trainer to use instead of Keras (tests pass a scripted one).
        progress: A progress display; None picks the console one.
    """
    from sweeps.engine import Engine
    from sweeps.progress import ConsoleProgress
    from sweeps.storage import make_pruner, make_sampler, open_storage

    engine_ref: list[Engine] = []
    storage = open_storage(
        cfg.storage, cfg.store_dir, lambda study, trial: engine_ref[0].on_dead_trial(study, trial)
    )
    tracker = open_tracker(cfg)
    try:
        keras = trainer is None
        if keras:
            progress = progress or ConsoleProgress(
                cfg.sweep.name, cfg.sweep.metric, store_dir=cfg.store_dir, study_arg=cfg.study
            )
        engine = Engine(
            cfg,
            storage=storage,
            tracker=tracker,
            trainer=trainer,
            sampler=make_sampler(cfg.sweep, cfg.space, sampler_seed(cfg)),
            pruner=make_pruner(cfg.sweep, cfg.train.epochs),
            progress=progress,
            git_commit=git_commit(),
        )
        engine_ref.append(engine)
        # A finished study has nothing to train: it loads no data and imports no TensorFlow.
        if keras and engine.has_work():
            engine.attach(*_prepare_keras(cfg, progress))
        summary = engine.run()
    finally:
        tracker.close()  # every upload done: the trials' scratch folders are gone
        remove_empty_dirs(cfg.store_dir / "work" / cfg.sweep.name, cfg.store_dir)
    if progress is not None:
        progress.summary(summary, engine.study)
    return summary.interrupted.exit_code if summary.interrupted else 0


def _prepare_keras(cfg: RunConfig, progress: Any) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """Loads the data and sets the backend up; returns the trainer, data tags, backend tags."""
    check_own_code(cfg)  # a user's builder or loader: imported, its arguments checked
    data = load_data(cfg)
    info = data_info(data)
    n_train, n_val, n_test = info["sizes"].split("/")
    progress.note(
        f"data: {n_train} train / {n_val} validation / {n_test} test images from "
        f"{data.source}; skipped {data.skipped} unreadable files"
    )
    progress.note(describe_precision(cfg.train.precision)[1])
    from sweeps.quiet import quiet_stderr

    with quiet_stderr():  # TensorFlow's import banner and GPU probe
        trainer = _keras_trainer(cfg, data)
    tags = _backend_tags(cfg)
    progress.note(f"backend: {tags['sweeps.backend']} {tags['sweeps.backend_version']}")
    return trainer, info, tags


def _keras_trainer(cfg: RunConfig, data: Any) -> Any:
    if cfg.train.subprocess:
        from sweeps.isolated import SubprocessTrainer

        return SubprocessTrainer(data)  # each trial's process sets its backend up itself
    from sweeps import backend

    name = backend.select(cfg.train.backend)  # before the trainer imports Keras
    from sweeps.trainer import KerasTrainer, configure_tensorflow

    if name == "tensorflow":  # another backend's worker need not have TensorFlow at all
        configure_tensorflow(cfg.train.threads, gpu_memory_mb=cfg.train.gpu_memory_mb)
    else:
        backend.configure(name, cfg.train.threads)
    return KerasTrainer(data)


def _backend_tags(cfg: RunConfig) -> dict[str, str]:
    """Tags naming the backend the trials train on: a trial process's own, or this one's."""
    from sweeps import backend

    name = cfg.train.backend if cfg.train.subprocess else backend.in_use(cfg.train.backend)
    return backend.run_tags(name)
