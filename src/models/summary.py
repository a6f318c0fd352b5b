"""Per-layer summary of a built model for the `plan` command: shapes, parameters, FLOPs."""

import math
from dataclasses import dataclass

import keras


@dataclass(frozen=True)
class LayerInfo:
    """One layer; layers of a nested model (the VGG base) are named "vgg19/block1_conv1"."""

    name: str
    kind: str
    output_shape: tuple[int, ...]  # per image, without the batch dimension
    params: int
    flops: int  # 2 x multiply-adds per image; only Conv2D and Dense are counted


@dataclass(frozen=True)
class ModelSummary:
    """Sizes and cost of a model."""

    param_count: int
    trainable_params: int
    layers: list[LayerInfo]
    flops_per_image: int


def describe(model: keras.Model) -> ModelSummary:
    """Summarise `model`, recursing into nested models such as a transfer base."""
    layers = _layer_rows(model, prefix="")
    return ModelSummary(
        param_count=model.count_params(),
        trainable_params=sum(math.prod(weight.shape) for weight in model.trainable_weights),
        layers=layers,
        flops_per_image=sum(layer.flops for layer in layers),
    )


def _layer_rows(model: keras.Model, prefix: str) -> list[LayerInfo]:
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            rows += _layer_rows(layer, prefix=f"{prefix}{layer.name}/")
        # A nested model's own input repeats its caller's tensor: skip it.
        elif not (prefix and isinstance(layer, keras.layers.InputLayer)):
            shape = tuple(layer.output.shape[1:])
            rows.append(
                LayerInfo(
                    name=prefix + layer.name,
                    kind=type(layer).__name__,
                    output_shape=shape,
                    params=layer.count_params(),
                    flops=_flops(layer, shape),
                )
            )
    return rows


def _flops(layer: keras.layers.Layer, output_shape: tuple[int, ...]) -> int:
    # Conv2D and Dense do one multiply-add per kernel weight at each output position (H x W for
    # a conv, one for a dense layer on a flat input): 2 * k*k*cin*cout * Hout*Wout, 2 * in*out.
    # Bias adds, activations and pooling are cheap by comparison and are ignored.
    if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
        return 2 * math.prod(layer.kernel.shape) * math.prod(output_shape[:-1])
    return 0
