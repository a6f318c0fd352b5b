"""pooler: many workers against one PostgreSQL, straight and through PgBouncer.

Each worker is a lightweight process that makes the storage calls a real worker makes (the
product's storage: retries, a pool of ``storage.pool_size``, a heartbeat thread), with a
scripted trial instead of Keras: ask, three parameters, five epochs reported 0.2 s apart,
tell. The workers start together, wait for a common start time, and run for a fixed window.
Three set-ups share one PostgreSQL server started for the benchmark, with ``max_connections``
at 100 (a third of the cluster files' 300, so the arithmetic bites at 64 workers and not
only at 200):

- ``direct``: every worker connects to PostgreSQL;
- ``pgbouncer_session``: through Debian's PgBouncer in session mode (a client connection holds
  a server connection while it is open);
- ``pgbouncer_transaction``: in transaction mode (a server connection per transaction).

Reported per set-up: trials per minute over the window, the most connections PostgreSQL
served at once (sampled from ``pg_stat_activity`` every 0.5 s), storage errors (calls that
failed after the retries, and workers that never got a connection) and calls retried.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Result, child_env, fmt

MAX_CONNECTIONS = 100
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@dataclass(frozen=True)
class Workload:
    workers: int
    window: float  # seconds all workers run together
    server_pool: int  # PgBouncer's default_pool_size
    query_wait: int  # PgBouncer's query_wait_timeout: how long a client waits for a server
    retry_timeout: float  # storage.retry_timeout of every worker


FULL = Workload(workers=64, window=60.0, server_pool=40, query_wait=120, retry_timeout=120.0)
# A worker session mode never serves would retry for the default 120 s: 20 s tells as much.
QUICK = Workload(workers=6, window=8.0, server_pool=4, query_wait=10, retry_timeout=20.0)
MODES = ("direct", "pgbouncer_session", "pgbouncer_transaction")


def run(quick: bool = False, repeats: int | None = None) -> Result:
    sys.path.insert(0, str(REPO / "tests"))
    from pg import PostgresCluster  # the tests' throwaway cluster: initdb, pg_ctl, loopback

    work = QUICK if quick else FULL
    if not Path(PGBOUNCER).is_file():
        raise SystemExit("pooler: pgbouncer not found (apt-get install pgbouncer)")
    root = Path(tempfile.mkdtemp(prefix="sweeps-pooler-", dir="/tmp"))
    root.chmod(0o755)  # the server's user reaches its data folder and PgBouncer's files
    (root / "pg").mkdir()
    cluster = PostgresCluster(root / "pg", max_connections=MAX_CONNECTIONS)
    rows: list[dict[str, Any]] = []
    try:
        cluster.start()
        for mode in MODES:
            database = f"pooler_{mode}"
            cluster.create_database(database)
            bouncer = None
            url = cluster.url(database)
            if mode != "direct":
                bouncer = _start_pgbouncer(root / mode, cluster, database, mode.split("_")[1],
                                           work)  # fmt: skip
                url = url.replace(f":{cluster.port}/", f":{bouncer[1]}/")
            try:
                rows.append({"mode": mode, **_measure(url, cluster, database, work, root / mode)})
            finally:
                if bouncer:
                    bouncer[0].terminate()
                    bouncer[0].wait(timeout=20)
            print(f"{mode}: {rows[-1]['trials_per_minute']:.0f} trials/min, "
                  f"{rows[-1]['max_server_connections']} connections, "
                  f"{rows[-1]['storage_errors']} storage errors", flush=True)  # fmt: skip
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    by = {r["mode"]: r for r in rows}
    table = [["set-up", "workers", "trials/min", "PG connections (max)", "storage errors",
              "workers without storage", "calls retried"]]  # fmt: skip
    for r in rows:
        table.append([r["mode"], str(work.workers), fmt(r["trials_per_minute"], 0),
                      str(r["max_server_connections"]), str(r["storage_errors"]),
                      str(r["workers_failed"]), str(r["retries"])])  # fmt: skip
    direct, tx = by["direct"], by["pgbouncer_transaction"]
    return Result(
        workload={
            "workers": work.workers,
            "window_seconds": work.window,
            "max_connections": MAX_CONNECTIONS,
            "pgbouncer_default_pool_size": work.server_pool,
            "pgbouncer_query_wait_timeout": work.query_wait,
            "storage.retry_timeout": work.retry_timeout,
            "storage.pool_size": 2,
            "trial": "ask, 3 parameters, 5 epochs reported 0.2 s apart, tell; heartbeat 1 s",
            "pgbouncer": _pgbouncer_version(),
        },
        repeats=rows,
        medians={
            f"{r['mode']}_{k}": float(r[k])
            for r in rows
            for k in (
                "trials_per_minute",
                "max_server_connections",
                "storage_errors",
                "workers_failed",
                "retries",
            )
        },  # fmt: skip
        ratios={
            "transaction_over_direct_trials_per_minute": tx["trials_per_minute"]
            / max(direct["trials_per_minute"], 1e-9),
            "transaction_connections_over_direct": tx["max_server_connections"]
            / max(direct["max_server_connections"], 1),
        },  # fmt: skip
        targets={
            "pgbouncer_transaction_storage_errors": "<= 0",
            "pgbouncer_transaction_workers_failed": "<= 0",
        },  # fmt: skip
        table=table,
        notes=[
            f"one PostgreSQL with max_connections={MAX_CONNECTIONS}; each worker process keeps "
            "up to storage.pool_size=2 connections (its main thread and its heartbeat)",
            f"storage errors: calls that failed after storage.retry_timeout "
            f"({work.retry_timeout:g} s), plus workers that could not open the storage at all",
            "session mode: a client connection holds a server connection while open, so "
            "workers beyond default_pool_size wait in PgBouncer's queue until one exits",
            "transaction mode needs no server-side prepared statements: the product opens "
            "PostgreSQL connections with psycopg's prepare_threshold=None",
            "all processes share this machine's cores with PostgreSQL and PgBouncer",
        ],
    )


def _pgbouncer_version() -> str:
    out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def _start_pgbouncer(folder: Path, cluster: Any, database: str, mode: str,
                     work: Workload) -> tuple[subprocess.Popen, int]:  # fmt: skip
    import socket

    from conftest import free_port

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (folder / "users.txt").write_text(f'"{cluster.user}" "{cluster.password}"\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n{database} = host={cluster.host} port={cluster.port} dbname={database}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {mode}\ndefault_pool_size = {work.server_pool}\nmax_client_conn = 2000\n"
        f"query_wait_timeout = {work.query_wait}\nlog_connections = 0\nlog_disconnections = 0\n"
    )
    user = []
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(folder, "postgres")
        for f in folder.iterdir():
            shutil.chown(f, "postgres")
        user = ["runuser", "-u", "postgres", "--"]
    log = (folder / "log.txt").open("w")
    cmd = [*user, PGBOUNCER, str(folder / "pgbouncer.ini")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit(f"pooler: pgbouncer did not start: {(folder / 'log.txt').read_text()}")
    return proc, port


def _measure(url: str, cluster: Any, database: str, work: Workload, folder: Path) -> dict:
    import psycopg

    folder.mkdir(parents=True, exist_ok=True)
    start_at = time.time() + max(15.0, work.workers * 0.9)  # every worker imported by then
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.pooler",
                url,
                f"study-{database}",
                str(start_at),
                str(work.window),
                str(work.retry_timeout),
                str(folder / f"w{i}.json"),
            ],
            cwd=REPO,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=(folder / f"w{i}.log").open("w"),
        )  # fmt: skip
        for i in range(work.workers)
    ]
    peak, stop = [0], threading.Event()

    def sample() -> None:
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            while not stop.wait(0.5):
                (n,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                    (database,)).fetchone()  # fmt: skip
                peak[0] = max(peak[0], n)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    deadline = start_at + work.window + 180
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
    stop.set()
    sampler.join(timeout=5)
    records = []
    for i in range(work.workers):
        path = folder / f"w{i}.json"
        records.append(json.loads(path.read_text()) if path.is_file() else None)
    done = [r for r in records if r and r.get("opened")]
    trials = sum(r["trials"] for r in done)
    return {
        "trials": trials,
        "trials_per_minute": trials / work.window * 60,
        "max_server_connections": peak[0],
        "storage_errors": sum(r["errors"] for r in done) + (work.workers - len(done)),
        "workers_failed": work.workers - len(done),
        "retries": sum(r["retries"] for r in done),
        "first_errors": sorted({e for r in records if r for e in r.get("messages", [])})[:5],
    }


def _worker(url: str, name: str, start_at: float, window: float, retry_timeout: float,
            out: Path) -> None:  # fmt: skip
    """One lightweight worker: the product's storage, scripted trials, then a JSON line."""
    import optuna

    from sweeps.config import StorageConfig
    from sweeps.storage import Heartbeat, open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    record: dict[str, Any] = {"opened": False, "trials": 0, "errors": 0, "retries": 0,
                              "messages": []}  # fmt: skip
    cfg = StorageConfig(url=url, heartbeat_interval=1, retry_timeout=retry_timeout)
    try:
        storage = open_storage(cfg, out.parent, lambda s, t: None)
        sampler = optuna.samplers.RandomSampler()
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                    sampler=sampler, direction="maximize")  # fmt: skip
        record["opened"] = True
    except Exception as exc:
        record["messages"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
        out.write_text(json.dumps(record))
        return
    time.sleep(max(0.0, start_at - time.time()))
    end = start_at + window
    rng = random.Random(os.getpid())
    while time.time() < end:
        try:
            trial = study.ask()
            x = trial.suggest_float("x", 0, 1)
            trial.suggest_int("k", 3, 7)
            trial.suggest_categorical("act", ["relu", "prelu", "leaky_relu"])
            with Heartbeat(storage, trial._trial_id):
                for epoch in range(1, 6):
                    time.sleep(0.2)
                    trial.report(x * epoch / 5 + rng.random() * 0.01, epoch)
            study.tell(trial, x)
            if time.time() <= end:
                record["trials"] += 1
        except Exception as exc:
            record["errors"] += 1
            record["messages"].append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            time.sleep(1.0)
    record["retries"] = getattr(storage, "retries", 0)
    out.write_text(json.dumps(record))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
            Path(sys.argv[6]))  # fmt: skip
