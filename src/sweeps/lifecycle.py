"""One trial from ask to tell: its spec, its MLflow run, its epoch reports, its end state.

Every trial ends in exactly one Optuna state whatever happens (complete, pruned, failed with a
reason, interrupted), and its MLflow run ends with the matching status. A trial queued again
after a stop or a crash resumes: when the run it replaces holds a resumable state
(``resume/state.zip``, uploaded at every epoch end), it reopens that run, reports the saved
epochs to Optuna again, logs any saved epoch the run lacks, and trains on from there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweeps import keys, plots, resume
from sweeps.config import RunConfig, apply_overrides
from sweeps.errors import SweepsError, TrialFailed, one_line
from sweeps.keys import REPEAT_PARAM, RUN_ID_ATTR, VARIANT_PARAM, retried_from
from sweeps.models import ArchitectureError
from sweeps.signals import Interrupted, deferred, raise_if_stopped, stop_requested
from sweeps.space import sample
from sweeps.storage import Heartbeat
from sweeps.trial import TrialOutcome, TrialSpec, make_spec

log = logging.getLogger("sweeps.engine")


class TrialLifecycle:
    """Runs trials the engine has asked for, and records how each one ends.

    Args:
        cfg: The validated config.
        study: The Optuna study.
        tracker: The MLflow tracker.
        trainer: Trains one spec, reporting every epoch.
        progress: Progress display, or None.
        parent_run: The study's MLflow parent run id.
        tags: Tags every trial run carries (study, mode, commit, dataset).
        retry: Enqueues a frozen trial again (`sweeps.recovery.Requeue`): ``retry.again``
            without spending a retry, for a trial stopped by a signal.
        work_dir: Parent of the trials' scratch folders.
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        study: Any,
        tracker: Any,
        trainer: Any,
        progress: Any,
        parent_run: str,
        tags: dict[str, str],
        retry: Callable[[Any, Any], None],
        work_dir: Path,
    ) -> None:
        self.cfg, self.study, self.tracker, self.trainer = cfg, study, tracker, trainer
        self.progress, self.parent_run, self.tags = progress, parent_run, tags
        self._retry, self.work_dir = retry, work_dir
        self._resumed: resume.Meta | None = None  # the saved state the current trial goes on from

    def run(self, trial: Any) -> str:
        """Runs one asked trial and records its end; returns the Optuna state name."""
        heartbeat = Heartbeat(self.study._storage, trial._trial_id)
        handle: str | None = None
        spec: TrialSpec | None = None
        reporter: _Reporter | None = None
        try:
            raise_if_stopped()  # asked as the signal came: queued again, not started
            spec = self._spec(trial)
            handle = self._start_run(trial, spec)
            if self.progress:
                self.progress.trial_started(trial.number, spec.params)
            reporter = _Reporter(self, trial, handle)
            if self._resumed is not None:
                reporter.history = [dict(h) for h in self._resumed.history]
            with heartbeat:
                outcome = self.trainer.run(spec, reporter)
            value = outcome.best.get(self.cfg.sweep.metric)
            if value is None or not math.isfinite(value):
                raise TrialFailed(f"{self.cfg.sweep.metric} was never finite")
            self._record_outcome(trial, outcome)
            self.study.tell(trial, value)
            self._end(trial, handle, "COMPLETE", value, "", spec, outcome)
            return "COMPLETE"
        except _Pruned as exc:
            self.study.tell(trial, state=keys.state("PRUNED"))
            history = reporter.history if reporter is not None else None
            self._end(trial, handle, "PRUNED", None, exc.note, spec, history=history)
            return "PRUNED"
        except KeyboardInterrupt as exc:  # Interrupted too
            self._interrupted(trial, handle)
            raise Interrupted(getattr(exc, "exit_code", 130)) from None
        except Exception as exc:
            code = stop_requested()
            if code is not None:  # the signal, turned into a library's error
                self._interrupted(trial, handle)
                raise Interrupted(code) from None
            if _is_architecture_error(exc):
                trial.set_user_attr("sweeps.reason", one_line(exc))
                self.study.tell(trial, state=keys.state("PRUNED"))
                self._end(trial, handle, "PRUNED", None, one_line(exc), spec)
                return "PRUNED"
            self._fail(trial, handle, _reason(exc))
            return "FAIL"

    def _spec(self, trial: Any) -> TrialSpec:
        if self.cfg.sweep.mode == "ablation":
            names = [v.name for v in self.cfg.variants]
            fixed = keys.frozen(trial).system_attrs.get("fixed_params") or {}
            if VARIANT_PARAM not in fixed:
                # A worker raced another for the last queued trial and got a fresh one.
                trial.set_user_attr("sweeps.spurious", True)
                raise TrialFailed("no queued ablation trial left (another worker took it)")
            name = trial.suggest_categorical(VARIANT_PARAM, names)
            last = max(self.cfg.sweep.repeat_budget - 1, 0)
            repeat = trial.suggest_int(REPEAT_PARAM, 0, last)
            variant = next(v for v in self.cfg.variants if v.name == name)
            raw = apply_overrides(self.cfg.raw, variant.overrides)
            params = {VARIANT_PARAM: name, REPEAT_PARAM: repeat, **variant.overrides}
            # Repeat r trains with seed + r, the baseline's repeat r too (paired by seed); a
            # row that sets ``seed`` draws its own stream: the baseline again, another luck.
            return make_spec(
                self.cfg,
                raw,
                trial.number,
                int(raw.get("seed", self.cfg.seed)) + repeat,
                params,
                self.work_dir,
                variant=name,
                repeat=repeat,
            )
        values = sample(trial, self.cfg.space)
        raw = apply_overrides(self.cfg.raw, values)
        return make_spec(self.cfg, raw, trial.number, self.cfg.seed, values, self.work_dir)

    def _start_run(self, trial: Any, spec: TrialSpec) -> str:
        tags = {
            **self.tags,
            "sweeps.role": "trial",
            "sweeps.trial_number": str(trial.number),
            "sweeps.state": "RUNNING",
        }
        if spec.variant is not None:
            tags.update({"sweeps.variant": spec.variant, "sweeps.repeat": str(spec.repeat)})
        self._resumed = None
        retry_of = retried_from(keys.frozen(trial).system_attrs)
        if retry_of is not None:
            old = self.study._storage.get_trial(
                self.study._storage.get_trial_id_from_study_id_trial_number(
                    self.study._study_id, retry_of
                )
            )
            old_run = str(old.user_attrs.get(RUN_ID_ATTR, ""))
            tags["sweeps.retry_of_trial"] = str(retry_of)
            if old_run and spec.train.resumable and self._resume(trial, spec, old_run, tags):
                return old_run
            tags["sweeps.retry_of_run"] = old_run
        handle = self.tracker.start_run(f"trial-{trial.number:04d}", self.parent_run, tags)
        run_id = self.tracker.run_id(handle, timeout=10)
        if run_id:
            trial.set_user_attr(RUN_ID_ATTR, run_id)
        self.tracker.log_params(handle, spec.loggable_params())
        return handle

    def _resume(self, trial: Any, spec: TrialSpec, run_id: str, tags: dict[str, str]) -> bool:
        """Goes on in the replaced trial's run from its saved state; False when it has none."""
        path = self.tracker.download_artifact(run_id, resume.ARTIFACT, spec.workdir / "state-in")
        if path is None:
            return False
        try:
            meta = resume.read_meta(path)
        except resume.StateError as exc:
            log.warning("trial %d starts again: %s", trial.number, one_line(exc))
            return False
        spec.resume_from, self._resumed = path, meta
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        trial.set_user_attr("sweeps.resumed_at_epoch", meta.epoch)
        self.tracker.reopen_run(run_id)
        self.tracker.set_tags(run_id, {**tags, "sweeps.resumed_at_epoch": str(meta.epoch),
                                       "sweeps.error": "", "sweeps.note": ""})  # fmt: skip
        metric = self.cfg.sweep.metric
        for epoch, metrics in enumerate(meta.history, 1):  # the pruner sees every epoch
            if math.isfinite(metrics.get(metric, math.nan)):
                trial.report(metrics[metric], epoch)
        try:  # an epoch saved but not yet logged when the worker stopped: logged once now
            logged = {step for step, _ in self.tracker.metric_history(run_id, metric)}
        except Exception as exc:
            log.warning("could not read run %s's curves: %s", run_id, one_line(exc))
            logged = set(range(1, meta.epoch + 1))
        for epoch, metrics in enumerate(meta.history, 1):
            if epoch not in logged:
                self.tracker.log_metrics(run_id, metrics, step=epoch)
        log.info("trial %d resumes trial %s at epoch %d in run %s",
                 trial.number, tags["sweeps.retry_of_trial"], meta.epoch + 1, run_id)  # fmt: skip
        return True

    def _record_outcome(self, trial: Any, outcome: TrialOutcome) -> None:
        """Keeps the trial's results in Optuna too, so nothing depends on MLflow being up."""
        trial.set_user_attr("best_epoch", outcome.best_epoch)
        for key, value in {**outcome.best, **outcome.test}.items():
            trial.set_user_attr(key, float(value))
        trial.set_user_attr("param_count", int(outcome.param_count))
        trial.set_user_attr("epochs_trained", len(outcome.history))
        trial.set_user_attr("stop_reason", outcome.stop_reason)
        trial.set_user_attr("history", outcome.history)

    def _end(
        self,
        trial: Any,
        handle: str | None,
        state: str,
        value: float | None,
        note: str,
        spec: TrialSpec | None,
        outcome: TrialOutcome | None = None,
        history: list[dict[str, float]] | None = None,
    ) -> None:
        """Ends a trial's run: COMPLETE and PRUNED are normal ends (FINISHED in MLflow)."""
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
        tags.update(_stopped(trial, state, outcome))
        if outcome is not None:
            self.tracker.log_metrics(
                handle,
                {
                    **outcome.test,
                    "param_count": outcome.param_count,
                    "best_epoch": outcome.best_epoch,
                    "epochs_trained": len(outcome.history),
                    # The epoch the test metrics come from; the per-epoch series end at the
                    # last epoch, which is not the one kept.
                    **{f"best_{k}": v for k, v in outcome.best.items()},
                },
                step=0,
            )
            for path, artifact_dir in outcome.artifacts:
                self.tracker.log_artifact(handle, path, artifact_dir)
        if history and spec is not None:
            self._pruned_curves(handle, spec, history, note)
        cleanup = spec.workdir if spec is not None else None
        status = "FINISHED" if state in ("COMPLETE", "PRUNED") else "KILLED"
        self.tracker.end_run(handle, status, tags, cleanup=cleanup)

    def _pruned_curves(
        self, handle: str, spec: TrialSpec, history: list[dict[str, float]], note: str
    ) -> None:
        """The learning curves of the epochs a pruned trial ran, as for a complete one."""
        try:
            spec.workdir.mkdir(parents=True, exist_ok=True)
            title = f"{spec.study} trial {spec.number} ({note})" if note else ""
            path = plots.learning_curves(history, spec.workdir / "learning_curves.png", title)
        except (OSError, ValueError) as exc:  # a plot is not worth failing the study for
            log.warning("no learning curves for trial %d: %s", spec.number, one_line(exc))
            return
        self.tracker.log_artifact(handle, path, "plots")

    def _late_run_id(self, trial: Any, handle: str) -> None:
        run_id = self.tracker.run_id(handle, timeout=0)
        if run_id and trial.user_attrs.get(RUN_ID_ATTR) != run_id:
            trial.set_user_attr(RUN_ID_ATTR, run_id)

    def _interrupted(self, trial: Any, handle: str | None) -> None:
        """Ends an interrupted trial as FAIL and queues it again, spending no retry.

        The queued trial resumes from the last epoch whose state was saved, in this run.
        """
        self._fail(trial, handle, "interrupted", run_status="KILLED")
        frozen = self.study._storage.get_trial(trial._trial_id)
        getattr(self._retry, "again", self._retry)(self.study, frozen)

    def _fail(
        self, trial: Any, handle: str | None, reason: str, run_status: str = "FAILED"
    ) -> None:
        trial.set_user_attr("sweeps.reason", reason)
        if handle is not None:
            self._late_run_id(trial, handle)
        self.study.tell(trial, state=keys.state("FAIL"))
        if self.progress:
            self.progress.trial_ended(trial.number, "FAIL", None, reason)
        if handle is not None:
            tags = {"sweeps.state": "FAIL", "sweeps.error": reason}
            self.tracker.end_run(handle, run_status, {**tags, **_stopped(trial, reason, None)})
        if reason != "interrupted":
            log.warning("trial %d failed: %s", trial.number, reason)


class _Pruned(Exception):
    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


class _Reporter:
    """Called by the trainer after each epoch: saves its state, logs, checks, maybe prunes."""

    def __init__(self, life: TrialLifecycle, trial: Any, handle: str) -> None:
        self.life, self.trial, self.handle = life, trial, handle
        self.history: list[dict[str, float]] = []  # what a pruned trial's curves are drawn from
        self._unsaved_said = False

    def __call__(self, epoch: int, metrics: dict[str, float], state: Path | None = None) -> None:
        if state is not None:  # first: an epoch is logged only once its state is kept
            self._keep(state)
        raise_if_stopped()  # a signal a library dropped ends the trial at the epoch's end
        self.history.append(dict(metrics))
        self.life.tracker.log_metrics(self.handle, metrics, step=epoch)
        progress = self.life.progress
        if progress is not None and hasattr(progress, "epoch_ended"):
            progress.epoch_ended(self.trial.number, epoch, metrics)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrialFailed(f"{bad[0]} became {metrics[bad[0]]} at epoch {epoch}")
        self.trial.report(metrics[self.life.cfg.sweep.metric], epoch)
        if self.trial.should_prune():
            raise _Pruned(f"pruned at epoch {epoch}")

    def _keep(self, state: Path) -> None:
        """Uploads the epoch's state to the run; a stop signal waits for the upload."""
        tracker = self.life.tracker
        try:
            with deferred():
                run_id = tracker.run_id(self.handle, timeout=30)
                if not run_id:
                    raise RuntimeError("the trial's MLflow run was not created yet")
                tracker.log_artifact_now(run_id, state, resume.ARTIFACT_DIR)
        except Interrupted:
            raise
        except Exception as exc:  # MLflow down: the trial goes on, a resume starts earlier
            if not self._unsaved_said:
                log.warning("trial %d: resumable state not saved (%s); training goes on",
                            self.trial.number, one_line(exc))  # fmt: skip
                self._unsaved_said = True


def _stopped(trial: Any, state: str, outcome: TrialOutcome | None) -> dict[str, str]:
    """Tags saying how many epochs the trial trained and why it stopped.

    ``state`` is PRUNED, or a failed trial's reason (``interrupted`` is kept as the reason).
    """
    if outcome is not None:
        return {"sweeps.stop_reason": outcome.stop_reason,
                "sweeps.epochs_trained": str(len(outcome.history))}  # fmt: skip
    reason = {"PRUNED": "pruned", "interrupted": "interrupted"}.get(state, "failed")
    epochs = len(keys.frozen(trial).intermediate_values)  # every epoch is reported to Optuna
    return {"sweeps.stop_reason": reason, "sweeps.epochs_trained": str(epochs)}


def _is_architecture_error(exc: Exception) -> bool:
    return isinstance(exc, ArchitectureError)


def _reason(exc: BaseException) -> str:
    """The one-line reason recorded on a failed trial."""
    name = type(exc).__name__
    if name == "ResourceExhaustedError" or isinstance(exc, MemoryError):
        return f"out of memory: {one_line(exc, 200)}"
    if isinstance(exc, (TrialFailed, SweepsError)):
        return str(exc)
    return one_line(exc)
