"""The study loop: Optuna asks, a trainer trains, Optuna is told, MLflow is written.

The loop is ours (ask/tell), not ``study.optimize``: it decides how many trials this worker
starts, enqueues ablations, recovers trials of dead workers and waits for the other workers'
trials at the end. One trial's life, from spec to end state, is in :mod:`sweeps.lifecycle`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sweeps.config import RunConfig
from sweeps.errors import StudyMismatch, one_line
from sweeps.lifecycle import (  # noqa: F401  (re-exported: the names reports and the CLI use)
    REPEAT_PARAM,
    RUN_ID_ATTR,
    VARIANT_PARAM,
    Interrupted,
    TrialLifecycle,
)
from sweeps.space import signature
from sweeps.storage import WORKER_ATTR, fail_dead_local_trials, worker_id
from sweeps.trial import TrialOutcome, TrialSpec

log = logging.getLogger("sweeps.engine")


class Trainer(Protocol):
    """Trains one trial; calls ``report(epoch, metrics)`` after every epoch."""

    def run(
        self, spec: TrialSpec, report: Callable[[int, dict[str, float]], None]
    ) -> TrialOutcome: ...


class Progress(Protocol):
    def start(self, total: int | None, done: int) -> None: ...
    def trial_started(self, number: int, params: dict[str, Any]) -> None: ...
    def trial_ended(self, number: int, state: str, value: float | None, note: str) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Summary:
    """What one `run` did, and the study's state afterwards."""

    study: str
    ran: dict[str, int] = field(default_factory=dict)  # state -> trials this process ran
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_number: int | None = None
    interrupted: Interrupted | None = None


class Engine:
    """Runs one study with services built by the caller (the `run` command or a test).

    Args:
        cfg: The validated config.
        storage: An Optuna storage.
        tracker: A :class:`sweeps.tracking.Tracker` (or a stand-in with the same methods).
        trainer: Anything with the :class:`Trainer` protocol.
        sampler: Optuna sampler; pruner: Optuna pruner.
        data_info: Tags describing the dataset (fingerprint, skipped files, sizes).
        progress: Progress display, or None for none.
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        storage: Any,
        tracker: Any,
        trainer: Trainer,
        sampler: Any,
        pruner: Any,
        data_info: dict[str, Any] | None = None,
        progress: Progress | None = None,
        git_commit: str = "",
    ) -> None:
        import optuna

        self.cfg = cfg
        self.tracker = tracker
        self.trainer = trainer
        self.progress = progress
        self.data_info = dict(data_info or {})
        self.git_commit = git_commit
        self.study = optuna.create_study(
            storage=storage,
            study_name=cfg.sweep.name,
            direction=cfg.sweep.direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # marked experimental
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=cfg.storage.max_retries
            )
        self._retried_numbers: set[int] = set()
        self._waiting_said = False
        self._check_signature()
        self.parent_run = tracker.parent_run(cfg.sweep.name, self._common_tags())
        if self.study.user_attrs.get("mlflow_parent_run_id") != self.parent_run:
            self.study.set_user_attr("mlflow_parent_run_id", self.parent_run)
        self.trials = TrialLifecycle(
            cfg,
            study=self.study,
            tracker=tracker,
            trainer=trainer,
            progress=progress,
            parent_run=self.parent_run,
            tags=self._common_tags(),
            retry=self._retry,
            work_dir=cfg.store_dir / "work" / cfg.sweep.name,
        )

    # -- study identity -----------------------------------------------------------------------

    def _signature(self) -> str:
        if self.cfg.sweep.mode == "ablation":
            rows = [[v.name, v.overrides] for v in self.cfg.variants]
            return f"ablation:{rows!r}"
        return f"search:{signature(self.cfg.space)}"

    def _check_signature(self) -> None:
        key = f"space_signature_{self.cfg.sweep.mode}"
        mine, stored = self._signature(), self.study.user_attrs.get(key)
        if stored is None or self.cfg.sweep.allow_space_change:
            if stored != mine:
                self.study.set_user_attr(key, mine)
            return
        if stored != mine:
            raise StudyMismatch(
                f"study '{self.cfg.sweep.name}' already exists with a different "
                f"{'ablation' if self.cfg.sweep.mode == 'ablation' else 'search space'}; "
                "choose another sweep.name=..., or resume it anyway with "
                "sweep.allow_space_change=true"
            )

    def _common_tags(self) -> dict[str, str]:
        tags = {"sweeps.study": self.cfg.sweep.name, "sweeps.mode": self.cfg.sweep.mode}
        if self.git_commit:
            tags["sweeps.git_commit"] = self.git_commit
        for key, value in self.data_info.items():
            tags[f"sweeps.data.{key}"] = str(value)
        return tags

    # -- ablation ------------------------------------------------------------------------------

    def enqueue_ablation(self) -> int:
        """Enqueues every variant x repeat not already in the study; returns how many."""
        from optuna.trial import TrialState

        self._counts()  # refreshes which failed trials were already retried
        existing = set()
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.FAIL and self._replaced(t):
                continue
            key = (t.params.get(VARIANT_PARAM), t.params.get(REPEAT_PARAM))
            fixed = t.system_attrs.get("fixed_params") or {}
            existing.add(
                key if key[0] is not None else (fixed.get(VARIANT_PARAM), fixed.get(REPEAT_PARAM))
            )
        added = 0
        for repeat in range(self.cfg.sweep.repeats):
            for v in self.cfg.variants:
                if (v.name, repeat) in existing:
                    continue
                self.study.enqueue_trial(
                    {VARIANT_PARAM: v.name, REPEAT_PARAM: repeat}, skip_if_exists=True
                )
                added += 1
        return added

    def _replaced(self, t: Any) -> bool:
        return t.number in self._retried_numbers

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> Summary:
        """Runs trials until the study has what it needs, the timeout passes or a signal."""
        from optuna.trial import TrialState

        summary = Summary(study=self.cfg.sweep.name)
        self._recover_dead()
        if self.cfg.sweep.mode == "ablation":
            added = self.enqueue_ablation()
            if added:
                log.info("enqueued %d ablation trials", added)
        started = time.monotonic()
        if self.progress:
            self.progress.start(self._target(), self._counts()[0])
        try:
            while True:
                done, running, waiting = self._counts()
                timeout = self.cfg.sweep.timeout
                if timeout is not None and time.monotonic() - started > timeout:
                    log.info("sweep.timeout of %ss reached; not starting more trials", timeout)
                    break
                if self._has_work(done, running, waiting):
                    state = self.run_one()
                    if state != "SURPLUS":
                        summary.ran[state] = summary.ran.get(state, 0) + 1
                elif running:
                    self._wait_for_others(running)
                else:
                    break
                self._recover_dead()
        except Interrupted as exc:
            summary.interrupted = exc
        finally:
            if self.progress:
                self.progress.stop()
        completed = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if completed:
            best = self.study.best_trial
            summary.best_value, summary.best_params = best.value, dict(best.params)
            summary.best_number = best.number
        return summary

    def _target(self) -> int | None:
        if self.cfg.sweep.mode == "ablation":
            return len(self.cfg.variants) * self.cfg.sweep.repeats
        return self.cfg.sweep.n_trials

    def _counts(self) -> tuple[int, int, int]:
        """Trials finished for good, running, and waiting in the queue."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        self._retried_numbers = {
            n for t in trials if (n := t.system_attrs.get("failed_trial")) is not None
        }
        done = running = waiting = 0
        for t in trials:
            if self._other_mode(t):
                continue
            if t.state == TrialState.RUNNING:
                running += 1
            elif t.state == TrialState.WAITING:
                waiting += 1
            elif self._excluded(t):
                continue
            else:
                done += 1
        return done, running, waiting

    def _has_work(self, done: int, running: int, waiting: int) -> bool:
        if waiting or self.cfg.sweep.mode == "ablation":
            return bool(waiting)
        return done + running < self.cfg.sweep.n_trials

    def _wait_for_others(self, running: int) -> None:
        """Nothing left to start, but other workers' trials run: wait for them to end.

        One of them may belong to a dead worker; it is failed and retried here once its
        heartbeat is stale (or its process is gone), so no trial is left RUNNING.
        """
        if not self._waiting_said:
            log.info("waiting for %d running trial(s) of other workers", running)
            self._waiting_said = True
        time.sleep(min(5.0, float(self.cfg.storage.heartbeat_interval)))

    def _recover_dead(self) -> None:
        """Fails and retries trials whose worker died (heartbeat or local process check)."""
        import optuna

        storage = self.study._storage
        if isinstance(storage, optuna.storages.JournalStorage):
            fail_dead_local_trials(self.study, self.on_dead_trial)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # marked experimental
                optuna.storages.fail_stale_trials(self.study)  # calls on_dead_trial per trial

    def on_dead_trial(self, study: Any, trial: Any) -> None:
        """A trial's worker died: end its MLflow run as FAILED and enqueue its retry."""
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        note = f"worker {trial.user_attrs.get(WORKER_ATTR, '?')} stopped mid-trial"
        if run_id:
            try:
                self.tracker.end_run_now(
                    run_id, "FAILED", {"sweeps.state": "FAIL", "sweeps.error": note}
                )
            except Exception as exc:
                log.warning("could not close run %s of dead trial: %s", run_id, one_line(exc))
        self._retry(study, trial)
        log.warning("trial %d failed (%s); enqueued for retry", trial.number, note)

    # -- one trial ----------------------------------------------------------------------------

    def run_one(self) -> str:
        """Asks for a trial, runs it and records its end; returns the Optuna state name."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is meant for Study.optimize": ours
            trial = self.study.ask()
        if self._surplus(trial):
            trial.set_user_attr("sweeps.spurious", True)
            trial.set_user_attr("sweeps.reason", "surplus: another worker started the last trial")
            self.study.tell(trial, state=_state("FAIL"))
            return "SURPLUS"
        trial.set_user_attr(WORKER_ATTR, worker_id())
        if trial.user_attrs.get("sweeps.reason"):  # a retry inherits its original's attrs
            trial.set_user_attr("sweeps.reason", "")
        return self.trials.run(trial)

    def _surplus(self, trial: Any) -> bool:
        """Whether a fresh search trial lies beyond ``sweep.n_trials``.

        Two workers can both see one trial left and both ask; the storage numbers trials
        atomically, so the later number is the surplus one. Queued trials (retries) never are.
        """
        if self.cfg.sweep.mode != "search":
            return False
        attrs = _frozen(trial).system_attrs
        if "fixed_params" in attrs or "failed_trial" in attrs:
            return False
        self._counts()
        earlier = [
            t
            for t in self.study.get_trials(deepcopy=False)
            if t.number < trial.number and not self._excluded(t)
        ]
        return len(earlier) >= self.cfg.sweep.n_trials

    def _excluded(self, t: Any) -> bool:
        """Failed trials that were retried, surplus trials and the other mode's do not count."""
        from optuna.trial import TrialState

        return self._other_mode(t) or (
            t.state == TrialState.FAIL
            and (t.number in self._retried_numbers or bool(t.user_attrs.get("sweeps.spurious")))
        )

    def _other_mode(self, t: Any) -> bool:
        """An ablation trial seen by a search, or the reverse: one study name holds both."""
        fixed = t.system_attrs.get("fixed_params") or {}
        is_ablation = VARIANT_PARAM in t.params or VARIANT_PARAM in fixed
        return is_ablation != (self.cfg.sweep.mode == "ablation")


def _frozen(trial: Any) -> Any:
    """The stored view of a live trial (Optuna 5 keeps system attrs off ``Trial``)."""
    return trial.study._storage.get_trial(trial._trial_id)


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]
