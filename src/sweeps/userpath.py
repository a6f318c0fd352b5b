"""``module:function`` paths to a user's own code (model builders, dataset loaders).

Shared by :mod:`sweeps.models` and :mod:`sweeps.data`; it imports nothing of sweeps, so those
packages stay free of the study loop.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any


def import_callable(
    path: str, error: type[Exception], example: str, *, find_only: bool = False
) -> Callable[..., Any] | None:
    """Imports the callable ``module:function`` names; the working directory is importable.

    Args:
        path: ``module:function``.
        error: The exception class raised, with a one-line message.
        example: A path shown when ``path`` is not of that form.
        find_only: Only check that the module can be found (without running it, nor the Keras
            it imports); returns None.
    """
    module_name, sep, attr = path.partition(":")
    if not (sep and module_name and attr):
        raise error(f"not a module:function path (e.g. {example})")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    hint = f"give module:function on PYTHONPATH or in the working directory ({cwd})"
    try:
        if find_only:
            if importlib.util.find_spec(module_name) is None:
                raise error(f"cannot import module {module_name!r}; {hint}")
            return None
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise error(f"cannot import module {exc.name!r}; {hint}") from None
        raise error(f"importing {module_name!r} failed: {first_line(exc)}") from None
    except Exception as exc:  # the user's module itself raised while importing
        raise error(f"importing {module_name!r} failed: {first_line(exc)}") from None
    found = getattr(module, attr, None)
    if found is None:
        raise error(f"module {module_name!r} has no {attr!r}; {hint}")
    if not callable(found):
        raise error(f"{path} is a {type(found).__name__}, not a function")
    return found


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
