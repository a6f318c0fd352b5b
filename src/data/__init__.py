"""Datasets for the sweeps: loaders by name, and the pipelines that feed a trial.

Importing this package does not import TensorFlow or Keras: `make_dataset` and
`make_datasets` (tf.data, the TensorFlow backend) live in `pipeline`, `make_pydataset`
(a `keras.utils.PyDataset`, any backend) in `pydataset`; each is imported on first use, so
`sweeps --help` stays fast and a JAX or PyTorch worker never imports TensorFlow.
"""

from typing import TYPE_CHECKING, Any

# Imported for their @register_dataset side effect; none of them imports TensorFlow.
from . import digits, fashion_mnist, folder  # noqa: F401
from .augment import AugmentSpec
from .base import ImageData, Split
from .errors import DataError
from .registry import dataset_names, is_loader_path, load_dataset, register_dataset, resolve_loader

if TYPE_CHECKING:
    from .pipeline import make_dataset, make_datasets
    from .pydataset import make_pydataset

__all__ = [
    "AugmentSpec",
    "DataError",
    "ImageData",
    "Split",
    "dataset_names",
    "is_loader_path",
    "load_dataset",
    "make_dataset",
    "make_datasets",
    "make_pydataset",
    "register_dataset",
    "resolve_loader",
]

_LAZY = {"make_dataset", "make_datasets"}  # tf.data: imports TensorFlow
_LAZY_NEUTRAL = {"make_pydataset"}  # keras.utils.PyDataset: imports Keras, not TensorFlow


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import pipeline

        return getattr(pipeline, name)
    if name in _LAZY_NEUTRAL:
        from . import pydataset

        return getattr(pydataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
