"""Facts about the host and this worker process, read without importing TensorFlow or MLflow.

The GPUs this process may use, their compute capability, the CPU's feature flags, the worker's
identity and placement, and how many workers share the study: storage, the study loop, the
launcher and ``train.precision`` all read them here, so they cannot disagree. Nothing here
imports a Keras backend: TensorFlow would take the cards in the process that only looks.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

LAUNCHED_ENV = "SWEEPS_LAUNCHED"  # set in every worker a launcher starts: it never launches
PARALLEL_ENV = "SWEEPS_PARALLEL"  # worker processes sharing the study (constant liar)
DEVICE_ENV = "SWEEPS_DEVICE"  # what the worker's MLflow runs are tagged with (sweeps.device)
_NVIDIA_SMI_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


def worker_id() -> str:
    """This process as other workers see it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _nvidia_smi(*args: str, timeout: float = 20) -> str | None:
    """``nvidia-smi ARGS``'s output, or None without the tool or a working driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (ids or UUIDs).

    ``CUDA_VISIBLE_DEVICES`` when set (empty or ``-1``: none; CUDA stops at the first invalid
    entry, so ``-1,0`` is none too), else the cards ``nvidia-smi -L`` lists, else none.
    """
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        ids = [d.strip() for d in given.split(",") if d.strip()]
        return ids[: next((i for i, d in enumerate(ids) if d.startswith("-")), len(ids))]
    listing = _nvidia_smi("-L")
    return _NVIDIA_SMI_LINE.findall(listing) if listing else []


def gpu_capability() -> float | None:
    """The highest compute capability among the GPUs this process may use, or None.

    Only the visible cards count (by index or UUID, as ``CUDA_VISIBLE_DEVICES`` names them):
    a worker pinned to an old card of a mixed host must not pick what only the new one can do.
    """
    visible = visible_gpus()
    if not visible:
        return None
    out = _nvidia_smi("--query-gpu=index,uuid,compute_cap", "--format=csv,noheader", timeout=15)
    caps = []
    for line in (out or "").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3:
            continue
        index, uuid, cap = fields
        if not any(v in (index, uuid) or (v.startswith("GPU-") and uuid.startswith(v))
                   for v in visible):  # fmt: skip
            continue
        try:
            caps.append(float(cap))
        except ValueError:  # "[N/A]" on old drivers
            continue
    return max(caps) if caps else None


def cpu_flags(path: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's feature flags; empty where ``path`` cannot be read (not Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, arm64
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def given_parallel() -> int:
    """``SWEEPS_PARALLEL`` as a positive count, else 0."""
    given = os.environ.get(PARALLEL_ENV, "").strip()
    return int(given) if given.isdigit() and int(given) >= 1 else 0


def sharing_workers(workers: int | str) -> int:
    """How many worker processes share the study, as far as this process knows.

    ``SWEEPS_PARALLEL`` when set: a launcher sets it in its workers, and the Slurm, Kubernetes
    and compose files set it for workers started on other hosts; else ``sweep.workers``.
    """
    return given_parallel() or (workers if isinstance(workers, int) else 1)


@functools.cache
def placement_tags() -> dict[str, str]:
    """``sweeps.host`` and ``sweeps.device`` for every MLflow run of this process."""
    device = os.environ.get(DEVICE_ENV)
    if not device:
        gpus = visible_gpus()
        device = f"gpu:{','.join(gpus)}" if gpus else "cpu"
    return {"sweeps.host": socket.gethostname(), "sweeps.device": device}
