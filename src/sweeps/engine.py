"""The study loop: Optuna asks, a trainer trains, Optuna is told, MLflow is written.

The loop is ours (ask/tell), not ``study.optimize``: every trial ends in exactly one Optuna
state whatever happens (pruned, failed with a reason, interrupted), and every MLflow run ends
with the matching status. Heartbeats of RDB storages are kept here too.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sweeps.config import RunConfig, apply_overrides
from sweeps.errors import SweepsError, StudyMismatch, TrialFailed, one_line
from sweeps.space import sample, signature
from sweeps.storage import WORKER_ATTR, fail_dead_local_trials, worker_id
from sweeps.trial import TrialOutcome, TrialSpec, make_spec

log = logging.getLogger("sweeps.engine")

RUN_ID_ATTR = "mlflow_run_id"
VARIANT_PARAM, REPEAT_PARAM = "ablation.variant", "ablation.repeat"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``exit_code`` is what the process should exit with."""

    def __init__(self, exit_code: int = 130) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


class Trainer(Protocol):
    """Trains one trial; calls ``report(epoch, metrics)`` after every epoch."""

    def run(self, spec: TrialSpec, report: Callable[[int, dict[str, float]], None]) -> TrialOutcome:
        ...


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

    def __init__(self, cfg: RunConfig, *, storage: Any, tracker: Any, trainer: Trainer,
                 sampler: Any, pruner: Any, data_info: dict[str, Any] | None = None,
                 progress: Progress | None = None, git_commit: str = "") -> None:  # fmt: skip
        import optuna

        self.cfg = cfg
        self.tracker = tracker
        self.trainer = trainer
        self.progress = progress
        self.data_info = dict(data_info or {})
        self.git_commit = git_commit
        self.work_dir = cfg.store_dir / "work" / cfg.sweep.name
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
            existing.add(key if key[0] is not None else
                         (fixed.get(VARIANT_PARAM), fixed.get(REPEAT_PARAM)))  # fmt: skip
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
        heartbeat = _Heartbeat(self.study._storage, trial._trial_id)
        handle: str | None = None
        spec: TrialSpec | None = None
        try:
            spec = self._spec(trial)
            handle = self._start_run(trial, spec)
            if self.progress:
                self.progress.trial_started(trial.number, spec.params)
            with heartbeat:
                outcome = self.trainer.run(spec, _Reporter(self, trial, handle))
            value = outcome.best.get(self.cfg.sweep.metric)
            if value is None or not math.isfinite(value):
                raise TrialFailed(f"{self.cfg.sweep.metric} was never finite")
            self._record_outcome(trial, outcome)
            self.study.tell(trial, value)
            self._end(trial, handle, "COMPLETE", value, "", spec, outcome)
            return "COMPLETE"
        except _Pruned as exc:
            self.study.tell(trial, state=_state("PRUNED"))
            self._end(trial, handle, "PRUNED", None, exc.note, spec)
            return "PRUNED"
        except Interrupted as exc:
            self._fail(trial, handle, "interrupted", run_status="KILLED")
            self._retry(self.study, self.study._storage.get_trial(trial._trial_id))
            raise exc
        except KeyboardInterrupt:
            self._fail(trial, handle, "interrupted", run_status="KILLED")
            self._retry(self.study, self.study._storage.get_trial(trial._trial_id))
            raise Interrupted(130) from None
        except Exception as exc:
            if _is_architecture_error(exc):
                trial.set_user_attr("sweeps.reason", one_line(exc))
                self.study.tell(trial, state=_state("PRUNED"))
                self._end(trial, handle, "PRUNED", None, one_line(exc), spec)
                return "PRUNED"
            self._fail(trial, handle, _reason(exc))
            return "FAIL"

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
            t for t in self.study.get_trials(deepcopy=False)
            if t.number < trial.number and not self._excluded(t)
        ]  # fmt: skip
        return len(earlier) >= self.cfg.sweep.n_trials

    def _excluded(self, t: Any) -> bool:
        """Failed trials that were retried, surplus trials and the other mode's do not count."""
        from optuna.trial import TrialState

        return self._other_mode(t) or (t.state == TrialState.FAIL and (
            t.number in self._retried_numbers or bool(t.user_attrs.get("sweeps.spurious"))
        ))  # fmt: skip

    def _other_mode(self, t: Any) -> bool:
        """An ablation trial seen by a search, or the reverse: one study name holds both."""
        fixed = t.system_attrs.get("fixed_params") or {}
        is_ablation = VARIANT_PARAM in t.params or VARIANT_PARAM in fixed
        return is_ablation != (self.cfg.sweep.mode == "ablation")

    def _spec(self, trial: Any) -> TrialSpec:
        if self.cfg.sweep.mode == "ablation":
            names = [v.name for v in self.cfg.variants]
            fixed = _frozen(trial).system_attrs.get("fixed_params") or {}
            if VARIANT_PARAM not in fixed:
                # A worker raced another for the last queued trial and got a fresh one.
                trial.set_user_attr("sweeps.spurious", True)
                raise TrialFailed("no queued ablation trial left (another worker took it)")
            name = trial.suggest_categorical(VARIANT_PARAM, names)
            repeat = trial.suggest_int(REPEAT_PARAM, 0, max(self.cfg.sweep.repeats - 1, 0))
            variant = next(v for v in self.cfg.variants if v.name == name)
            raw = apply_overrides(self.cfg.raw, variant.overrides)
            params = {VARIANT_PARAM: name, REPEAT_PARAM: repeat, **variant.overrides}
            return make_spec(self.cfg, raw, trial.number, self.cfg.seed + repeat, params,
                             self.work_dir, variant=name, repeat=repeat)  # fmt: skip
        values = sample(trial, self.cfg.space)
        raw = apply_overrides(self.cfg.raw, values)
        return make_spec(self.cfg, raw, trial.number, self.cfg.seed, values, self.work_dir)

    def _start_run(self, trial: Any, spec: TrialSpec) -> str:
        tags = {
            **self._common_tags(),
            "sweeps.role": "trial",
            "sweeps.trial_number": str(trial.number),
            "sweeps.state": "RUNNING",
        }
        if spec.variant is not None:
            tags.update({"sweeps.variant": spec.variant, "sweeps.repeat": str(spec.repeat)})
        retry_of = _frozen(trial).system_attrs.get("failed_trial")
        if retry_of is not None:
            old = self.study._storage.get_trial(
                self.study._storage.get_trial_id_from_study_id_trial_number(
                    self.study._study_id, retry_of
                )
            )
            tags["sweeps.retry_of_trial"] = str(retry_of)
            tags["sweeps.retry_of_run"] = str(old.user_attrs.get(RUN_ID_ATTR, ""))
        handle = self.tracker.start_run(f"trial-{trial.number:04d}", self.parent_run, tags)
        run_id = self.tracker.run_id(handle, timeout=10)
        if run_id:
            trial.set_user_attr(RUN_ID_ATTR, run_id)
        self.tracker.log_params(handle, spec.loggable_params())
        return handle

    def _record_outcome(self, trial: Any, outcome: TrialOutcome) -> None:
        """Keeps the trial's results in Optuna too, so nothing depends on MLflow being up."""
        trial.set_user_attr("best_epoch", outcome.best_epoch)
        for key, value in {**outcome.best, **outcome.test}.items():
            trial.set_user_attr(key, float(value))
        trial.set_user_attr("param_count", int(outcome.param_count))
        trial.set_user_attr("epochs_trained", len(outcome.history))
        trial.set_user_attr("history", outcome.history)

    def _end(self, trial: Any, handle: str | None, state: str, value: float | None,
             note: str, spec: TrialSpec | None, outcome: TrialOutcome | None = None) -> None:  # fmt: skip
        if self.progress:
            self.progress.trial_ended(trial.number, state, value, note)
        if handle is None:
            return
        self._late_run_id(trial, handle)
        tags: dict[str, Any] = {"sweeps.state": state}
        if note:
            tags["sweeps.note"] = note
        if state == "PRUNED" and note.startswith("pruned at epoch"):
            tags["sweeps.pruned_at_epoch"] = note.split()[-1]
        if outcome is not None:
            self.tracker.log_metrics(handle, {**outcome.test, "param_count": outcome.param_count,
                                              "best_epoch": outcome.best_epoch}, step=0)  # fmt: skip
            for path, artifact_dir in outcome.artifacts:
                self.tracker.log_artifact(handle, path, artifact_dir)
        cleanup = spec.workdir if spec is not None else None
        status = "FINISHED" if state == "COMPLETE" else "KILLED"
        self.tracker.end_run(handle, status, tags, cleanup=cleanup)

    def _late_run_id(self, trial: Any, handle: str) -> None:
        run_id = self.tracker.run_id(handle, timeout=0)
        if run_id and trial.user_attrs.get(RUN_ID_ATTR) != run_id:
            trial.set_user_attr(RUN_ID_ATTR, run_id)

    def _fail(self, trial: Any, handle: str | None, reason: str, run_status: str = "FAILED") -> None:
        trial.set_user_attr("sweeps.reason", reason)
        if handle is not None:
            self._late_run_id(trial, handle)
        self.study.tell(trial, state=_state("FAIL"))
        if self.progress:
            self.progress.trial_ended(trial.number, "FAIL", None, reason)
        if handle is not None:
            self.tracker.end_run(
                handle, run_status, {"sweeps.state": "FAIL", "sweeps.error": reason}
            )
        if reason != "interrupted":
            log.warning("trial %d failed: %s", trial.number, reason)


class _Pruned(Exception):
    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


class _Reporter:
    """Called by the trainer after each epoch: logs, checks the loss, reports, maybe prunes."""

    def __init__(self, engine: Engine, trial: Any, handle: str) -> None:
        self.engine, self.trial, self.handle = engine, trial, handle

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        self.engine.tracker.log_metrics(self.handle, metrics, step=epoch)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrialFailed(f"{bad[0]} became {metrics[bad[0]]} at epoch {epoch}")
        self.trial.report(metrics[self.engine.cfg.sweep.metric], epoch)
        if self.trial.should_prune():
            raise _Pruned(f"pruned at epoch {epoch}")


class _Heartbeat:
    """Records the trial's heartbeat in a thread, for storages that support it."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        from optuna.storages._heartbeat import is_heartbeat_enabled

        self.storage, self.trial_id = storage, trial_id
        self.enabled = is_heartbeat_enabled(storage)
        self._stop = threading.Event()

    def __enter__(self) -> _Heartbeat:
        if self.enabled:
            self.storage.record_heartbeat(self.trial_id)
            self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")
            self._thread.start()
        return self

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval() or 60
        while not self._stop.wait(interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:
                log.warning("heartbeat failed: %s", one_line(exc))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def _frozen(trial: Any) -> Any:
    """The stored view of a live trial (Optuna 5 keeps system attrs off ``Trial``)."""
    return trial.study._storage.get_trial(trial._trial_id)


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def _is_architecture_error(exc: Exception) -> bool:
    from sweeps.models import ArchitectureError

    return isinstance(exc, ArchitectureError)


def _reason(exc: BaseException) -> str:
    """The one-line reason recorded on a failed trial."""
    name = type(exc).__name__
    if name == "ResourceExhaustedError" or isinstance(exc, MemoryError):
        return f"out of memory: {one_line(exc, 200)}"
    if isinstance(exc, (TrialFailed, SweepsError)):
        return str(exc)
    return one_line(exc)
