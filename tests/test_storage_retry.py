"""The database comes and goes: storage calls survive a PostgreSQL restart mid-study."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import compose
from fakes import FakeTrainer
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState
from pg import PG_BIN, PostgresCluster
from sqlalchemy import exc as sa

from sweeps.runner import run_study
from sweeps.services import open_tracker
from sweeps.storage import is_busy, is_transient, open_storage


def _wrapped(cause: BaseException) -> StorageInternalError:
    try:
        try:
            raise cause
        except Exception as exc:
            raise StorageInternalError("An exception is raised during the commit.") from exc
    except StorageInternalError as outer:
        return outer


def test_lost_connections_are_transient_and_bad_data_is_not():
    lost = sa.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    assert is_transient(lost) and is_transient(_wrapped(lost))
    assert is_transient(sa.InterfaceError("x", {}, Exception("connection already closed")))
    assert is_transient(sa.TimeoutError("QueuePool limit reached"))
    assert not is_transient(_wrapped(sa.IntegrityError("INSERT", {}, Exception("duplicate"))))
    assert not is_transient(_wrapped(sa.DataError("INSERT", {}, Exception("too long"))))
    assert not is_transient(ValueError("no"))


class _PgError(Exception):
    """A driver error carrying PostgreSQL's SQLSTATE, as psycopg's do."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def test_busy_database_is_tried_again_and_a_wrong_one_is_not():
    race = sa.ProgrammingError("CREATE TABLE studies", {},
                               _PgError('relation "studies" already exists', "42P07"))  # fmt: skip
    assert is_busy(race) and is_busy(_wrapped(race))
    version = sa.IntegrityError("INSERT", {}, _PgError("duplicate key value", "23505"))
    assert is_busy(_wrapped(version))  # the version row, wrapped by Optuna at commit
    full = sa.OperationalError("connect", {}, _PgError("FATAL: sorry, too many clients already"))
    assert is_busy(full)
    assert is_busy(sa.OperationalError("connect", {}, _PgError("query_wait_timeout", "08P01")))
    assert is_busy(sa.OperationalError("DDL", {}, _PgError("deadlock detected", "40P01")))
    refused = sa.OperationalError("connect", {}, _PgError("Connection refused"))
    assert not is_busy(refused)
    denied = sa.ProgrammingError("CREATE", {}, _PgError("permission denied for schema", "42501"))
    assert not is_busy(denied)
    auth = sa.OperationalError("connect", {}, _PgError("password authentication failed", "28P01"))
    assert not is_busy(auth)


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A server of the test's own: stopping or restarting it reaches no other test."""
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="sweeps-pg-", dir="/tmp"))
    cluster = PostgresCluster(root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_call_gives_up_after_retry_timeout_with_the_database_gone(tmp_path, caplog,
                                                                    own_postgres):  # fmt: skip
    cluster = own_postgres
    url = cluster.create_database("gone")
    cfg = compose("quickstart", f"storage.url={url}", "storage.retry_timeout=3",
                  store=tmp_path / "store")  # fmt: skip
    storage = open_storage(cfg.storage, cfg.store_dir, lambda s, t: None)
    study = optuna.create_study(storage=storage, study_name="gone")
    cluster.stop()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "sweeps.storage"), pytest.raises(Exception) as err:
        study.ask()
    waited = time.monotonic() - started
    assert is_transient(err.value)
    assert 2.0 <= waited < 20, waited  # retried for about retry_timeout, then raised
    assert "storage unreachable in" in caplog.text and "up to 3 s" in caplog.text
    assert storage.retries >= 2


@pytest.mark.slow
def test_postgres_restarted_mid_study_loses_nothing(tmp_path, caplog, own_postgres):
    cluster = own_postgres
    url = cluster.create_database(f"restart_{uuid.uuid4().hex[:8]}")
    cfg = compose(
        "quickstart",
        f"storage.url={url}",
        f"sweep.name=restart-{uuid.uuid4().hex[:8]}",
        "sweep.n_trials=8",
        "sweep.pruner=none",
        "train.epochs=4",
        "storage.heartbeat_interval=1",
        "storage.retry_timeout=60",
        store=tmp_path / "store",
    )
    trainer = FakeTrainer(epoch_seconds=0.4)
    restarted = threading.Event()

    def failover() -> None:
        while trainer.epochs_run < 6:  # well inside the second trial
            time.sleep(0.05)
        cluster.restart(down_seconds=3.0)
        restarted.set()

    thread = threading.Thread(target=failover, daemon=True)
    thread.start()
    with caplog.at_level(logging.WARNING, "sweeps.storage"):
        assert run_study(cfg, trainer=trainer) == 0
    assert restarted.is_set()  # the server was back before the study's last trial ended
    thread.join(timeout=60)
    assert "storage unreachable in" in caplog.text
    assert "storage reachable again" in caplog.text

    storage = open_storage(cfg.storage, cfg.store_dir, lambda s, t: None)
    study = optuna.load_study(study_name=cfg.sweep.name, storage=storage)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 8, states
    for t in study.trials:  # each epoch reported once, none lost in the outage
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]
    tracker = open_tracker(cfg)
    try:
        runs = tracker.trial_runs(cfg.sweep.name)
        assert len(runs) == 8
        assert {r["status"] for r in runs} == {"FINISHED"}
    finally:
        tracker.close()


@pytest.mark.postgres
def test_a_worker_opens_a_fresh_database_through_one_pooled_server_connection(
    tmp_path, own_postgres
):
    """PgBouncer in transaction mode with one server connection: Optuna's start-up would hold
    it inside a transaction while waiting for a second, a deadlock until query_wait_timeout."""
    from benchmarks.pooler import PGBOUNCER, Workload, _start_pgbouncer

    if not Path(PGBOUNCER).is_file():
        pytest.skip("pgbouncer not installed (apt-get install pgbouncer)")
    cluster, database = own_postgres, "pooled"
    cluster.create_database(database)
    folder = cluster.data.parent / "bouncer"  # PgBouncer runs as the server's user: not tmp_path
    bouncer, port = _start_pgbouncer(folder, cluster, database, "transaction",
                                     Workload(1, 1.0, server_pool=1, query_wait=5,
                                              retry_timeout=5.0))  # fmt: skip
    try:
        url = cluster.url(database).replace(f":{cluster.port}/", f":{port}/")
        storage = open_storage(compose("quickstart", f"storage.url={url}",
                                       "storage.retry_timeout=5", store=tmp_path).storage,
                               tmp_path, lambda s, t: None)  # fmt: skip
        study = optuna.create_study(storage=storage, study_name="pooled", direction="maximize")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    finally:
        bouncer.terminate()
        bouncer.wait(timeout=20)
