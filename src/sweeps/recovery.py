"""Trials whose worker died: failed, their MLflow run closed, and queued again.

On PostgreSQL a dead worker is found by its stale heartbeat (Optuna's ``fail_stale_trials``);
the journal file has no heartbeats, so a local worker killed mid-trial is found by its process
id instead. Either way the trial ends FAIL, its run FAILED, and Optuna's retry callback queues
it with the same parameters, so no trial is left RUNNING.
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


class Recovery:
    """Finds the trials of dead workers and retries them.

    Args:
        tracker: The MLflow tracker (the dead trial's run is ended FAILED).
        retry: Enqueues a retry of a frozen trial (Optuna's retry callback).
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
