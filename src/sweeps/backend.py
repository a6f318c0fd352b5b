"""``train.backend``: which Keras 3 backend (TensorFlow, JAX or PyTorch) a process trains on.

Keras reads ``KERAS_BACKEND`` once, when it is first imported, so the choice has to be made
before anything imports Keras: the CLI calls :func:`select` right after the config is loaded,
and each ``train.subprocess=true`` trial's process calls it first thing. A process that already
runs Keras on another backend keeps it (and says so): a backend cannot change in a process.

Nothing here imports Keras or a backend at module import time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from importlib import metadata

from sweeps.errors import ConfigError

log = logging.getLogger("sweeps.backend")

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT = "tensorflow"
# The module Keras imports for each backend, and the distribution that reports its version.
_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def requested(value: str | None = None) -> str:
    """The backend asked for: ``value``, else ``KERAS_BACKEND``, else TensorFlow.

    Raises:
        ConfigError: an unknown name.
    """
    name = value or os.environ.get("KERAS_BACKEND") or DEFAULT
    if name not in BACKENDS:
        raise ConfigError(f"train.backend={name!r}: must be one of {', '.join(BACKENDS)}")
    return name


def installed(name: str) -> bool:
    """Whether the backend's library can be imported here (without importing it)."""
    return importlib.util.find_spec(_MODULES[name]) is not None


def select(value: str | None = None) -> str:
    """Makes this process's Keras use the requested backend; returns the one it will use.

    Sets ``KERAS_BACKEND`` when Keras is not imported yet. When it is, the process keeps its
    backend, and a mismatch is logged in one line.

    Raises:
        ConfigError: the backend is unknown, or its library is not installed.
    """
    name = requested(value)
    current = active()
    if current is not None:
        if current != name:
            log.warning(
                "train.backend=%s, but this process already runs Keras on %s: its in-process "
                "trials train on %s (set KERAS_BACKEND=%s or train.subprocess=true)",
                name, current, current, name,
            )  # fmt: skip
        if current != "tensorflow":
            _keep_tensorflow_out()
        return current
    if not installed(name):
        how = "pip install tensorflow" if name == "tensorflow" else f'pip install -e ".[{name}]"'
        raise ConfigError(
            f"train.backend={name}: {_MODULES[name]} is not installed here; install it with "
            f"{how}, or choose another of {', '.join(b for b in BACKENDS if installed(b))}"
        )
    os.environ["KERAS_BACKEND"] = name
    if name != "tensorflow":
        _keep_tensorflow_out()
    return name


def _keep_tensorflow_out() -> None:
    """Tells Keras that TensorFlow is absent, so a JAX or PyTorch process never imports it.

    Keras imports TensorFlow whenever it is installed, whatever the backend, just to ask
    whether an object is one of its types (``model.save``) or to seed it
    (``keras.utils.set_random_seed``): seconds of start-up and hundreds of MB per trial
    process for nothing. Its lazy module caches the answer to "is it available"; setting
    that answer leaves explicit uses of ``tf`` working. Private Keras state: where it has
    moved, nothing is changed.
    """
    try:
        from keras.src.utils import module_utils
    except ImportError:
        return
    lazy = getattr(module_utils, "tensorflow", None)
    if lazy is not None and getattr(lazy, "_available", True) is None:
        lazy._available = False


def active() -> str | None:
    """The backend of this process's Keras, or None while Keras is not imported."""
    if "keras" not in sys.modules:
        return None
    import keras

    return keras.backend.backend()


def in_use(value: str | None = None) -> str:
    """The backend this process's trials train on: Keras's if imported, else the requested one."""
    return active() or requested(value)


def version(name: str) -> str:
    """The installed version of the backend's library ('' when it is not installed)."""
    try:
        return metadata.version(_MODULES[name])
    except metadata.PackageNotFoundError:
        return ""


def run_tags(name: str) -> dict[str, str]:
    """What every MLflow run records about the backend that trained it."""
    return {
        "sweeps.backend": name,
        "sweeps.backend_version": version(name),
        "sweeps.keras_version": _keras_version(),
    }


def _keras_version() -> str:
    try:
        return metadata.version("keras")
    except metadata.PackageNotFoundError:
        return ""


def configure(name: str, threads: int | None = None) -> None:
    """Process-wide settings of a backend other than TensorFlow (see ``configure_tensorflow``).

    ``threads`` pins PyTorch's intra-op pool. JAX sizes its CPU thread pool from the host when
    it starts and has no setting for it, so there ``threads`` does not apply.
    """
    if threads and name == "torch":
        import torch

        torch.set_num_threads(threads)
