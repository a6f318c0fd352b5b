"""A backend-neutral input pipeline: a `keras.utils.PyDataset` over in-memory uint8 splits.

Used on the JAX and PyTorch backends, where TensorFlow (and so `tf.data`) need not be
installed. Shuffling, batching and augmentation run in NumPy and OpenCV; every batch is a pure
function of (seed, epoch, batch index), so for one seed it is the `tf.data` pipeline's batch
(same order, same rescale; augmentation of the same distributions). Imports Keras, not
TensorFlow; `sweeps.data` imports this module only on first use.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from .arrays import augment_batch, epoch_order, prepare_images
from .augment import AugmentSpec
from .base import Split, as_size

__all__ = ["ArrayBatches", "make_pydataset"]


class ArrayBatches(keras.utils.PyDataset):
    """Batches of (float32 images in [0, 1], int64 labels) from uint8 arrays.

    Args:
        x: Prepared images (N, H, W, C), uint8.
        y: Class indices (N,), int64.
        batch_size: Images per batch; the last batch may be smaller.
        shuffle: A new order every epoch (`arrays.epoch_order`).
        seed: Seed of the order and of the augmentation.
        augment: Random augmentation of every batch, or None.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool = False,
                 seed: int = 0, augment: AugmentSpec | None = None) -> None:  # fmt: skip
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.seed = shuffle, seed
        self.augment = augment if augment is not None and augment.active else None
        self.epoch = 0
        self._served_last = False  # the current epoch's last batch has been handed out
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray | None:
        return epoch_order(len(self.y), self.seed, self.epoch) if self.shuffle else None

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        self._served_last |= index == len(self) - 1
        window = slice(index * self.batch_size, (index + 1) * self.batch_size)
        idx = self._order[window] if self._order is not None else window
        x = self.x[idx].astype(np.float32) / 255.0  # the documents' rescale=1/255
        if self.augment is not None:
            # Seeded by position, not by a running stream: a batch fetched twice (Keras peeks
            # at the first) or out of order is still the same batch.
            rng = np.random.default_rng([self.seed, self.epoch, index, 1])
            x = augment_batch(x, self.augment, rng)
        return x, self.y[idx]

    def set_epoch(self, epoch: int) -> None:
        """Serves epoch ``epoch`` (from 0) next; `epoch_callback` calls it from `fit`."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._order = self._make_order()
        self._served_last = False

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A callback that tells this dataset `fit`'s epoch number before every epoch.

        Keras's JAX and PyTorch trainers iterate one extra, partial "epoch" before the first
        (to build the metrics from a batch), so counting Keras's calls would be off by one.
        """
        return keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs=None: self.set_epoch(epoch)
        )

    def on_epoch_begin(self) -> None:
        """Moves to the next epoch once the current one was served to its last batch.

        What a plain loop over the dataset (no `fit`, no `epoch_callback`) relies on.
        """
        if self._served_last:
            self.set_epoch(self.epoch + 1)


def make_pydataset(
    split: Split,
    *,
    batch_size: int,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    augment: AugmentSpec | None = None,
    shuffle: bool = False,
    seed: int = 0,
    cache: bool = True,
) -> ArrayBatches:
    """The `make_dataset` of the JAX and PyTorch backends: same arguments, same batches.

    Args:
        split: The images and labels.
        batch_size: Images per batch; the last batch may be smaller.
        image_size: (height, width) or int to resize to (bilinear) when it differs.
        channels: 1 or 3 to convert grayscale <-> RGB; None keeps the arrays' channels.
        augment: Random augmentation applied to every batch; pass it for train only.
        shuffle: Reshuffle the examples every epoch (train only).
        seed: Seed of the shuffle and of the augmentation.
        cache: Accepted for `make_dataset`'s signature; images are prepared once either way.
    """
    del cache
    x = prepare_images(split.x, as_size(image_size, "make_dataset"), channels)
    return ArrayBatches(
        x, split.y, batch_size=batch_size, shuffle=shuffle, seed=seed, augment=augment
    )
