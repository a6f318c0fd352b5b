"""Trains each trial in a fresh process (``train.subprocess=true``), so GPU memory is returned.

TensorFlow keeps the GPU memory it has taken until its process exits, and a long sweep of
models of different sizes fragments it. Here each trial's :class:`KerasTrainer` runs in a new
``spawn`` process (no TensorFlow state inherited) that exits when the trial ends. The trial
itself stays in the parent: every epoch's metrics come back over a pipe and go through the
real ``report`` (which may prune or fail the trial), and its answer tells the child to go on
or to stop. The price is TensorFlow's start-up, a few seconds per trial.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sweeps import backend
from sweeps.errors import TrialFailed, one_line
from sweeps.quiet import quiet_stderr
from sweeps.trainer import KerasTrainer, configure_tensorflow
from sweeps.trial import TrialOutcome, TrialSpec

_GO, _STOP = "go", "stop"
_EXIT_WAIT = 30.0  # seconds a finished trial's process gets to exit before it is killed


class SubprocessTrainer:
    """Runs :class:`sweeps.trainer.KerasTrainer` in a new process for every trial.

    Args:
        data: The dataset, loaded once by the parent and sent to each trial's process.
    """

    def __init__(self, data: Any) -> None:
        self.data = data
        self._context = multiprocessing.get_context("spawn")

    def run(self, spec: TrialSpec, report: Callable[..., None]) -> TrialOutcome:
        """Trains one trial in its own process; ``report`` runs here and may raise.

        Raises:
            TrialFailed: when the trial's process dies (crash, out-of-memory killer).
        """
        conn, child_conn = self._context.Pipe()
        proc = self._context.Process(target=_child_main,
                                     args=(child_conn, self.data, spec, os.getpid()),
                                     name=f"sweeps-trial-{spec.number}", daemon=True)  # fmt: skip
        try:
            proc.start()
            child_conn.close()  # the child now holds the only copy: its death is an EOF here
            outcome = _relay(conn, proc, report)
        except BaseException:  # pruned, failed or interrupted: the child must not go on
            _send(conn, _STOP)
            _end(proc, wait=1.0)
            raise
        finally:
            conn.close()
            child_conn.close()
        _end(proc, wait=_EXIT_WAIT)
        return outcome


def _relay(conn: Connection, proc: BaseProcess,
           report: Callable[..., None]) -> TrialOutcome:  # fmt: skip
    """Answers the child's epoch reports until it sends its outcome, an error, or dies."""
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            proc.join(_EXIT_WAIT)
            raise TrialFailed(f"the trial's process died ({_exit_text(proc.exitcode)})") from None
        if kind == "epoch":
            epoch, metrics, state = payload
            # May raise to prune or fail: the caller then stops the child.
            report(epoch, metrics, **({"state": state} if state is not None else {}))
            _send(conn, _GO)  # a child that died meanwhile shows up as EOF at the next recv
        elif kind == "done":
            return payload
        else:
            raise payload


def _end(proc: BaseProcess, wait: float) -> None:
    """Waits up to ``wait`` seconds for the process to exit, then terminates it."""
    if proc.pid is None:  # interrupted before it started
        return
    proc.join(wait)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _send(conn: Connection, message: Any) -> None:
    with contextlib.suppress(OSError):  # the other side is already gone
        conn.send(message)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"exit code {code}, killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class _Stopped(Exception):
    """The parent pruned or failed the trial: leave training at once."""


def _child_main(conn: Connection, data: Any, spec: TrialSpec, parent: int) -> None:
    """Entry point of a trial's process."""
    # Ctrl-C reaches the whole process group; the parent handles it and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()

    def report(epoch: int, metrics: dict[str, float], state: Any = None) -> None:
        conn.send(("epoch", (epoch, metrics, state)))
        if conn.recv() != _GO:
            raise _Stopped

    try:
        name = backend.select(spec.train.backend)  # nothing has imported Keras here yet
        if name == "tensorflow":
            with quiet_stderr():  # TensorFlow's banner and GPU probe, unless --debug
                configure_tensorflow(spec.train.threads, gpu_memory_mb=spec.train.gpu_memory_mb)
        else:  # the trial's process never imports TensorFlow; the memory cap before Keras
            backend.configure(name, spec.train.threads, spec.train.gpu_memory_mb)
        outcome = KerasTrainer(data).run(spec, report)
    except (_Stopped, EOFError, BrokenPipeError):  # stopped, or the parent is gone
        return
    except Exception as exc:
        _send(conn, ("error", _portable(exc)))
        return
    conn.send(("done", outcome))


def _exit_with(parent: int) -> None:
    """Ends this process within a second of its worker's death (SIGKILL, OOM killer).

    Otherwise it would only notice at its next epoch's report, maybe hours later, holding the
    GPU for a trial nobody waits for.
    """
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _portable(exc: Exception) -> Exception:
    """``exc`` itself when it survives pickling (so the engine sees its type), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return TrialFailed(one_line(exc))
    return exc
