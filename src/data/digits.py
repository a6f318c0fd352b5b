"""scikit-learn's handwritten digits: real, offline, small (1797 8x8 images, 10 classes)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .base import (
    ImageData,
    Split,
    as_size,
    check_fractions,
    check_limit,
    fingerprint,
    stratified_split,
)
from .registry import register_dataset

SOURCE = "sklearn.load_digits"


@register_dataset("digits")
def load_digits(
    image_size: int | Sequence[int] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
) -> ImageData:
    """Load scikit-learn's digits as uint8 (8, 8, 1) images, or resized.

    Args:
        image_size: Resize to this int or (height, width), e.g. 32 for LeNet-5's input;
            None keeps 8x8.
        val_fraction: Share of each class held out for validation.
        test_fraction: Share of each class held out for test.
        seed: Seed of the stratified split.
        limit: Keep at most this many images per split (the first after the split).
    """
    from sklearn.datasets import load_digits as sklearn_digits  # lazy: sklearn is slow to import

    size = as_size(image_size, SOURCE)
    check_fractions(val_fraction, test_fraction, SOURCE)
    check_limit(limit, 1, SOURCE)
    raw = sklearn_digits()
    # Pixel values are 0..16; scale to the 0..255 every other dataset uses so that the
    # pipeline's 1/255 rescale means the same thing for all of them.
    x = np.round(raw.images * (255 / 16)).astype(np.uint8)
    if size is not None:
        # INTER_LINEAR (cv2.resize's default) enlarges smoothly; INTER_AREA is for shrinking.
        x = np.stack([cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR) for img in x])
    x = x[..., np.newaxis]
    y = raw.target.astype(np.int64)
    idx = stratified_split(y, val_fraction, test_fraction, seed, SOURCE)
    splits = {name: Split(x[i], y[i]).head(limit) for name, i in idx.items()}
    options = {
        "image_size": size,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "limit": limit,
    }
    return ImageData(
        **splits,
        class_names=[str(d) for d in raw.target_names],
        skipped=0,
        fingerprint=fingerprint("digits", options, raw.images, raw.target),
        source=SOURCE,
    )
