"""Facts about the host and this worker process, read without importing TensorFlow or MLflow.

The GPUs this process may use (whole cards, or MIG instances of a card), their compute
capability and memory, the CPU's feature flags, the worker's identity and placement, its share
of a card, and how many workers share the study: storage, the study loop, the launcher, the
backends' memory caps and ``train.precision`` all read them here, so they cannot disagree.
Nothing here imports a Keras backend: TensorFlow would take the cards in the process that only
looks.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

LAUNCHED_ENV = "SWEEPS_LAUNCHED"  # set in every worker a launcher starts: it never launches
PARALLEL_ENV = "SWEEPS_PARALLEL"  # worker processes sharing the study (constant liar)
DEVICE_ENV = "SWEEPS_DEVICE"  # what the worker's MLflow runs are tagged with (sweeps.device)
SHARE_ENV = "SWEEPS_GPU_SHARE"  # the fraction of its GPU a worker sharing one may take
# `nvidia-smi -L`: a card, and under a MIG-enabled card its instances (NVIDIA's MIG user guide,
# "CUDA Device Enumeration"). Drivers before R470 name an instance MIG-GPU-<uuid>/<gi>/<ci>.
_CARD_LINE = re.compile(r"^\s*GPU (\d+): .*\(UUID: (GPU-[^)\s]+)\)")
_MIG_LINE = re.compile(r"^\s*MIG (\S+)\s+Device\s+\d+: \(UUID: (MIG-[^)\s]+)\)")
_QUERY = ("--query-gpu=index,uuid,compute_cap,mig.mode.current,memory.total",
          "--format=csv,noheader,nounits")  # fmt: skip


@dataclass(frozen=True)
class Device:
    """One device CUDA can be pinned to: a whole card, or one MIG instance of a card.

    Attributes:
        id: What ``CUDA_VISIBLE_DEVICES`` names it by: a card's index, or its ``GPU-`` UUID on
            a host with MIG, where CUDA's indices no longer count cards; a ``MIG-`` UUID.
        card: The index of the physical card (``nvidia-smi``'s, in PCI order).
        card_uuid: The physical card's ``GPU-`` UUID.
        profile: The MIG profile (``1g.5gb``: one compute slice, 5 GB); empty for a card.
    """

    id: str
    card: str
    card_uuid: str
    profile: str = ""


@dataclass(frozen=True)
class Card:
    """One physical card as ``nvidia-smi --query-gpu`` reports it."""

    index: str
    uuid: str
    capability: float | None  # None: "[N/A]" on old drivers
    mig: bool  # MIG mode on: CUDA sees its instances, never the card itself
    memory_mb: int | None  # MiB; None: "[N/A]" (cards sharing the host's memory)


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


def parse_listing(listing: str) -> list[Device]:
    """The devices ``nvidia-smi -L`` lists: each card, or the MIG instances under it instead.

    On a host with a MIG-enabled card every whole card is named by its UUID (see ``Device``).
    """
    cards: list[tuple[str, str, list[tuple[str, str]]]] = []  # index, uuid, [(profile, uuid)]
    for line in listing.splitlines():
        if card := _CARD_LINE.match(line):
            cards.append((card[1], card[2], []))
        elif (mig := _MIG_LINE.match(line)) and cards:
            cards[-1][2].append((mig[1], mig[2]))
    by_uuid = any(migs for _, _, migs in cards)
    devices = []
    for index, uuid, migs in cards:
        if not migs:
            devices.append(Device(uuid if by_uuid else index, index, uuid))
        devices += [Device(mig_uuid, index, uuid, profile) for profile, mig_uuid in migs]
    return devices


def parse_query(text: str) -> list[Card]:
    """The cards in ``nvidia-smi --query-gpu=index,uuid,compute_cap,mig.mode.current,
    memory.total --format=csv,noheader,nounits``'s output; a field it lacks is None."""
    cards = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        fields += [""] * (5 - len(fields))
        cards.append(Card(fields[0], fields[1], _number(fields[2]), fields[3] == "Enabled",
                          int(m) if (m := _number(fields[4])) else None))  # fmt: skip
    return cards


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]", absent
        return None


def gpu_devices() -> list[Device]:
    """Every device of this host CUDA can be pinned to: whole cards and MIG instances.

    A MIG-enabled card is not a device of its own: its instances are, and one without
    instances gives none.
    """
    listing = _nvidia_smi("-L")
    if not listing:
        return []
    migs = {c.index for c in gpu_cards() if c.mig}
    devices = parse_listing(listing)
    if migs:  # a MIG host, even before its first instance: every card by UUID
        devices = [d if d.profile else replace(d, id=d.card_uuid) for d in devices]
    return [d for d in devices if d.profile or d.card not in migs]


def gpu_cards() -> list[Card]:
    """The host's physical cards, or none without ``nvidia-smi`` and a working driver."""
    out = _nvidia_smi(*_QUERY, timeout=15)
    return parse_query(out) if out else []


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (ids or UUIDs).

    ``CUDA_VISIBLE_DEVICES`` when set (empty or ``-1``: none; CUDA stops at the first invalid
    entry, so ``-1,0`` is none too; ``MIG-`` UUIDs name MIG instances), else every device of
    :func:`gpu_devices`, else none.
    """
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        ids = [d.strip() for d in given.split(",") if d.strip()]
        return ids[: next((i for i, d in enumerate(ids) if d.startswith("-")), len(ids))]
    return [d.id for d in gpu_devices()]


def _card_of(entry: str, cards: list[Card], devices: list[Device]) -> Card | None:
    """The physical card a ``CUDA_VISIBLE_DEVICES`` entry names (index, UUID or its prefix,
    or a MIG instance: its parent card), or None."""
    if entry.startswith("MIG-"):
        parent = next((d.card_uuid for d in devices if d.id == entry), None)
        if parent is None and entry.startswith("MIG-GPU-"):  # before R470: MIG-<card uuid>/gi/ci
            parent = entry[4:].split("/")[0]
        return next((c for c in cards if c.uuid == parent), None)
    return next((c for c in cards if entry == c.index or
                 (entry.startswith("GPU-") and c.uuid.startswith(entry))), None)  # fmt: skip


def _located(entries: list[str]) -> list[tuple[Card | None, Device | None]]:
    """Each ``CUDA_VISIBLE_DEVICES`` entry's physical card and, for a MIG instance, its device."""
    if not entries:
        return []
    cards = gpu_cards()
    listing = _nvidia_smi("-L") if any(e.startswith("MIG-") for e in entries) else None
    devices = parse_listing(listing) if listing else []
    return [(_card_of(e, cards, devices), next((d for d in devices if d.id == e), None))
            for e in entries]  # fmt: skip


def gpu_capability() -> float | None:
    """The highest compute capability among the GPUs this process may use, or None.

    Only the visible devices count (by index or UUID, as ``CUDA_VISIBLE_DEVICES`` names them;
    a MIG instance has its card's): a worker pinned to an old card of a mixed host must not
    pick what only the new one can do.
    """
    caps = [card.capability for card, _ in _located(visible_gpus()) if card and card.capability]
    return max(caps) if caps else None


def device_memory_mb(entry: str | None = None) -> int | None:
    """The memory (MiB) of one device: ``entry`` (a ``CUDA_VISIBLE_DEVICES`` entry), else the
    first this process may use, the one Keras trains on; None when unknown.

    A card's is ``nvidia-smi``'s ``memory.total``; a MIG instance's is its profile's, in GiB
    (``1g.5gb``: 5120), a little above what the instance has (4864 MiB on an A100-40GB), so a
    cap computed from it as a fraction stays under the MB asked for.
    """
    located = _located([entry] if entry else visible_gpus()[:1])
    if not located:
        return None
    card, device = located[0]
    if device is not None and device.profile:
        size = re.search(r"(\d+)gb", device.profile)
        return int(size[1]) * 1024 if size else None
    return card.memory_mb if card is not None else None


def gpu_share() -> float | None:
    """``SWEEPS_GPU_SHARE``: the fraction of its GPU this worker may take, when it shares one."""
    try:
        share = float(os.environ.get(SHARE_ENV, ""))
    except ValueError:
        return None
    return share if 0 < share <= 1 else None


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
