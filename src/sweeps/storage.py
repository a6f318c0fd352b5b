"""Optuna storage, sampler and pruner, built from config.

The embedded default is a journal file (Optuna's backend made for several processes on one
host; SQLite with several writers is not). Any RDB URL gives RDBStorage with heartbeats, so a
worker that dies mid-trial has that trial failed and retried by another worker. Journal
storage has no heartbeats: a dead local worker is found by its process id instead.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweeps.config import StorageConfig, SweepConfig
from sweeps.errors import ConfigError, StorageUnreachable, mask_url
from sweeps.space import Param, grid_space

FailedTrialCallback = Callable[[Any, Any], None]

log = logging.getLogger("sweeps.storage")

WORKER_ATTR = "sweeps.worker"  # "host:pid" of the process running a trial


def worker_id() -> str:
    """This process as other workers see it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def replaced_numbers(trials: Any) -> set[int]:
    """Numbers of the failed trials that a retry replaced, at any depth of a retry chain.

    Optuna's retry callback keeps the first trial of a chain in ``failed_trial`` and every
    trial of the chain in ``retry_history``; a trial retried twice has two replaced ones.
    """
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history") or ())
        if t.system_attrs.get("failed_trial") is not None:
            out.add(t.system_attrs["failed_trial"])
    return out


def retried_from(system_attrs: dict[str, Any]) -> int | None:
    """The number of the trial a retry replaces directly (the last of its chain), or None."""
    history = system_attrs.get("retry_history") or []
    return history[-1] if history else system_attrs.get("failed_trial")


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


def fail_dead_local_trials(study: Any, callback: FailedTrialCallback) -> int:
    """Fails RUNNING trials whose worker process on this host is gone; returns how many.

    Journal storage has no heartbeats, so a local worker killed mid-trial would leave its
    trial RUNNING forever. Trials of other hosts are left alone.
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    found = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get(WORKER_ATTR, ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            ok = study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        if ok:
            found += 1
            callback(study, study._storage.get_trial(t._trial_id))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) runs nothing any more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


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
    from sweeps.launcher import sharing_workers

    return sharing_workers(sweep) > 1


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
