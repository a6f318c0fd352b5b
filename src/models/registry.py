"""Model registry: named builder functions and one factory, in the style of timm.

Registering imports nothing heavy: builders import Keras inside their bodies, so the CLI can list
models and check architectures without loading TensorFlow.

A name of the form ``module:function`` (a config's ``model.builder``) is a builder from the
user's own code, imported on first use, with the working directory importable. It is called
like the registered ones, ``builder(input_shape, num_classes, **hyperparameters)``, and must
return an uncompiled ``keras.Model`` whose output is one sigmoid unit for two classes, else
``num_classes`` softmax units (see ``sweeps.models.compile``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweeps.models.errors import ModelConfigError

from sweeps.userpath import first_line, import_callable

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


def is_builder_path(name: str) -> bool:
    """Whether ``name`` is a ``module:function`` path rather than a registered name."""
    return ":" in name


def resolve_builder(path: str, *, find_only: bool = False) -> Builder | None:
    """Import the builder ``module:function`` names.

    The working directory is importable (appended to ``sys.path`` when missing), so a project's
    ``mypkg/models.py`` next to its ``conf/`` works without installing it. ``find_only`` checks
    that the module can be found without running it (nor the Keras it imports) and returns None.

    Raises:
        ModelConfigError: One line: the module does not import, or does not name a callable.
    """
    return import_callable(path, ModelConfigError, "mypkg.models:build", find_only=find_only)


def check_arguments(name: str, **kwargs: Any) -> None:
    """Reject hyperparameters the builder does not take, without building anything.

    Raises:
        ModelConfigError: Unknown model or argument, or a required argument missing.
    """
    _bind(name, _lookup(name).builder, None, None, kwargs)


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
    builder = _lookup(name).builder
    if not is_builder_path(name):
        return builder(tuple(input_shape), num_classes, **_drop_none(kwargs))
    try:  # the user's code: its shape errors become a one-line config error, as for ours
        model = builder(tuple(input_shape), num_classes, **_drop_none(kwargs))
    except (ValueError, TypeError) as exc:
        raise ModelConfigError(f"model {name}: building failed: {first_line(exc)}") from exc
    if not hasattr(model, "count_params"):
        raise ModelConfigError(f"model {name} returned {type(model).__name__}, not a keras.Model")
    return model


def _lookup(name: str) -> _Entry:
    if is_builder_path(name):
        try:
            return _Entry(resolve_builder(name), None)
        except ModelConfigError as exc:
            raise ModelConfigError(f"model.builder={name}: {exc}") from None
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
    params = signature.parameters.values()
    accepted = [p.name for p in params if p.name not in _IO_PARAMS and p.kind != p.VAR_KEYWORD]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_any:
        raise ModelConfigError(
            f"model {name!r} got unknown argument(s) {', '.join(unknown)}: "
            f"accepted are {', '.join(accepted) or 'none'}"
        )
    try:
        bound = signature.bind(input_shape, num_classes, **_drop_none(kwargs))
    except TypeError as exc:  # a required hyperparameter left out, or a builder of no inputs
        raise ModelConfigError(f"model {name!r}: {exc}; set it under model:") from None
    bound.apply_defaults()
    return bound.arguments
