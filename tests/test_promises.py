"""README promises that need no PostgreSQL: the spool, retries, sampler seeds, ablations,
the hyperband pruner and gp sampler, `plan` through the CLI, `report` on a running study, and
the 15 s answer when a service is silent."""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from cli_helpers import run_cli
from conftest import compose
from fakes import FakeTrainer, spy_on_engine_study, weak_every_other
from optuna.trial import TrialState
from rich.console import Console

from sweeps.errors import ConfigError
from sweeps.keys import WORKER_ATTR
from sweeps.recovery import RETRIES_ATTR
from sweeps.runner import run_study
from sweeps.services import open_tracker
from sweeps.storage import open_storage

TESTS = Path(__file__).resolve().parent


def _study(cfg):
    storage = open_storage(cfg.storage, cfg.store_dir, lambda s, t: None)
    return optuna.load_study(study_name=cfg.sweep.name, storage=storage)


def _runs(cfg) -> dict[int, dict]:
    tracker = open_tracker(cfg)
    try:
        return {
            int(r["tags"]["sweeps.trial_number"]): r for r in tracker.trial_runs(cfg.sweep.name)
        }
    finally:
        tracker.close()


# -- the spool: unsent MLflow writes are kept and sent by the next run --------------------------


@pytest.mark.slow
def test_unsent_writes_are_spooled_and_sent_by_the_next_run(
    tmp_path, mlflow_server, monkeypatch, caplog
):
    from sweeps.tracking import Tracker

    server = mlflow_server

    class ServerDiesInTrial1(FakeTrainer):
        def run(self, spec, report):
            if spec.number == 1:
                server.stop()  # its run exists; its metrics, artifacts and end do not yet
            return super().run(spec, report)

    cfg = compose(
        "quickstart",
        f"sweep.name=spool-{time.time_ns()}",
        f"tracking.uri={server.uri}",
        "sweep.pruner=none",
        "sweep.n_trials=2",
        "train.epochs=2",
        store=tmp_path / "store",
    )
    real_close = Tracker.close
    # Give up on the dead server after 2 s instead of 30: what is unsent then is spooled.
    monkeypatch.setattr(Tracker, "close", lambda self, timeout=30.0: real_close(self, 2.0))
    try:
        with caplog.at_level("WARNING", logger="sweeps.tracking"):
            assert run_study(cfg, trainer=ServerDiesInTrial1()) == 0
    finally:
        monkeypatch.setattr(Tracker, "close", real_close)
        if server.proc.poll() is not None:
            server.start()  # the next run finds the server back; other tests need it too
    assert [t.state for t in _study(cfg).trials] == [TrialState.COMPLETE] * 2
    spool = tmp_path / "store" / "spool"
    spooled = sorted(spool.glob("*.jsonl"))
    assert spooled and sum(len(p.read_text().splitlines()) for p in spooled) >= 3
    assert any("writes kept in" in r.getMessage() for r in caplog.records), caplog.text

    trainer = FakeTrainer()
    assert run_study(cfg, trainer=trainer) == 0  # nothing left to train; sends the spool
    assert trainer.specs == []
    assert not list(spool.glob("*.jsonl")) and not list(spool.glob("*.sending"))
    runs = _runs(cfg)
    assert set(runs) == {0, 1}
    tracker = open_tracker(cfg)
    try:
        for number, run in runs.items():
            assert run["status"] == "FINISHED" and run["tags"]["sweeps.state"] == "COMPLETE"
            assert run["metrics"]["test_acc"] == pytest.approx(
                _study(cfg).trials[number].user_attrs["test_acc"]
            )
            steps = [s for s, _ in tracker.metric_history(run["run_id"], "val_acc")]
            assert steps == [1, 2]
            assert [a.path for a in tracker._client.list_artifacts(run["run_id"], "plots")] == [
                "plots/curve.txt"
            ]
    finally:
        tracker.close()


# -- storage.max_retries ------------------------------------------------------------------------


class AlwaysDies(FakeTrainer):
    """Every trial is killed at its first epoch (Ctrl-C)."""

    def run(self, spec, report):
        self.specs.append(spec)
        raise KeyboardInterrupt


def test_a_trial_stopped_again_and_again_is_requeued_each_time_without_spending_a_retry(store):
    """A stop (Ctrl-C, pre-emption) is not the trial's fault: even with no retries to spend,
    the trial is queued again with its parameters until a worker finishes it. Crashes spend
    ``storage.max_retries`` (tests/test_preempt.py)."""
    cfg = compose(
        "quickstart", "sweep.n_trials=1", "train.epochs=1", "storage.max_retries=0", store=store
    )
    params = []
    for _ in range(3):
        trainer = AlwaysDies()
        assert run_study(cfg, trainer=trainer) == 130
        params.append(trainer.specs[0].params)
    assert all(p == params[0] for p in params)  # every retry carries the first one's params
    trainer = FakeTrainer()
    assert run_study(cfg, trainer=trainer) == 0
    assert [s.params for s in trainer.specs] == [params[0]]
    trials = _study(cfg).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE]
    for k, t in enumerate(trials[1:], start=1):  # each retry names the trial it replays
        assert t.system_attrs["failed_trial"] == 0 and t.system_attrs["retry_history"] == list(
            range(k)
        )
        assert t.system_attrs[RETRIES_ATTR] == 0


def test_a_trial_retried_twice_still_leaves_the_study_its_full_count(store):
    """Every failed trial of a retry chain is replaced, not only the chain's first one."""
    cfg = compose("quickstart", "sweep.n_trials=2", "train.epochs=1", store=store)
    for _ in range(2):  # trial 0 dies, then its retry dies too
        assert run_study(cfg, trainer=AlwaysDies()) == 130
    trainer = FakeTrainer()
    assert run_study(cfg, trainer=trainer) == 0
    states = [t.state for t in _study(cfg).trials]
    assert states.count(TrialState.COMPLETE) == 2  # the second retry and one fresh trial
    assert len(trainer.specs) == 2
    runs = _runs(cfg)
    second_retry = next(
        t for t in _study(cfg).trials if t.system_attrs.get("retry_history") == [0, 1]
    )
    assert runs[second_retry.number]["tags"]["sweeps.retry_of_trial"] == "1"  # its direct parent


# -- per-worker sampler seeds -------------------------------------------------------------------


def _sampled(monkeypatch, store: Path, worker: str, name: str, *overrides: str) -> list[dict]:
    """The parameters a worker called ``worker`` samples for a fresh study ``name``."""
    import sweeps.host

    monkeypatch.setattr(sweeps.host, "worker_id", lambda: worker)
    cfg = compose(
        "quickstart",
        f"sweep.name={name}",
        "sweep.sampler=random",
        "sweep.pruner=none",
        "sweep.n_trials=4",
        "train.epochs=1",
        *overrides,
        store=store,
    )
    trainer = FakeTrainer()
    run_study(cfg, trainer=trainer)
    return [s.params for s in trainer.specs]


def test_two_workers_sample_different_points_unless_sampler_seed_pins_them(store, monkeypatch):
    host = socket.gethostname()
    a = _sampled(monkeypatch, store, f"{host}:1001", "a")
    b = _sampled(monkeypatch, store, f"{host}:1002", "b")
    assert len(a) == len(b) == 4
    assert not any(p in b for p in a)  # no point sampled by both workers
    again = _sampled(monkeypatch, store, f"{host}:1001", "a-again")
    assert again == a  # a worker's seed comes from seed and its process, nothing else
    pinned = [
        _sampled(monkeypatch, store, f"{host}:{pid}", f"pinned-{pid}", "sweep.sampler_seed=7")
        for pid in (1001, 1002)
    ]
    assert pinned[0] == pinned[1] and pinned[0] != a


# -- ablations ----------------------------------------------------------------------------------

ABLATION = ("sweep.mode=ablation", "train.epochs=3", "data.root=unused")


def test_ablations_never_prune(store, monkeypatch):
    # The baseline comes first and does best: in a search, the median pruner with no startup
    # and no warm-up would stop every later trial after its first epoch.
    def curve(spec):
        return [0.9, 0.9, 0.9] if spec.variant == "baseline" else [0.1, 0.1, 0.1]

    cfg = compose(
        "age_gap",
        *ABLATION,
        "sweep.repeats=1",
        "sweep.pruner=median",
        "sweep.startup_trials=0",
        "sweep.warmup_epochs=0",
        store=store,
    )
    used = spy_on_engine_study(monkeypatch)
    trainer = FakeTrainer(curve)
    assert run_study(cfg, trainer=trainer) == 0
    assert isinstance(used[0].pruner, optuna.pruners.NopPruner)
    trials = _study(cfg).trials
    assert len(trials) == len(cfg.variants) >= 2
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trainer.epochs_run == 3 * len(cfg.variants)


WORKER_SCRIPT = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import compose
from fakes import FakeTrainer
from sweeps.runner import run_study
cfg = compose("age_gap", *{overrides!r}, store=Path(sys.argv[1]))
# Start together, imports done: on a loaded machine one worker could otherwise run them all.
barrier, n = Path(sys.argv[2]), int(sys.argv[3])
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < n:
    time.sleep(0.05)
raise SystemExit(run_study(cfg, trainer=FakeTrainer(epoch_seconds=1.0)))
"""


@pytest.mark.slow
def test_workers_sharing_one_ablation_run_every_variant_and_repeat_once(store):
    overrides = ("sweep.mode=ablation", "train.epochs=2", "data.root=unused", "sweep.repeats=1")
    open_tracker(compose("age_gap", *overrides, store=store)).close()  # the MLflow store exists
    script = WORKER_SCRIPT.format(tests=str(TESTS), overrides=overrides)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    barrier = store.parent / "started"
    barrier.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(store), str(barrier), "2"],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(2)
    ]
    for proc in workers:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    cfg = compose("age_gap", *overrides, store=store)
    trials = _study(cfg).trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    ran = sorted((t.params["ablation.variant"], t.params["ablation.repeat"]) for t in complete)
    expected = sorted((v.name, 0) for v in cfg.variants)
    assert ran == expected  # each (variant, repeat) exactly once
    assert len({t.user_attrs[WORKER_ATTR] for t in complete}) == 2  # both workers took some
    runs = _runs(cfg)
    assert sorted(runs) == sorted(t.number for t in trials if t.user_attrs.get("mlflow_run_id"))


# -- hyperband and gp outside the benchmarks ------------------------------------------------------


def test_hyperband_pruner_stops_the_weak_trials(store, monkeypatch):
    curve = weak_every_other(0.2)  # every other trial plateaus at a fifth of the others
    cfg = compose(
        "quickstart",
        "sweep.pruner=hyperband",
        "sweep.sampler_seed=0",
        "sweep.n_trials=12",
        "sweep.startup_trials=2",
        "train.epochs=6",
        store=store,
    )
    used = spy_on_engine_study(monkeypatch)
    trainer = FakeTrainer(curve)
    assert run_study(cfg, trainer=trainer) == 0
    assert isinstance(used[0].pruner, optuna.pruners.HyperbandPruner)
    trials = _study(cfg).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete and len(pruned) + len(complete) == 12
    assert min(max(t.intermediate_values) for t in pruned) < 6  # stopped before the end
    assert all(sorted(t.intermediate_values) == [1, 2, 3, 4, 5, 6] for t in complete)
    assert trainer.epochs_run < 12 * 6
    runs = _runs(cfg)
    for t in pruned:
        assert runs[t.number]["tags"]["sweeps.state"] == "PRUNED"
        assert runs[t.number]["tags"]["sweeps.pruned_at_epoch"] == str(max(t.intermediate_values))


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(_has_torch(), reason="torch is installed: the gp sampler runs instead")
def test_gp_sampler_without_torch_names_the_package(store):
    cfg = compose("quickstart", "sweep.sampler=gp", store=store)
    with pytest.raises(ConfigError, match="sweep.sampler=gp needs the package torch"):
        run_study(cfg, trainer=FakeTrainer())


@pytest.mark.skipif(not _has_torch(), reason="sweep.sampler=gp needs torch (pip install torch)")
def test_gp_sampler_runs_a_study(store, monkeypatch):
    cfg = compose(
        "quickstart",
        "sweep.sampler=gp",
        "sweep.n_trials=5",
        "sweep.startup_trials=2",
        "sweep.pruner=none",
        "train.epochs=1",
        store=store,
    )
    used = spy_on_engine_study(monkeypatch)
    assert run_study(cfg, trainer=FakeTrainer()) == 0
    assert isinstance(used[0].sampler, optuna.samplers.GPSampler)
    assert [t.state for t in _study(cfg).trials] == [TrialState.COMPLETE] * 5


# -- plan through the CLI ---------------------------------------------------------------------


@pytest.mark.slow
def test_plan_command_prints_lenet5_counts_without_training(tmp_path):
    proc = run_cli("plan", "+study=lenet5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for count in ("156", "2,416", "48,120", "10,164", "850"):  # LeNet-5's layers
        assert count in proc.stdout, count
    store = tmp_path / "sweeps-store"
    assert not (store / "optuna.journal").exists() and not (store / "mlflow.db").exists()


# -- report on a study that is still running ----------------------------------------------------


def _running_trial(study, worker: str = "") -> None:
    """Starts the next trial (a queued one if any) as a live worker would, and leaves it."""
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, worker or f"{socket.gethostname()}:{os.getpid()}")


def test_search_report_on_a_study_with_a_running_trial(store):
    from sweeps.report import report_study

    cfg = compose(
        "quickstart", "sweep.n_trials=4", "sweep.pruner=none", "train.epochs=2", store=store
    )
    run_study(cfg, trainer=FakeTrainer())
    _running_trial(_study(cfg))
    assert [t.state for t in _study(cfg).trials][-1] == TrialState.RUNNING
    files = report_study(cfg, console=Console(file=io.StringIO(), width=200))
    assert {p.name for p in files} == {"search.csv", "search.md", "search.png"}
    with (store / "reports" / "quickstart" / "search.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4  # the complete trials; the running one is not ranked
    assert _study(cfg).trials[-1].state == TrialState.RUNNING  # report changes nothing


def test_ablation_report_on_a_study_with_a_running_trial(store):
    from sweeps.report import report_study

    cfg = compose(
        "fashion_mnist_dropout", "sweep.mode=ablation", "sweep.repeats=2", "train.epochs=2",
        store=store,
    )  # fmt: skip

    class StopsAtTrial2(FakeTrainer):
        def run(self, spec, report):
            if spec.number == 2:
                raise KeyboardInterrupt
            return super().run(spec, report)

    assert run_study(cfg, trainer=StopsAtTrial2()) == 130
    study = _study(cfg)
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(waiting) == 2  # the retry of trial 2 and the last repeat
    _running_trial(study)  # a live worker takes one of them
    states = [t.state for t in _study(cfg).trials]
    assert states.count(TrialState.RUNNING) == 1 and states.count(TrialState.COMPLETE) == 2
    console = Console(file=io.StringIO(), width=220)
    files = report_study(cfg, console=console)
    assert "ablation.csv" in {p.name for p in files}
    with (store / "reports" / "fashion_mnist_dropout" / "ablation.csv").open() as fh:
        rows = {row["variant"]: row for row in csv.DictReader(fh)}
    assert (rows["baseline"]["n"], rows["dropout"]["n"]) == ("1", "1")
    assert _study(cfg).trials[-1].state != TrialState.COMPLETE  # report ran nothing


# -- silent services: one line within the README's 15 s -----------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def test_silent_tracking_server_is_refused_within_15_s(tmp_path, silent_port):
    from sweeps.errors import TrackingUnreachable

    uri = f"http://127.0.0.1:{silent_port}"
    cfg = compose("quickstart", f"tracking.uri={uri}", store=tmp_path / "store")
    started = time.monotonic()
    with pytest.raises(TrackingUnreachable, match=uri):
        open_tracker(cfg)
    assert time.monotonic() - started < 15


def test_silent_database_is_refused_within_15_s(tmp_path, silent_port):
    from sweeps.errors import StorageUnreachable

    url = f"postgresql://alice:s3cret-pw@127.0.0.1:{silent_port}/sweeps"
    cfg = compose("quickstart", f"storage.url={url}", store=tmp_path / "store")
    started = time.monotonic()
    with pytest.raises(StorageUnreachable) as err:
        open_storage(cfg.storage, cfg.store_dir, lambda s, t: None)
    assert time.monotonic() - started < 15
    assert f"alice:***@127.0.0.1:{silent_port}" in str(err.value)
    assert "s3cret-pw" not in str(err.value)
