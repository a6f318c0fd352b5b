"""What a user sees: the MLflow UI's runs after a study, and the console of a `run`."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from cli_helpers import run_cli, sweeps_cmd
from conftest import compose
from fakes import FakeTrainer, weak_every_other
from optuna.trial import TrialState
from rich.console import Console

from sweeps.progress import ConsoleProgress
from sweeps.report_files import PIPED_WIDTH, table_console
from sweeps.report_search import report_search
from sweeps.runner import run_study
from sweeps.services import open_tracker
from sweeps.storage import open_storage


def _study(cfg):
    storage = open_storage(cfg.storage, cfg.store_dir, lambda s, t: None)
    return optuna.load_study(study_name=cfg.sweep.name, storage=storage)


def _runs(tracker, name):
    """The parent run and the trial runs (by number) of a study, as the MLflow API shows them."""
    client = tracker._client
    parent_id = tracker.parent_run(name, {})
    parent = tracker.run_info(parent_id)
    trials = {int(r["tags"]["sweeps.trial_number"]): r for r in tracker.trial_runs(name)}
    return parent, trials, client


def _assert_view_shows_the_answer(client, tracker, key, parent, runs, *expected):
    """The study's saved UI view names only columns that runs have, ``expected`` among them."""
    tags = client.get_experiment(tracker.experiment_id).tags
    columns = json.loads(tags[f"mlflow.sharedViewState.{key}"])["selectedColumns"]
    have = set()
    for run in [parent, *runs.values()]:
        have |= {f"metrics.`{k}`" for k in run["metrics"]}
        have |= {f"params.`{k}`" for k in run["params"]}
    assert set(columns) <= have, set(columns) - have
    assert set(expected) <= set(columns)


def _artifact_paths(client, run_id):
    out = set()
    for top in client.list_artifacts(run_id):
        items = client.list_artifacts(run_id, top.path) if top.is_dir else [top]
        out.update(a.path for a in items)
    return out


@pytest.mark.slow
def test_search_parent_carries_the_summary_and_pruned_runs_finish(tmp_path, mlflow_server):
    name = "ui-search"

    def search(n_trials: int):  # the same study, asked for more trials the second time
        return compose(
            "quickstart",
            f"sweep.name={name}",
            f"sweep.n_trials={n_trials}",
            "sweep.startup_trials=2",
            "sweep.warmup_epochs=1",
            "train.epochs=4",
            f"tracking.uri={mlflow_server.uri}",
            store=tmp_path / "store",
        )

    cfg = search(6)
    assert run_study(cfg, trainer=FakeTrainer(weak_every_other(0.5))) == 0
    study = _study(cfg)
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete

    tracker = open_tracker(cfg)
    try:
        parent, runs, client = _runs(tracker, name)
        assert parent["status"] == "FINISHED"
        m = parent["metrics"]
        assert m["best_val_acc"] == pytest.approx(study.best_value)
        assert m["best_trial"] == study.best_trial.number
        assert m["best_test_acc"] == pytest.approx(study.best_trial.user_attrs["test_acc"])
        assert (m["trials_complete"], m["trials_pruned"], m["trials_failed"]) == (
            len(complete),
            len(pruned),
            0,
        )
        for key, value in study.best_trial.params.items():
            assert parent["params"][f"best.{key}"] == str(value)
        _assert_view_shows_the_answer(
            client, tracker, f"{name}-search", parent, runs,
            "metrics.`best_val_acc`", "metrics.`trials_pruned`", "metrics.`test_acc`",
            *[f"params.`{k}`" for k in study.best_trial.params],
        )  # fmt: skip

        for t in complete:
            run = runs[t.number]
            assert run["metrics"]["best_val_acc"] == pytest.approx(t.value)
            assert run["metrics"]["best_epoch"] == t.user_attrs["best_epoch"]
        for t in pruned:
            run = runs[t.number]
            assert run["status"] == "FINISHED" and run["tags"]["sweeps.state"] == "PRUNED"
            assert "plots/learning_curves.png" in _artifact_paths(client, run["run_id"])
    finally:
        tracker.close()

    # Given more trials, the study reopens its parent and ends it again with the new totals.
    more = search(7)
    assert run_study(more, trainer=FakeTrainer(weak_every_other(0.5))) == 0
    tracker = open_tracker(more)
    try:
        parent, _, _ = _runs(tracker, name)
    finally:
        tracker.close()
    counted = parent["metrics"]["trials_complete"] + parent["metrics"]["trials_pruned"]
    assert parent["status"] == "FINISHED" and counted == 7


@pytest.mark.slow
def test_ablation_parent_has_each_variant_and_children_group_by_variant(tmp_path, mlflow_server):
    name = "ui-ablation"
    cfg = compose(
        "fashion_mnist_dropout",
        f"sweep.name={name}",
        "sweep.mode=ablation",
        "sweep.repeats=2",
        "train.epochs=2",
        f"tracking.uri={mlflow_server.uri}",
        store=tmp_path / "store",
    )
    assert run_study(cfg, trainer=FakeTrainer()) == 0
    study = _study(cfg)
    tracker = open_tracker(cfg)
    try:
        parent, runs, client = _runs(tracker, name)
        keys = [re.sub(r"[^\w.\- /]", "_", v.name) for v in cfg.variants]
        means = [f"metrics.`{key}.test_acc_mean`" for key in keys]
        _assert_view_shows_the_answer(
            client, tracker, f"{name}-ablation", parent, runs,
            "params.`ablation.variant`", "params.`ablation.repeat`", *means,
        )  # fmt: skip
    finally:
        tracker.close()
    assert parent["status"] == "FINISHED"
    assert len(runs) == 2 * len(cfg.variants)
    for variant in cfg.variants:
        accs = [
            t.user_attrs["test_acc"]
            for t in study.trials
            if t.params.get("ablation.variant") == variant.name
        ]
        key = re.sub(r"[^\w.\- /]", "_", variant.name)
        m = parent["metrics"]
        assert m[f"{key}.test_acc_mean"] == pytest.approx(sum(accs) / len(accs))
        assert m[f"{key}.test_acc_ci_low"] <= m[f"{key}.test_acc_mean"]
        assert m[f"{key}.test_acc_ci_high"] >= m[f"{key}.test_acc_mean"]
        assert m[f"{key}.runs"] == 2
    for t in study.trials:
        params = runs[t.number]["params"]
        assert params["ablation.variant"] == t.params["ablation.variant"]
        assert params["ablation.repeat"] == str(t.params["ablation.repeat"])
        assert "best_val_acc" in runs[t.number]["metrics"]


def _run_in_pty(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> str:
    """Runs ``cmd`` with a pseudo-terminal as stdin/stdout/stderr; returns all it wrote."""
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower, close_fds=True
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks)[-3000:]
    return b"".join(chunks).decode(errors="replace")


_NOISE = (
    "absl::InitializeLog",
    "oneDNN",
    "cuInit",
    "cuda drivers",
    "cpu_feature_guard",
    "retracing",
    "font cache",
    "fontManager",
    "Creating initial MLflow database",
    "Epoch 1/",
)


@pytest.mark.slow
def test_quickstart_on_a_terminal_is_quiet_live_and_says_how_to_open_it(tmp_path):
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(COLUMNS="100", LINES="30", TERM="xterm-256color", MPLCONFIGDIR=str(tmp_path / "mpl"))
    cmd = sweeps_cmd(
        "run",
        "+study=quickstart",
        "sweep.n_trials=3",
        "sweep.startup_trials=1",
        "train.epochs=2",
        f"store_dir={store}",
    )
    text = _run_in_pty(cmd, tmp_path, env)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    for noise in _NOISE:
        assert noise not in plain, noise
    assert plain.count("data: 1079 train") == 1
    assert "━" in plain and "best val_acc" in plain  # the live view's bar
    assert re.search(r"^\s*trial\s.*state", plain, re.M)  # and its table
    assert "\x1b[" in text  # drawn in place
    db = (store / "mlflow.db").resolve()
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in plain
    # The runs table of the study's saved view: its answer in the columns.
    assert "/runs?workflowType=machine_learning&viewStateShareKey=quickstart-search" in plain
    assert re.search(r"best trial \d+: val_acc 0\.\d{4}, test_acc 0\.\d{4}", plain)

    # No Default experiment left pointing at ./mlruns of the working directory.
    rows = sqlite3.connect(db).execute(
        "select name, artifact_location, lifecycle_stage from experiments"
    )
    active = {name: where for name, where, stage in rows if stage == "active"}
    assert set(active) == {"quickstart"}
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_off_a_terminal_one_line_per_trial_and_a_rerun_imports_no_tensorflow(tmp_path):
    args = ("+study=quickstart", "sweep.n_trials=2", "train.epochs=1")
    args += (f"store_dir={tmp_path / 'store'}",)
    proc = run_cli("run", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"trial \d+ ", ln)]
    assert len(lines) == 2 and all(" in " in ln for ln in lines), proc.stdout
    assert "\x1b[" not in proc.stdout and "Epoch 1/1" not in proc.stdout
    assert "absl" not in proc.stderr and "oneDNN" not in proc.stderr, proc.stderr

    # -X importtime lists every module the process imports, on stderr.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    again = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sweeps", "run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "this run no trials" in again.stdout and "(complete)" in again.stdout
    assert "data:" not in again.stdout  # nothing loaded
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in again.stderr.splitlines() if "|" in ln}
    assert "mlflow" in imported  # the listing works
    assert not imported & {"tensorflow", "keras", "jax", "torch"}


def _captured(width: int, terminal: bool = False) -> Console:
    return Console(file=io.StringIO(), width=width, height=40, force_terminal=terminal)


def _search_study(n: int):
    from optuna.distributions import FloatDistribution, IntDistribution

    study = optuna.create_study(direction="maximize")
    dists = {
        "model.kernel_size": IntDistribution(3, 7),
        "model.dense_dropout": FloatDistribution(0.0, 0.5),
        "train.learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
        "model.activation_of_a_rather_long_name": IntDistribution(0, 2),
    }
    for i in range(n):
        params = {
            "model.kernel_size": 3 + i % 3,
            "model.dense_dropout": 0.1234567 + i / 100,
            "train.learning_rate": 0.000123456 * (i + 1),
            "model.activation_of_a_rather_long_name": i % 3,
        }
        attrs = {"test_acc": 0.9 + i / 1000, "test_loss": 0.25 - i / 1000, "param_count": 1234567}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=dists, value=0.95 + i / 1000, user_attrs=attrs
            )
        )
    return study


def test_search_report_fits_80_columns_and_never_breaks_a_number(tmp_path):
    study = _search_study(6)
    cfg = compose("quickstart", store=tmp_path / "store")
    # The width is a terminal's promise: piped, the report is Markdown (one row per line).
    console = _captured(80, terminal=True)
    trials = study.get_trials(deepcopy=False)
    report_search(cfg, study, trials, 10, tmp_path, console)
    text = re.sub(r"\x1b\[[0-9;]*m", "", console.file.getvalue())
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for t in trials:
        assert f"{t.value:.4f}" in text and f"{t.user_attrs['test_acc']:.4f}" in text
    assert "1,234,567" in text  # the parameter count, whole


def test_table_console_follows_columns_off_a_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "90")
    assert table_console(io.StringIO()).width == 90
    monkeypatch.delenv("COLUMNS")
    assert table_console(io.StringIO()).width == PIPED_WIDTH


def _feed(progress: ConsoleProgress, n: int) -> None:
    progress.start(n, 0)
    for i in range(n):
        params = {
            "model.kernel_size": 3,
            "model.activation": "leaky_relu",
            "model.dense_dropout": 0.123456,
            "train.learning_rate": 0.00123,
            "train.batch_size": 32,
            "model.input_size": 16,
            "model.pooling": "max",
        }
        progress.trial_started(i, params)
        progress.epoch_ended(i, 1, {"val_acc": 0.5})
        pruned = i % 2 == 1
        progress.trial_ended(
            i, "PRUNED" if pruned else "COMPLETE", None if pruned else 0.9 + i / 100,
            "pruned at epoch 1" if pruned else "",
        )  # fmt: skip


def test_off_a_terminal_progress_prints_one_line_per_trial():
    console = _captured(200)
    progress = ConsoleProgress("quickstart", "val_acc", console=console)
    _feed(progress, 4)
    progress.stop()
    lines = console.file.getvalue().splitlines()
    trial_lines = [ln for ln in lines if ln.startswith("trial ")]
    assert len(trial_lines) == 4
    assert "trial 1 PRUNED" in trial_lines[1] and "best 0.9000" in trial_lines[1]
    assert "trial 2 COMPLETE val_acc=0.9200" in trial_lines[2]


def test_live_view_fits_the_terminal_and_shows_the_latest_trials():
    console = _captured(80, terminal=True)
    progress = ConsoleProgress("quickstart", "val_acc", console=console, live=False)
    _feed(progress, 12)
    view = Console(file=io.StringIO(), width=80, height=40)
    view.print(progress._render())
    lines = view.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(lines) <= console.height
    assert "12/12" in lines[0] and "best val_acc 1.0000" in lines[0]  # the bar, on top
    assert any(re.match(r"\s+11\s", line) for line in lines)  # the latest trial is shown
    assert any("pruned @1" in line for line in lines)
