"""Seeing inside a trained Keras model: what seeds 002-004 drew by hand.

- Activation maps of every conv and pooling layer for one test image (seeds 002, 004).
- Filter patterns: the input each of a few filters responds to most, found by gradient ascent
  from a grey image with faint noise, gradients normalised by their RMS + 1e-5 (seed 004).
- Grids of correctly and wrongly classified test images (seed 003).

Plain functions of a Keras model and images, usable from a notebook; ``report`` with
``report.inspect=true`` draws them for a study's best trial. Any Keras backend (the gradient
ascent has one small step function per backend; TensorFlow is imported for its own only).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

_POOLS = ("MaxPooling2D", "AveragePooling2D")
_ACTIVATIONS = ("ReLU", "PReLU", "LeakyReLU", "Activation")
# transfer.py maps [0, 1] RGB to VGG's input with a frozen 1x1 conv of this name: not a filter.
_PREPROCESS = "vgg_preprocess"


def predict_classes(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Class indices: one sigmoid output is thresholded at 0.5, a softmax is arg-maxed."""
    probs = model.predict(x, verbose=0)
    return (probs[:, 0] > 0.5).astype(int) if probs.shape[1] == 1 else probs.argmax(axis=1)


# -- walking the model --------------------------------------------------------------------------


def walk(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """Every layer in call order, nested models (the VGG base) opened as ``base/layer``."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            yield from walk(layer, f"{prefix}{layer.name}/")
        else:
            yield f"{prefix}{layer.name}", layer


def feature_model(
    model: keras.Model, names: Sequence[str], input_shape: tuple[int, ...] | None = None
) -> keras.Model:
    """A model from a fresh input to the named layers' outputs, sharing ``model``'s weights.

    The layers are applied again in call order, so nested layers are reachable and the input
    may have another spatial size (convolutions take any). That assumes a plain chain of
    layers, which is what every builder in sweeps.models makes.

    Raises:
        ValueError: a name that is not a layer of the model.
    """
    import keras

    layers = list(walk(model))
    missing = [n for n in names if n not in dict(layers)]
    if missing:
        valid = ", ".join(n for n, _ in layers)
        raise ValueError(f"no layer {', '.join(missing)} in the model; its layers: {valid}")
    x = inputs = keras.Input(shape=input_shape or model.input_shape[1:])
    found: dict[str, Any] = {}
    for name, layer in layers:
        if len(found) == len(set(names)):
            break  # later layers (Flatten, Dense) would not take another input size
        x = layer(x)
        if name in names:
            found[name] = x
    outputs = [found[n] for n in names]
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0])


def activation_layers(model: keras.Model) -> list[str]:
    """Layers whose output is a feature map after its non-linearity: activations, pooling, and
    convolutions with a built-in activation (VGG's)."""
    names = []
    for name, layer in walk(model):
        kind = type(layer).__name__
        builtin = kind == "Conv2D" and getattr(layer.activation, "__name__", "") != "linear"
        if (kind in _ACTIVATIONS + _POOLS or builtin) and len(layer.output.shape) == 4:
            names.append(name)
    return names


def pattern_layers(model: keras.Model) -> list[str]:
    """The first convolution of each block: after the input or after a pooling layer."""
    names, after_pool = [], True
    for name, layer in walk(model):
        kind = type(layer).__name__
        if kind == "Conv2D" and after_pool and not name.endswith(_PREPROCESS):
            names.append(name)
            after_pool = False
        elif kind in _POOLS:
            after_pool = True
    return names


# -- figures ------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    return plt


def _file(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _grid_figure(n: int, cols: int, cell: float = 1.3) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows + 0.5), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat:
        ax.set_axis_off()
    return fig, flat[:n]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def _visible(feature_map: np.ndarray) -> np.ndarray:
    # Standardise, then spread around mid-grey, as the seed-002 post does for display.
    x = feature_map - feature_map.mean()
    x = x / (x.std() + 1e-5) * 64 + 128
    return np.clip(x, 0, 255).astype("uint8")


def activation_grids(model: keras.Model, image: np.ndarray, out: Path, maps: int) -> list[Path]:
    """One PNG per feature-map layer: its first ``maps`` channels for one image."""
    import keras

    names = activation_layers(model)
    if not names:
        return []
    outputs = feature_model(model, names)(image[None], training=False)
    outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
    paths = []
    for i, (name, act) in enumerate(zip(names, outputs, strict=True), start=1):
        act = keras.ops.convert_to_numpy(act)[0]  # a torch tensor may carry a gradient
        n = min(maps, act.shape[-1])
        fig, axes = _grid_figure(n, cols=8)
        for j, ax in enumerate(axes):
            ax.imshow(_visible(act[..., j]), cmap="viridis")
        fig.suptitle(f"{name} {'x'.join(map(str, act.shape))} (first {n} maps)", fontsize=9)
        paths.append(_save(fig, out / f"activations_{i:02d}_{_file(name)}.png"))
    return paths


def filter_patterns(
    model: keras.Model, layer: str, filters: int, steps: int, size: int, seed: int = 0
) -> np.ndarray:
    """The inputs that most excite the layer's first ``filters`` filters, as images in [0, 1].

    Each starts from a grey image with faint noise (128 + U(0, 20) of 255) and climbs the mean
    activation of its filter for ``steps`` steps of 1/255 along the gradient normalised by its
    RMS + 1e-5, the recipe of Chollet's book that seed 004 follows.
    """
    import keras

    channels = model.input_shape[-1]
    extractor = feature_model(model, [layer], input_shape=(size, size, channels))
    depth = extractor.output.shape[-1]
    n = min(filters, depth)
    rng = np.random.default_rng(seed)
    image = ((128 + 20 * rng.random((n, size, size, channels))) / 255).astype("float32")
    # Row i of the mask picks filter i, so one batch climbs n filters at once, independently.
    mask = np.eye(n, depth, dtype="float32")
    ascend = _ASCENT.get(keras.backend.backend())
    if ascend is None:
        raise ValueError(f"no gradient ascent on the {keras.backend.backend()} backend")
    return np.stack([_deprocess(x) for x in ascend(extractor, image, mask, steps)])


def _normalised(grads: Any) -> Any:
    """The gradient divided by its RMS per image, + 1e-5 (the book's recipe); any backend."""
    from keras import ops

    return grads / (ops.sqrt(ops.mean(ops.square(grads), axis=(1, 2, 3), keepdims=True)) + 1e-5)


def _ascend_tensorflow(extractor: Any, start: np.ndarray, mask: np.ndarray, steps: int):
    import tensorflow as tf

    image = tf.Variable(start)

    @tf.function
    def step() -> None:
        with tf.GradientTape() as tape:
            act = extractor(image, training=False)
            loss = tf.reduce_sum(tf.reduce_mean(act, axis=(1, 2)) * mask)
        image.assign_add(_normalised(tape.gradient(loss, image)) / 255.0)

    for _ in range(steps):
        step()
    return image.numpy()


def _ascend_jax(extractor: Any, start: np.ndarray, mask: np.ndarray, steps: int):
    import jax
    import jax.numpy as jnp

    def loss(image: Any) -> Any:
        return jnp.sum(jnp.mean(extractor(image, training=False), axis=(1, 2)) * mask)

    @jax.jit
    def step(image: Any) -> Any:
        return image + _normalised(jax.grad(loss)(image)) / 255.0

    image = jnp.asarray(start)
    for _ in range(steps):
        image = step(image)
    return np.asarray(image)


def _ascend_torch(extractor: Any, start: np.ndarray, mask: np.ndarray, steps: int):
    import keras
    import torch

    image = keras.ops.convert_to_tensor(start).detach()
    weights = keras.ops.convert_to_tensor(mask)
    for _ in range(steps):
        image.requires_grad_(True)
        act = extractor(image, training=False)
        loss = torch.sum(torch.mean(act, dim=(1, 2)) * weights)
        (grads,) = torch.autograd.grad(loss, image)
        image = (image + _normalised(grads) / 255.0).detach()
    return image.cpu().numpy()


_ASCENT = {"tensorflow": _ascend_tensorflow, "jax": _ascend_jax, "torch": _ascend_torch}


def _deprocess(x: np.ndarray) -> np.ndarray:
    x = (x - x.mean()) / (x.std() + 1e-5) * 0.1 + 0.5
    return np.clip(x, 0, 1)


def pattern_sheet(model: keras.Model, name: str, count: int, steps: int, size: int,
                  out: Path) -> Path:  # fmt: skip
    """The filter patterns of layer ``name`` drawn on one sheet in ``out``; returns the file.

    Raises:
        ValueError: an unknown layer, or a feature map that collapses at this size.
    """
    patterns = filter_patterns(model, name, count, steps, size)
    fig, axes = _grid_figure(len(patterns), cols=8, cell=1.6)
    for j, ax in enumerate(axes):
        _show(ax, patterns[j])
        ax.set_title(f"filter {j}", fontsize=7)
    fig.suptitle(f"{name}: filter patterns ({steps} steps of gradient ascent)", fontsize=9)
    return _save(fig, out / f"filters_{_file(name)}.png")


def _show(ax: Any, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(image, 0, 1))


def example_grid(
    x: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    chosen: np.ndarray,
    title: str,
    path: Path,
    n: int,
) -> list[Path]:
    """Up to ``n`` of the chosen test images titled "true -> predicted"; [] when none."""
    idx = np.flatnonzero(chosen)[:n]
    if idx.size == 0:
        return []
    fig, axes = _grid_figure(idx.size, cols=5, cell=1.8)
    for ax, i in zip(axes, idx, strict=True):
        _show(ax, x[i])
        ax.set_title(f"{class_names[y[i]]} -> {class_names[pred[i]]}", fontsize=7)
    fig.suptitle(
        f"{title}: {int(chosen.sum())} of {len(y)} test images (true -> predicted)", fontsize=9
    )
    return [_save(fig, path)]
