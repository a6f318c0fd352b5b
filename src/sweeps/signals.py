"""SIGINT and SIGTERM: remembered once, raised as `Interrupted` wherever Python is.

A worker's handler records the first stop signal before raising, so a signal that a library
turns into an error of its own (TensorFlow does while it traces a model) or drops (inside a
garbage-collection callback) still ends the trial as interrupted, and no further trial starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``exit_code`` is what the process should exit with."""

    def __init__(self, exit_code: int = 130) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


PREEMPTED = 75  # exit code after SIGTERM: stopped to be resumed (EX_TEMPFAIL), not a failure

_stop_code: int | None = None  # exit code of the first SIGINT/SIGTERM this process received
_deferring = 0  # > 0 while a state is written: the signal is remembered, raised afterwards


def exit_code(signum: int) -> int:
    """130 after SIGINT (Ctrl-C); 75 after SIGTERM (pre-emption: requeue me)."""
    return 130 if signum == 2 else PREEMPTED


def on_stop_signal(signum: int, frame: object) -> None:
    """Handler for SIGINT and SIGTERM: remembers the signal, then raises `Interrupted`.

    Inside `deferred` it only remembers: the block ends first and raises on leaving.
    """
    global _stop_code
    _stop_code = _stop_code or exit_code(signum)
    if not _deferring:
        raise Interrupted(exit_code(signum))


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block a stop signal does not cut short (writing or uploading a resumable state)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    raise_if_stopped()


def stop_requested() -> int | None:
    """The exit code of the first SIGINT/SIGTERM received, or None."""
    return _stop_code


def raise_if_stopped() -> None:
    """Raises `Interrupted` when a stop signal has arrived, even one a library swallowed."""
    code = stop_requested()
    if code is not None:
        raise Interrupted(code)
