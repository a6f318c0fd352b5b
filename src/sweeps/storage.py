"""Optuna storage, sampler and pruner, built from config.

The embedded default is a journal file (Optuna's backend made for several processes on one
host; SQLite with several writers is not). Any RDB URL gives RDBStorage with heartbeats, so a
worker that dies mid-trial has that trial failed and retried by another worker. Journal
storage has no heartbeats: a dead local worker is found by its process id instead.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweeps import host
from sweeps.config import StorageConfig, SweepConfig
from sweeps.errors import ConfigError, StorageUnreachable, mask_url
from sweeps.space import Param, grid_space

FailedTrialCallback = Callable[[Any, Any], None]

log = logging.getLogger("sweeps.storage")


def resolve_url(cfg: StorageConfig, store_dir: Path) -> str:
    """The storage URL, with the embedded default filled in."""
    return cfg.url or str((store_dir / "optuna.journal").resolve())


def is_journal(url: str) -> bool:
    return "://" not in url


def open_storage(
    cfg: StorageConfig, store_dir: Path, failed_trial_callback: FailedTrialCallback
) -> Any:
    """Opens (creating if needed) the study storage.

    Args:
        cfg: Storage section of the config.
        store_dir: Folder of the embedded default.
        failed_trial_callback: Called with ``(study, frozen_trial)`` for each trial found dead.

    Raises:
        StorageUnreachable: within about 15 s, naming the URL with its password masked.
    """
    import optuna

    url = resolve_url(cfg, store_dir)
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        except OSError as exc:
            raise StorageUnreachable(f"Optuna journal {url} cannot be opened: {exc}") from None
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "mysql")):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        return _rdb_storage(url, cfg, engine_kwargs, failed_trial_callback)
    except Exception as exc:
        raise StorageUnreachable(
            f"Optuna storage {mask_url(url)} is unreachable ({type(exc).__name__}: "
            f"{mask_url(str(exc)).splitlines()[0][:160]}); check storage.url and that the "
            "database is running"
        ) from None


def _rdb_storage(
    url: str,
    cfg: StorageConfig,
    engine_kwargs: dict[str, Any],
    failed_trial_callback: FailedTrialCallback,
    attempts: int = 5,
) -> Any:
    """RDBStorage, retried while other workers create the schema of an empty database.

    Workers started together (``docker compose up --scale worker=N``) all try to create
    Optuna's tables; PostgreSQL lets one win and fails the others with a duplicate table or
    type. Those succeed on a second try, once the tables exist.
    """
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeat is marked experimental
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=cfg.heartbeat_interval,
                    grace_period=cfg.grace_period,
                    heartbeat_stale_trial_callback=failed_trial_callback,
                )
        except (IntegrityError, ProgrammingError):
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt + random.random() * 0.5)


def make_sampler(sweep: SweepConfig, space: list[Param], seed: int) -> Any:
    """The sampler named by ``sweep.sampler``."""
    import optuna

    name = sweep.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
        if name == "tpe":
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=sweep.startup_trials,
                multivariate=True,
                group=True,
                constant_liar=_constant_liar(sweep),
            )
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "grid":
            return optuna.samplers.GridSampler(grid_space(space), seed=seed)
        if name == "cmaes":
            _require("cmaes", "sweep.sampler=cmaes", "cmaes")
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=sweep.startup_trials)
        if name == "gp":
            _require("torch", "sweep.sampler=gp", "torch")
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=sweep.startup_trials)
    raise ConfigError(f"sweep.sampler={name!r}: valid samplers: tpe, random, grid, cmaes, gp")


def _constant_liar(sweep: SweepConfig) -> bool:
    """``sweep.constant_liar``; ``auto`` is on when other workers share the study.

    With N workers, N trials run before any of them reports; the liar counts the running ones
    as bad results, so the next worker samples elsewhere instead of next to them.
    """
    if isinstance(sweep.constant_liar, bool):
        return sweep.constant_liar
    return host.sharing_workers(sweep.workers) > 1


def _require(module: str, what: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{what} needs the package {package}: pip install {package}")


def make_pruner(sweep: SweepConfig, epochs: int) -> Any:
    """The pruner named by ``sweep.pruner``; ablations never prune (every repeat counts)."""
    import optuna

    if sweep.mode == "ablation" or sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=sweep.startup_trials, n_warmup_steps=sweep.warmup_epochs
        )
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, sweep.warmup_epochs),
            max_resource=max(epochs, 2),
            reduction_factor=3,
        )
    raise ConfigError(f"sweep.pruner={sweep.pruner!r}: valid pruners: median, hyperband, none")


class Heartbeat:
    """Records the trial's heartbeat in a thread, for storages that support it."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        from optuna.storages._heartbeat import is_heartbeat_enabled

        self.storage, self.trial_id = storage, trial_id
        self.enabled = is_heartbeat_enabled(storage)
        self._stop = threading.Event()

    def __enter__(self) -> Heartbeat:
        if self.enabled:
            self.storage.record_heartbeat(self.trial_id)
            self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")
            self._thread.start()
        return self

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval() or 60
        while not self._stop.wait(interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:
                log.warning("heartbeat failed: %s", mask_url(str(exc))[:200])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
