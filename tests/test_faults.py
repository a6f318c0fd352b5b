"""Bad input, faults and interruptions: what the user sees and what is recorded."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from cli_helpers import error_line, run_cli, sweeps_cmd
from conftest import compose, free_port
from fakes import FakeTrainer
from imagegen import make_image_folder
from optuna.trial import TrialState

from sweeps.runner import run_study
from sweeps.services import open_tracker
from sweeps.storage import open_storage

TINY = ("train.epochs=1", "sweep.n_trials=1", "train.verbose=0")


def _trials(store: Path, name: str = "quickstart"):
    cfg = compose("quickstart", f"sweep.name={name}", store=store)
    storage = open_storage(cfg.storage, store, lambda s, t: None)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


# -- config and names: one line, before any trial --------------------------------------------


def test_unknown_study_lists_the_available_ones(tmp_path):
    proc = run_cli("run", "+study=nope", cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "unknown study 'nope'" in line and "quickstart" in line and "age_gap" in line


def test_no_study_says_how_to_give_one(tmp_path):
    proc = run_cli("run", cwd=tmp_path)
    assert proc.returncode == 2 and "+study=NAME" in error_line(proc)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.activation=swish", "must be one of relu, prelu, leaky_relu"),
        ("model.pooling=median", "must be one of max, avg"),
        ("train.optimizer=adamax", "must be one of adam, rmsprop, sgd, adamw, nadam"),
        ("sweep.sampler=bayes", "must be one of tpe, random, grid, cmaes, gp"),
        ("sweep.pruner=asha", "must be one of median, hyperband, none"),
        ("space.model.dense_dropout='interval(0.5, 0.1)'", "low 0.5 is greater than high 0.1"),
        ("space.model.dense_dropout='interval(0.0, 1.2)'", "must be >= 0 and < 1"),
        ("model.dense_dropout=1.0", "model.dense_dropout=1.0"),
        ("train.batch_size=0", "train.batch_size=0"),
        ("train.epochs=-1", "train.epochs=-1"),
        ("space.train.batch_size='choice(0, 16)'", "must be a whole number >= 1"),
        ("+train.epochz=3", "unknown key train.epochz"),
        ("train.epochz=3", "train.epochz"),
    ],
)
def test_bad_value_is_one_line_naming_it(tmp_path, override, expected):
    proc = run_cli("run", "+study=quickstart", override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert expected in error_line(proc)
    assert not (tmp_path / "sweeps-store" / "optuna.journal").exists()  # no trial started


# -- data: one line with the path and the layout, before any trial ----------------------------


def _data_case(tmp_path: Path, case: str) -> Path:
    root = tmp_path / "data"
    if case == "missing":
        return root
    if case == "empty":
        root.mkdir()
    elif case == "one_class":
        make_image_folder(root, classes=("old",), odd=False)
    elif case == "all_unreadable":
        for split in ("train", "validation", "test"):
            for cls in ("old", "young"):
                folder = root / split / cls
                folder.mkdir(parents=True)
                (folder / "a.jpg").write_bytes(b"")
                (folder / "b.png").write_text("not an image")
    return root


SPLITS_LAYOUT = "expected layout 'splits': <root>/{train,validation,test}/<class>/<images>"


@pytest.mark.parametrize(
    ("case", "where", "problem"),
    [
        ("missing", "", "folder does not exist"),
        ("empty", "", "folder is empty"),
        ("one_class", "/train/young", "class folder missing"),  # age_gap names its classes
        ("all_unreadable", "", "none of the 12 image files could be decoded"),
    ],
)
def test_bad_data_root_is_one_line_with_path_and_layout(tmp_path, case, where, problem):
    root = _data_case(tmp_path, case)
    proc = run_cli("run", "+study=age_gap", f"data.root={root}", *TINY, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert line == f"sweeps: error: {root}{where}: {problem}; {SPLITS_LAYOUT}"
    assert _trials(tmp_path / "sweeps-store", "age_gap") == []


def test_data_root_not_given(tmp_path):
    proc = run_cli("run", "+study=age_gap", cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.root is not set" in error_line(proc)


# -- services unreachable: one line within 15 s, password masked ------------------------------


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as s:  # nothing listens there once this closes
        s.bind(("127.0.0.1", port))
    return port


def test_tracking_unreachable_at_start(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    proc = run_cli("run", "+study=quickstart", f"tracking.uri={uri}", *TINY, cwd=tmp_path)
    assert time.monotonic() - started < 15  # the README's promise, from the user's Enter
    assert proc.returncode == 3
    assert uri in error_line(proc)


def test_storage_unreachable_masks_the_password(tmp_path):
    url = f"postgresql://alice:s3cret-pw@127.0.0.1:{_closed_port()}/sweeps"
    started = time.monotonic()
    proc = run_cli("run", "+study=quickstart", f"storage.url={url}", *TINY, cwd=tmp_path)
    assert time.monotonic() - started < 15  # the README's promise, from the user's Enter
    assert proc.returncode == 3
    line = error_line(proc)
    assert "alice:***@127.0.0.1" in line
    assert "s3cret-pw" not in proc.stderr + proc.stdout


# -- faults inside trials: recorded, the study goes on -----------------------------------------


def test_out_of_memory_fails_one_trial_and_the_worker_goes_on(store):
    import tensorflow as tf

    def oom(spec):
        if spec.number == 0:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    class Oom(FakeTrainer):
        def run(self, spec, report):
            oom(spec)
            return super().run(spec, report)

    cfg = compose("quickstart", "sweep.n_trials=2", "train.epochs=2", store=store)
    run_study(cfg, trainer=Oom())
    trials = _trials(store)
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["sweeps.reason"].startswith("out of memory")
    assert trials[1].state == TrialState.COMPLETE


@pytest.mark.slow
def test_real_keras_trial_whose_loss_becomes_nan_fails_with_the_reason(store):
    """A huge learning rate on digits: the real trainer's loss overflows in the first epochs."""
    import re

    cfg = compose(
        "quickstart",
        "~space.train.learning_rate",
        "train.optimizer=sgd",
        "train.learning_rate=1e12",
        "train.epochs=2",
        "train.verbose=0",
        "sweep.n_trials=1",
        "data.limit=200",
        store=store,
    )
    assert run_study(cfg) == 0  # the study goes on; the trial is recorded
    (trial,) = _trials(store)
    assert trial.state == TrialState.FAIL
    reason = trial.user_attrs["sweeps.reason"]
    assert re.fullmatch(r"(train|val)_(loss|acc) became (nan|-?inf) at epoch [12]", reason), reason
    assert len(trial.intermediate_values) <= 1  # stopped after the epoch it happened in


@pytest.mark.slow
def test_artifact_write_failure_fails_the_trial_only(tmp_path):
    # The scratch folder of trial 0 is a file: writing its checkpoint fails (root ignores
    # permissions, so a read-only folder would not do it).
    blocker = tmp_path / "sweeps-store" / "work" / "quickstart" / "trial-0000"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    proc = run_cli(
        "run",
        "+study=quickstart",
        "train.epochs=1",
        "sweep.n_trials=2",
        "train.verbose=0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    trials = _trials(tmp_path / "sweeps-store")
    assert trials[0].state == TrialState.FAIL
    reason = trials[0].user_attrs["sweeps.reason"]
    # The first write of the trial is its resumable state, at the end of epoch 1.
    assert "could not write the resumable state in" in reason and "trial-0000" in reason
    assert trials[1].state == TrialState.COMPLETE


@pytest.mark.slow
def test_tracking_lost_mid_study_is_retried_and_flushed(tmp_path, mlflow_server, caplog):
    """The server stops after trial 0 and returns during trial 2: nothing is lost."""
    name = f"outage-{time.time_ns()}"

    class Outage(FakeTrainer):
        def run(self, spec, report):
            if spec.number == 1:
                mlflow_server.stop()
            if spec.number == 2:
                mlflow_server.start()
            return super().run(spec, report)

    cfg = compose(
        "quickstart",
        f"sweep.name={name}",
        f"tracking.uri={mlflow_server.uri}",
        "sweep.pruner=none",
        "sweep.n_trials=4",
        "train.epochs=2",
        store=tmp_path / "store",
    )
    try:
        with caplog.at_level("WARNING", logger="sweeps.tracking"):
            assert run_study(cfg, trainer=Outage()) == 0
    finally:
        if mlflow_server.proc.poll() is not None:
            mlflow_server.start()
    warnings = [r.getMessage() for r in caplog.records if r.name == "sweeps.tracking"]
    assert any(f"MLflow at {mlflow_server.uri} is unreachable" in w for w in warnings), warnings
    assert any(f"MLflow at {mlflow_server.uri} is back" in w for w in warnings), warnings
    # Everything was sent once the server returned: nothing left in the spool.
    spool = tmp_path / "store" / "spool"
    assert not spool.exists() or not any(spool.iterdir())
    trials = _trials(tmp_path / "store", name)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    tracker = open_tracker(cfg)
    try:
        runs = tracker.trial_runs(name)
    finally:
        tracker.close()
    assert sorted(int(r["tags"]["sweeps.trial_number"]) for r in runs) == [0, 1, 2, 3]
    assert all(r["status"] == "FINISHED" and "test_acc" in r["metrics"] for r in runs)


# -- signals --------------------------------------------------------------------------------


def _wait_for_running_trial(store: Path, proc: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        if any(t.state == TrialState.RUNNING and t.intermediate_values for t in _trials(store)):
            return
        time.sleep(0.5)
    raise AssertionError("no trial reached its first epoch")


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 75)])
def test_signal_mid_trial_fails_it_and_rerun_resumes(tmp_path, sig, code):
    args = (
        "run",
        "+study=quickstart",
        "sweep.n_trials=2",
        "train.epochs=30",
        "train.verbose=0",
        "sweep.pruner=none",
        "space.model.input_size='choice(16)'",
    )
    # A shell's background job ignores SIGINT and its children inherit that; the default
    # disposition makes Python turn SIGINT into KeyboardInterrupt however pytest was started.
    proc = subprocess.Popen(
        sweeps_cmd(*args),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    store = tmp_path / "sweeps-store"
    _wait_for_running_trial(store, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert "this run 1 interrupted" in out + err and "interrupted: rerun" in out + err
    trials = _trials(store)
    assert not any(t.state == TrialState.RUNNING for t in trials)
    killed = trials[0]
    assert killed.state == TrialState.FAIL and killed.user_attrs["sweeps.reason"] == "interrupted"
    cfg = compose("quickstart", store=store)
    tracker = open_tracker(cfg)
    try:
        assert tracker.run_info(killed.user_attrs["mlflow_run_id"])["status"] == "KILLED"
    finally:
        tracker.close()

    again = run_cli(*args[:4], "train.epochs=2", *args[5:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    finished = [t for t in _trials(store) if t.state == TrialState.COMPLETE]
    assert len(finished) == 2  # sweep.n_trials counts the study's total
