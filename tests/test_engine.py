"""The study loop on scripted trials: sampling, pruning, states, resume and tracking."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys

import optuna
import pytest
from conftest import compose
from fakes import FakeTrainer, default_curve, ghost_trial, spy_on_engine_study, weak_every_other
from optuna.trial import TrialState

from sweeps.errors import StudyMismatch
from sweeps.runner import run_study
from sweeps.services import open_tracker
from sweeps.storage import open_storage


def _study(cfg):
    storage = open_storage(cfg.storage, cfg.store_dir, lambda s, t: None)
    return optuna.load_study(study_name=cfg.sweep.name, storage=storage)


def _runs(cfg):
    tracker = open_tracker(cfg)
    try:
        return {
            int(r["tags"]["sweeps.trial_number"]): r for r in tracker.trial_runs(cfg.sweep.name)
        }
    finally:
        tracker.close()


def _count(study, state):
    return sum(t.state == state for t in study.get_trials(deepcopy=False))


def test_search_prunes_and_tracks_every_trial(store):
    # Half the trials plateau low: the median pruner must stop some of them early.
    curve = weak_every_other(0.5)
    cfg = compose(
        "quickstart",
        "sweep.n_trials=10",
        "sweep.startup_trials=2",
        "sweep.warmup_epochs=1",
        "train.epochs=5",
        store=store,
    )
    trainer = FakeTrainer(curve)
    assert run_study(cfg, trainer=trainer) == 0

    study = _study(cfg)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 10
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete and len(pruned) + len(complete) == 10
    assert trainer.epochs_run < 10 * 5  # pruning saved epochs

    runs = _runs(cfg)
    assert set(runs) == {t.number for t in trials}
    for t in complete:
        run = runs[t.number]
        assert t.user_attrs["mlflow_run_id"] == run["run_id"]
        assert run["status"] == "FINISHED" and run["tags"]["sweeps.state"] == "COMPLETE"
        assert run["metrics"]["test_acc"] == pytest.approx(t.user_attrs["test_acc"])
        assert run["params"]["model.kernel_size"] == str(t.params["model.kernel_size"])
        assert len(t.user_attrs["history"]) == 5
    for t in pruned:
        run = runs[t.number]
        assert run["status"] == "FINISHED" and run["tags"]["sweeps.state"] == "PRUNED"
        assert run["tags"]["sweeps.pruned_at_epoch"] == str(max(t.intermediate_values))
    tracker = open_tracker(cfg)
    try:
        any_complete = complete[0]
        history = tracker.metric_history(runs[any_complete.number]["run_id"], "val_acc")
        assert [s for s, _ in history] == [1, 2, 3, 4, 5]
        parent = tracker.parent_run(cfg.sweep.name, {})
        assert runs[any_complete.number]["tags"]["mlflow.parentRunId"] == parent
    finally:
        tracker.close()
    # Artifacts are uploaded and the scratch folders removed.
    assert not any((store / "work" / cfg.sweep.name).glob("trial-*"))


def test_conditional_parameter_only_with_its_activation(store):
    cfg = compose(
        "quickstart",
        "sweep.n_trials=12",
        "sweep.sampler=random",
        "sweep.sampler_seed=0",  # a fixed draw that takes both branches
        "sweep.pruner=none",
        "train.epochs=1",
        store=store,
    )
    trainer = FakeTrainer()
    run_study(cfg, trainer=trainer)
    trials = _study(cfg).get_trials(deepcopy=False)
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    branches = set()
    for t in trials:
        has_alpha = "model.leaky_alpha" in t.params
        assert has_alpha == (t.params["model.activation"] == "leaky_relu")
        branches.add(has_alpha)
    assert branches == {True, False}  # both sides of the condition were sampled
    # The trainer got the sampled value, and no alpha where the condition is false.
    for spec in trainer.specs:
        if spec.params["model.activation"] == "leaky_relu":
            assert spec.model_kwargs["leaky_alpha"] == spec.params["model.leaky_alpha"]
        else:
            assert "model.leaky_alpha" not in spec.params


def test_resume_counts_n_trials_as_the_study_total(store):
    cfg = compose("quickstart", "sweep.n_trials=3", "train.epochs=2", store=store)
    run_study(cfg, trainer=FakeTrainer())
    cfg = compose("quickstart", "sweep.n_trials=5", "train.epochs=2", store=store)
    trainer = FakeTrainer()
    run_study(cfg, trainer=trainer)
    assert len(trainer.specs) == 2
    assert len(_study(cfg).get_trials(deepcopy=False)) == 5
    tracker = open_tracker(cfg)
    try:
        assert len(tracker._parents(cfg.sweep.name)) == 1  # the parent run is found again
    finally:
        tracker.close()


def test_failed_trial_is_recorded_and_the_study_goes_on(store):
    cfg = compose(
        "quickstart", "sweep.n_trials=4", "sweep.sampler=random", "train.epochs=2", store=store
    )
    trainer = FakeTrainer(fail_when=lambda s: "boom on purpose" if s.number == 1 else None)
    run_study(cfg, trainer=trainer)
    study = _study(cfg)
    failed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [1]
    assert failed[0].user_attrs["sweeps.reason"] == "boom on purpose"
    assert _count(study, TrialState.COMPLETE) == 3
    run = _runs(cfg)[1]
    assert run["status"] == "FAILED" and run["tags"]["sweeps.error"] == "boom on purpose"


def test_nan_loss_fails_the_trial_with_the_reason(store):
    def curve(spec):
        return [0.5, math.nan, 0.7] if spec.number == 0 else default_curve(spec)

    cfg = compose("quickstart", "sweep.n_trials=2", "train.epochs=3", store=store)
    trainer = FakeTrainer(curve)
    run_study(cfg, trainer=trainer)
    t0 = _study(cfg).trials[0]
    assert t0.state == TrialState.FAIL
    assert t0.user_attrs["sweeps.reason"] == "train_loss became nan at epoch 2"
    assert trainer.epochs_run == 2 + 3  # stopped at once, the next trial ran in full


def test_collapsing_architecture_is_pruned_with_its_reason(store):
    from sweeps.models import ArchitectureError

    class Collapsing(FakeTrainer):
        def run(self, spec, report):
            if spec.number == 0:
                raise ArchitectureError("feature map collapses to 0x0 at block 3")
            return super().run(spec, report)

    cfg = compose("quickstart", "sweep.n_trials=2", "train.epochs=2", store=store)
    run_study(cfg, trainer=Collapsing())
    t0 = _study(cfg).trials[0]
    assert t0.state == TrialState.PRUNED
    assert "collapses" in t0.user_attrs["sweeps.reason"]
    assert _study(cfg).trials[1].state == TrialState.COMPLETE


def test_changed_space_is_refused_unless_allowed(store):
    cfg = compose("quickstart", "sweep.n_trials=1", "train.epochs=1", store=store)
    run_study(cfg, trainer=FakeTrainer())
    changed = ("space.model.kernel_size='choice(3,7)'", "sweep.n_trials=2", "train.epochs=1")
    with pytest.raises(StudyMismatch, match="sweep.allow_space_change=true"):
        run_study(compose("quickstart", *changed, store=store), trainer=FakeTrainer())
    cfg = compose("quickstart", *changed, "sweep.allow_space_change=true", store=store)
    run_study(cfg, trainer=FakeTrainer())
    assert len(_study(cfg).trials) == 2


def test_a_row_that_sets_seed_draws_its_own_seeds_the_others_stay_paired(store):
    # A null control: the baseline again under another seed stream.
    null_row = "+ablation.variants=[{name: null_seed, set: {seed: 1000}}]"
    cfg = compose("fashion_mnist_dropout", "sweep.mode=ablation", "sweep.repeats=2",
                  "train.epochs=1", null_row, store=store)  # fmt: skip
    trainer = FakeTrainer()
    run_study(cfg, trainer=trainer)
    seeds = {(s.variant, s.repeat): s.seed for s in trainer.specs}
    assert seeds == {("baseline", 0): 0, ("baseline", 1): 1, ("null_seed", 0): 1000,
                     ("null_seed", 1): 1001}  # fmt: skip


def test_ablation_runs_every_variant_and_repeat_once(store):
    overrides = ("sweep.mode=ablation", "sweep.repeats=2", "train.epochs=2", "data.root=unused")
    cfg = compose("age_gap", *overrides, store=store)
    trainer = FakeTrainer()
    run_study(cfg, trainer=trainer)
    expected = {(v.name, r) for v in cfg.variants for r in range(2)}
    got = {(s.variant, s.repeat) for s in trainer.specs}
    assert got == expected and len(trainer.specs) == len(expected)
    for spec in trainer.specs:
        assert spec.seed == cfg.seed + spec.repeat
        variant = next(v for v in cfg.variants if v.name == spec.variant)
        for path, value in variant.overrides.items():
            section, key = path.split(".", 1)
            assert spec.config[section][key] == value
    # Rerunning the same command adds nothing.
    again = FakeTrainer()
    run_study(compose("age_gap", *overrides, store=store), trainer=again)
    assert again.specs == []
    assert _count(_study(cfg), TrialState.COMPLETE) == len(expected)


def test_interrupted_trial_fails_then_resumes(store):
    class Interrupting(FakeTrainer):
        def run(self, spec, report):
            if spec.number == 1:
                report(1, {"train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5})
                raise KeyboardInterrupt
            return super().run(spec, report)

    cfg = compose("quickstart", "sweep.n_trials=3", "train.epochs=2", store=store)
    assert run_study(cfg, trainer=Interrupting()) == 130
    study = _study(cfg)
    t1 = study.trials[1]
    assert t1.state == TrialState.FAIL and t1.user_attrs["sweeps.reason"] == "interrupted"
    assert _runs(cfg)[1]["status"] == "KILLED"
    assert _count(study, TrialState.RUNNING) == 0
    assert _count(study, TrialState.WAITING) == 1  # its retry

    trainer = FakeTrainer()
    assert run_study(cfg, trainer=trainer) == 0
    study = _study(cfg)
    assert trainer.specs[0].params == study.trials[1].params  # the retry came first
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 3
    retry = next(t for t in finished if t.system_attrs.get("failed_trial") == 1)
    assert _runs(cfg)[retry.number]["tags"]["sweeps.retry_of_run"] == _runs(cfg)[1]["run_id"]


@pytest.fixture
def stop_signals():
    """SIGINT handled as `sweeps run` handles it, for one test; put back afterwards."""
    import signal

    from sweeps import signals

    previous = signal.signal(signal.SIGINT, signals.on_stop_signal)
    yield lambda: os.kill(os.getpid(), signal.SIGINT)
    signal.signal(signal.SIGINT, previous)
    signals._stop_code = None


def test_ctrl_c_a_library_turns_into_its_own_error_still_ends_the_trial_as_interrupted(
    store, stop_signals
):
    # TensorFlow tracing a model turns a KeyboardInterrupt into a TypeError of its own.
    class Converting(FakeTrainer):
        def run(self, spec, report):
            self.started.append(spec.number)
            if spec.number == 1:
                try:
                    stop_signals()
                except KeyboardInterrupt:
                    raise TypeError("Failed to convert (None, 1024) to Tensor") from None
            return super().run(spec, report)

    cfg = compose("quickstart", "sweep.n_trials=4", "train.epochs=2", store=store)
    trainer = Converting()
    trainer.started = []
    assert run_study(cfg, trainer=trainer) == 130
    assert trainer.started == [0, 1]  # no trial started after the signal
    study = _study(cfg)
    t1 = study.trials[1]
    assert t1.state == TrialState.FAIL and t1.user_attrs["sweeps.reason"] == "interrupted"
    assert _runs(cfg)[1]["status"] == "KILLED"
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == t1.params


def test_ctrl_c_a_library_drops_ends_the_trial_at_the_next_epoch(store, stop_signals):
    class Dropping(FakeTrainer):
        def run(self, spec, report):
            if spec.number == 0:
                with contextlib.suppress(KeyboardInterrupt):  # a GC callback, for one
                    stop_signals()
            return super().run(spec, report)

    cfg = compose("quickstart", "sweep.n_trials=3", "train.epochs=5", store=store)
    trainer = Dropping()
    assert run_study(cfg, trainer=trainer) == 130
    assert len(trainer.specs) == 1 and trainer.epochs_run == 1  # ended at the first report
    study = _study(cfg)
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["sweeps.reason"] == "interrupted"
    assert _count(study, TrialState.WAITING) == 1


def _ghost_trial(cfg, pid: int | str):
    """A RUNNING trial with an MLflow run, owned by process ``pid`` of this host."""
    return ghost_trial(_study(cfg), cfg, f"{os.uname().nodename}:{pid}")


def _assert_failed_and_retried(cfg, ghost, run_id: str) -> None:
    study = _study(cfg)
    assert study.trials[ghost.number].state == TrialState.FAIL
    assert _count(study, TrialState.RUNNING) == 0
    assert _count(study, TrialState.COMPLETE) == 3
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == ghost.number]
    assert retry.state == TrialState.COMPLETE
    assert retry.params["model.kernel_size"] == ghost.params["model.kernel_size"]
    runs = _runs(cfg)
    assert runs[ghost.number]["run_id"] == run_id
    assert runs[ghost.number]["status"] == "FAILED"
    assert runs[ghost.number]["tags"]["sweeps.state"] == "FAIL"
    assert runs[retry.number]["tags"]["sweeps.retry_of_run"] == run_id
    assert runs[retry.number]["tags"]["sweeps.retry_of_trial"] == str(ghost.number)


def test_trial_of_a_dead_local_worker_is_failed_and_retried(store):
    cfg = compose("quickstart", "sweep.n_trials=2", "train.epochs=2", store=store)
    run_study(cfg, trainer=FakeTrainer())
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    ghost, run_id = _ghost_trial(cfg, dead)

    cfg = compose("quickstart", "sweep.n_trials=3", "train.epochs=2", store=store)
    trainer = FakeTrainer()
    run_study(cfg, trainer=trainer)
    assert len(trainer.specs) == 1  # the retry, not a fresh trial besides it
    _assert_failed_and_retried(cfg, ghost, run_id)


def test_a_trial_beyond_n_trials_from_a_racing_worker_is_surplus(store):
    from sweeps.engine import Engine
    from sweeps.storage import make_pruner, make_sampler

    cfg = compose("quickstart", "sweep.n_trials=2", "train.epochs=1", store=store)
    run_study(cfg, trainer=FakeTrainer())
    study = _study(cfg)
    tracker = open_tracker(cfg)
    try:
        engine = Engine(
            cfg,
            storage=study._storage,
            tracker=tracker,
            trainer=FakeTrainer(),
            sampler=make_sampler(cfg.sweep, cfg.space, 0),
            pruner=make_pruner(cfg.sweep, 1),
        )
        # Another worker saw one trial left and asked just after this one did.
        assert engine.run_one() == "SURPLUS"
        late = study.trials[-1]
        assert late.state == TrialState.FAIL and late.user_attrs["sweeps.spurious"]
        assert engine.ledger.counts()[0] == 2  # it does not count towards sweep.n_trials
    finally:
        tracker.close()


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes"])
def test_every_sampler_runs_a_study(store, sampler, monkeypatch):
    # The grid needs finite values: keep the quickstart's choices, drop its continuous ones.
    finite = (
        "~space.model.leaky_alpha",
        "~space.model.dense_dropout",
        "~space.train.learning_rate",
        "space.model.depth='int(1, 2)'",
    )
    extra = finite if sampler == "grid" else ()
    cfg = compose(
        "quickstart",
        f"sweep.sampler={sampler}",
        "sweep.n_trials=6",
        "sweep.startup_trials=2",
        "train.epochs=2",
        *extra,
        store=store,
    )
    used = spy_on_engine_study(monkeypatch)
    run_study(cfg, trainer=FakeTrainer())
    expected = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "grid": optuna.samplers.GridSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }[sampler]
    assert type(used[0].sampler) is expected  # the study's trials were asked through it
    study = _study(cfg)
    assert len(study.trials) == 6
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    if sampler == "grid":
        combos = {tuple(sorted(t.params.items())) for t in study.trials}
        assert len(combos) == 6  # the grid never repeats a point


def test_grid_with_a_continuous_range_is_refused(store):
    from sweeps.errors import ConfigError

    cfg = compose("quickstart", "sweep.sampler=grid", store=store)
    with pytest.raises(ConfigError, match="grid sampler needs a finite set"):
        run_study(cfg, trainer=FakeTrainer())


def test_search_and_ablation_on_one_study_name_count_separately(store):
    common = ("train.epochs=1", "data.root=unused")
    cfg = compose("age_gap", "sweep.mode=ablation", "sweep.repeats=1", *common, store=store)
    run_study(cfg, trainer=FakeTrainer())
    trainer = FakeTrainer()
    run_study(compose("age_gap", "sweep.n_trials=3", *common, store=store), trainer=trainer)
    assert len(trainer.specs) == 3 and all(s.variant is None for s in trainer.specs)


def test_last_worker_waits_for_a_trial_whose_worker_then_dies(store):
    """Nothing left to start but another worker's trial runs: wait; when it dies, retry it."""
    cfg = compose("quickstart", "sweep.n_trials=2", "train.epochs=1", store=store)
    run_study(cfg, trainer=FakeTrainer())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(4)"])
    try:
        ghost, run_id = _ghost_trial(cfg, other.pid)
        trainer = FakeTrainer()
        cfg = compose("quickstart", "sweep.n_trials=3", "train.epochs=1", store=store)
        run_study(cfg, trainer=trainer)  # waits, sees the process gone, runs the retry
    finally:
        other.wait()
    assert len(trainer.specs) == 1  # it waited, then ran the retry and nothing else
    assert trainer.specs[0].params["model.kernel_size"] == ghost.params["model.kernel_size"]
    _assert_failed_and_retried(cfg, ghost, run_id)
