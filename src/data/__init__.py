"""Datasets for the sweeps: loaders by name, and the tf.data pipeline that feeds a trial.

Importing this package does not import TensorFlow: `make_dataset` and `make_datasets`
live in `pipeline`, which is imported on first use, so `sweeps --help` and the
orchestration code stay fast.
"""

from typing import TYPE_CHECKING, Any

# Imported for their @register_dataset side effect; none of them imports TensorFlow.
from . import digits, fashion_mnist, folder  # noqa: F401
from .augment import AugmentSpec
from .base import ImageData, Split
from .errors import DataError
from .registry import dataset_names, load_dataset, register_dataset

if TYPE_CHECKING:
    from .pipeline import make_dataset, make_datasets

__all__ = [
    "AugmentSpec",
    "DataError",
    "ImageData",
    "Split",
    "dataset_names",
    "load_dataset",
    "make_dataset",
    "make_datasets",
    "register_dataset",
]

_LAZY = {"make_dataset", "make_datasets"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
