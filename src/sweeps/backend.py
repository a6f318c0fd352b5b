"""``train.backend``: which Keras 3 backend (TensorFlow, JAX or PyTorch) a process trains on.

Keras reads ``KERAS_BACKEND`` once, when it is first imported, so the choice has to be made
before anything imports Keras: the CLI calls :func:`select` right after the config is loaded,
and each ``train.subprocess=true`` trial's process calls it first thing. A process that already
runs Keras on another backend keeps it (and says so): a backend cannot change in a process.

Each backend's GPU memory cap is set here too, before the backend takes the card: JAX's
through its environment, PyTorch's allocator's after import, TensorFlow's logical device in
``configure_tensorflow``; from ``train.gpu_memory_mb``, else the share of a card a worker
shares with others (``SWEEPS_GPU_SHARE``, set by the launcher).

Nothing here imports Keras or a backend at module import time.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from sweeps import host
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


def jit_compile(requested: bool | str, name: str, *, gpu: bool) -> bool:
    """Whether a trial on backend ``name`` compiles its steps with XLA (``train.jit_compile``).

    ``true``/``false`` as given; ``auto`` as Keras 3 resolves it (its trainer's
    ``_resolve_auto_jit_compile``): always on JAX (a JAX step not compiled runs op by op), on
    TensorFlow only when a GPU is visible, never on PyTorch. Keras still falls back to no XLA
    for a model that cannot be compiled, and says so.
    """
    if requested != "auto":
        return bool(requested)
    return {"jax": True, "tensorflow": gpu}.get(name, False)


@functools.cache
def jit_compile_here(requested: bool | str, name: str) -> bool:
    """:func:`jit_compile` on this host; its GPUs are probed once per process."""
    return jit_compile(requested, name, gpu=host.gpu_capability() is not None)


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


def configure(name: str, threads: int | None = None, gpu_memory_mb: int | None = None) -> None:
    """Process-wide settings of a backend other than TensorFlow (see ``configure_tensorflow``).

    ``threads`` pins PyTorch's intra-op pool. JAX sizes its CPU thread pool from the host when
    it starts and has no setting for it, so there ``threads`` does not apply. The GPU memory
    cap (``gpu_memory_mb``, else this worker's share of a card it shares): JAX's through its
    environment, before it starts its GPU client; PyTorch's caching allocator's after import.

    Raises:
        ConfigError: ``gpu_memory_mb`` where the backend cannot apply it.
    """
    if name == "jax":
        prepare_memory(name, gpu_memory_mb)
    elif name == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        cap_torch(torch.cuda, gpu_memory_mb, host.gpu_share())


# -- GPU memory: each backend's cap, set before it takes the card ------------------------------

_PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
# JAX's cap as a fraction of the device: the first name is read by every JAX version, the
# second (its new name) by recent ones only, which refuse to be given both.
_FRACTIONS = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION")


def jax_memory_env(
    environ: Mapping[str, str],
    *,
    gpu_memory_mb: int | None = None,
    device_mb: int | None = None,
    share: float | None = None,
) -> dict[str, str]:
    """The XLA variables a JAX process needs before JAX starts its GPU client.

    Preallocation off, unless the environment says otherwise: JAX takes 75% of a card at its
    first operation, leaving a second worker on that card nothing. The cap, as a fraction of
    the device: ``gpu_memory_mb`` over ``device_mb`` (over any fraction the environment gives),
    else ``share`` (unless the environment gives a fraction).

    Args:
        environ: The environment the process starts with.
        gpu_memory_mb: ``train.gpu_memory_mb``; None, or no GPU: no cap of that kind.
        device_mb: The memory of the GPU the process trains on (MiB), when known.
        share: The fraction of a card this worker shares with others (``SWEEPS_GPU_SHARE``).

    Raises:
        ConfigError: ``gpu_memory_mb`` where the device's memory is unknown.
    """
    env = {} if _PREALLOCATE in environ else {_PREALLOCATE: "false"}
    name = next((n for n in reversed(_FRACTIONS) if n in environ), _FRACTIONS[0])
    if gpu_memory_mb:
        if not device_mb:
            raise ConfigError(
                f"train.gpu_memory_mb={gpu_memory_mb}: JAX caps GPU memory as a fraction of the "
                f"device, and nvidia-smi does not report this device's memory; set {name}=0.45 "
                "(the fraction) instead of train.gpu_memory_mb"
            )
        env[name] = _fraction_text(gpu_memory_mb / device_mb)
    elif share and not any(n in environ for n in _FRACTIONS):
        env[name] = _fraction_text(share)
    return env


def prepare_memory(name: str, gpu_memory_mb: int | None) -> None:
    """Sets this process's environment for the backend's GPU memory cap (JAX's), from the host.

    Called before Keras imports the backend, and in a ``train.subprocess=true`` worker before
    its trial processes start (they inherit it).

    Raises:
        ConfigError: ``gpu_memory_mb`` where the backend cannot apply it.
    """
    if name != "jax":
        return
    mb = gpu_memory_mb if gpu_memory_mb and host.visible_gpus() else None
    device_mb = host.device_memory_mb() if mb else None
    os.environ.update(
        jax_memory_env(os.environ, gpu_memory_mb=mb, device_mb=device_mb, share=host.gpu_share())
    )


def memory_limit_mb(gpu_memory_mb: int | None, share: float | None,
                    device_mb: int | None) -> int | None:  # fmt: skip
    """TensorFlow's logical-device limit (MB): ``gpu_memory_mb``, else ``share`` of the device's
    memory, else None (memory growth: it takes memory as it needs it)."""
    if gpu_memory_mb:
        return gpu_memory_mb
    return int(share * device_mb) if share and device_mb else None


def tensorflow_limit_mb(gpu_memory_mb: int | None) -> int | None:
    """:func:`memory_limit_mb` on this host, for this worker."""
    share = None if gpu_memory_mb else host.gpu_share()
    return memory_limit_mb(gpu_memory_mb, share, host.device_memory_mb() if share else None)


def cap_torch(cuda: Any, gpu_memory_mb: int | None, share: float | None) -> list[float]:
    """Caps PyTorch's caching allocator on every visible GPU; returns the fractions set.

    ``torch.cuda.set_per_process_memory_fraction``: ``gpu_memory_mb`` of each device's total
    memory, else ``share``. The CUDA context lies outside the allocator, hence the share's
    headroom.

    Args:
        cuda: ``torch.cuda``.
        gpu_memory_mb: ``train.gpu_memory_mb``.
        share: The fraction of a card this worker shares with others.
    """
    if not (gpu_memory_mb or share) or not cuda.is_available():
        return []
    fractions = []
    for i in range(cuda.device_count()):
        total_mb = cuda.get_device_properties(i).total_memory / 2**20
        fraction = min(1.0, gpu_memory_mb / total_mb) if gpu_memory_mb else share
        cuda.set_per_process_memory_fraction(fraction, i)
        fractions.append(fraction)
    return fractions


def _fraction_text(fraction: float) -> str:
    """A fraction rounded down to 3 decimals (a cap never above what was asked), at most 1."""
    return f"{min(1.0, int(fraction * 1000) / 1000):g}"
