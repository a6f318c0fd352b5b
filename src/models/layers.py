"""Keras layer helpers shared by the builders: activation, pooling, the classifier head.

Imports Keras at module level, so only builders import this module, inside their bodies.
"""

from collections.abc import Sequence

import keras
from sweeps.models.errors import check_choice
from sweeps.models.names import ACTIVATIONS, POOLINGS


def activation_layer(
    kind: str, *, name: str, leaky_alpha: float = 0.3, spatial: bool = False
) -> keras.layers.Layer:
    """Return a separate activation layer, applied to a linear Conv2D or Dense output.

    Args:
        kind: One of ACTIVATIONS.
        name: Layer name.
        leaky_alpha: Negative slope of leaky_relu.
        spatial: The input is a (batch, height, width, channels) feature map.
    """
    check_choice("activation", kind, ACTIVATIONS)
    if kind == "prelu":
        # On feature maps share the slope over height and width: one alpha per channel. Otherwise
        # PReLU learns H*W*C slopes, so its parameter count (and overfitting) would grow with the
        # input resolution, which the studies sweep.
        return keras.layers.PReLU(shared_axes=[1, 2] if spatial else None, name=name)
    if kind == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=leaky_alpha, name=name)
    return keras.layers.ReLU(name=name)


def pool_layer(kind: str, pool_size: int, padding: str, *, name: str) -> keras.layers.Layer:
    """Return a MaxPooling2D ("max") or AveragePooling2D ("avg") with stride = pool_size."""
    check_choice("pooling", kind, POOLINGS)
    layer = keras.layers.MaxPooling2D if kind == "max" else keras.layers.AveragePooling2D
    return layer(pool_size, padding=padding, name=name)


def classifier_head(
    x: keras.KerasTensor,
    *,
    dense_units: Sequence[int],
    dropout: float,
    activation: str,
    num_classes: int,
    leaky_alpha: float = 0.3,
) -> keras.KerasTensor:
    """Flatten, then Dense + activation (+ Dropout) per width, then the output layer."""
    x = keras.layers.Flatten(name="flatten")(x)
    for j, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(units, name=f"dense{j}")(x)
        x = activation_layer(activation, name=f"dense{j}_act", leaky_alpha=leaky_alpha)(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"dense{j}_drop")(x)
    # One sigmoid unit for two classes matches the studies' binary cross-entropy on 0/1 labels.
    # float32 whatever the dtype policy: a bfloat16/float16 softmax or sigmoid loses the small
    # probabilities the loss takes the log of (Keras's mixed-precision guide).
    if num_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="output", dtype="float32")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="output", dtype="float32")(x)
