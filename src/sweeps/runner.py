"""The `run` command: the services from :mod:`sweeps.services`, handed to the engine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sweeps import services
from sweeps.config import RunConfig
from sweeps.engine import Engine
from sweeps.progress import ConsoleProgress
from sweeps.storage import make_pruner, make_sampler

log = logging.getLogger("sweeps.run")


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


def run_study(cfg: RunConfig, trainer: Any = None, progress: Any = None) -> int:
    """Runs the study; returns the exit code (0, or 130 / 75 when interrupted / pre-empted).

    Args:
        cfg: The validated config.
        trainer: A trainer to use instead of Keras (tests pass a scripted one).
        progress: A progress display; None picks the console one.
    """
    engine_ref: list[Engine] = []
    storage = services.study_storage(
        cfg, lambda study, trial: engine_ref[0].on_dead_trial(study, trial)
    )
    tracker = services.open_tracker(cfg)
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
            sampler=make_sampler(cfg.sweep, cfg.space, services.sampler_seed(cfg)),
            pruner=make_pruner(cfg.sweep, cfg.train.epochs),
            progress=progress,
            git_commit=services.git_commit(),
        )
        engine_ref.append(engine)
        # A finished study has nothing to train: it loads no data and imports no TensorFlow.
        if keras and engine.has_work():
            engine.attach(*services.prepare_keras(cfg, progress))
        summary = engine.run()
    finally:
        tracker.close()  # every upload done: the trials' scratch folders are gone
        remove_empty_dirs(cfg.store_dir / "work" / cfg.sweep.name, cfg.store_dir)
    if progress is not None:
        progress.summary(summary, engine.study)
    return summary.interrupted.exit_code if summary.interrupted else 0
