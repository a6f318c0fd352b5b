"""A fake ``nvidia-smi`` for the tests of GPU discovery, placement and memory caps.

It answers ``nvidia-smi -L`` and the one query :mod:`sweeps.host` makes, from the listings
below, and fails on anything else, as a real one asked for an unknown field does.

The listings copy the format of NVIDIA's Multi-Instance GPU User Guide ("MIG Device Names",
section "CUDA Device Enumeration", docs.nvidia.com/datacenter/tesla/mig-user-guide, v580):
its 8-GPU A100-SXM4-40GB system under R470+ drivers (each card's line, and under a MIG-enabled
card one indented line per MIG device, named by its own ``MIG-`` UUID), with the column
layout of its R570 H100 example (two spaces of indent, the profile padded to 11). The card
and instance UUIDs are the guide's own. The query lines are what ``nvidia-smi
--query-gpu=index,uuid,compute_cap,mig.mode.current,memory.total --format=csv,noheader,nounits``
prints for those cards: A100-SXM4-40GB is compute capability 8.0 with 40960 MiB.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

QUERY = "--query-gpu=index,uuid,compute_cap,mig.mode.current,memory.total"

# The guide's eight cards with MIG off: a plain 8-GPU node.
CARD_UUIDS = [
    "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77",
    "GPU-0aa11ebd-627f-af3f-1a0d-4e1fd92fd7b0",
    "GPU-08279800-1cbe-a71d-f3e6-8f67e15ae54a",
    "GPU-71086aca-c858-d1e0-aae1-275bed1008b9",
    "GPU-74fa9fb7-ccf6-8234-e597-7af8ace9a8f5",
    "GPU-3301e6dd-d38f-0eb5-4665-6c9659f320ff",
    "GPU-bb40ed7d-cbbb-d92c-50ac-24803cda52c5",
    "GPU-95fac899-e21a-0e44-b0fc-e4e3bf106feb",
]
EIGHT_CARDS = "".join(f"GPU {i}: A100-SXM4-40GB (UUID: {u})\n" for i, u in enumerate(CARD_UUIDS))
EIGHT_CARDS_QUERY = "".join(f"{i}, {u}, 8.0, Disabled, 40960\n" for i, u in enumerate(CARD_UUIDS))

# The guide's GPU 0: an A100 cut into seven 1g.5gb instances.
SEVEN_SLICES = """\
GPU 0: A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 1g.5gb      Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)
  MIG 1g.5gb      Device  1: (UUID: MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb)
  MIG 1g.5gb      Device  2: (UUID: MIG-1e099852-3624-56c0-8064-c5db1211e44f)
  MIG 1g.5gb      Device  3: (UUID: MIG-8243111b-d4c4-587a-a96d-da04583b36e2)
  MIG 1g.5gb      Device  4: (UUID: MIG-169f1837-b996-59aa-9ed5-b0a3f99e88a6)
  MIG 1g.5gb      Device  5: (UUID: MIG-d5d0152c-e3f0-552c-abee-ebc0195e9f1d)
  MIG 1g.5gb      Device  6: (UUID: MIG-7df6b45c-a92d-5e09-8540-a6b389968c31)
"""
SEVEN_SLICES_QUERY = "0, GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77, 8.0, Enabled, 40960\n"
SLICE_UUIDS = [line.split("UUID: ")[1].rstrip(")") for line in SEVEN_SLICES.splitlines()[1:]]

# A mixed node: the guide's GPU 1 (three 2g.10gb instances), then a card with MIG off.
MIXED = """\
GPU 0: A100-SXM4-40GB (UUID: GPU-0aa11ebd-627f-af3f-1a0d-4e1fd92fd7b0)
  MIG 2g.10gb     Device  0: (UUID: MIG-0c757cd7-e942-5726-a0b8-0e8fb7067135)
  MIG 2g.10gb     Device  1: (UUID: MIG-703fb6ed-3fa0-5e48-8e65-1c5bdcfe2202)
  MIG 2g.10gb     Device  2: (UUID: MIG-532453fc-0faa-5c3c-9709-a3fc2e76083d)
GPU 1: A100-SXM4-40GB (UUID: GPU-08279800-1cbe-a71d-f3e6-8f67e15ae54a)
"""
MIXED_QUERY = """\
0, GPU-0aa11ebd-627f-af3f-1a0d-4e1fd92fd7b0, 8.0, Enabled, 40960
1, GPU-08279800-1cbe-a71d-f3e6-8f67e15ae54a, 8.0, Disabled, 40960
"""

# Drivers before R470 name an instance by its card and its GPU and compute instance ids, as
# the guide says (MIG-<GPU-UUID>/<GPU instance ID>/<compute instance ID>).
OLD_DRIVER = """\
GPU 0: A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 1g.5gb Device 0: (UUID: MIG-GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77/7/0)
  MIG 1g.5gb Device 1: (UUID: MIG-GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77/8/0)
"""

SCRIPT = """#!/bin/sh
if [ "$1" = "-L" ]; then cat '{listing}'; exit 0; fi
if [ "$1" = "{query}" ] && [ "$2" = "--format=csv,noheader,nounits" ] && [ -s '{answer}' ]; then
  cat '{answer}'; exit 0
fi
exit 2
"""


def install(folder: Path, listing: str, query: str = "") -> Path:
    """Writes a fake ``nvidia-smi`` into ``folder``; returns its path. Put it on PATH to use it.

    Args:
        folder: Where the tool and its answers go.
        listing: What ``nvidia-smi -L`` prints.
        query: What the query prints; empty: the query fails, as on a driver without it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "listing.txt").write_text(listing)
    (folder / "query.txt").write_text(query)
    tool = folder / "nvidia-smi"
    tool.write_text(
        SCRIPT.format(listing=folder / "listing.txt", answer=folder / "query.txt", query=QUERY)
    )
    tool.chmod(0o755)
    return tool


def use(monkeypatch: pytest.MonkeyPatch, folder: Path, listing: str, query: str = "") -> None:
    """Makes this host's ``nvidia-smi`` answer so (see :func:`install`), nothing pinned."""
    install(folder, listing, query)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
