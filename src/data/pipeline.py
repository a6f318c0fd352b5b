"""tf.data pipelines that feed a trial from in-memory uint8 splits.

Imports TensorFlow; `sweeps.data` imports this module only on first use.
"""

from __future__ import annotations

import itertools
from typing import Any

import keras
import tensorflow as tf

from .arrays import epoch_order, prepare_images
from .augment import AugmentSpec
from .base import ImageData, Split, as_size

__all__ = ["AugmentSpec", "make_dataset", "make_datasets"]

AUTOTUNE = tf.data.AUTOTUNE


def make_dataset(
    split: Split,
    *,
    batch_size: int,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    augment: AugmentSpec | None = None,
    shuffle: bool = False,
    seed: int = 0,
    cache: bool = True,
    start_epoch: int = 0,
) -> tf.data.Dataset:
    """Batches of (float32 images in [0, 1], int64 labels) from one split.

    Labels stay class indices of shape (batch,) for every number of classes: Keras'
    binary_crossentropy and BinaryAccuracy accept them against a (batch, 1) sigmoid
    output, and sparse_categorical_crossentropy against a softmax, so nothing here
    depends on the model's head.

    Args:
        split: The images and labels.
        batch_size: Images per batch; the last batch may be smaller.
        image_size: (height, width) or int to resize to (bilinear) when it differs from
            the arrays' size, e.g. seed 000's 64x64 scenario from 256x256 files.
        channels: 1 or 3 to convert grayscale <-> RGB; None keeps the arrays' channels.
        augment: Random augmentation applied to every batch; pass it for train only.
        shuffle: Reshuffle the examples every epoch (train only).
        seed: Seed of the shuffle and of the augmentation; the same seed gives the same
            batches, epoch by epoch.
        cache: Accepted for older callers: the images are resized once, up front, and kept
            in memory (uint8) either way.
        start_epoch: The epoch (from 0) of the first iteration, for a trial that resumes:
            the order goes on as if the earlier epochs had been served; augmentation draws
            come from a seed derived from it.
    """
    del cache
    x = prepare_images(split.x, as_size(image_size, "make_dataset"), channels)
    if shuffle:
        # The order comes from `arrays.epoch_order`, as in the PyDataset pipeline, so both
        # backends' pipelines give the same batches for a seed; a batch of indices is gathered
        # at once.
        ds = _epoch_orders(len(split), seed, start_epoch).batch(batch_size)
        images, labels = tf.constant(x), tf.constant(split.y)
        ds = ds.map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)))
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, split.y)).batch(batch_size)
    # Rescale after batching: one op per batch, and the prepared arrays stay uint8 (4x less
    # memory than float32; 256x256 RGB splits reach gigabytes otherwise).
    ds = ds.map(_rescale, num_parallel_calls=AUTOTUNE)
    if augment is not None and augment.active:
        ds = _augment(ds, augment, seed + 100_003 * start_epoch)
    return ds.prefetch(AUTOTUNE)


def make_datasets(
    data: ImageData,
    *,
    batch_size: int,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    augment: AugmentSpec | None = None,
    seed: int = 0,
    eval_batch_size: int | None = None,
) -> dict[str, tf.data.Dataset]:
    """The three pipelines of a trial: only train is shuffled and augmented.

    Args:
        data: The loaded dataset.
        batch_size: Training batch size.
        image_size: See `make_dataset`.
        channels: See `make_dataset`.
        augment: Train-time augmentation (as in the documents, validation and test are
            only rescaled).
        seed: Seed of the train shuffle and augmentation.
        eval_batch_size: Batch size of validation and test; default `batch_size`.
    """
    common: dict[str, Any] = {"image_size": image_size, "channels": channels}
    return {
        "train": make_dataset(
            data.train, batch_size=batch_size, augment=augment, shuffle=True, seed=seed, **common
        ),
        "validation": make_dataset(
            data.validation, batch_size=eval_batch_size or batch_size, **common
        ),
        "test": make_dataset(data.test, batch_size=eval_batch_size or batch_size, **common),
    }


def _epoch_orders(n: int, seed: int, start: int = 0) -> tf.data.Dataset:
    """The indices of one epoch, in `epoch_order`'s order; each new iteration is the next epoch.

    Keras iterates a `tf.data.Dataset` afresh every epoch, one epoch after the other, so a
    counter of iterations is the epoch number.
    """
    epochs = itertools.count(start)

    def order():
        yield epoch_order(n, seed, next(epochs))

    spec = tf.TensorSpec(shape=(n,), dtype=tf.int64)
    ds = tf.data.Dataset.from_generator(order, output_signature=spec).unbatch()
    return ds.apply(tf.data.experimental.assert_cardinality(n))


def _rescale(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(x, tf.float32) / 255.0, y  # the documents' rescale=1/255


def _augment(ds: tf.data.Dataset, spec: AugmentSpec, seed: int) -> tf.data.Dataset:
    layers = spec.keras_layers(seed)
    # Each batch gets its own seed from a seeded random stream (new draws each epoch).
    # Letting the layers advance their own seed state instead would make the result
    # depend on the order in which the parallel map calls run, i.e. not reproducible.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def augment(batch: tuple[tf.Tensor, tf.Tensor], batch_seed: tf.Tensor):
        x, y = batch
        draws = _BatchSeeds(batch_seed)
        for layer in layers:
            transformation = layer.get_random_transformation(x, training=True, seed=draws)
            x = layer.transform_images(x, transformation, training=True)
        return x, y

    return tf.data.Dataset.zip(ds, seeds).map(augment, num_parallel_calls=AUTOTUNE)


class _BatchSeeds(keras.random.SeedGenerator):
    """Stateless stand-in for a layer's SeedGenerator: seeds derived from one batch seed.

    Keras random ops accept a SeedGenerator and call its `next()` once per draw; this
    one returns (batch seed, draw number), so every draw in a batch differs and depends
    only on the batch seed. It has no state variable, so parallel calls cannot race.
    """

    def __init__(self, batch_seed: tf.Tensor) -> None:  # no super().__init__: no variable
        self._seed = tf.cast(batch_seed, tf.int64)
        self._draws = 0

    def next(self, ordered: bool = True) -> tf.Tensor:
        self._draws += 1
        return tf.stack([self._seed, tf.constant(self._draws, tf.int64)])
