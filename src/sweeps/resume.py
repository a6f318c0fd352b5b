"""A trial's resumable state: one zip written at every epoch end, read back by a resumed trial.

The state is what an interrupted trial needs to go on where it stopped, on any host: the
model's weights with the optimizer's variables (``model.weights.h5``, as Keras's
``BackupAndRestore`` saves them), the best epoch's weights (``best.npz``) and ``meta.json``:
the epochs done, their metrics, the best epoch and the format version. The lifecycle uploads
it as the MLflow artifact ``resume/state.zip`` of the trial's run, so it lives where the
run's other artifacts live (an S3 bucket behind an MLflow server, or the local store); the
trainer writes and reads the weights. This module only packs and unpacks.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ARTIFACT_DIR = "resume"
STATE_FILE = "state.zip"
ARTIFACT = f"{ARTIFACT_DIR}/{STATE_FILE}"
FORMAT = 1
WEIGHTS, BEST, META = "model.weights.h5", "best.npz", "meta.json"


class StateError(ValueError):
    """A state file that cannot be read (truncated, another format)."""


@dataclass
class Meta:
    """What a resumed trial knows before it loads any weights.

    Attributes:
        epoch: Epochs finished (the next one to train is ``epoch + 1``).
        history: One dict of metrics per finished epoch.
        best_epoch: Epoch (from 1) whose weights ``best.npz`` holds; 0 for none.
        best_score: The best value of the trial's metric, signed so that larger is better.
    """

    epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **self.__dict__})


def write_state(path: Path, meta: Meta, weights: Path, best: list[np.ndarray] | None) -> Path:
    """Writes the state zip atomically: a reader sees the previous state or this one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(META, meta.to_json())
        zf.write(weights, WEIGHTS)
        if best is not None:
            with zf.open(BEST, "w") as f:
                np.savez(f, *best)
    os.replace(tmp, path)
    return path


def read_meta(path: Path) -> Meta:
    """The meta of a state zip.

    Raises:
        StateError: when the file is not a whole state of this format.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            raw: dict[str, Any] = json.loads(zf.read(META))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise StateError(f"unreadable resume state {path.name}: {exc}") from exc
    if raw.pop("format", None) != FORMAT:
        raise StateError(f"resume state {path.name} has another format")
    return Meta(**raw)


def unpack(path: Path, folder: Path) -> tuple[Meta, Path, list[np.ndarray] | None]:
    """The meta, the extracted weights file and the best weights of a state zip."""
    meta = read_meta(path)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as zf:
        zf.extract(WEIGHTS, folder)
        best = None
        if BEST in zf.namelist():
            with zf.open(BEST) as f, np.load(f) as npz:
                best = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    return meta, folder / WEIGHTS, best
