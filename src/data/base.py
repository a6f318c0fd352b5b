"""Containers every dataset loader returns, and helpers the loaders share."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError

SPLITS = ("train", "validation", "test")

# Bump when a loader's decoding changes, so old fingerprints (and .npz caches keyed by
# them) stop matching data that would now decode differently.
FORMAT_VERSION = 1


@dataclass
class Split:
    """Images and labels of one split.

    Attributes:
        x: Images, shape (N, H, W, C), uint8 0..255.
        y: Class indices into `ImageData.class_names`, shape (N,), int64.
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> Split:
        """The first `n` examples (all of them when `n` is None)."""
        return self if n is None else Split(self.x[:n], self.y[:n])


@dataclass
class ImageData:
    """A dataset loaded into memory, split three ways.

    Attributes:
        train: Split the model is fitted on.
        validation: Split that picks the best epoch (checkpointing, pruning).
        test: Split reported once, on the best checkpoint.
        class_names: Label names; `y` values index into this list.
        skipped: Files that could not be read (broken, zero-byte, non-image).
        fingerprint: Short stable hash of the content identity and the load options;
            equal fingerprints mean equal arrays.
        source: Human-readable origin, e.g. the folder path or "sklearn.load_digits".
    """

    train: Split
    validation: Split
    test: Split
    class_names: list[str]
    skipped: int
    fingerprint: str
    source: str

    def __post_init__(self) -> None:
        # Checked once here so that every loader, present and future, hands the trainer
        # arrays it can batch without a shape or label surprise mid-sweep.
        shapes = {split.x.shape[1:] for split in self.splits.values()}
        if len(shapes) != 1:
            raise DataError(f"{self.source}: splits have different image shapes {sorted(shapes)}")
        for name, split in self.splits.items():
            _check_split(split, name, len(self.class_names), self.source)

    @property
    def splits(self) -> dict[str, Split]:
        """The three splits by name, in train/validation/test order."""
        return {"train": self.train, "validation": self.validation, "test": self.test}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.train.x.shape[1:])

    @property
    def sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {name: len(split) for name, split in self.splits.items()}


def _check_split(split: Split, name: str, num_classes: int, source: str) -> None:
    where = f"{source}: {name} split"
    if split.x.dtype != np.uint8 or split.x.ndim != 4:
        raise DataError(
            f"{where}: expected uint8 images (N, H, W, C), got {split.x.dtype} {split.x.shape}"
        )
    if split.y.dtype != np.int64 or split.y.shape != (len(split.x),):
        raise DataError(
            f"{where}: expected int64 labels ({len(split.x)},), got {split.y.dtype} {split.y.shape}"
        )
    if len(split) == 0:
        raise DataError(f"{where} is empty; every split needs at least one image")
    if split.y.min() < 0 or split.y.max() >= num_classes:
        raise DataError(f"{where}: labels outside 0..{num_classes - 1}")


def fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (options, file lists) and raw bytes."""
    digest = hashlib.sha256(f"sweeps.data/{FORMAT_VERSION}".encode())
    for part in parts:
        if isinstance(part, bytes | np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def as_size(value: int | Sequence[int] | None, where: str) -> tuple[int, int] | None:
    """Normalise an image size given as an int (square) or (height, width)."""
    if value is None:
        return None
    if isinstance(value, int) and value > 0:
        return (value, value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        h, w = (int(v) for v in value)
        if h > 0 and w > 0:
            return (h, w)
    raise DataError(f"{where}: image_size must be a positive int or (height, width), got {value!r}")


def check_fractions(val_fraction: float, test_fraction: float, where: str) -> None:
    """Fractions of the whole set held out for validation and test must leave a train split."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"{where}: val_fraction={val_fraction} and test_fraction={test_fraction} must each be "
            "in (0, 1) and sum to less than 1"
        )


def stratified_split(
    y: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    where: str,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded per-class split of indices into train/validation/test.

    Splitting each class separately keeps class proportions equal across splits and
    never leaves a class out of a split, which scikit-learn's `train_test_split` cannot
    promise on the tiny folders the tests and quick runs use. Each split's indices are
    shuffled, so the first N of a split (see `limit`) are a random sample.

    Args:
        y: Class index of every example.
        val_fraction: Share of each class held out for validation.
        test_fraction: Share of each class held out for test.
        seed: Seed of the shuffle; the same seed gives the same split.
        where: Prefix of error messages (the dataset's path or name).
        class_names: Names used in error messages instead of class indices.

    Returns:
        Index arrays by split name.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = max(1, round(len(idx) * test_fraction))
        n_val = max(1, round(len(idx) * val_fraction))
        if n_test + n_val >= len(idx):
            name = class_names[label] if class_names is not None else label
            raise DataError(
                f"{where}: class {name!r} has only {len(idx)} readable images, too few to split "
                f"into train/validation/test; expected at least 3"
            )
        parts["test"].append(idx[:n_test])
        parts["validation"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {name: rng.permutation(np.concatenate(chunks)) for name, chunks in parts.items()}


def check_limit(limit: int | None, minimum: int, where: str) -> None:
    """Validate a per-split cap on the number of images."""
    if limit is not None and (not isinstance(limit, int) or limit < minimum):
        raise DataError(f"{where}: limit={limit!r} must be an int >= {minimum}")
