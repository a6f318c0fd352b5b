"""Model registry: named builder functions and one factory, in the style of timm.

Registering imports nothing heavy: builders import Keras inside their bodies, so the CLI can list
models and check architectures without loading TensorFlow.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweeps.models.errors import ModelConfigError

if TYPE_CHECKING:
    import keras

Builder = Callable[..., "keras.Model"]
ShapeFn = Callable[..., "list[LayerShape]"]

# The builder's first two parameters; everything after them is a model hyperparameter.
_IO_PARAMS = ("input_shape", "num_classes")


@dataclass(frozen=True)
class LayerShape:
    """Output shape of one named layer of the model, per image (no batch dimension)."""

    name: str
    kind: str
    output_shape: tuple[int, ...]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    shapes: ShapeFn | None


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, shapes: ShapeFn | None = None) -> Callable[[Builder], Builder]:
    """Register a builder under `name` (the `model.name` of configs).

    Args:
        name: Registry name.
        shapes: Optional pure-Python shape function. It is called with the builder's arguments,
            defaults applied, and returns per-layer output shapes or raises ArchitectureError.
    """

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, shapes)
        return builder

    return decorator


def model_names() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def check_architecture(
    name: str, *, input_shape: tuple[int, int, int], num_classes: int, **kwargs: Any
) -> list[LayerShape]:
    """Validate a model config without TensorFlow and return its per-layer output shapes.

    Args:
        name: Registered model name.
        input_shape: (height, width, channels) of one image.
        num_classes: Number of classes.
        **kwargs: Builder hyperparameters; None values mean "use the builder default".

    Returns:
        The shapes from the model's shape function, or [] if it has none.

    Raises:
        ModelConfigError: Unknown model, argument or value.
        ArchitectureError: The feature map collapses.
    """
    entry = _lookup(name)
    arguments = _bind(name, entry.builder, input_shape, num_classes, kwargs)
    return [] if entry.shapes is None else entry.shapes(**arguments)


def create_model(
    name: str, *, input_shape: tuple[int, int, int], num_classes: int, **kwargs: Any
) -> keras.Model:
    """Build a registered model; arguments as for `check_architecture`, which runs first."""
    check_architecture(name, input_shape=input_shape, num_classes=num_classes, **kwargs)
    return _lookup(name).builder(tuple(input_shape), num_classes, **_drop_none(kwargs))


def _lookup(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ModelConfigError(
            f"model={name!r} is not registered: choose one of {', '.join(model_names())}"
        )
    return _REGISTRY[name]


def _drop_none(kwargs: dict[str, Any]) -> dict[str, Any]:
    # Configs write `null` for "not set": dropping it lets the builder's default apply.
    return {key: value for key, value in kwargs.items() if value is not None}


def _bind(
    name: str, builder: Builder, input_shape: Any, num_classes: Any, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Return the builder's full arguments (defaults applied) or reject unknown keys."""
    signature = inspect.signature(builder)
    accepted = [param for param in signature.parameters if param not in _IO_PARAMS]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelConfigError(
            f"model {name!r} got unknown argument(s) {', '.join(unknown)}: "
            f"accepted are {', '.join(accepted)}"
        )
    bound = signature.bind(input_shape, num_classes, **_drop_none(kwargs))
    bound.apply_defaults()
    return bound.arguments
