"""What every report file needs: CSV rows, number cells, matplotlib writing files only."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console

PIPED_WIDTH = 200  # off a terminal without COLUMNS: whole rows in logs and captured output


def table_console(file: IO[str] | None = None) -> Console:
    """The console tables are printed on.

    On a terminal, the terminal's width (tables wrap inside their cells to fit). Off a
    terminal, ``COLUMNS`` when it is set, else :data:`PIPED_WIDTH`.
    """
    console = Console(highlight=False, file=file)
    if console.is_terminal or os.environ.get("COLUMNS", "").strip().isdigit():
        return console  # rich itself follows COLUMNS
    return Console(highlight=False, file=file, width=PIPED_WIDTH)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Every column of every row; empty cells where a number is undefined."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def number(value: float | None) -> str:
    """A table cell: four decimals, or a dash where there is no number."""
    return "—" if value is None or math.isnan(value) else f"{value:.4f}"


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: reports run on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
