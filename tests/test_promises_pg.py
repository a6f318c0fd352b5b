"""README promises on PostgreSQL: a dead worker's trial is picked up by a later `run`, and
`report` works against the database and a tracking server."""

from __future__ import annotations

import time
import uuid

import optuna
import pytest
from cli_helpers import run_cli
from conftest import compose
from fakes import FakeTrainer, ghost_trial
from optuna.trial import TrialState

from sweeps.runner import run_study
from sweeps.services import open_tracker
from sweeps.storage import open_storage

pytest_plugins = ["pg"]  # the `postgres` fixture: a throwaway PostgreSQL cluster
pytestmark = pytest.mark.slow


def _study(cfg):
    storage = open_storage(cfg.storage, cfg.store_dir, lambda s, t: None)
    return optuna.load_study(study_name=cfg.sweep.name, storage=storage)


def test_dead_trial_on_postgres_is_failed_and_retried_by_a_later_run(tmp_path, postgres):
    url = postgres.create_database(f"dead_{uuid.uuid4().hex[:8]}")
    common = (
        f"storage.url={url}",
        f"sweep.name=dead-{uuid.uuid4().hex[:8]}",
        "storage.heartbeat_interval=1",
        "storage.grace_period=2",
        "train.epochs=2",
    )
    store = tmp_path / "store"
    cfg = compose("quickstart", *common, "sweep.n_trials=1", store=store)
    assert run_study(cfg, trainer=FakeTrainer()) == 0
    # A worker on another host took a trial, beat once, and was lost with its machine.
    study = _study(cfg)
    ghost, run_id = ghost_trial(study, cfg, "lost-host:4242")
    study._storage.record_heartbeat(ghost._trial_id)
    time.sleep(3)  # older than storage.grace_period: no worker of the study is left to see it

    cfg = compose("quickstart", *common, "sweep.n_trials=2", store=store)
    trainer = FakeTrainer()
    assert run_study(cfg, trainer=trainer) == 0  # the next `run` of the study
    assert len(trainer.specs) == 1  # the retry, not a fresh trial
    study = _study(cfg)
    assert study.trials[ghost.number].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == ghost.number]
    assert retry.state == TrialState.COMPLETE
    assert retry.params["model.kernel_size"] == ghost.params["model.kernel_size"]
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    tracker = open_tracker(cfg)
    try:
        dead = tracker.run_info(run_id)
        assert dead["status"] == "FAILED" and dead["tags"]["sweeps.state"] == "FAIL"
        runs = {
            int(r["tags"]["sweeps.trial_number"]): r for r in tracker.trial_runs(cfg.sweep.name)
        }
        assert runs[retry.number]["tags"]["sweeps.retry_of_run"] == run_id
    finally:
        tracker.close()


def test_report_command_against_postgres_and_a_tracking_server(tmp_path, postgres, mlflow_server):
    url = postgres.create_database(f"report_{uuid.uuid4().hex[:8]}")
    name = f"fashion-{uuid.uuid4().hex[:8]}"
    common = (
        f"storage.url={url}",
        f"tracking.uri={mlflow_server.uri}",
        f"sweep.name={name}",
        "sweep.mode=ablation",
        "sweep.repeats=2",
    )
    cfg = compose("fashion_mnist_dropout", *common, "train.epochs=2", store=tmp_path / "store")
    assert run_study(cfg, trainer=FakeTrainer()) == 0
    # Another host: its own working directory, nothing but the two URLs in common.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_cli("report", "+study=fashion_mnist_dropout", *common, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0.9184" in proc.stdout and "0.9230" in proc.stdout  # the published numbers
    assert postgres.password not in proc.stdout + proc.stderr
    written = {p.name for p in (elsewhere / "sweeps-store" / "reports" / name).iterdir()}
    assert {"ablation.csv", "ablation.md", "ablation.png"} <= written
    tracker = open_tracker(cfg)
    try:
        parent = tracker.parent_run(name, {})
        logged = {a.path for a in tracker._client.list_artifacts(parent, "report")}
    finally:
        tracker.close()
    assert {"report/ablation.csv", "report/ablation.md", "report/ablation.png"} <= logged
