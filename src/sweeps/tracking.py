"""The one module that talks to MLflow.

Trials never wait on the tracking store: every write is queued and sent by one background
thread, in order, with per-epoch metrics batched into a single ``log_batch`` call. When the
store goes away mid-study the thread retries with backoff and the study goes on (Optuna keeps
the results); what is still unsent at exit is written to a spool file under ``store_dir`` and
replayed by the next ``run``. Nothing else in the code base imports ``mlflow``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.errors import TrackingUnreachable, mask_url

log = logging.getLogger("sweeps.tracking")

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
_MAX_PARAM_LEN = 6000
# MLflow 3's UI opens an experiment without this tag on its GenAI pages (traces, no runs);
# with it, on the runs table of model training.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# A saved runs-table view of the UI: the experiment tag's suffix is the URL's viewStateShareKey.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def default_uri(store_dir: Path) -> str:
    """The embedded default: a SQLite database beside the artifacts in ``store_dir``."""
    return f"sqlite:///{(store_dir / 'mlflow.db').resolve()}"


@dataclass
class _Op:
    name: str
    args: tuple
    on_done: Callable[[], None] | None = None


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
        self._spool_dir = spool_dir
        self._queue: queue.Queue[_Op | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._warned = False
        self._stop = False
        self._ids: dict[str, str] = {}  # handle -> MLflow run id
        self._client = self._connect(connect_timeout, artifact_root)
        self.experiment_id = self._experiment(artifact_root)
        self._thread = threading.Thread(target=self._worker, name="sweeps-tracking", daemon=True)
        self._thread.start()
        self._replay_spool()

    # -- connection ------------------------------------------------------------------------

    def _connect(self, timeout: float, artifact_root: Path | None = None):
        # MLflow prints a "View run ... at" line for every run it ends; the progress lines
        # already say what ended.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        if self.uri.startswith(("http://", "https://")):
            # MLflow's own HTTP retries would take minutes; this queue does the retrying.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            _probe_http(self.uri, timeout)
        from mlflow import MlflowClient

        deadline = time.monotonic() + timeout
        while True:
            try:
                # MLflow creates and migrates a new SQLite database in several transactions;
                # two processes doing it at once leave it half-migrated for good.
                sqlite = self.uri.startswith("sqlite:///")
                with _sqlite_first_use(self.uri) if sqlite else contextlib.nullcontext() as fresh:
                    if fresh:
                        _init_sqlite_store(self.uri, artifact_root)
                    client = MlflowClient(tracking_uri=self.uri)
                    client.search_experiments(max_results=1)
                return client
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise TrackingUnreachable(
                        f"MLflow tracking at {mask_url(self.uri)} cannot be used "
                        f"({type(exc).__name__}); check tracking.uri"
                    ) from exc
                time.sleep(0.5)

    def _experiment(self, artifact_root: Path | None) -> str:
        exp = self._client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND[0]) is None:
                self._client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
            return exp.experiment_id
        location = artifact_root.resolve().as_uri() if artifact_root else None
        try:
            return self._client.create_experiment(
                self.experiment_name, location, tags=dict([EXPERIMENT_KIND])
            )
        except Exception:  # another worker created it first
            exp = self._client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                raise
            return exp.experiment_id

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
        handle = f"pending-{uuid.uuid4().hex}"
        self._put("create_run", handle, name, all_tags)
        return handle

    def run_id(self, handle: str, timeout: float = 0.0) -> str | None:
        """The MLflow run id behind a handle, waiting up to ``timeout`` s for its creation."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while handle not in self._ids:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._idle.wait(left)
            return self._ids[handle]

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Queues parameters (flattened, values as text)."""
        from mlflow.entities import Param

        items = [Param(k, _param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._put("log_batch", run_id, [], items[i : i + 100], [])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Queues one batch of metrics at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
        if items:
            self._put("log_batch", run_id, items, [], [])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Queues tags."""
        from mlflow.entities import RunTag

        self._put("log_batch", run_id, [], [], [RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Queues the upload of one file."""
        self._put("log_artifact", run_id, str(path), artifact_path)

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

        self._put("set_terminated", run_id, status, on_done=remove)

    def reopen_run(self, run_id: str) -> None:
        """Queues setting an ended run back to RUNNING (a study's parent, resumed)."""
        self._put("update_run", run_id, RUNNING)

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
        fresh = {k: v for k, v in params.items() if logged.get(k) != _param_text(v)}
        changed = {k: _param_text(v) for k, v in fresh.items() if k in logged}
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
        self._put("set_experiment_tag", self.experiment_id, f"{VIEW_TAG_PREFIX}{key}", state)
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

    # -- queue -------------------------------------------------------------------------------

    def _put(self, name: str, *args: Any, on_done: Callable[[], None] | None = None) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(_Op(name, args, on_done))

    def _worker(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            self._send(op)
            with self._lock:
                self._pending -= 1
                self._idle.notify_all()

    def _send(self, op: _Op) -> None:
        delay = 0.5
        while True:
            try:
                self._apply(op)
                if op.on_done:
                    op.on_done()
                if self._warned:
                    log.warning("MLflow at %s is back; queued logs sent", mask_url(self.uri))
                    self._warned = False
                return
            except Exception as exc:
                if not _transient(exc) or self._stop:
                    if self._stop and _transient(exc):
                        self._spool([op])
                    else:
                        log.warning("MLflow rejected %s: %s", op.name, mask_url(str(exc))[:200])
                    return
                if not self._warned:
                    log.warning(
                        "MLflow at %s is unreachable (%s); retrying in the background, "
                        "results are safe in the Optuna storage",
                        mask_url(self.uri),
                        type(exc).__name__,
                    )
                    self._warned = True
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _apply(self, op: _Op) -> None:
        if op.name == "create_run":
            handle, name, tags = op.args
            run = self._client.create_run(self.experiment_id, run_name=name, tags=tags)
            with self._lock:
                self._ids[handle] = run.info.run_id
                self._idle.notify_all()
            return
        run_id, *rest = op.args
        if str(run_id).startswith("pending-"):
            run_id = self._ids.get(run_id)
            if run_id is None:  # its creation was refused: nothing to attach the write to
                return
        getattr(self._client, op.name)(run_id, *rest)

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every queued write is sent; False when ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def close(self, timeout: float = 30.0) -> None:
        """Flushes for up to ``timeout`` seconds, then spools what is left to disk."""
        if not self.flush(timeout):
            self._stop = True
            left = []
            while True:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is not None:
                    left.append(op)
            self._spool(left)
        self._queue.put(None)
        self._thread.join(timeout=5)

    # -- spool ---------------------------------------------------------------------------------

    def _spool(self, ops: Iterable[_Op]) -> None:
        ops = list(ops)
        if not ops or self._spool_dir is None:
            if ops:
                log.warning("%d MLflow writes were lost (no spool folder)", len(ops))
            return
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        path = self._spool_dir / f"{os.getpid()}-{time.time_ns()}.jsonl"
        with path.open("a") as fh:
            for op in ops:
                args = list(op.args)
                if op.name != "create_run" and args and args[0] in self._ids:
                    args[0] = self._ids[args[0]]
                fh.write(json.dumps({"op": op.name, "args": _encode_args(tuple(args))}) + "\n")
        log.warning(
            "MLflow still unreachable: %d writes kept in %s; the next `run` sends them",
            len(ops),
            path,
        )

    def _replay_spool(self) -> None:
        if self._spool_dir is None or not self._spool_dir.is_dir():
            return
        for path in sorted(self._spool_dir.glob("*.jsonl")):
            claimed = path.with_suffix(".sending")
            try:
                path.rename(claimed)  # only one process replays a given file
            except OSError:
                continue
            for line in claimed.read_text().splitlines():
                item = json.loads(line)
                self._put(item["op"], *_decode_args(item["args"]))
            claimed.unlink()


@contextlib.contextmanager
def _sqlite_first_use(uri: str) -> Iterator[bool]:
    """Holds ``<db>.lock`` while a process opens a SQLite store; yields whether it is new.

    MLflow checks and migrates the schema whenever a client opens the database, so every
    process takes the lock for its first connection, not only the one that creates the file.
    """
    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield not db.exists() or db.stat().st_size == 0
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _init_sqlite_store(uri: str, artifact_root: Path | None) -> None:
    """Creates a new SQLite store whose ``Default`` experiment is deleted and points into it.

    MLflow creates a ``Default`` experiment in every new database, with its artifacts in
    ``./mlruns`` of whatever directory the process runs in. Sweeps never uses it, and the UI
    would list it beside the studies; deleted, it stays in the database (so MLflow does not
    create it again) but out of sight.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db = Path(uri[len("sqlite:///") :])
    store = SqlAlchemyStore(uri, str((artifact_root or db.parent).resolve()))
    try:
        store.delete_experiment(SqlAlchemyStore.DEFAULT_EXPERIMENT_ID)
    except Exception:  # another process deleted it first
        log.debug("Default experiment already deleted", exc_info=True)
    finally:
        store.engine.dispose()


def _probe_http(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, 10)) as resp:
            resp.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnreachable(
            f"MLflow tracking server {mask_url(uri)} is unreachable ({reason}); start it or "
            "fix tracking.uri"
        ) from None


def _transient(exc: Exception) -> bool:
    """Connection trouble or a locked database: worth retrying, unlike a rejected request."""
    text = f"{type(exc).__name__} {exc}".lower()
    needles = (
        "connection",
        "timeout",
        "timed out",
        "locked",
        "unavailable",
        "max retries",
        "temporarily",
        "503",
        "502",
        "504",
        "refused",
        "reset by peer",
    )
    return any(n in text for n in needles)


def _finite(value: Any) -> bool:
    try:
        return abs(float(value)) != float("inf") and float(value) == float(value)
    except (TypeError, ValueError):
        return False


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
    return mask_url(text)[:_MAX_PARAM_LEN]


def _encode_args(args: tuple) -> list:
    out = []
    for a in args:
        if isinstance(a, list):
            out.append({"entities": [_entity(e) for e in a]})
        else:
            out.append(a)
    return out


def _entity(e: Any) -> dict:
    kind = type(e).__name__
    if kind == "Metric":
        return {
            "kind": kind,
            "key": e.key,
            "value": e.value,
            "timestamp": e.timestamp,
            "step": e.step,
        }
    return {"kind": kind, "key": e.key, "value": e.value}


def _decode_args(args: list) -> tuple:
    from mlflow.entities import Metric, Param, RunTag

    kinds = {"Metric": Metric, "Param": Param, "RunTag": RunTag}
    out = []
    for a in args:
        if isinstance(a, dict) and "entities" in a:
            out.append([kinds[d.pop("kind")](**d) for d in a["entities"]])
        else:
            out.append(a)
    return tuple(out)
