"""Errors raised for bad model configurations, with one-line messages that say the fix."""

import numbers
from collections.abc import Iterable, Sequence
from typing import Any


class ModelConfigError(ValueError):
    """A model hyperparameter has a bad name or value."""


class ArchitectureError(ModelConfigError):
    """The configuration is valid value by value, but the feature map collapses."""


def check_choice(key: str, value: Any, choices: Iterable[str]) -> str:
    """Return `value` if it is one of `choices`, else raise ModelConfigError naming them."""
    choices = tuple(choices)
    if value not in choices:
        raise ModelConfigError(f"{key}={value!r} is not valid: choose one of {', '.join(choices)}")
    return value


def check_int(key: str, value: Any, minimum: int) -> int:
    """Return `value` if it is an integer >= `minimum`, else raise ModelConfigError."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ModelConfigError(f"{key}={value!r} is not valid: give an integer >= {minimum}")
    return int(value)


def check_widths(key: str, value: Any, *, allow_empty: bool) -> list[int]:
    """Return `value` as a list of positive ints (layer widths), else raise ModelConfigError."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not (value or allow_empty):
        raise ModelConfigError(f"{key}={value!r} is not valid: give a list of layer widths")
    return [check_int(key, width, 1) for width in value]


def check_rate(key: str, value: Any) -> float:
    """Return `value` if it is a dropout rate in [0, 1), else raise ModelConfigError."""
    if not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ModelConfigError(f"{key}={value!r} is not valid: give a rate in [0, 1)")
    return float(value)


def check_io(input_shape: Any, num_classes: Any) -> tuple[int, int, int]:
    """Validate the input shape and class count; return the shape as a tuple."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, numbers.Integral) and d >= 1 for d in shape):
        raise ModelConfigError(
            f"input_shape={shape!r} is not valid: give (height, width, channels), positive ints"
        )
    # Two classes use one sigmoid unit; one class cannot be classified at all.
    check_int("num_classes", num_classes, 2)
    return shape
