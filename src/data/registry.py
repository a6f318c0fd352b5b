"""Datasets by name: a decorator registers a loader, `load_dataset` calls it."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

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


def load_dataset(name: str, **kwargs: object) -> ImageData:
    """Load a registered dataset.

    Args:
        name: A name from `dataset_names()`.
        **kwargs: The loader's options. `None` values are dropped so that the loader's
            defaults apply (a config can leave an option as `null`).

    Raises:
        DataError: Unknown name, unknown or missing option, or a problem with the data.
    """
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}")
    loader = _LOADERS[name]
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    _check_options(name, loader, kwargs)
    data = loader(**kwargs)
    sizes = " ".join(f"{split}={n}" for split, n in data.sizes.items())
    log.info("%s: loaded %s images; skipped %d unreadable files", data.source, sizes, data.skipped)
    return data


def _check_options(name: str, loader: Loader, kwargs: dict[str, object]) -> None:
    params = inspect.signature(loader).parameters
    valid = ", ".join(params)
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise DataError(f"dataset {name!r} has no option {', '.join(unknown)}; valid: {valid}")
    required = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty]
    missing = [p for p in required if p not in kwargs]
    if missing:
        raise DataError(f"dataset {name!r} needs option {', '.join(missing)}; valid: {valid}")
