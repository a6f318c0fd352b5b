"""The MLflow store: connecting (with the SQLite first-use lock), the experiment, the entities.

MLflow is imported here and in :mod:`sweeps.tracking.tracker` only, when first used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sweeps.errors import TrackingUnreachable, mask_url

log = logging.getLogger("sweeps.tracking")

_MAX_PARAM_LEN = 6000
# MLflow 3's UI opens an experiment without this tag on its GenAI pages (traces, no runs);
# with it, on the runs table of model training.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def default_uri(store_dir: Path) -> str:
    """The embedded default: a SQLite database beside the artifacts in ``store_dir``."""
    return f"sqlite:///{(store_dir / 'mlflow.db').resolve()}"


def connect(uri: str, timeout: float, artifact_root: Path | None = None) -> Any:
    """An ``MlflowClient`` that has answered once, within ``timeout`` seconds.

    Raises:
        TrackingUnreachable: naming the URI (password masked) and the key to fix.
    """
    # MLflow prints a "View run ... at" line for every run it ends; the progress lines
    # already say what ended.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if uri.startswith(("http://", "https://")):
        # MLflow's own HTTP retries would take minutes; the outbox does the retrying.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        _probe_http(uri, timeout)
    from mlflow import MlflowClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            # MLflow creates and migrates a new SQLite database in several transactions;
            # two processes doing it at once leave it half-migrated for good.
            sqlite = uri.startswith("sqlite:///")
            with _sqlite_first_use(uri) if sqlite else contextlib.nullcontext() as fresh:
                if fresh:
                    _init_sqlite_store(uri, artifact_root)
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)
            return client
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TrackingUnreachable(
                    f"MLflow tracking at {mask_url(uri)} cannot be used "
                    f"({type(exc).__name__}); check tracking.uri"
                ) from exc
            time.sleep(0.5)


def experiment_id(client: Any, name: str, artifact_root: Path | None) -> str:
    """The id of the experiment ``name``, created (tagged for the runs table) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND[0]) is None:
            client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    try:
        return client.create_experiment(name, location, tags=dict([EXPERIMENT_KIND]))
    except Exception:  # another worker created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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


def finite(value: Any) -> bool:
    try:
        return abs(float(value)) != float("inf") and float(value) == float(value)
    except (TypeError, ValueError):
        return False


def param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
    return mask_url(text)[:_MAX_PARAM_LEN]


def encode_args(args: tuple) -> list:
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


def decode_args(args: list) -> tuple:
    from mlflow.entities import Metric, Param, RunTag

    kinds = {"Metric": Metric, "Param": Param, "RunTag": RunTag}
    out = []
    for a in args:
        if isinstance(a, dict) and "entities" in a:
            out.append([kinds[d.pop("kind")](**d) for d in a["entities"]])
        else:
            out.append(a)
    return tuple(out)
