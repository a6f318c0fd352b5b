"""The `image_folder` dataset: class folders on disk, decoded once into uint8 arrays."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import images
from .base import (
    SPLITS,
    ImageData,
    Split,
    as_size,
    check_fractions,
    check_limit,
    fingerprint,
    stratified_split,
)
from .cache import cache_file, load_cached, save_cached
from .errors import DataError
from .layout import ALL, Classes, Listing, layout_error, scan
from .registry import register_dataset

log = logging.getLogger(__name__)

File = tuple[str, Path, int]  # (group, path, label); group is a split name or layout.ALL


@dataclass(frozen=True)
class _Options:
    """The options that decide the arrays (and so enter the fingerprint)."""

    root: Path
    layout: str
    size: tuple[int, int] | None
    channels: int
    val_fraction: float
    test_fraction: float
    seed: int
    limit: int | None

    def error(self, path: Path, problem: str) -> DataError:
        return layout_error(path, self.layout, problem)


@register_dataset("image_folder")
def load_image_folder(
    root: str | os.PathLike,
    layout: str = "splits",
    classes: Classes = None,
    image_size: int | Sequence[int] | None = None,
    channels: int = 3,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> ImageData:
    """Load a folder of images, one subfolder per class.

    Args:
        root: The dataset folder.
        layout: "splits" (`root/{train,validation,test}/<class>/*`) or "classes"
            (`root/<class>/*`, split here per class with `seed`).
        classes: Class folder names in label order, or a mapping folder -> label name
            (e.g. {"a_resized": "male", "b_resized": "female"}); other folders are then
            ignored. Default: every subfolder, sorted.
        image_size: Decode every image once at this int or (height, width), with
            INTER_AREA; None keeps the files' size, which must then be the same for all.
        channels: 3 (RGB) or 1 (grayscale); other modes are converted.
        val_fraction: "classes" layout: share of each class held out for validation.
        test_fraction: "classes" layout: share of each class held out for test.
        seed: Seed of the "classes" split and of the sample `limit` draws.
        limit: At most this many images per split, drawn evenly from the classes.
        cache_dir: When set, the decoded arrays are saved there as one .npz named by the
            fingerprint, so a rerun or another worker process skips decoding.
        workers: Decoding threads; default min(8, CPU count).
    """
    root = Path(root).expanduser()
    options = _Options(
        root=root,
        layout=layout,
        size=as_size(image_size, str(root)),
        channels=channels,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        limit=limit,
    )
    _check_options(options)
    listing = scan(root, layout, classes)
    check_limit(limit, len(listing.class_names), str(root))
    key = fingerprint("image_folder", _describe(options, listing), listing.identity(root))
    path = cache_file(cache_dir, "image_folder", key) if cache_dir is not None else None
    if path is not None and (cached := load_cached(path, key, str(root))):
        return cached
    splits, failed = _decode(options, listing, workers)
    data = ImageData(
        **splits,
        class_names=listing.class_names,
        skipped=failed + len(listing.other_files),
        fingerprint=key,
        source=str(root),
    )
    if path is not None:
        save_cached(path, data)
    return data


def _check_options(options: _Options) -> None:
    if options.channels not in (1, 3):
        raise DataError(f"{options.root}: channels={options.channels!r}, expected 1 or 3")
    if options.layout == "classes":
        check_fractions(options.val_fraction, options.test_fraction, str(options.root))


def _describe(options: _Options, listing: Listing) -> dict[str, object]:
    """The options and the label of each class folder, as JSON-able values."""
    folders = sorted({(label, folder.name) for (_, label), folder in listing.folders.items()})
    return {
        "layout": options.layout, "classes": listing.class_names, "folders": folders,
        "image_size": options.size, "channels": options.channels,
        "val_fraction": options.val_fraction, "test_fraction": options.test_fraction,
        "seed": options.seed, "limit": options.limit,
    }  # fmt: skip


def _decode(
    options: _Options, listing: Listing, workers: int | None
) -> tuple[dict[str, Split], int]:
    """Decode the files into three splits; also return how many could not be decoded."""
    files = listing.files
    if options.layout == "splits":
        # Draw the `limit` sample before decoding: a quick run should not decode everything.
        files = [f for s in SPLITS for f in _limit_files(files, s, options.limit, options.seed)]
    decoded = images.decode_all([f for _, f, _ in files], options.size, options.channels, workers)
    kept = []
    for (group, path, label), image in zip(files, decoded, strict=True):
        if image is None:
            log.debug("%s: cannot be decoded, skipped", path)
        else:
            kept.append((group, image, label))
    _check_readable(options, listing, len(files), kept)
    _check_same_size(options, files, decoded)
    group_names = dict.fromkeys(group for group, _, _ in kept)  # unique, in order
    groups = {g: _stack([k for k in kept if k[0] == g]) for g in group_names}
    if options.layout == "classes":
        groups = _split(options, groups[ALL], listing.class_names)
    return groups, len(files) - len(kept)


def _limit_files(files: list[File], group: str, limit: int | None, seed: int) -> list[File]:
    in_group = [f for f in files if f[0] == group]
    labels = np.array([label for _, _, label in in_group], dtype=np.int64)
    return [in_group[i] for i in balanced_subset(labels, limit, seed)]


def balanced_subset(y: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most `limit` examples, drawn round-robin from the classes.

    Every class keeps about limit / num_classes examples, so a small limit never empties
    a class out of a split.
    """
    if limit is None or limit >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    ranked = [
        (rank, label, i)
        for label in np.unique(y)
        for rank, i in enumerate(rng.permutation(np.flatnonzero(y == label)))
    ]
    return np.sort([i for _, _, i in sorted(ranked)[:limit]])


def _check_readable(
    options: _Options, listing: Listing, tried: int, kept: list[tuple[str, np.ndarray, int]]
) -> None:
    if not kept:
        raise options.error(options.root, f"none of the {tried} image files could be decoded")
    readable = {(group, label) for group, _, label in kept}
    for key, folder in listing.folders.items():
        if key not in readable:
            raise options.error(folder, "no readable images in this class folder")


def _check_same_size(
    options: _Options, files: list[File], decoded: list[np.ndarray | None]
) -> None:
    # Only reachable with image_size=None; np.stack would otherwise fail on the first
    # stray size with a message that names no file.
    first: dict[tuple[int, ...], Path] = {}
    for (_, path, _), image in zip(files, decoded, strict=True):
        if image is not None:
            first.setdefault(image.shape[:2], path)
    if len(first) > 1:
        (a, path_a), (b, path_b) = list(first.items())[:2]
        raise options.error(
            options.root,
            f"images differ in size ({a[0]}x{a[1]} {path_a.name}, {b[0]}x{b[1]} {path_b.name}); "
            "pass image_size=(height, width)",
        )


def _stack(kept: list[tuple[str, np.ndarray, int]]) -> Split:
    return Split(
        np.stack([image for _, image, _ in kept]),
        np.array([label for _, _, label in kept], dtype=np.int64),
    )


def _split(options: _Options, data: Split, class_names: list[str]) -> dict[str, Split]:
    """The "classes" layout: stratified split of the decoded images, then `limit`."""
    where = str(options.root)
    idx = stratified_split(
        data.y, options.val_fraction, options.test_fraction, options.seed, where, class_names
    )
    splits = {}
    for name, i in idx.items():
        keep = i[balanced_subset(data.y[i], options.limit, options.seed)]
        splits[name] = Split(data.x[keep], data.y[keep])
    return splits
