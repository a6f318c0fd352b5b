"""A trainer that plays scripted learning curves, so the orchestration is tested in seconds."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from sweeps.errors import TrialFailed
from sweeps.trial import TrialOutcome, TrialSpec

Curve = Callable[[TrialSpec], list[float]]


def default_curve(spec: TrialSpec) -> list[float]:
    """A rising validation-accuracy curve whose ceiling depends on the parameters.

    Deterministic: the same parameters give the same curve, so samplers and pruners see a
    real signal (bigger kernel and lower dropout do better here).
    """
    kwargs = spec.model_kwargs
    ceiling = (
        0.6
        + 0.05 * int(kwargs.get("kernel_size", 3))
        - 0.3 * float(kwargs.get("dense_dropout", 0.0))
    )
    ceiling = min(max(ceiling, 0.15), 0.99)
    return [ceiling * (1 - math.exp(-(e + 1) / 2)) for e in range(spec.train.epochs)]


def weak_every_other(factor: float) -> Callable[[TrialSpec], list[float]]:
    """A curve where every odd-numbered trial plateaus at ``factor`` of `default_curve`'s.

    What a pruner should find: half the trials clearly worse after their first epochs.
    """

    def curve(spec: TrialSpec) -> list[float]:
        base = default_curve(spec)
        return [v * factor for v in base] if spec.number % 2 else base

    return curve


class FakeTrainer:
    """Stands in for KerasTrainer; records what it was asked to run.

    Args:
        curve: Maps a spec to its per-epoch val_acc.
        fail_when: Raises TrialFailed with this text when it returns a message for a spec.
        epoch_seconds: Sleep per epoch (for interruption tests).
        write_artifacts: Writes a small file per trial into the trial's workdir.
    """

    def __init__(
        self,
        curve: Curve = default_curve,
        fail_when=None,
        epoch_seconds: float = 0.0,
        write_artifacts: bool = True,
    ) -> None:
        self.curve, self.fail_when = curve, fail_when
        self.epoch_seconds = epoch_seconds
        self.write_artifacts = write_artifacts
        self.specs: list[TrialSpec] = []
        self.epochs_run = 0

    def run(self, spec: TrialSpec, report) -> TrialOutcome:
        self.specs.append(spec)
        if self.fail_when and (msg := self.fail_when(spec)):
            raise TrialFailed(msg)
        history = []
        for epoch, acc in enumerate(self.curve(spec), start=1):
            time.sleep(self.epoch_seconds)
            self.epochs_run += 1
            metrics = {
                "train_loss": 1 - acc * 0.9,
                "train_acc": min(acc + 0.02, 1.0),
                "val_loss": 1 - acc,
                "val_acc": acc,
            }
            history.append(metrics)
            report(epoch, metrics)
        best = max(range(len(history)), key=lambda i: history[i]["val_acc"])
        artifacts: list[tuple[Path, str | None]] = []
        if self.write_artifacts:
            spec.workdir.mkdir(parents=True, exist_ok=True)
            note = spec.workdir / "curve.txt"
            note.write_text(" ".join(f"{h['val_acc']:.4f}" for h in history))
            artifacts.append((note, "plots"))
        acc = history[best]["val_acc"]
        return TrialOutcome(
            history=history,
            best_epoch=best + 1,
            best=history[best],
            test={"test_acc": acc - 0.01, "test_loss": 1 - acc},
            param_count=1000 + 10 * int(spec.model_kwargs.get("kernel_size", 3)),
            artifacts=artifacts,
        )


def spy_on_engine_study(monkeypatch) -> list:
    """Collects the Optuna study each Engine runs, to see its sampler and pruner."""
    from sweeps.engine import Engine

    seen: list = []
    original = Engine.run

    def run(self):
        seen.append(self.study)
        return original(self)

    monkeypatch.setattr(Engine, "run", run)
    return seen


def ghost_trial(study, cfg, worker: str):
    """A RUNNING trial with an MLflow run, owned by ``worker`` (``host:pid``), whose worker is
    gone: what a worker killed mid-trial leaves behind. Returns the trial and its run id."""
    import optuna

    from sweeps.keys import WORKER_ATTR
    from sweeps.services import open_tracker

    ghost = study.ask({"model.kernel_size": optuna.distributions.CategoricalDistribution([3, 5])})
    ghost.set_user_attr(WORKER_ATTR, worker)
    tracker = open_tracker(cfg)
    try:
        parent = tracker.parent_run(cfg.sweep.name, {})
        tags = {"sweeps.study": cfg.sweep.name, "sweeps.role": "trial", "sweeps.state": "RUNNING"}
        tags["sweeps.trial_number"] = str(ghost.number)
        run_id = tracker.run_id(tracker.start_run("ghost", parent, tags), timeout=30)
    finally:
        tracker.close()
    ghost.set_user_attr("mlflow_run_id", run_id)
    return ghost, run_id
