"""The study loop: Optuna asks, a trainer trains, Optuna is told, MLflow is written.

The loop is ours (ask/tell), not ``study.optimize``: it decides how many trials this worker
starts and waits for the other workers' trials at the end. The parts it is built from: the
study's counts (:mod:`sweeps.ledger`), the ablation's queue and repeat rounds
(:mod:`sweeps.ablation`), dead workers' trials (:mod:`sweeps.recovery`) and one trial's life
from spec to end state (:mod:`sweeps.lifecycle`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sweeps import host
from sweeps.ablation import AblationQueue
from sweeps.config import RunConfig
from sweeps.errors import StudyMismatch
from sweeps.keys import PARENT_RUN_ATTR, SPURIOUS_ATTR, WORKER_ATTR, frozen, state
from sweeps.ledger import Ledger
from sweeps.lifecycle import TrialLifecycle
from sweeps.parent import write_summary
from sweeps.recovery import Recovery, Requeue
from sweeps.signals import Interrupted, raise_if_stopped
from sweeps.space import signature
from sweeps.tracking import FINISHED, KILLED
from sweeps.trial import TrialOutcome, TrialSpec
from sweeps.verdict import settle_rule

log = logging.getLogger("sweeps.engine")


class Trainer(Protocol):
    """Trains one trial; calls ``report(epoch, metrics)`` after every epoch."""

    def run(
        self, spec: TrialSpec, report: Callable[[int, dict[str, float]], None]
    ) -> TrialOutcome: ...


class Progress(Protocol):
    def start(self, total: int | None, done: int, plan: str = "") -> None: ...
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
        retry = Requeue(cfg.storage.max_retries)
        self.ledger = Ledger(self.study, ablation=cfg.sweep.mode == "ablation")
        self.recovery = Recovery(tracker, retry)
        self._waiting_said = False
        check_identity(self.study, cfg)
        ablation = cfg.sweep.mode == "ablation"
        self.rule = settle_rule(self.study, cfg, record=True) if ablation else None
        self.ablation = AblationQueue(cfg, self.study, self.ledger, self.rule)
        self.parent_run = tracker.parent_run(cfg.sweep.name, self._common_tags())
        if self.study.user_attrs.get(PARENT_RUN_ATTR) != self.parent_run:
            self.study.set_user_attr(PARENT_RUN_ATTR, self.parent_run)
        self.trials = TrialLifecycle(
            cfg,
            study=self.study,
            tracker=tracker,
            trainer=trainer,
            progress=progress,
            parent_run=self.parent_run,
            tags=self._common_tags(),
            retry=retry,
            work_dir=cfg.store_dir / "work" / cfg.sweep.name,
        )

    def _common_tags(self) -> dict[str, str]:
        tags = {"sweeps.study": self.cfg.sweep.name, "sweeps.mode": self.cfg.sweep.mode}
        tags.update(host.placement_tags())  # sweeps.host, sweeps.device
        if self.git_commit:
            tags["sweeps.git_commit"] = self.git_commit
        for key, value in self.data_info.items():
            tags[f"sweeps.data.{key}"] = str(value)
        tags.update(self.extra_tags)
        return tags

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> Summary:
        """Runs trials until the study has what it needs, the timeout passes or a signal."""
        summary = Summary(study=self.cfg.sweep.name)
        self._prepare()
        if self.trainer is not None and self._has_work(*self.ledger.counts()):
            self.tracker.reopen_run(self.parent_run)  # a finished study given more trials
        started = time.monotonic()
        if self.progress:
            self.progress.start(
                _target(self.cfg), self.ledger.counts()[0], _plan(self.cfg, self.rule)
            )
        try:
            while True:
                raise_if_stopped()  # a signal a library swallowed: no further trial
                done, running, waiting = self.ledger.counts()
                timeout = self.cfg.sweep.timeout
                if timeout is not None and time.monotonic() - started > timeout:
                    log.info("sweep.timeout of %ss reached; not starting more trials", timeout)
                    break
                if self._has_work(done, running, waiting):
                    if self.trainer is None:  # another worker enqueued after has_work()
                        break
                    try:
                        ended = self.run_one()
                    except Interrupted:  # its trial ended as FAIL (interrupted), queued again
                        summary.ran["INTERRUPTED"] = summary.ran.get("INTERRUPTED", 0) + 1
                        raise
                    if ended != "SURPLUS":
                        summary.ran[ended] = summary.ran.get(ended, 0) + 1
                elif running:
                    self._wait_for_others(running)
                else:
                    break
                self.recovery.recover(self.study)
        except Interrupted as exc:
            summary.interrupted = exc
        finally:
            if self.progress:
                self.progress.stop()
        _record_best(self.study, summary)
        summary.tracking_uri = str(getattr(self.tracker, "uri", ""))
        summary.experiment_id = str(getattr(self.tracker, "experiment_id", ""))
        summary.parent_run = self.parent_run
        summary.complete = self._close_parent(summary)
        return summary

    def _prepare(self) -> None:
        """Retries dead workers' trials and enqueues the ablation's first round."""
        self.recovery.recover(self.study)
        if self.cfg.sweep.mode == "ablation":
            added = self.ablation.enqueue_first_round()
            if added:
                log.info("enqueued %d ablation trials", added)

    def has_work(self) -> bool:
        """Whether this worker has trials to run or to wait for.

        Recovers dead workers' trials and enqueues the ablation first, so the answer is
        final; the `run` command asks before it loads any data or imports TensorFlow.
        """
        self._prepare()
        done, running, waiting = self.ledger.counts()
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

    def on_dead_trial(self, study: Any, trial: Any) -> None:
        """A trial's worker died: its run ends FAILED and its retry is queued."""
        self.recovery.on_dead_trial(study, trial)

    def _close_parent(self, summary: Summary) -> bool:
        """Writes the study's summary on the parent run and ends it; True when complete.

        FINISHED when the study has all its trials, KILLED when it stopped short and no
        trial runs anywhere; left RUNNING while other workers' trials run (the last one to
        stop writes the final summary). Returns whether the study is complete.
        """
        done, running, waiting = self.ledger.counts()
        complete = not running and not self._has_work(done, running, waiting)
        ended = "COMPLETE" if complete else "INTERRUPTED" if summary.interrupted else "INCOMPLETE"
        end = (FINISHED if complete else KILLED) if complete or not running else None
        counted = [t for t in self.ledger.trials() if not self.ledger.excluded(t)]
        summary.view_key = write_summary(
            self.tracker, self.parent_run, self.cfg, counted, ended, end,
            maximize=self.study.direction.name == "MAXIMIZE",
        )  # fmt: skip
        return complete

    def _has_work(self, done: int, running: int, waiting: int) -> bool:
        """Whether a trial waits to be started (search: or may still be sampled).

        With ``sweep.repeats=auto``, a finished round (nothing waiting or running) enqueues
        the next one here, so every caller sees the study as unfinished while it has one.
        """
        if waiting or self.cfg.sweep.mode == "ablation":
            if not waiting and not running and self.cfg.sweep.auto_repeats:
                return self.ablation.next_round() > 0
            return bool(waiting)
        return done + running < self.cfg.sweep.n_trials

    def _wait_for_others(self, running: int) -> None:
        """Nothing left to start, but other workers' trials run: wait for them to end.

        One of them may belong to a dead worker; it is failed and retried once its
        heartbeat is stale (or its process is gone), so no trial is left RUNNING.
        """
        if not self._waiting_said:
            log.info("waiting for %d running trial(s) of other workers", running)
            self._waiting_said = True
        time.sleep(min(5.0, float(self.cfg.storage.heartbeat_interval)))

    # -- one trial ----------------------------------------------------------------------------

    def run_one(self) -> str:
        """Asks for a trial, runs it and records its end; returns the Optuna state name."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is meant for Study.optimize": ours
            trial = self.study.ask()
        dropped = (
            "surplus: another worker started the last trial" if self._surplus(trial)
            else "duplicate: another worker queued this repeat"
            if self.cfg.sweep.mode == "ablation" and self.ablation.is_duplicate(trial)
            else ""
        )  # fmt: skip
        if dropped:
            trial.set_user_attr(SPURIOUS_ATTR, True)
            trial.set_user_attr("sweeps.reason", dropped)
            self.study.tell(trial, state=state("FAIL"))
            return "SURPLUS"
        trial.set_user_attr(WORKER_ATTR, host.worker_id())
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
        attrs = frozen(trial).system_attrs
        if "fixed_params" in attrs or "failed_trial" in attrs:
            return False
        earlier = [
            t
            for t in self.ledger.trials()
            if t.number < trial.number and not self.ledger.excluded(t)
        ]
        return len(earlier) >= self.cfg.sweep.n_trials


def check_identity(study: Any, cfg: RunConfig) -> None:
    """Records the study's space (or ablation rows) at its first run; refuses another later.

    Raises:
        StudyMismatch: the study exists with a different space or ablation, unless
            ``sweep.allow_space_change`` is set.
    """
    if cfg.sweep.mode == "ablation":
        mine = f"ablation:{[[v.name, v.overrides] for v in cfg.variants]!r}"
    else:
        mine = f"search:{signature(cfg.space)}"
    key = f"space_signature_{cfg.sweep.mode}"
    stored = study.user_attrs.get(key)
    if stored is None or cfg.sweep.allow_space_change:
        if stored != mine:
            study.set_user_attr(key, mine)
        return
    if stored != mine:
        raise StudyMismatch(
            f"study '{cfg.sweep.name}' already exists with a different "
            f"{'ablation' if cfg.sweep.mode == 'ablation' else 'search space'}; "
            "choose another sweep.name=..., or resume it anyway with "
            "sweep.allow_space_change=true"
        )


def _record_best(study: Any, summary: Summary) -> None:
    """The best trial's value, parameters and test metrics, on the summary."""
    if not study.get_trials(deepcopy=False, states=(state("COMPLETE"),)):
        return
    best = study.best_trial
    summary.best_value, summary.best_params = best.value, dict(best.params)
    summary.best_number = best.number
    summary.best_test = {k: float(v) for k, v in best.user_attrs.items() if k.startswith("test_")}


def _target(cfg: RunConfig) -> int | None:
    """The study's total of trials, or None when rounds decide it (repeats=auto)."""
    if cfg.sweep.mode == "ablation":
        if cfg.sweep.auto_repeats:
            return None
        return len(cfg.variants) * cfg.sweep.repeat_budget
    return cfg.sweep.n_trials


def _plan(cfg: RunConfig, rule: Any) -> str:
    """What a study without a fixed total will run (repeats=auto), said at its start."""
    if _target(cfg) is not None or rule is None:
        return ""
    return (
        f"repeats=auto: {len(cfg.variants) - 1} row(s) against the baseline, "
        f"{rule.min_repeats} to {rule.max_repeats} seeds each, one more round while a row "
        "is undecided"
    )
