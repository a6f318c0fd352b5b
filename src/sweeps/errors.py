"""Errors a user can fix. Each carries a one-line message naming the problem and the fix."""

from __future__ import annotations

import re
from typing import Any


class SweepsError(Exception):
    """Base for every error the CLI turns into one line instead of a traceback."""

    exit_code = 2


class ConfigError(SweepsError):
    """A config key has a bad value, an unknown name or an impossible range."""


class StorageUnreachable(SweepsError):
    """The Optuna storage cannot be reached or opened."""

    exit_code = 3


class TrackingUnreachable(SweepsError):
    """The MLflow tracking store cannot be reached or opened."""

    exit_code = 3


class StudyMismatch(SweepsError):
    """An existing study of the same name was created with a different search space."""


class TrialFailed(Exception):
    """A trial could not finish for a reason worth recording (NaN loss, OOM, bad architecture)."""


_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]*(?P<at>@)")


def mask_url(text: str) -> str:
    """Replaces the password of every ``scheme://user:password@host`` in ``text`` with ``***``."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<at>", str(text))


def mask_config(node: Any) -> Any:
    """A copy of a config tree with the password of every URL in it masked."""
    if isinstance(node, dict):
        return {k: mask_config(v) for k, v in node.items()}
    if isinstance(node, list):
        return [mask_config(v) for v in node]
    return mask_url(node) if isinstance(node, str) else node


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A short single-line description of an exception, passwords masked."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return mask_url(f"{type(exc).__name__}: {text}" if not isinstance(exc, SweepsError) else text)
