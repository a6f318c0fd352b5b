"""Real sweeps end to end: real Keras training on tiny data, a real MLflow server."""

from __future__ import annotations

import math

import optuna
import pytest
from cli_helpers import run_cli
from conftest import compose
from imagegen import make_image_folder
from optuna.trial import TrialState

from sweeps.services import open_tracker
from sweeps.storage import open_storage

pytestmark = pytest.mark.slow

# What every complete trial's MLflow run holds (a pruned one keeps only its learning curve).
COMPLETE_TRIAL_ARTIFACTS = {
    "checkpoint/best.keras",
    "plots/learning_curves.png",
    "plots/confusion_matrix.png",
    "classification_report.json",
    "config.yaml",
}


def _study(store, name):
    cfg = compose("quickstart", f"sweep.name={name}", store=store)
    storage = open_storage(cfg.storage, store, lambda s, t: None)
    return optuna.load_study(study_name=name, storage=storage)


def _artifacts(tracker, run_id):
    client = tracker._client
    names = set()
    for top in client.list_artifacts(run_id):
        if top.is_dir:
            names.update(a.path for a in client.list_artifacts(run_id, top.path))
        else:
            names.add(top.path)
    return names


def test_quickstart_logs_every_trial_to_an_mlflow_server(tmp_path, mlflow_server):
    name = "quickstart-e2e"
    proc = run_cli(
        "run",
        "+study=quickstart",
        f"sweep.name={name}",
        "sweep.n_trials=4",
        "sweep.startup_trials=1",
        "train.epochs=3",
        "train.verbose=2",
        f"tracking.uri={mlflow_server.uri}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Epoch 1/3" in proc.stdout  # Keras's own per-epoch line
    assert "best" in proc.stdout and f"study {name}" in proc.stdout

    study = _study(tmp_path / "sweeps-store", name)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    cfg = compose("quickstart", f"sweep.name={name}", f"tracking.uri={mlflow_server.uri}")
    tracker = open_tracker(cfg)
    try:
        runs = {int(r["tags"]["sweeps.trial_number"]): r for r in tracker.trial_runs(name)}
        assert set(runs) == {t.number for t in trials}
        for t in trials:
            run = runs[t.number]
            steps = [s for s, _ in tracker.metric_history(run["run_id"], "val_acc")]
            assert steps[:2] == [1, 2]
            if t.state != TrialState.COMPLETE:
                assert run["status"] == "FINISHED"  # pruning is a normal end
                continue
            assert run["status"] == "FINISHED"
            assert {"test_acc", "test_loss", "param_count"} <= set(run["metrics"])
            assert run["metrics"]["test_acc"] == pytest.approx(t.user_attrs["test_acc"])
            files = _artifacts(tracker, run["run_id"])
            assert files >= COMPLETE_TRIAL_ARTIFACTS
            assert run["tags"]["sweeps.data.source"] == "sklearn.load_digits"
            assert len(run["tags"]["sweeps.data.fingerprint"]) >= 8
    finally:
        tracker.close()


def test_age_gap_on_a_messy_folder_skips_and_counts_broken_files(tmp_path, mlflow_server):
    folder = make_image_folder(
        tmp_path / "lag", classes=("old", "young"), per_class=8, size=(60, 80), broken=5, odd=True
    )
    proc = run_cli(
        "run",
        "+study=age_gap",
        f"data.root={folder.root}",
        "train.epochs=2",
        "sweep.n_trials=2",
        # padding same: no sampled depth can collapse a feature map, so both trials train
        "space.model.padding='choice(same)'",
        f"tracking.uri={mlflow_server.uri}",
        "sweep.name=age_gap-e2e",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipped {folder.broken} unreadable files" in proc.stdout
    study = _study(tmp_path / "sweeps-store", "age_gap-e2e")
    assert len(study.trials) == 2
    # Two trials, fewer than the pruner's startup trials: both must train to the end.
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2, [
        t.user_attrs.get("sweeps.reason") for t in study.trials
    ]
    cfg = compose("quickstart", f"tracking.uri={mlflow_server.uri}", "sweep.name=age_gap-e2e")
    tracker = open_tracker(cfg)
    try:
        runs = {int(r["tags"]["sweeps.trial_number"]): r for r in tracker.trial_runs("age_gap-e2e")}
        assert set(runs) == {0, 1}
        for t in study.trials:
            run = runs[t.number]
            assert run["status"] == "FINISHED" and run["tags"]["sweeps.state"] == "COMPLETE"
            assert 0.0 <= t.user_attrs["test_acc"] <= 1.0
            assert run["metrics"]["test_acc"] == pytest.approx(t.user_attrs["test_acc"])
            assert math.isfinite(run["metrics"]["test_loss"])
            assert [s for s, _ in tracker.metric_history(run["run_id"], "val_acc")] == [1, 2]
            assert _artifacts(tracker, run["run_id"]) >= COMPLETE_TRIAL_ARTIFACTS
            assert run["tags"]["sweeps.data.skipped_files"] == str(folder.broken)
    finally:
        tracker.close()


def test_two_local_workers_share_one_study(tmp_path):
    """The embedded default (journal file, SQLite MLflow) with two `run` processes at once."""
    import subprocess

    from cli_helpers import sweeps_cmd

    args = (
        "run",
        "+study=quickstart",
        "sweep.name=shared",
        "sweep.n_trials=6",
        "train.epochs=2",
        "train.threads=1",
        "train.verbose=0",
    )
    workers = [
        subprocess.Popen(
            sweeps_cmd(*args),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in workers:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    study = _study(tmp_path / "sweeps-store", "shared")
    counted = [t for t in study.trials if not t.user_attrs.get("sweeps.spurious")]
    assert len(counted) == 6
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
    assert len({t.user_attrs["sweeps.worker"] for t in counted}) == 2  # both took trials
    cfg = compose("quickstart", "sweep.name=shared", store=tmp_path / "sweeps-store")
    tracker = open_tracker(cfg)
    try:
        runs = tracker.trial_runs("shared")
    finally:
        tracker.close()
    assert sorted(int(r["tags"]["sweeps.trial_number"]) for r in runs) == sorted(
        t.number for t in counted
    )
