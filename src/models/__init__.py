"""Keras image classifiers for sweeps: a registry of model builders.

Importing this package does not import TensorFlow: builders import Keras when called, and the
Keras-bound helpers are imported by callers from their modules
(`sweeps.models.compile.compile_model`, `sweeps.models.summary.describe`).
"""

from sweeps.models import cnn, transfer  # noqa: F401  (importing registers the builders)
from sweeps.models.errors import ArchitectureError, ModelConfigError
from sweeps.models.names import ACTIVATIONS, OPTIMIZERS, PADDINGS, POOLINGS, TRANSFER_BASES
from sweeps.models.registry import (
    LayerShape,
    check_architecture,
    check_arguments,
    create_model,
    is_builder_path,
    model_names,
    register_model,
    resolve_builder,
)

__all__ = [
    "ACTIVATIONS",
    "OPTIMIZERS",
    "PADDINGS",
    "POOLINGS",
    "TRANSFER_BASES",
    "ArchitectureError",
    "LayerShape",
    "ModelConfigError",
    "check_architecture",
    "check_arguments",
    "create_model",
    "is_builder_path",
    "model_names",
    "register_model",
    "resolve_builder",
]
