"""Transfer learning from an ImageNet VGG convolutional base (seed 004).

The base is frozen (feature extraction) or has its last weighted layers unfrozen (fine-tuning);
a dense head classifies its features. Weights come only from a local file: never a download.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sweeps.models.errors import (
    ArchitectureError,
    ModelConfigError,
    check_choice,
    check_int,
    check_io,
    check_rate,
    check_widths,
)
from sweeps.models.names import ACTIVATIONS, TRANSFER_BASES
from sweeps.models.registry import LayerShape, register_model

if TYPE_CHECKING:
    import keras

# The file names keras.applications caches the no-top ImageNet weights under.
WEIGHT_FILES = {
    base: f"{base}_weights_tf_dim_ordering_tf_kernels_notop.h5" for base in TRANSFER_BASES
}
# "random" is the config spelling of weights=None: create_model drops None values so defaults
# apply, which would turn a config's `weights: null` back into "imagenet".
RANDOM_WEIGHTS = "random"
# ImageNet channel means in BGR order, as keras.applications' "caffe" preprocess_input uses.
_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
_MIN_SIZE = 32  # VGG halves the feature map five times


def resolve_weights(base: str, weights: str | None) -> str | None:
    """Return the weights file to load, or None for random init.

    Args:
        base: One of TRANSFER_BASES.
        weights: "imagenet" (the Keras cache), "random" or None, or a path to a weights file.

    Raises:
        ModelConfigError: The file does not exist; the message says where to put it.
    """
    if weights is None or weights == RANDOM_WEIGHTS:
        return None
    if weights == "imagenet":
        # Where keras.utils.get_file caches it; we look instead of calling it, which downloads.
        cache = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models"
        path = cache / WEIGHT_FILES[base]
        if not path.is_file():
            raise ModelConfigError(
                f"weights='imagenet' needs {path.name} in {cache} (no download is attempted): "
                f"copy the file there, pass weights=<path to it>, or weights={RANDOM_WEIGHTS}"
            )
        return str(path)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelConfigError(
            f"weights={weights!r} is not a file: give imagenet, {RANDOM_WEIGHTS} or the path "
            f"of a {base} no-top weights file"
        )
    return str(path)


def transfer_check(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    base: str,
    weights: str | None,
    trainable_layers: int,
    dense_units: Sequence[int],
    dense_dropout: float,
    activation: str,
) -> list[LayerShape]:
    """Validate a `transfer` config without TensorFlow; returns [] (no per-layer shapes).

    Raises:
        ModelConfigError: A bad name or value, or a missing weights file.
        ArchitectureError: The input is too small for VGG's five poolings.
    """
    height, width, channels = check_io(input_shape, num_classes)
    check_choice("base", base, TRANSFER_BASES)
    check_choice("activation", activation, ACTIVATIONS)
    check_int("trainable_layers", trainable_layers, 0)
    check_rate("dense_dropout", dense_dropout)
    check_widths("dense_units", dense_units, allow_empty=True)
    if channels != 3:
        raise ModelConfigError(
            f"input_shape={tuple(input_shape)!r} is not valid for transfer: VGG needs 3 channels"
        )
    if min(height, width) < _MIN_SIZE:
        raise ArchitectureError(
            f"feature map collapses to 0x0 in {base} block 5 (input {height}x{width}): "
            f"VGG needs at least {_MIN_SIZE}x{_MIN_SIZE}, use a larger input"
        )
    resolve_weights(base, weights)
    return []


@register_model("transfer", shapes=transfer_check)
def transfer(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    base: str = "vgg19",
    weights: str | None = "imagenet",
    trainable_layers: int = 0,
    dense_units: Sequence[int] = (256,),
    dense_dropout: float = 0.0,
    activation: str = "relu",
) -> keras.Model:
    """Build a VGG base plus a dense head; the model takes [0, 1] RGB pixels.

    Args:
        input_shape: (height, width, 3), at least 32x32.
        num_classes: 2 gives one sigmoid output, more give a softmax.
        base: "vgg16" or "vgg19"; the nested base model keeps that name.
        weights: "imagenet" (from the Keras cache only), "random"/None, or a weights file path.
        trainable_layers: 0 freezes the base; N unfreezes its last N layers that have weights
            (VGG19: 4 = all of block 5's convs).
        dense_units: Width of each hidden dense layer.
        dense_dropout: Dropout after each hidden dense layer; 0 = none.
        activation: One of ACTIVATIONS for the hidden dense layers.
    """
    transfer_check(**locals())  # locals() holds exactly the builder's arguments here
    import keras
    from sweeps.models.layers import classifier_head

    conv_base = getattr(keras.applications, base.upper())(
        include_top=False, weights=resolve_weights(base, weights), input_shape=tuple(input_shape)
    )
    _freeze_all_but_last(conv_base, trainable_layers)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = conv_base(_caffe_preprocess(inputs))
    outputs = classifier_head(
        x,
        dense_units=dense_units,
        dropout=dense_dropout,
        activation=activation,
        num_classes=num_classes,
    )
    return keras.Model(inputs, outputs, name=f"transfer_{base}")


def _freeze_all_but_last(conv_base: keras.Model, trainable_layers: int) -> None:
    weighted = [layer for layer in conv_base.layers if layer.weights]
    if trainable_layers > len(weighted):
        raise ModelConfigError(
            f"trainable_layers={trainable_layers} is not valid: {conv_base.name} has "
            f"{len(weighted)} layers with weights"
        )
    conv_base.trainable = trainable_layers > 0
    for layer in weighted[: len(weighted) - trainable_layers]:
        layer.trainable = False


def _caffe_preprocess(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """Map [0, 1] RGB pixels to what VGG was trained on: 0-255 BGR minus the ImageNet mean.

    keras.applications VGG expects its own `preprocess_input` ("caffe" mode), but the data
    pipeline feeds [0, 1] RGB to every model. A frozen base fed [0, 1] pixels would see near-black,
    mean-shifted images and its features would be useless, so the model does the mapping itself.
    It is a frozen 1x1 convolution (kernel = 255 x channel swap, bias = -mean), built from a stock
    layer rather than a Lambda or custom layer so a saved checkpoint loads without custom objects.
    """
    import keras
    import numpy as np

    layer = keras.layers.Conv2D(3, 1, trainable=False, name="vgg_preprocess")
    outputs = layer(inputs)
    # kernel[0, 0, rgb, bgr]: output channel c reads input channel 2 - c.
    kernel = 255.0 * np.fliplr(np.eye(3, dtype="float32"))[None, None]
    layer.set_weights([kernel, -np.asarray(_IMAGENET_BGR_MEAN, dtype="float32")])
    return outputs
