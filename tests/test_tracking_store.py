"""The embedded MLflow store when several processes open a new one at once.

Every hand-started worker on one machine, and every ``sweep.workers`` process, opens the same
``store_dir/mlflow.db``. MLflow creates and migrates a new SQLite database in several
transactions; two processes doing it together leave ``_alembic_tmp_*`` tables behind and the
database unusable for good. These tests start real processes on a real, new database.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
import time

from sweeps.tracking import Tracker, default_uri

# Imports MLflow first, then waits for the go file, so that all processes reach the
# database within milliseconds of each other.
_OPENER = """
import sys, time
from pathlib import Path
import mlflow  # noqa: F401
from sweeps.tracking import Tracker, default_uri
store, go = Path(sys.argv[1]), Path(sys.argv[2])
Path(sys.argv[3]).touch()
while not go.exists():
    time.sleep(0.005)
t = Tracker(default_uri(store), "race", artifact_root=store / "artifacts", connect_timeout=20)
t.start_run("probe", None, {})
t.close()
print("opened", t.experiment_id)
"""


def test_processes_opening_a_new_store_at_once_all_get_one_usable_database(tmp_path):
    for round_ in range(2):
        store, go = tmp_path / f"store{round_}", tmp_path / f"go{round_}"
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _OPENER,
                    str(store),
                    str(go),
                    str(tmp_path / f"ready{round_}-{i}"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i in range(4)
        ]
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob(f"ready{round_}-*"))) < len(procs):
            assert time.monotonic() < deadline, "the opener processes did not start"
            time.sleep(0.05)
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
        for proc, (out, err) in zip(procs, results, strict=True):
            assert proc.returncode == 0 and "opened" in out, err[-2000:]
        # One experiment, one database, every probe run in it.
        assert {out.split()[-1] for out, _ in results} == {results[0][0].split()[-1]}
        reader = Tracker(default_uri(store), "race")
        try:
            runs = reader._client.search_runs([reader.experiment_id], max_results=100)
            assert len(runs) == len(procs)
        finally:
            reader.close()


def test_a_process_waits_for_the_one_creating_the_store(tmp_path):
    import mlflow  # noqa: F401  (imported before the clock starts)

    store = tmp_path / "store"
    store.mkdir()
    opened: list[Tracker] = []
    opener = threading.Thread(
        target=lambda: opened.append(Tracker(default_uri(store), "waits", connect_timeout=30))
    )
    with open(store / "mlflow.db.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is creating the database
        opener.start()
        time.sleep(2.0)
        assert not (store / "mlflow.db").exists() and opener.is_alive()
        fcntl.flock(lock, fcntl.LOCK_UN)
    opener.join(timeout=60)
    assert opened and opened[0].experiment_id
    opened[0].close()
