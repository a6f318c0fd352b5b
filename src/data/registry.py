"""Datasets by name: a decorator registers a loader, `load_dataset` calls it.

A name of the form ``module:function`` (a config's ``data.loader``) is a loader from the user's
own code, imported on first use with the working directory importable. It is called with the
data config's other keys and returns an :class:`ImageData` (three :class:`Split`s of uint8
images ``(N, H, W, C)`` and int64 labels, plus class names), checked as the built-in ones are.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

from sweeps.userpath import import_callable

from .base import ImageData
from .errors import DataError

log = logging.getLogger(__name__)

Loader = Callable[..., ImageData]
_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator that makes a loader available to `load_dataset` under `name`."""

    def decorate(loader: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"dataset {name!r} is already registered")
        _LOADERS[name] = loader
        return loader

    return decorate


def dataset_names() -> list[str]:
    """Names `load_dataset` accepts, sorted."""
    return sorted(_LOADERS)


def is_loader_path(name: str) -> bool:
    """Whether ``name`` is a ``module:function`` path rather than a registered name."""
    return ":" in name


def resolve_loader(path: str, *, find_only: bool = False) -> Loader | None:
    """Import the loader ``module:function`` names (the working directory is importable).

    ``find_only`` checks that the module can be found without running it, and returns None.

    Raises:
        DataError: One line: the module does not import, or does not name a callable.
    """
    return import_callable(path, DataError, "mypkg.data:load", find_only=find_only)


def load_dataset(name: str, **kwargs: object) -> ImageData:
    """Load a registered dataset.

    Args:
        name: A name from `dataset_names()`, or a loader's ``module:function``.
        **kwargs: The loader's options. `None` values are dropped so that the loader's
            defaults apply (a config can leave an option as `null`).

    Raises:
        DataError: Unknown name, unknown or missing option, or a problem with the data.
    """
    if is_loader_path(name):
        try:
            loader = resolve_loader(name)
        except DataError as exc:
            raise DataError(f"data.loader={name}: {exc}") from None
    elif name in _LOADERS:
        loader = _LOADERS[name]
    else:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}")
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    _check_options(name, loader, kwargs)
    data = loader(**kwargs)
    if not isinstance(data, ImageData):
        raise DataError(
            f"data.loader={name} returned {type(data).__name__}, not a sweeps.data.ImageData"
        )
    sizes = " ".join(f"{split}={n}" for split, n in data.sizes.items())
    log.info("%s: loaded %s images; skipped %d unreadable files", data.source, sizes, data.skipped)
    return data


def _check_options(name: str, loader: Loader, kwargs: dict[str, object]) -> None:
    params = inspect.signature(loader).parameters
    valid = ", ".join(params)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not takes_any:
        raise DataError(f"dataset {name!r} has no option {', '.join(unknown)}; valid: {valid}")
    required = [
        p
        for p, spec in params.items()
        if spec.default is inspect.Parameter.empty
        and spec.kind not in (spec.VAR_KEYWORD, spec.VAR_POSITIONAL)
    ]
    missing = [p for p in required if p not in kwargs]
    if missing:
        raise DataError(f"dataset {name!r} needs option {', '.join(missing)}; valid: {valid}")
