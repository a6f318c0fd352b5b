"""Pre-emption and crashes lose no epoch: a stopped or killed trial resumes in its MLflow run.

The end-to-end test runs the real worker (`python -m sweeps run`) on real data against a real
PostgreSQL and a real MLflow server keeping its artifacts in an S3-protocol bucket, and sends it
real signals; the rest checks the pieces: the state file, the requeue and its retry budget.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution

from sweeps import resume
from sweeps.keys import RUN_ID_ATTR
from sweeps.recovery import RETRIES_ATTR, Requeue
from sweeps.signals import PREEMPTED, exit_code

pytest_plugins = ["pg"]  # the `postgres` fixture: a throwaway PostgreSQL cluster

# -- the state file ------------------------------------------------------------------------------


def test_a_state_reads_back_whole(tmp_path: Path) -> None:
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(b"weights and optimizer variables")
    best = [np.arange(6.0).reshape(2, 3), np.ones(4, dtype=np.float32)]
    meta = resume.Meta(3, [{"val_acc": 0.5}, {"val_acc": 0.7}, {"val_acc": 0.6}], 2, 0.7)
    path = resume.write_state(tmp_path / "s" / "state.zip", meta, weights, best)

    assert resume.read_meta(path) == meta
    got, extracted, got_best = resume.unpack(path, tmp_path / "out")
    assert got == meta and extracted.read_bytes() == weights.read_bytes()
    assert got_best is not None
    assert all(np.array_equal(a, b) for a, b in zip(got_best, best, strict=True))
    assert [p.name for p in path.parent.iterdir()] == ["state.zip"]  # no temporary file left


def test_a_truncated_state_is_refused_with_its_name(tmp_path: Path) -> None:
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"x" * 1000)
    path = resume.write_state(tmp_path / "state.zip", resume.Meta(1), weights, None)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(resume.StateError, match="unreadable resume state state.zip"):
        resume.read_meta(path)


def test_sigterm_asks_to_be_requeued_and_ctrl_c_does_not() -> None:
    assert exit_code(signal.SIGTERM) == PREEMPTED == 75
    assert exit_code(signal.SIGINT) == 130


# -- the requeue and its retry budget ------------------------------------------------------------


def _failed_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.set_user_attr(RUN_ID_ATTR, "run-1")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return study.trials[-1]


def test_a_stop_is_requeued_without_spending_a_retry_and_a_crash_spends_one() -> None:
    study = optuna.create_study()
    requeue = Requeue(max_retry=1)

    requeue.again(study, _failed_trial(study))  # pre-empted: free
    queued = study.trials[-1]
    assert queued.state.name == "WAITING" and queued.system_attrs[RETRIES_ATTR] == 0
    assert queued.user_attrs[RUN_ID_ATTR] == "run-1"  # the retry resumes this run

    trial = study.ask()  # the queued one, with its parameters
    assert trial.params == queued.params
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    requeue(study, study.trials[-1])  # crashed: one retry spent
    again = study.trials[-1]
    assert again.system_attrs[RETRIES_ATTR] == 1
    assert again.system_attrs["retry_history"] == [0, 1]  # Optuna's own chain, kept
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(again) == 0

    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    requeue(study, study.trials[-1])  # a second crash: max_retry=1 is spent
    assert study.trials[-1].state.name == "FAIL" and len(study.trials) == 3
    requeue.again(study, study.trials[-1])  # a stop is still requeued
    assert study.trials[-1].state.name == "WAITING"


# -- the real worker: SIGTERM, then SIGKILL, then the end ----------------------------------------

EPOCHS = 12


def _start(tmp_path: Path, name: str, servers: list[str], *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sweeps", "run", "+study=quickstart",
           f"store_dir={tmp_path / 'store'}", f"train.epochs={EPOCHS}", "sweep.n_trials=1",
           "sweep.pruner=none", "train.threads=1", *servers, *overrides]  # fmt: skip
    log = (tmp_path / f"{name}.log").open("w")
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)


def _saved_epoch(s3, tmp_path: Path, server_uri: str, study: str) -> int:
    """The epoch of the newest resumable state of the study's runs in the bucket (0: none yet).

    The session's MLflow server and bucket are shared: only the study's experiment counts.
    """
    from mlflow import MlflowClient

    experiment = MlflowClient(server_uri).get_experiment_by_name(study)
    if experiment is None:
        return 0
    best = 0
    for key in s3.keys(f"artifacts/{experiment.experiment_id}/"):
        if key.endswith(resume.ARTIFACT):
            local = tmp_path / "peek.zip"
            with contextlib.suppress(Exception):  # the worker is replacing it
                local.write_bytes(s3.read(key))
                best = max(best, resume.read_meta(local).epoch)
    return best


def _wait_for_epoch(proc: subprocess.Popen, server: Any, study: str, tmp_path: Path, epoch: int,
                    log: Path) -> int:  # fmt: skip
    deadline = time.monotonic() + 240
    while (saved := _saved_epoch(server.s3, tmp_path, server.uri, study)) < epoch:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    return saved


@pytest.mark.slow
def test_a_stopped_then_killed_trial_resumes_in_its_run_and_finishes(
    tmp_path: Path, postgres, mlflow_server
) -> None:
    from mlflow import MlflowClient

    from sweeps.config import StorageConfig
    from sweeps.storage import open_storage

    s3 = mlflow_server.s3
    url = postgres.create_database(f"preempt_{uuid.uuid4().hex[:8]}")
    name = f"preempt-{uuid.uuid4().hex[:8]}"
    servers = [f"storage.url={url}", f"tracking.uri={mlflow_server.uri}", f"sweep.name={name}"]
    first = _start(tmp_path, "first", servers)
    _wait_for_epoch(first, mlflow_server, name, tmp_path, 2, tmp_path / "first.log")
    first.send_signal(signal.SIGTERM)  # pre-emption
    assert first.wait(timeout=90) == PREEMPTED, (tmp_path / "first.log").read_text()[-3000:]
    stopped_at = _saved_epoch(s3, tmp_path, mlflow_server.uri, name)

    # The next worker trains in its own process per trial; it is killed outright. It reads
    # the state back from the bucket, through the tracking server.
    second = _start(tmp_path, "second", servers, "train.subprocess=true",
                    "storage.heartbeat_interval=1", "storage.grace_period=3")  # fmt: skip
    _wait_for_epoch(second, mlflow_server, name, tmp_path, stopped_at + 2,
                    tmp_path / "second.log")  # fmt: skip
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=30)
    killed_at = _saved_epoch(s3, tmp_path, mlflow_server.uri, name)
    assert stopped_at < killed_at < EPOCHS
    time.sleep(4)  # the killed worker's heartbeat is older than storage.grace_period

    third = _start(tmp_path, "third", servers, "storage.heartbeat_interval=1",
                   "storage.grace_period=3")  # fmt: skip
    assert third.wait(timeout=300) == 0, (tmp_path / "third.log").read_text()[-3000:]

    storage = open_storage(StorageConfig(url=url), tmp_path, lambda s, t: None)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE"]
    assert trials[0].user_attrs["sweeps.reason"] == "interrupted"
    done = trials[2]
    assert done.system_attrs[RETRIES_ATTR] == 1  # the crash spent one, the stop none
    assert done.params == trials[0].params
    assert sorted(done.intermediate_values) == list(range(1, EPOCHS + 1))  # the pruner's view
    assert done.user_attrs["epochs_trained"] == EPOCHS
    assert done.user_attrs["sweeps.resumed_at_epoch"] == killed_at
    run_id = done.user_attrs[RUN_ID_ATTR]
    assert {t.user_attrs[RUN_ID_ATTR] for t in trials} == {run_id}  # one MLflow run throughout

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sweeps.state"] == "COMPLETE"
    assert run.data.tags["sweeps.resumed_at_epoch"] == str(killed_at)
    for key in ("val_acc", "train_loss"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)  # each epoch once
    assert "test_acc" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoint", "plots", resume.ARTIFACT_DIR} <= names
    # Checkpoint, curves and state are objects in the bucket, under the run.
    keys = [k for k in s3.keys("artifacts/") if f"/{run_id}/" in k]
    for part in ("/checkpoint/", "/plots/", f"/{resume.ARTIFACT}"):
        assert any(part in k for k in keys), (part, keys)
