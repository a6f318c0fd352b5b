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
    ablation_key,
    raise_if_stopped,
)
from sweeps.space import signature
from sweeps.storage import WORKER_ATTR, fail_dead_local_trials, replaced_numbers, worker_id
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
    best_test: dict[str, float] = field(default_factory=dict)  # the best trial's test metrics
    interrupted: Interrupted | None = None
    complete: bool = False  # the study has every trial it needs
    tracking_uri: str = ""
    experiment_id: str = ""
    parent_run: str = ""
    view_key: str = ""  # the MLflow UI's saved view of this study (viewStateShareKey)


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
        tags: More tags for the parent run and every trial run (the Keras backend).
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        storage: Any,
        tracker: Any,
        trainer: Trainer | None,
        sampler: Any,
        pruner: Any,
        data_info: dict[str, Any] | None = None,
        progress: Progress | None = None,
        git_commit: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        import optuna

        self.cfg = cfg
        self.tracker = tracker
        self.trainer = trainer
        self.progress = progress
        self.data_info = dict(data_info or {})
        self.git_commit = git_commit
        self.extra_tags = dict(tags or {})  # e.g. the Keras backend and its version
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
        from sweeps.launcher import placement_tags

        tags = {"sweeps.study": self.cfg.sweep.name, "sweeps.mode": self.cfg.sweep.mode}
        tags.update(placement_tags())  # sweeps.host, sweeps.device
        if self.git_commit:
            tags["sweeps.git_commit"] = self.git_commit
        for key, value in self.data_info.items():
            tags[f"sweeps.data.{key}"] = str(value)
        tags.update(self.extra_tags)
        return tags

    # -- ablation ------------------------------------------------------------------------------

    def enqueue_ablation(self) -> int:
        """Enqueues every variant x first-round repeat not already in the study; returns how
        many. With ``sweep.repeats=auto`` later rounds are enqueued by :meth:`_auto_round`."""
        first = self.cfg.sweep.first_repeats
        keys = [(v.name, r) for r in range(first) for v in self.cfg.variants]
        return self._enqueue(keys)

    def _ablation_keys(self) -> set[tuple[Any, Any]]:
        """``(variant, repeat)`` of every ablation trial in the study, queued ones included,
        but not failed trials already retried (their retry holds the key)."""
        from optuna.trial import TrialState

        self._counts()  # refreshes which failed trials were already retried
        existing = set()
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.FAIL and (self._replaced(t) or t.user_attrs.get(_SPURIOUS)):
                continue
            existing.add(ablation_key(t))
        return existing

    def _enqueue(self, keys: list[tuple[str, int]]) -> int:
        """Enqueues the ablation trials of ``keys`` the study does not hold yet.

        Keyed by (variant, repeat), so every worker may call it; two workers enqueuing the
        same key at the same instant leave a duplicate, which :meth:`_duplicate` drops.
        """
        existing = self._ablation_keys()
        added = 0
        for name, repeat in keys:
            if (name, repeat) in existing:
                continue
            self.study.enqueue_trial(
                {VARIANT_PARAM: name, REPEAT_PARAM: repeat}, skip_if_exists=True
            )
            existing.add((name, repeat))
            added += 1
        return added

    def _auto_round(self) -> int:
        """repeats=auto, once a round has finished: one more repeat for every variant still
        undecided on the decision metric (and for the baseline), until ``max_repeats``.

        The verdicts are computed from the trials alone, so any worker, after any restart,
        finds the same next round; what each variant got and why it stopped is recorded in
        the study's user attribute ``sweeps.auto_repeats``. Returns the trials enqueued.
        """
        from sweeps.verdict import AUTO_ATTR, auto_plan

        trials = self.study.get_trials(deepcopy=False)
        record = self.study.user_attrs.get(AUTO_ATTR)
        plan = auto_plan(self.cfg, trials, record)
        if plan.record != record:
            self.study.set_user_attr(AUTO_ATTR, plan.record)
        added = self._enqueue(plan.enqueue)
        if added:
            log.info("repeats=auto: %d more trials for %s", added, ", ".join(plan.open))
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
        if self.trainer is not None and self._has_work(*self._counts()):
            self.tracker.reopen_run(self.parent_run)  # a finished study given more trials
        started = time.monotonic()
        if self.progress:
            self.progress.start(self._target(), self._counts()[0])
        try:
            while True:
                raise_if_stopped()  # a signal a library swallowed: no further trial
                done, running, waiting = self._counts()
                timeout = self.cfg.sweep.timeout
                if timeout is not None and time.monotonic() - started > timeout:
                    log.info("sweep.timeout of %ss reached; not starting more trials", timeout)
                    break
                if self._has_work(done, running, waiting):
                    if self.trainer is None:  # another worker enqueued after has_work()
                        break
                    try:
                        state = self.run_one()
                    except Interrupted:  # its trial ended as FAIL (interrupted), queued again
                        summary.ran["INTERRUPTED"] = summary.ran.get("INTERRUPTED", 0) + 1
                        raise
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
            summary.best_test = {
                k: float(v) for k, v in best.user_attrs.items() if k.startswith("test_")
            }
        summary.tracking_uri = str(getattr(self.tracker, "uri", ""))
        summary.experiment_id = str(getattr(self.tracker, "experiment_id", ""))
        summary.parent_run = self.parent_run
        summary.complete = self._close_parent(summary)
        return summary

    def has_work(self) -> bool:
        """Whether this worker has trials to run or to wait for.

        Recovers dead workers' trials and enqueues the ablation first, so the answer is
        final; the `run` command asks before it loads any data or imports TensorFlow.
        """
        self._recover_dead()
        if self.cfg.sweep.mode == "ablation":
            self.enqueue_ablation()
        done, running, waiting = self._counts()
        return self._has_work(done, running, waiting) or bool(running)

    def attach(
        self,
        trainer: Trainer,
        data_info: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Hands over the trainer (and its dataset's tags) once :meth:`has_work` said yes."""
        self.trainer = self.trials.trainer = trainer
        self.data_info.update(data_info or {})
        self.extra_tags.update(tags or {})
        self.trials.tags = self._common_tags()
        self.tracker.set_tags(self.parent_run, self._common_tags())

    def _close_parent(self, summary: Summary) -> bool:
        """Writes the study's summary on the parent run and ends it; True when complete.

        FINISHED when the study has all its trials, KILLED when it stopped short and no
        trial runs anywhere; left RUNNING while other workers' trials run (the last one to
        stop writes the final summary). Returns whether the study is complete.
        """
        from sweeps.parent import summarize, view_columns
        from sweeps.tracking import FINISHED, KILLED

        done, running, waiting = self._counts()
        complete = not running and not self._has_work(done, running, waiting)
        counted = [t for t in self.study.get_trials(deepcopy=False) if not self._excluded(t)]
        variants = [v.name for v in self.cfg.variants] if self.cfg.sweep.mode == "ablation" else []
        maximize = self.study.direction.name == "MAXIMIZE"
        result = summarize(counted, self.cfg.sweep.metric, maximize, variants)
        state = "COMPLETE" if complete else "INTERRUPTED" if summary.interrupted else "INCOMPLETE"
        try:
            tags = {**result.tags, "sweeps.state": state}
            self.tracker.summarize_run(self.parent_run, result.metrics, result.params, tags)
            names = [k.removeprefix("best.") for k in result.params]
            columns = view_columns(self.cfg.sweep.metric, variants, names)
            key = f"{self.cfg.sweep.name}-{self.cfg.sweep.mode}"
            summary.view_key = self.tracker.save_view(key, columns)
            if complete or not running:
                self.tracker.end_run(self.parent_run, FINISHED if complete else KILLED)
        except Exception as exc:  # the study's results are in Optuna whatever MLflow says
            log.warning("could not write the study's summary to MLflow: %s", one_line(exc))
        return complete

    def _target(self) -> int | None:
        if self.cfg.sweep.mode == "ablation":
            if self.cfg.sweep.auto_repeats:
                return None  # decided round by round
            return len(self.cfg.variants) * self.cfg.sweep.repeat_budget
        return self.cfg.sweep.n_trials

    def _counts(self) -> tuple[int, int, int]:
        """Trials finished for good, running, and waiting in the queue."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        self._retried_numbers = replaced_numbers(trials)
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
        """Whether a trial waits to be started (search: or may still be sampled).

        With ``sweep.repeats=auto``, a finished round (nothing waiting or running) enqueues
        the next one here, so every caller sees the study as unfinished while it has one.
        """
        if waiting or self.cfg.sweep.mode == "ablation":
            if not waiting and not running and self.cfg.sweep.auto_repeats:
                return self._auto_round() > 0
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
        if self._duplicate(trial):
            trial.set_user_attr(_SPURIOUS, True)
            trial.set_user_attr("sweeps.reason", "duplicate: another worker queued this repeat")
            self.study.tell(trial, state=_state("FAIL"))
            return "SURPLUS"
        trial.set_user_attr(WORKER_ATTR, worker_id())
        if trial.user_attrs.get("sweeps.reason"):  # a retry inherits its original's attrs
            trial.set_user_attr("sweeps.reason", "")
        return self.trials.run(trial)

    def _duplicate(self, trial: Any) -> bool:
        """Whether a queued ablation trial repeats the (variant, repeat) of an earlier one.

        Two workers ending a round together may both enqueue its next repeats; the storage
        numbers trials atomically, so the later copy is dropped. Retries never are.
        """
        if self.cfg.sweep.mode != "ablation":
            return False
        frozen = _frozen(trial)
        if "failed_trial" in frozen.system_attrs:
            return False
        key = ablation_key(frozen)
        if key[0] is None:
            return False
        self._counts()  # refreshes which failed trials were already retried
        return any(
            t.number < trial.number
            and ablation_key(t) == key
            and not (t.state.name == "FAIL" and (self._replaced(t) or t.user_attrs.get(_SPURIOUS)))
            for t in self.study.get_trials(deepcopy=False)
        )

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


_SPURIOUS = "sweeps.spurious"  # a trial dropped unrun: surplus or a duplicate


def _frozen(trial: Any) -> Any:
    """The stored view of a live trial (Optuna 5 keeps system attrs off ``Trial``)."""
    return trial.study._storage.get_trial(trial._trial_id)


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]
