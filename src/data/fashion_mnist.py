"""Fashion-MNIST from the official idx `.gz` files, split like seed 003 (48k/12k/10k)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .base import ImageData, Split, check_limit, fingerprint
from .errors import DataError
from .registry import register_dataset

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

# Where the files are looked for when no `root` is given, in order. A module-level tuple
# so tests can point it elsewhere without touching the real system paths. The first is
# where Debian's dataset-fashion-mnist package installs them, the second is where
# keras.datasets.fashion_mnist.load_data() downloads them.
SEARCH_PATHS: tuple[str, ...] = (
    "/usr/share/datasets/fashion-mnist",
    "~/.keras/datasets/fashion-mnist",
)

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# idx magic numbers: two zero bytes, 0x08 = unsigned byte, then the number of dimensions.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


@register_dataset("fashion_mnist")
def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 13,
    limit: int | None = None,
) -> ImageData:
    """Load Fashion-MNIST as uint8 (28, 28, 1) images; never downloads.

    Args:
        root: Folder holding the four idx `.gz` files. When given it is the only place
            looked in (a typo should fail, not silently fall back); otherwise
            `SEARCH_PATHS` are tried in order.
        val_fraction: Share of the 60,000 training images held out for validation.
        split_seed: `random_state` of the train/validation split; 13 as in the source.
        limit: Keep at most this many images per split (the first after the split).
    """
    folder = find_files(root)
    where = str(folder)
    if not 0 < val_fraction < 1:
        raise DataError(f"{where}: val_fraction={val_fraction} must be in (0, 1)")
    check_limit(limit, 1, where)
    paths = {key: folder / name for key, name in FILES.items()}
    x_train, y_train = _read_pair(paths["train_images"], paths["train_labels"])
    x_test, y_test = _read_pair(paths["test_images"], paths["test_labels"])
    train, validation = _split_like_source(x_train, y_train, val_fraction, split_seed)
    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths.values()]
    options = {"val_fraction": val_fraction, "split_seed": split_seed, "limit": limit}
    return ImageData(
        train=train.head(limit),
        validation=validation.head(limit),
        test=Split(x_test, y_test).head(limit),
        class_names=list(CLASS_NAMES),
        skipped=0,
        fingerprint=fingerprint("fashion_mnist", options, files),
        source=where,
    )


def find_files(root: str | os.PathLike | None) -> Path:
    """The first folder holding all four idx files; DataError listing the places tried."""
    candidates = [root] if root is not None else list(SEARCH_PATHS)
    folders = [Path(c).expanduser() for c in candidates]
    for folder in folders:
        if all((folder / name).is_file() for name in FILES.values()):
            return folder
    raise DataError(
        f"Fashion-MNIST not found in {', '.join(map(str, folders))}; expected the files "
        f"{', '.join(FILES.values())} in one of them "
        "(apt-get install dataset-fashion-mnist, or pass root=<folder>)"
    )


def _split_like_source(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split  # lazy: sklearn is slow to import

    # Exactly the source's `train_test_split(train_X, train_label, test_size=0.2,
    # random_state=13)`: the permutation depends only on the number of rows, so
    # splitting indices selects the same images without copying the arrays twice.
    train_idx, val_idx = train_test_split(
        np.arange(len(y)), test_size=val_fraction, random_state=seed
    )
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images_path, _IMAGES_MAGIC)
    y = read_idx(labels_path, _LABELS_MAGIC).astype(np.int64)
    if len(x) != len(y) or y.max(initial=0) >= len(CLASS_NAMES):
        raise DataError(
            f"{labels_path}: {len(y)} labels (max {y.max(initial=0)}) do not match the "
            f"{len(x)} images of {images_path.name}; expected one label 0..9 per image"
        )
    return x[..., np.newaxis], y


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse a gzipped idx file of unsigned bytes into an array of its declared shape."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise DataError(
            f"{path}: not a readable gzip file ({err}); expected a gzipped idx file"
        ) from err
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: idx magic number {found:#010x}, expected {magic:#010x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DataError(
            f"{path}: {len(data) - header} data bytes, expected {int(np.prod(shape))} for the "
            f"declared shape {shape} (truncated or corrupt idx file)"
        )
    # copy: a writable array that owns its memory, instead of a read-only view of `data`
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()
