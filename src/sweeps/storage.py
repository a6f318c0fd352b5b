"""Optuna storage, sampler and pruner, built from config.

The embedded default is a journal file (Optuna's backend made for several processes on one
host; SQLite with several writers is not). Any RDB URL gives RDBStorage with heartbeats, so a
worker that dies mid-trial has that trial failed and retried by another worker. Journal
storage has no heartbeats: a dead local worker is found by its process id instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator
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
        StorageUnreachable: naming the URL with its password masked: within about 15 s when
            the database cannot be reached; a busy one (workers racing to create the schema, a
            full server or pooler) is tried for up to ``storage.retry_timeout`` first.
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
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": cfg.pool_pre_ping}
    if not url.startswith("sqlite"):
        # At most pool_size connections per worker process: the database's max_connections
        # is shared by every worker (docs: operators, database connections).
        engine_kwargs.update(pool_size=cfg.pool_size, max_overflow=0, pool_timeout=60)
    if url.startswith(("postgresql", "mysql")):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    if url.startswith(("postgresql://", "postgresql+psycopg://")):
        # No server-side prepared statements: PgBouncer in transaction mode (before 1.21)
        # hands each transaction to any server connection, where they would not exist.
        engine_kwargs["connect_args"]["prepare_threshold"] = None
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
) -> Any:
    """RDBStorage, tried again while the database is busy rather than unreachable.

    Workers started together (``docker compose up --scale worker=N``, a job array) all open
    the storage at once: on an empty database they race to create Optuna's tables (PostgreSQL
    lets one win and fails the others with a duplicate table, type or version row), and a
    full server or pooler turns some away (``too many clients``, PgBouncer's
    ``query_wait_timeout``). Those are tried again with jittered backoff for up to
    ``storage.retry_timeout`` seconds. A refused or unknown address, or a wrong password, is
    reported at once.
    """

    def make(engine: dict[str, Any], **skip: bool) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat is marked experimental
            return _retrying_class()(
                url,
                retry_timeout=cfg.retry_timeout,
                engine_kwargs=engine,
                heartbeat_interval=cfg.heartbeat_interval,
                grace_period=cfg.grace_period,
                heartbeat_stale_trial_callback=failed_trial_callback,
                **skip,
            )

    deadline = time.monotonic() + cfg.retry_timeout
    delay = 0.2
    while True:
        try:
            if not url.startswith("postgresql"):
                return make(engine_kwargs)
            # Optuna's start-up holds one connection inside a transaction while it opens a
            # second (schema and version checks). Behind PgBouncer in transaction mode, workers
            # starting together then hold every server connection and wait for one more: a
            # deadlock until the pooler's query_wait_timeout. So the schema is created and
            # checked first on connections outside transactions (autocommit: a pooler lends a
            # server connection per statement), then the storage opens without those steps.
            make({**engine_kwargs, "isolation_level": "AUTOCOMMIT"})._release()
            return make(engine_kwargs, skip_table_creation=True, skip_compatibility_check=True)
        except Exception as exc:
            left = deadline - time.monotonic()
            if not is_busy(exc) or left <= 0:
                raise
            time.sleep(min(delay * (0.5 + random.random()), left))
            delay = min(delay * 2, 5.0)


# What PostgreSQL and PgBouncer say when they are there but cannot take one more client now.
# SQLSTATEs: duplicate table, object and key (the schema race), too many connections, starting
# up, deadlock, serialization failure.
_BUSY_SQLSTATES = ("42P07", "42710", "23505", "53300", "57P03", "40P01", "40001")
_BUSY_WORDS = ("already exists", "duplicate key", "too many clients", "too many connections",
               "query_wait_timeout", "the database system is starting up",
               "no more connections allowed")  # fmt: skip


def is_busy(exc: BaseException) -> bool:
    """Whether opening the storage failed on a busy database (worth another try), not a bad one.

    A schema race (another worker created the same table, type or row first), a server at
    ``max_connections``, a pooler whose queue timed out, a deadlock between concurrent schema
    creations, a server still starting.
    """
    for seen in _causes(exc):
        driver = getattr(seen, "orig", None) or seen  # SQLAlchemy keeps the driver's error
        if getattr(driver, "sqlstate", None) in _BUSY_SQLSTATES:
            return True
        if any(word in str(seen).lower() for word in _BUSY_WORDS):
            return True
    return False


def _causes(exc: BaseException, depth: int = 8) -> Iterator[BaseException]:
    """The error and what caused it, outermost first (Optuna wraps SQLAlchemy's errors)."""
    seen: BaseException | None = exc
    while seen is not None and depth > 0:
        yield seen
        seen, depth = seen.__cause__ or seen.__context__, depth - 1


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error is a lost or refused connection, worth another try.

    Optuna wraps SQLAlchemy's errors in StorageInternalError; the cause chain is read.
    Constraint violations and bad data are not transient.
    """
    from sqlalchemy import exc as sa

    for seen in _causes(exc):
        if isinstance(seen, sa.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)):
            return True
        if isinstance(seen, sa.TimeoutError):  # the pool waited for a connection in vain
            return True
    return False


@functools.cache
def _retrying_class() -> type:
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError

    class _Retrying(optuna.storages.RDBStorage):
        """RDBStorage whose every call survives a database restart or failover.

        A call that fails on a lost or refused connection is tried again with exponential
        backoff (0.5 s doubling to 10 s, with jitter) for up to ``retry_timeout`` seconds,
        then raised. Each try is its own transaction, so a retried call never sees half of
        an earlier one. When a state change's commit was lost with its connection, the
        retry finds the trial already finished and returns as if it had committed.
        """

        def __init__(self, url: str, *, retry_timeout: float = 120.0, **kwargs: Any) -> None:
            self.retry_timeout = retry_timeout
            self.retries = 0  # calls tried again, over the storage's life (benchmarks read it)
            self._inside = threading.local()  # a retried call's inner calls are not retried
            try:
                super().__init__(url, **kwargs)
            except BaseException:
                self._release()
                raise

        def _release(self) -> None:
            """Closes what a failed start opened: behind a pooler in transaction mode, a
            connection left inside a transaction would hold a server connection for good."""
            scoped = getattr(self, "scoped_session", None)
            engine = getattr(self, "engine", None)
            for close in (scoped and scoped.remove, engine and engine.dispose):
                if close:
                    with contextlib.suppress(Exception):  # the connection may be lost already
                        close()

        def _with_retries(self, name: str, call: Callable[..., Any], args: tuple,
                          kwargs: dict) -> Any:  # fmt: skip
            if getattr(self._inside, "active", False):
                return call(*args, **kwargs)
            deadline = time.monotonic() + self.retry_timeout
            delay, failed = 0.5, False
            while True:
                try:
                    self._inside.active = True
                    result = call(*args, **kwargs)
                except UpdateFinishedTrialError:
                    if failed and name == "set_trial_state_values":
                        state = args[1] if len(args) > 1 else kwargs["state"]
                        if self.get_trial(args[0]).state == state:
                            return True  # the lost commit had gone through
                    raise
                except Exception as exc:
                    left = deadline - time.monotonic()
                    if not is_transient(exc) or left <= 0:
                        raise
                    if not failed:
                        log.warning("storage unreachable in %s (%s); retrying for up to %.0f s",
                                    name, type(exc.__cause__ or exc).__name__,
                                    self.retry_timeout)  # fmt: skip
                    failed = True
                    self.retries += 1
                    time.sleep(min(delay * (0.5 + random.random()), left))
                    delay = min(delay * 2, 10.0)
                    continue
                finally:
                    self._inside.active = False
                if failed:
                    log.warning("storage reachable again: %s went through", name)
                return result

    def retried(name: str) -> Callable[..., Any]:
        def call(self: _Retrying, *args: Any, **kwargs: Any) -> Any:
            return self._with_retries(name, getattr(super(_Retrying, self), name), args, kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    for name in _RETRIED:
        setattr(_Retrying, name, retried(name))
    _Retrying.__name__ = _Retrying.__qualname__ = "RetryingRDBStorage"
    return _Retrying


# Every call a worker makes to the database, the heartbeat's included.
_RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
    "record_heartbeat",
    "_get_stale_trial_ids",
    "check_trial_is_updatable",
    # what Optuna's cache in front of RDBStorage calls
    "_get_trials",
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
)


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
