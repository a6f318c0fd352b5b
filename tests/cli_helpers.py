"""Running the real CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def sweeps_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweeps", *args]


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None):
    """Runs ``python -m sweeps ARGS`` in ``cwd`` and returns the completed process."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        sweeps_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def error_line(proc) -> str:
    """The one error line the CLI printed; fails when there is a traceback or none."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("sweeps: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]
