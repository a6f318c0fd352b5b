"""The tracker's outbox: writes sent in order by one thread, retried, spooled when unsent.

Trials never wait on the tracking store. When the store goes away mid-study the thread retries
with backoff and the study goes on (Optuna keeps the results); what is still unsent at exit is
written to a spool file and replayed by the next process that opens the same spool folder.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sweeps.errors import mask_url

log = logging.getLogger("sweeps.tracking")

PENDING = "pending-"  # prefix of a run handle whose run the thread has not created yet


@dataclass
class Op:
    """One queued write: a client method's name and its arguments."""

    name: str
    args: tuple
    on_done: Callable[[], None] | None = None


class Outbox:
    """Sends queued writes in order on a background thread.

    Args:
        send: Performs one write against the store (raises on failure).
        where: The store, as named in warnings (its password masked).
        spool_dir: Where unsent writes are kept across processes; None: they are lost.
        encode, decode: Turn an op's arguments into JSON-able values and back.
    """

    def __init__(
        self,
        send: Callable[[Op], None],
        *,
        where: str,
        spool_dir: Path | None,
        encode: Callable[[tuple], list],
        decode: Callable[[list], tuple],
    ) -> None:
        self._apply, self._where, self._spool_dir = send, mask_url(where), spool_dir
        self._encode, self._decode = encode, decode
        self._queue: queue.Queue[Op | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._warned = False
        self._stop = False
        self.ids: dict[str, str] = {}  # run handle -> MLflow run id
        self._thread = threading.Thread(target=self._worker, name="sweeps-tracking", daemon=True)
        self._thread.start()

    def put(self, name: str, *args: object, on_done: Callable[[], None] | None = None) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(Op(name, args, on_done))

    def resolved(self, handle: str, run_id: str) -> None:
        """Records the run a handle stands for, waking whoever waits for it."""
        with self._lock:
            self.ids[handle] = run_id
            self._idle.notify_all()

    def run_id(self, handle: str, timeout: float = 0.0) -> str | None:
        """The MLflow run id behind a handle, waiting up to ``timeout`` s for its creation."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while handle not in self.ids:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._idle.wait(left)
            return self.ids[handle]

    def _worker(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            self._send(op)
            with self._lock:
                self._pending -= 1
                self._idle.notify_all()

    def _send(self, op: Op) -> None:
        delay = 0.5
        while True:
            try:
                self._apply(op)
                if op.on_done:
                    op.on_done()
                if self._warned:
                    log.warning("MLflow at %s is back; queued logs sent", self._where)
                    self._warned = False
                return
            except Exception as exc:
                if not transient(exc) or self._stop:
                    if self._stop and transient(exc):
                        self._spool([op])
                    else:
                        log.warning("MLflow rejected %s: %s", op.name, mask_url(str(exc))[:200])
                    return
                if not self._warned:
                    log.warning(
                        "MLflow at %s is unreachable (%s); retrying in the background, "
                        "results are safe in the Optuna storage",
                        self._where,
                        type(exc).__name__,
                    )
                    self._warned = True
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

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

    def _spool(self, ops: Iterable[Op]) -> None:
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
                if op.name != "create_run" and args and args[0] in self.ids:
                    args[0] = self.ids[args[0]]
                fh.write(json.dumps({"op": op.name, "args": self._encode(tuple(args))}) + "\n")
        log.warning(
            "MLflow still unreachable: %d writes kept in %s; the next `run` sends them",
            len(ops),
            path,
        )

    def replay_spool(self) -> None:
        """Queues the writes earlier processes left in the spool folder (each file once)."""
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
                self.put(item["op"], *self._decode(item["args"]))
            claimed.unlink()


def transient(exc: Exception) -> bool:
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
