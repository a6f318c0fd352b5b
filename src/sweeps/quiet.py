"""Keeps the libraries' start-up chatter off the console (``--debug`` shows all of it).

TensorFlow's C++ side prints a banner while it is imported (twice: two of its libraries log
before absl is set up, so ``TF_CPP_MIN_LOG_LEVEL`` cannot reach those lines) and, on a machine
without a GPU, ``failed call to cuInit`` when it looks for one. MLflow, Matplotlib and
TensorFlow's Python side log routine INFO lines and retracing warnings. Nothing here hides a
GPU: CUDA is left alone (``CUDA_VISIBLE_DEVICES`` untouched), only what is printed changes.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

ENV_FLAG = "SWEEPS_QUIET"  # set for the trial processes of train.subprocess=true

# absl/TensorFlow log lines ("I0000 00:00:17.. 123 port.cc:153] ...") and the banner's tail.
_NOISE = re.compile(
    r"^([IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|To enable the following instructions:"
    r"|.*rebuild TensorFlow with the appropriate compiler flags)"
)


def quiet_environment() -> None:
    """Sets, before anything imports them, what the libraries read at import time.

    ``TF_CPP_MIN_LOG_LEVEL=3`` keeps TensorFlow's C++ errors that do not stop anything
    (cuInit on a CPU machine, grappler's remapper) off stderr; a real error still raises.
    A value the user set is kept.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ[ENV_FLAG] = "1"
    install_import_filter()


def quiet_logging() -> None:
    """After Hydra set logging up: INFO goes to the log file only, library warnings nowhere.

    Console handlers show warnings and errors; sweeps' own progress lines are printed, not
    logged. TensorFlow's retracing warnings and Matplotlib's font-cache line are dropped.
    """
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # the console, not the log file
            handler.setLevel(max(handler.level, logging.WARNING))
    for name in ("tensorflow", "matplotlib", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def install_import_filter() -> None:
    """Filters TensorFlow's C++ banner out of stderr while ``tensorflow`` is imported."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Wraps the import of ``tensorflow`` in :func:`filtered_stderr`.

    It stays in ``sys.meta_path`` until TensorFlow is imported, since ``find_spec`` is also
    called by code that only asks whether TensorFlow is installed.
    """

    def __init__(self) -> None:
        self._looking = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow" or self._looking:
            return None
        self._looking = True  # the real finders answer the inner find_spec
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._looking = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, finder: _QuietImport) -> None:
        self._loader, self._finder = loader, finder

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self._finder)
        with filtered_stderr():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


def quiet_stderr() -> contextlib.AbstractContextManager[None]:
    """:func:`filtered_stderr` in a quiet `run` (not with ``--debug``), else nothing.

    For setting a backend up: TensorFlow logs ``failed call to cuInit`` from C++ when it
    first looks for a GPU on a machine without one, whatever ``TF_CPP_MIN_LOG_LEVEL`` says.
    """
    return filtered_stderr() if os.environ.get(ENV_FLAG) else contextlib.nullcontext()


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Captures file descriptor 2 (C++ writes there directly) and passes on what is not noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded, closed)
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            kept = [line for line in text.splitlines() if line.strip() and not _NOISE.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
