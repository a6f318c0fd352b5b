"""The one package that talks to MLflow; nothing else in sweeps imports ``mlflow``.

- :mod:`~sweeps.tracking.store`: connecting (SQLite's first-use lock, the server's health),
  the experiment, the entities as JSON;
- :mod:`~sweeps.tracking.outbox`: writes sent in order on one thread, retried with backoff
  while the store is away, spooled to disk at exit and replayed by the next run;
- :mod:`~sweeps.tracking.tracker`: the calls a study makes (runs, metrics, params, tags,
  artifacts, the summary and the saved view of the runs table).
"""

from sweeps.tracking.store import EXPERIMENT_KIND, default_uri
from sweeps.tracking.tracker import FAILED, FINISHED, KILLED, RUNNING, VIEW_TAG_PREFIX, Tracker

__all__ = [
    "EXPERIMENT_KIND",
    "FAILED",
    "FINISHED",
    "KILLED",
    "RUNNING",
    "VIEW_TAG_PREFIX",
    "Tracker",
    "default_uri",
]
