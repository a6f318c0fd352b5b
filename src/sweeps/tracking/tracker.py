"""The tracker: the MLflow calls a study makes, writes queued through the outbox.

Writes (runs, metrics, params, tags, artifacts) go through :class:`Outbox`, per-epoch metrics
batched into one ``log_batch`` call; reads and the few writes whose caller must see a failure
go to the client at once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sweeps.errors import mask_url
from sweeps.tracking.outbox import PENDING, Op, Outbox
from sweeps.tracking.store import (
    connect,
    decode_args,
    encode_args,
    experiment_id,
    finite,
    param_text,
)

log = logging.getLogger("sweeps.tracking")

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
# A saved runs-table view of the UI: the experiment tag's suffix is the URL's viewStateShareKey.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


class Tracker:
    """Queued, retried MLflow logging for one study.

    Args:
        uri: MLflow tracking URI (``sqlite:///…``, ``http://…``, …).
        experiment: Experiment name (the study's name).
        artifact_root: Where a new experiment keeps artifacts; None lets the server decide.
        spool_dir: Where unsent operations are kept across processes.
        connect_timeout: Seconds to wait for the store before giving up at start.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        artifact_root: Path | None = None,
        spool_dir: Path | None = None,
        connect_timeout: float = 15.0,
    ) -> None:
        self.uri = uri
        self.experiment_name = experiment
        self._client = connect(uri, connect_timeout, artifact_root)
        self.experiment_id = experiment_id(self._client, experiment, artifact_root)
        self._outbox = Outbox(
            self._apply, where=uri, spool_dir=spool_dir, encode=encode_args, decode=decode_args
        )
        self._outbox.replay_spool()

    # -- runs --------------------------------------------------------------------------------

    def parent_run(self, study: str, tags: Mapping[str, str]) -> str:
        """The study's parent run, found again on resume; created when there is none."""
        found = self._parents(study)
        if found:
            return found[0]
        run = self._client.create_run(
            self.experiment_id,
            run_name=study,
            tags={**tags, "sweeps.study": study, "sweeps.role": "parent"},
        )
        # Two workers starting together may both create one; the oldest wins everywhere.
        winner = self._parents(study)[0]
        if winner != run.info.run_id:
            self._client.delete_run(run.info.run_id)
        return winner

    def _parents(self, study: str) -> list[str]:
        runs = self._client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`sweeps.role` = 'parent' and tags.`sweeps.study` = '{study}'",
            order_by=["attributes.start_time ASC"],
        )
        return [
            r.info.run_id for r in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))
        ]

    def start_run(self, name: str, parent_id: str | None, tags: Mapping[str, str]) -> str:
        """Queues the creation of a run and returns a handle that later writes can use.

        The run is created by the background thread, so a tracking store that is down in
        the middle of a study never blocks a trial; :meth:`run_id` gives the real id.
        """
        all_tags = dict(tags)
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        handle = f"{PENDING}{uuid.uuid4().hex}"
        self._outbox.put("create_run", handle, name, all_tags)
        return handle

    def run_id(self, handle: str, timeout: float = 0.0) -> str | None:
        """The MLflow run id behind a handle, waiting up to ``timeout`` s for its creation.

        A run that already existed (a resumed trial's) is its own handle.
        """
        if not handle.startswith(PENDING):
            return handle
        return self._outbox.run_id(handle, timeout)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Queues parameters (flattened, values as text)."""
        from mlflow.entities import Param

        items = [Param(k, param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._outbox.put("log_batch", run_id, [], items[i : i + 100], [])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Queues one batch of metrics at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if finite(v)]
        if items:
            self._outbox.put("log_batch", run_id, items, [], [])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Queues tags."""
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._outbox.put("log_batch", run_id, [], [], items)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Queues the upload of one file."""
        self._outbox.put("log_artifact", run_id, str(path), artifact_path)

    def end_run(
        self,
        run_id: str,
        status: str,
        tags: Mapping[str, Any] | None = None,
        cleanup: Path | None = None,
    ) -> None:
        """Queues tags and the run's end; ``cleanup`` is deleted once everything is sent."""
        if tags:
            self.set_tags(run_id, tags)

        def remove() -> None:
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)

        self._outbox.put("set_terminated", run_id, status, on_done=remove)

    def reopen_run(self, run_id: str) -> None:
        """Queues setting an ended run back to RUNNING (a study's parent, resumed)."""
        self._outbox.put("update_run", run_id, RUNNING)

    def summarize_run(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        params: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """Queues a summary: metrics at step 0, params, tags; safe to repeat.

        MLflow refuses to change a parameter, so a parameter whose value changed since the
        last summary (a resumed study found a new best) is written as a tag of that name.
        """
        try:
            logged = self._client.get_run(run_id).data.params
        except Exception:  # the store is away: the queue retries what follows
            logged = {}
        fresh = {k: v for k, v in params.items() if logged.get(k) != param_text(v)}
        changed = {k: param_text(v) for k, v in fresh.items() if k in logged}
        self.log_metrics(run_id, metrics, step=0)
        self.log_params(run_id, {k: v for k, v in fresh.items() if k not in changed})
        if tags or changed:
            self.set_tags(run_id, {**(tags or {}), **changed})

    def save_view(self, key: str, columns: Sequence[str]) -> str:
        """Queues a saved view of the experiment's runs table showing ``columns``; its key.

        MLflow's UI opens the view stored in the experiment tag ``mlflow.sharedViewState.KEY``
        when its URL carries ``viewStateShareKey=KEY`` (what its Share button writes), merged
        with its defaults; its own default columns (source, models, dataset) are empty here.
        """
        key = re.sub(r"[^A-Za-z0-9_-]", "_", key)
        state = json.dumps({"selectedColumns": list(columns)})
        self._outbox.put("set_experiment_tag", self.experiment_id, f"{VIEW_TAG_PREFIX}{key}", state)
        return key

    def end_run_now(self, run_id: str, status: str, tags: Mapping[str, Any]) -> None:
        """Ends a run at once, bypassing the queue (for runs of trials found dead)."""
        from mlflow.entities import RunTag

        self._client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self._client.set_terminated(run_id, status)

    # -- reading (report) --------------------------------------------------------------------

    def run_info(self, run_id: str) -> dict[str, Any]:
        """Status, tags, params and last metrics of one run."""
        run = self._client.get_run(run_id)
        return {
            "run_id": run_id,
            "status": run.info.status,
            "tags": dict(run.data.tags),
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }

    def trial_runs(self, study: str) -> list[dict[str, Any]]:
        """Every trial run of the study with status, tags, params and last metrics."""
        runs = self._client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`sweeps.role` = 'trial' and tags.`sweeps.study` = '{study}'",
            max_results=50000,
        )
        return [self.run_info(r.info.run_id) for r in runs]

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` pairs of one metric."""
        return sorted((m.step, m.value) for m in self._client.get_metric_history(run_id, key))

    def download_artifact(self, run_id: str, path: str, dst: Path) -> Path | None:
        """Downloads one artifact of a run into ``dst``; None when the run does not have it."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one file: noise
        try:
            return Path(self._client.download_artifacts(run_id, path, str(dst)))
        except Exception as exc:  # MLflow raises several types for a missing artifact
            log.info("no artifact %s in run %s: %s", path, run_id, mask_url(str(exc))[:200])
            return None

    def log_artifact_now(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Uploads one file at once, bypassing the queue, so the caller sees any failure."""
        self._client.log_artifact(run_id, str(path), artifact_path)

    # -- sending -------------------------------------------------------------------------------

    def _apply(self, op: Op) -> None:
        """Performs one queued write (on the outbox's thread)."""
        if op.name == "create_run":
            handle, name, tags = op.args
            run = self._client.create_run(self.experiment_id, run_name=name, tags=tags)
            self._outbox.resolved(handle, run.info.run_id)
            return
        run_id, *rest = op.args
        if str(run_id).startswith(PENDING):
            run_id = self._outbox.ids.get(run_id)
            if run_id is None:  # its creation was refused: nothing to attach the write to
                return
        getattr(self._client, op.name)(run_id, *rest)

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every queued write is sent; False when ``timeout`` passed first."""
        return self._outbox.flush(timeout)

    @property
    def pending(self) -> int:
        return self._outbox.pending

    def close(self, timeout: float = 30.0) -> None:
        """Flushes for up to ``timeout`` seconds, then spools what is left to disk."""
        self._outbox.close(timeout)
