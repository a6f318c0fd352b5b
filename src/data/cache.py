"""A decoded `ImageData` saved as one .npz per fingerprint, shared by worker processes."""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .base import SPLITS, ImageData, Split

log = logging.getLogger(__name__)


def cache_file(cache_dir: str | os.PathLike, name: str, fingerprint: str) -> Path:
    """Where the arrays of a dataset with this fingerprint are kept."""
    return Path(cache_dir).expanduser() / f"{name}-{fingerprint}.npz"


def load_cached(path: Path, fingerprint: str, source: str) -> ImageData | None:
    """The cached data, or None when there is no usable cache file."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            splits = {s: Split(npz[f"{s}_x"], npz[f"{s}_y"]) for s in SPLITS}
            class_names = [str(c) for c in npz["class_names"]]
            skipped = int(npz["skipped"])
        data = ImageData(
            **splits,
            class_names=class_names,
            skipped=skipped,
            fingerprint=fingerprint,
            source=source,
        )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        # A damaged cache (DataError is a ValueError) only costs a re-decode; the caller
        # then overwrites it.
        log.warning("%s: ignoring unreadable cache file (%s)", path, err)
        return None
    log.debug("%s: loaded decoded images from cache", path)
    return data


def save_cached(path: Path, data: ImageData) -> None:
    """Save `data` to `path` atomically; a failure only logs a warning.

    Several worker processes may decode and save the same data at once, and a reader must
    never see a half-written file: each process writes a private temporary file and
    renames it into place (os.replace is atomic within a filesystem).
    """
    arrays = {f"{s}_{k}": getattr(split, k) for s, split in data.splits.items() for k in "xy"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    except OSError as err:
        log.warning("%s: cannot write the cache (%s); continuing without it", path, err)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, class_names=np.array(data.class_names), skipped=data.skipped)
        os.replace(tmp, path)
    except OSError as err:
        # A full disk should not fail a trial whose data is already in memory.
        log.warning("%s: cannot write the cache (%s); continuing without it", path, err)
    finally:
        Path(tmp).unlink(missing_ok=True)
