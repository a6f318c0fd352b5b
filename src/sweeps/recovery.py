"""Trials whose worker died or was stopped: failed, their MLflow run closed, queued again.

On PostgreSQL a dead worker is found by its stale heartbeat (Optuna's ``fail_stale_trials``);
the journal file has no heartbeats, so a local worker killed mid-trial is found by its process
id instead. Either way the trial ends FAIL, its run FAILED, and `Requeue` queues it with the
same parameters, spending one of ``storage.max_retries``; a worker stopped by a signal
(pre-emption, Ctrl-C) queues its own trial without spending one. No trial is left RUNNING, and
the queued trial resumes from its last saved epoch in the same MLflow run (`sweeps.resume`).
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from sweeps.errors import one_line
from sweeps.keys import RUN_ID_ATTR, WORKER_ATTR
from sweeps.storage import FailedTrialCallback

log = logging.getLogger("sweeps.engine")

RETRIES_ATTR = "sweeps_retries_spent"  # system attr: crashes this trial's chain has had


class Requeue:
    """Queues a failed trial again with its parameters, as Optuna's retry callback does.

    The queued trial carries Optuna's ``failed_trial`` and ``retry_history`` (so
    `RetryHeartbeatStaleTrialCallback.retried_trial_number` still works) and the failed
    trial's user attrs (its MLflow run id: the retry resumes that run). Calling it spends one
    retry of ``max_retry`` (a crash); `again` does not (a pre-emption).

    Args:
        max_retry: Crashes allowed per trial chain; None for no bound.
    """

    def __init__(self, max_retry: int | None) -> None:
        self.max_retry = max_retry

    def __call__(self, study: Any, trial: Any) -> None:
        self._queue(study, trial, spend=True)

    def again(self, study: Any, trial: Any) -> None:
        """Queues the trial without spending a retry (it was stopped, not broken)."""
        self._queue(study, trial, spend=False)

    def _queue(self, study: Any, trial: Any, *, spend: bool) -> None:
        import optuna

        attrs: dict[str, Any] = {"failed_trial": trial.number, "retry_history": [],
                                 RETRIES_ATTR: 0, **trial.system_attrs}  # fmt: skip
        attrs["retry_history"] = [*attrs["retry_history"], trial.number]
        if spend:
            attrs[RETRIES_ATTR] = int(attrs[RETRIES_ATTR]) + 1
            if self.max_retry is not None and attrs[RETRIES_ATTR] > self.max_retry:
                log.warning("trial %d is not retried: storage.max_retries=%d spent",
                            trial.number, self.max_retry)  # fmt: skip
                return
        study.add_trial(
            optuna.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=trial.user_attrs,
                system_attrs=attrs,
            )
        )


class Recovery:
    """Finds the trials of dead workers and retries them.

    Args:
        tracker: The MLflow tracker (the dead trial's run is ended FAILED).
        retry: Enqueues a retry of a frozen trial, spending one (`Requeue`).
    """

    def __init__(self, tracker: Any, retry: FailedTrialCallback) -> None:
        self.tracker, self._retry = tracker, retry

    def recover(self, study: Any) -> None:
        """Fails and retries trials whose worker died (heartbeat or local process check)."""
        import optuna

        if isinstance(study._storage, optuna.storages.JournalStorage):
            fail_dead_local_trials(study, self.on_dead_trial)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # marked experimental
                optuna.storages.fail_stale_trials(study)  # calls on_dead_trial per trial

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


def fail_dead_local_trials(study: Any, callback: FailedTrialCallback) -> int:
    """Fails RUNNING trials whose worker process on this host is gone; returns how many.

    Journal storage has no heartbeats, so a local worker killed mid-trial would leave its
    trial RUNNING forever. Trials of other hosts are left alone.
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    found = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get(WORKER_ATTR, ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            ok = study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        if ok:
            found += 1
            callback(study, study._storage.get_trial(t._trial_id))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) runs nothing any more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
