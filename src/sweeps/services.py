"""The services every command builds from config, built here once: no command imports another.

Storage (read-write for `run`, read-only for `report` and the launcher's view), the MLflow
tracker, the dataset, and the Keras trainer with its backend set up. The heavy libraries
(Optuna, MLflow, TensorFlow) are imported by the modules these functions call, when called.
"""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path
from typing import Any

from sweeps import backend, host
from sweeps.config import RunConfig, check_own_code
from sweeps.data import load_dataset
from sweeps.errors import ConfigError
from sweeps.isolated import SubprocessTrainer
from sweeps.precision import describe as describe_precision
from sweeps.quiet import quiet_stderr
from sweeps.storage import FailedTrialCallback, is_journal, open_storage, resolve_url
from sweeps.tracking import Tracker, default_uri
from sweeps.trainer import KerasTrainer, configure_tensorflow


def open_tracker(cfg: RunConfig) -> Tracker:
    """The study's MLflow tracker: the tracking URI, or the embedded SQLite store."""
    uri = cfg.tracking.uri or default_uri(cfg.store_dir)
    local = cfg.tracking.uri is None
    return Tracker(
        uri,
        cfg.sweep.name,
        artifact_root=(cfg.store_dir / "artifacts") if local or uri.startswith("sqlite") else None,
        spool_dir=cfg.store_dir / "spool",
    )


def study_storage(cfg: RunConfig, on_dead_trial: FailedTrialCallback | None = None) -> Any:
    """The study's Optuna storage; ``on_dead_trial`` is called for trials of dead workers."""
    return open_storage(cfg.storage, cfg.store_dir, on_dead_trial or (lambda study, trial: None))


def existing_study(cfg: RunConfig) -> Any | None:
    """The study from its storage, to read; None when it does not exist (nothing created)."""
    import optuna

    url = resolve_url(cfg.storage, cfg.store_dir)
    if is_journal(url) and not Path(url).is_file():  # opening it would create an empty one
        return None
    try:
        return optuna.load_study(study_name=cfg.sweep.name, storage=study_storage(cfg))
    except KeyError:
        return None


def load_data(cfg: RunConfig) -> Any:
    """Loads the study's dataset, failing before any trial with the path and layout expected."""
    own = {"name", "loader"}  # the registry name, or a user's own loader's module:function
    kwargs = {k: v for k, v in cfg.data.items() if k not in own and v is not None}
    if kwargs.get("root") == "???":
        raise ConfigError(
            f"data.root is not set: give data.root=/path/to/images for study '{cfg.study}' "
            f"({_layout_hint(cfg.data)})"
        )
    return load_dataset(cfg.data.get("loader") or cfg.data["name"], **kwargs)


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
    return (cfg.seed * 1_000_003 + zlib.crc32(host.worker_id().encode())) % 2**31


def prepare_keras(cfg: RunConfig, progress: Any) -> tuple[Any, dict[str, Any], dict[str, str]]:
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
    with quiet_stderr():  # TensorFlow's import banner and GPU probe
        trainer = keras_trainer(cfg, data)
    tags = backend_tags(cfg)
    progress.note(f"backend: {tags['sweeps.backend']} {tags['sweeps.backend_version']}")
    return trainer, info, tags


def keras_trainer(cfg: RunConfig, data: Any) -> Any:
    """The trainer of this worker: in-process on the selected backend, or a process per trial."""
    if cfg.train.subprocess:
        # Each trial's process sets its backend up itself, inheriting JAX's memory settings
        # from here: a gpu_memory_mb it cannot apply is refused once, before any trial.
        backend.prepare_memory(cfg.train.backend, cfg.train.gpu_memory_mb)
        return SubprocessTrainer(data)
    name = backend.select(cfg.train.backend)  # before the trainer imports Keras
    if name == "tensorflow":  # another backend's worker need not have TensorFlow at all
        configure_tensorflow(cfg.train.threads, gpu_memory_mb=cfg.train.gpu_memory_mb)
    else:  # the memory cap too, before Keras imports the backend
        backend.configure(name, cfg.train.threads, cfg.train.gpu_memory_mb)
    return KerasTrainer(data)


def backend_tags(cfg: RunConfig) -> dict[str, str]:
    """Tags naming the backend the trials train on: a trial process's own, or this one's."""
    name = cfg.train.backend if cfg.train.subprocess else backend.in_use(cfg.train.backend)
    return backend.run_tags(name)
