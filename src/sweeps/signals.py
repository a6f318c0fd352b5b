"""SIGINT and SIGTERM: remembered once, raised as `Interrupted` wherever Python is.

A worker's handler records the first stop signal before raising, so a signal that a library
turns into an error of its own (TensorFlow does while it traces a model) or drops (inside a
garbage-collection callback) still ends the trial as interrupted, and no further trial starts.
"""

from __future__ import annotations


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``exit_code`` is what the process should exit with."""

    def __init__(self, exit_code: int = 130) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


_stop_code: int | None = None  # exit code of the first SIGINT/SIGTERM this process received


def on_stop_signal(signum: int, frame: object) -> None:
    """Handler for SIGINT and SIGTERM: remembers the signal, then raises `Interrupted`."""
    global _stop_code
    _stop_code = _stop_code or 128 + signum
    raise Interrupted(128 + signum)


def stop_requested() -> int | None:
    """The exit code of the first SIGINT/SIGTERM received, or None."""
    return _stop_code


def raise_if_stopped() -> None:
    """Raises `Interrupted` when a stop signal has arrived, even one a library swallowed."""
    code = stop_requested()
    if code is not None:
        raise Interrupted(code)
