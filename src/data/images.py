"""Decoding single image files with OpenCV: any format, mode and size in, one uint8 shape out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

# Lower-case suffixes treated as images; any other file in a class folder is counted as
# skipped (hidden files are ignored altogether).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def decode_image(path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray | None:
    """Read one image as uint8 (H, W, channels) RGB or grayscale, resized if asked.

    Args:
        path: The image file.
        size: (height, width) to resize to with INTER_AREA, or None to keep the size.
        channels: 3 for RGB, 1 for grayscale.

    Returns:
        The image, or None when the file cannot be decoded (zero-byte, truncated, not an
        image): the caller counts it as skipped, as the source posts' try/except did.
    """
    try:
        buf = np.fromfile(path, dtype=np.uint8)
        # IMREAD_COLOR / IMREAD_GRAYSCALE rather than IMREAD_UNCHANGED: OpenCV then converts
        # grayscale, palette, 16-bit and RGBA files to 8-bit BGR (alpha dropped, as Keras'
        # load_img does) and applies the EXIF orientation, which IMREAD_UNCHANGED ignores.
        flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
        image = cv2.imdecode(buf, flag) if buf.size else None
    except (OSError, cv2.error):
        return None
    if image is None:
        return None
    if size is not None and image.shape[:2] != size:
        # INTER_AREA averages source pixels when shrinking, so no aliasing, and the image
        # is decoded at this size once instead of being resized again in every trial.
        image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image[..., np.newaxis]


def decode_all(
    paths: Sequence[Path], size: tuple[int, int] | None, channels: int, workers: int | None
) -> list[np.ndarray | None]:
    """Decode many files on a thread pool (cv2 releases the GIL while decoding)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: decode_image(p, size, channels), paths))
