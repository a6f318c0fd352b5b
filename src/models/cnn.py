"""Plain CNN family: conv blocks then a dense head; every hand-built network of the studies.

A block is Conv2D (linear) -> [BatchNormalization] -> activation -> pooling -> [Dropout]. The
activation is its own layer so PReLU / LeakyReLU act on the linear conv output (seeds 001, 003).
The shape function below is pure Python, so `plan` and config checks run without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sweeps.models.errors import (
    ArchitectureError,
    ModelConfigError,
    check_choice,
    check_int,
    check_io,
    check_rate,
    check_widths,
)
from sweeps.models.names import ACTIVATIONS, PADDINGS, POOLINGS
from sweeps.models.registry import LayerShape, register_model

if TYPE_CHECKING:
    import keras

MAX_FILTERS = 512  # blocks added by `depth` double the last width up to this cap
_POOL_KINDS = {"max": "MaxPooling2D", "avg": "AveragePooling2D"}


@dataclass(frozen=True)
class Block:
    """One conv block, after `depth` and the per-block lists are resolved."""

    filters: int
    padding: str
    dropout: float


def resolve_blocks(
    filters: Sequence[int],
    depth: int | None,
    padding: str | Sequence[str],
    block_dropout: float | Sequence[float],
) -> list[Block]:
    """Return one Block per conv block.

    `padding` and `block_dropout` are one value or one per entry of `filters`. `depth` then
    truncates the blocks, or appends blocks that double the last width (capped at MAX_FILTERS)
    and repeat the last padding and dropout, so a depth sweep composes with a study's layout.
    """
    widths = check_widths("filters", filters, allow_empty=False)
    paddings = [
        check_choice("padding", pad, PADDINGS) for pad in _per_block("padding", padding, widths)
    ]
    rates = [
        check_rate("block_dropout", rate)
        for rate in _per_block("block_dropout", block_dropout, widths)
    ]
    blocks = [Block(*block) for block in zip(widths, paddings, rates, strict=True)]
    if depth is None:
        return blocks
    depth = check_int("depth", depth, 1)
    while len(blocks) < depth:
        last = blocks[-1]
        # max() keeps a width already above the cap instead of shrinking it.
        blocks.append(replace(last, filters=max(last.filters, min(2 * last.filters, MAX_FILTERS))))
    return blocks[:depth]


def _per_block(key: str, value: Any, widths: list[int]) -> list[Any]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value] * len(widths)
    if len(value) != len(widths):
        raise ModelConfigError(
            f"{key}={list(value)!r} has {len(value)} values but filters has {len(widths)} "
            "blocks: give one value or one per block"
        )
    return list(value)


def cnn_shapes(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    filters: Sequence[int],
    depth: int | None,
    kernel_size: int,
    padding: str | Sequence[str],
    activation: str,
    leaky_alpha: float,
    pooling: str,
    pool_size: int,
    pool_padding: str,
    block_dropout: float | Sequence[float],
    dense_units: Sequence[int],
    dense_dropout: float,
    batch_norm: bool,
) -> list[LayerShape]:
    """Validate a `cnn` config and return the output shape of every shape-changing layer.

    Takes exactly the builder's arguments; `leaky_alpha` and `batch_norm` do not change shapes.

    Raises:
        ModelConfigError: A bad name or value.
        ArchitectureError: A spatial dimension drops below 1; the message names the block.
    """
    shape = check_io(input_shape, num_classes)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("pooling", pooling, POOLINGS)
    check_choice("pool_padding", pool_padding, PADDINGS)
    check_int("kernel_size", kernel_size, 1)
    check_int("pool_size", pool_size, 1)
    check_rate("dense_dropout", dense_dropout)
    units = check_widths("dense_units", dense_units, allow_empty=True)
    blocks = resolve_blocks(filters, depth, padding, block_dropout)
    layers = _block_shapes(shape, blocks, kernel_size, pooling, pool_size, pool_padding)
    return layers + _head_shapes(layers[-1].output_shape, units, num_classes)


def _block_shapes(
    input_shape: tuple[int, int, int],
    blocks: list[Block],
    kernel_size: int,
    pooling: str,
    pool_size: int,
    pool_padding: str,
) -> list[LayerShape]:
    height, width, _ = input_shape
    layers = []
    for i, block in enumerate(blocks, start=1):
        context = (
            f"input {input_shape[0]}x{input_shape[1]}, kernel {kernel_size}, "
            f"padding {block.padding}, pool {pool_size} {pool_padding}"
        )
        height, width = (_conv_out(n, kernel_size, block.padding) for n in (height, width))
        _check_alive(height, width, f"block {i} conv", context)
        layers.append(LayerShape(f"block{i}_conv", "Conv2D", (height, width, block.filters)))
        height, width = (_pool_out(n, pool_size, pool_padding) for n in (height, width))
        _check_alive(height, width, f"block {i} pool", context)
        pool_shape = (height, width, block.filters)
        layers.append(LayerShape(f"block{i}_pool", _POOL_KINDS[pooling], pool_shape))
    return layers


def _conv_out(size: int, kernel_size: int, padding: str) -> int:
    # Stride 1: "same" keeps the size, "valid" loses kernel_size - 1 pixels.
    return size if padding == "same" else size - kernel_size + 1


def _pool_out(size: int, pool_size: int, padding: str) -> int:
    # Keras pools with stride = pool_size; "same" pads the last partial window.
    return -(-size // pool_size) if padding == "same" else (size - pool_size) // pool_size + 1


def _check_alive(height: int, width: int, where: str, context: str) -> None:
    if min(height, width) < 1:
        raise ArchitectureError(
            f"feature map collapses to {max(height, 0)}x{max(width, 0)} at {where} ({context}): "
            "use padding=same, fewer blocks or a larger input"
        )


def _head_shapes(
    feature_shape: tuple[int, ...], dense_units: list[int], num_classes: int
) -> list[LayerShape]:
    height, width, channels = feature_shape
    layers = [LayerShape("flatten", "Flatten", (height * width * channels,))]
    layers += [LayerShape(f"dense{j}", "Dense", (units,)) for j, units in enumerate(dense_units, 1)]
    return layers + [LayerShape("output", "Dense", (1 if num_classes == 2 else num_classes,))]


@register_model("cnn", shapes=cnn_shapes)
def cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    filters: Sequence[int] = (32, 32, 64),
    depth: int | None = None,
    kernel_size: int = 3,
    padding: str | Sequence[str] = "same",
    activation: str = "relu",
    leaky_alpha: float = 0.3,
    pooling: str = "max",
    pool_size: int = 2,
    pool_padding: str = "valid",
    block_dropout: float | Sequence[float] = 0.0,
    dense_units: Sequence[int] = (64,),
    dense_dropout: float = 0.5,
    batch_norm: bool = False,
) -> keras.Model:
    """Build a plain CNN; the defaults are the seed 001 baseline (618,593 params at 100x100x3).

    Args:
        input_shape: (height, width, channels) of one image.
        num_classes: 2 gives one sigmoid output, more give a softmax.
        filters: Conv width of each block.
        depth: Number of blocks, if set: truncates `filters` or extends it by doubling.
        kernel_size: Square conv kernel size.
        padding: "same" / "valid", for all blocks or one per block.
        activation: One of ACTIVATIONS, used after every conv and hidden dense layer.
        leaky_alpha: Negative slope of leaky_relu.
        pooling: "max" or "avg".
        pool_size: Pooling window and stride.
        pool_padding: "valid" drops a partial last window, "same" pads it.
        block_dropout: Dropout after each block's pooling, one rate or one per block; 0 = none.
        dense_units: Width of each hidden dense layer (may be empty).
        dense_dropout: Dropout after each hidden dense layer; 0 = none.
        batch_norm: Add BatchNormalization between each conv and its activation.
    """
    # Fail in plain words (block, size, fix) before Keras raises a shape error. locals() holds
    # exactly the builder's arguments here, which is what the shape function takes.
    cnn_shapes(**locals())
    import keras
    from sweeps.models.layers import activation_layer, classifier_head, pool_layer

    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = inputs
    for i, block in enumerate(resolve_blocks(filters, depth, padding, block_dropout), start=1):
        x = keras.layers.Conv2D(
            block.filters, kernel_size, padding=block.padding, name=f"block{i}_conv"
        )(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = activation_layer(
            activation, name=f"block{i}_act", leaky_alpha=leaky_alpha, spatial=True
        )(x)
        x = pool_layer(pooling, pool_size, pool_padding, name=f"block{i}_pool")(x)
        if block.dropout > 0:
            x = keras.layers.Dropout(block.dropout, name=f"block{i}_drop")(x)
    outputs = classifier_head(
        x,
        dense_units=dense_units,
        dropout=dense_dropout,
        activation=activation,
        num_classes=num_classes,
        leaky_alpha=leaky_alpha,
    )
    return keras.Model(inputs, outputs, name="cnn")
