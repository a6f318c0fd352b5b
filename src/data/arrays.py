"""What both input pipelines share, in NumPy and OpenCV: image preparation, epoch order, and
the NumPy version of the train-time augmentation.

Neither TensorFlow nor Keras is imported here: the `tf.data` pipeline (TensorFlow backend) and
the `keras.utils.PyDataset` one (JAX, PyTorch) both take their images and their per-epoch
order from these functions, so for one seed they feed the same batches.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .augment import AugmentSpec
from .errors import DataError

_BORDERS = {
    "nearest": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT,  # d c b a | a b c d, as Keras's fill_mode="reflect"
    "wrap": cv2.BORDER_WRAP,
    "constant": cv2.BORDER_CONSTANT,
}


def prepare_images(
    x: np.ndarray, image_size: tuple[int, int] | None, channels: int | None
) -> np.ndarray:
    """uint8 images resized (bilinear) and converted to ``channels``; ``x`` itself if no-op.

    Args:
        x: Images (N, H, W, C), uint8.
        image_size: (height, width) to resize to, or None to keep the size.
        channels: 1 or 3 to convert grayscale <-> RGB; None keeps the channels.
    """
    if channels not in (None, 1, 3):
        raise DataError(f"make_dataset: channels={channels!r}, expected 1, 3 or None")
    resize = image_size is not None and tuple(image_size) != tuple(x.shape[1:3])
    convert = channels is not None and channels != x.shape[3]
    if not (resize or convert):
        return x
    out_h, out_w = image_size if resize else x.shape[1:3]
    out = np.empty((len(x), out_h, out_w, channels or x.shape[3]), np.uint8)
    for i, image in enumerate(x):
        if resize:  # cv2 drops a last axis of 1; put it back
            image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
            image = image.reshape(out_h, out_w, -1)
        if convert:
            image = _convert(image, channels)
        out[i] = image
    return out


def _convert(image: np.ndarray, channels: int) -> np.ndarray:
    if channels == 3:
        return np.repeat(image, 3, axis=-1)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n`` train examples in epoch ``epoch`` (from 0) for ``seed``.

    A pure function of its arguments, so every pipeline and every repeat of a variant with the
    same seed sees the same stream, epoch by epoch.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


def augment_batch(x: np.ndarray, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    """Randomly transforms a batch of float images as the Keras layers of ``spec`` do.

    Each image gets its own draws of the same distributions as Keras's RandomRotation,
    RandomTranslation, RandomShear, RandomZoom and RandomFlip (uniform angle, shift, shear
    factor and per-axis zoom; a flip with probability 1/2), combined into one affine warp
    (bilinear, one resampling instead of four) with the spec's fill mode.
    """
    n, h, w, c = x.shape
    out = np.empty_like(x)
    border = _BORDERS[spec.fill_mode]
    for i in range(n):
        image = x[i]
        matrix = _random_affine(spec, rng, h, w)
        if matrix is not None:
            image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR |
                                   cv2.WARP_INVERSE_MAP, borderMode=border,
                                   borderValue=0.0).reshape(h, w, c)  # fmt: skip
        out[i] = _random_flip(image, spec.flip, rng)
    return out


def _random_affine(
    spec: AugmentSpec, rng: np.random.Generator, h: int, w: int
) -> np.ndarray | None:
    """The inverse map (output pixel -> input pixel) of one random warp, or None for none."""
    if not (spec.rotation or spec.shift or spec.shear or spec.zoom):
        return None
    angle = math.radians(rng.uniform(-spec.rotation, spec.rotation))
    dy, dx = (rng.uniform(-spec.shift, spec.shift) * size for size in (h, w))
    limit = math.tan(math.radians(spec.shear))
    shear = rng.uniform(-limit, limit)
    # RandomZoom samples input coordinates at 1 + U(-zoom, zoom) times the output's, per axis.
    zoom_y, zoom_x = (1.0 + rng.uniform(-spec.zoom, spec.zoom) for _ in range(2))
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = (w - 1) / 2, (h - 1) / 2

    def about_centre(linear: np.ndarray) -> np.ndarray:
        return _shifted(cx, cy) @ linear @ _shifted(-cx, -cy)

    # Inverse maps in the layers' order (rotation, translation, shear, zoom): the last layer's
    # map is applied to an output pixel first. Keras shears about the top-left corner, not
    # the centre, which moves the lower rows further; so does this.
    rotate = about_centre(np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1.0]]))
    translate = _shifted(-dx, -dy)
    shear_x = np.array([[1.0, shear, 0], [0, 1, 0], [0, 0, 1]])
    zoom = about_centre(np.diag([zoom_x, zoom_y, 1.0]))
    return (rotate @ translate @ shear_x @ zoom)[:2]


def _shifted(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0, dx], [0, 1, dy], [0, 0, 1]])


def _random_flip(image: np.ndarray, flip: str | None, rng: np.random.Generator) -> np.ndarray:
    if flip in ("horizontal", "horizontal_and_vertical") and rng.random() < 0.5:
        image = image[:, ::-1]
    if flip in ("vertical", "horizontal_and_vertical") and rng.random() < 0.5:
        image = image[::-1]
    return image
