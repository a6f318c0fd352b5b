"""startup: wall time of the commands a user types before any training.

``--help`` and ``studies`` must answer without importing TensorFlow; ``plan`` builds every model
of the space's extremes, so it pays for TensorFlow once. Two floors put the figures in scale:
the interpreter alone, and ``import tensorflow``. Commands alternate across repeats.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

from benchmarks.common import Result, fmt, median, python

COMMANDS = {
    "python": ["-c", "pass"],
    "help": ["-m", "sweeps", "--help"],
    "studies": ["-m", "sweeps", "studies"],
    "import_tensorflow": ["-c", "import tensorflow"],
    "plan": ["-m", "sweeps", "plan", "+study=age_gap"],
}


def run(quick: bool, repeats: int | None = None) -> Result:
    """Times each command ``repeats`` times (5, or 1 with ``quick``)."""
    commands = dict(COMMANDS)
    notes = ["each figure is the wall time of a fresh `python ...` process, median of repeats"]
    if quick:
        del commands["import_tensorflow"]  # a floor for people reading the figures, not for CI
    if importlib.util.find_spec("sweeps.plan") is None:
        del commands["plan"]
        notes.append("`sweeps plan` is not in this checkout yet: measured --help and studies")
    rows = []
    # A fresh folder, as a user's project: nothing lands in the checkout (plan leaves nothing,
    # and a stray store would stay in the temporary folder).
    with tempfile.TemporaryDirectory(prefix="sweeps-startup-") as work:
        for r in range(repeats or (1 if quick else 5)):
            times = {name: _time(args, Path(work)) for name, args in commands.items()}
            rows.append({"repeat": r, **times})
    medians = {name: median(row[name] for row in rows) for name in commands}
    ratios = {"help_over_python": medians["help"] / medians["python"],
              "studies_over_python": medians["studies"] / medians["python"]}  # fmt: skip
    if "plan" in medians and "import_tensorflow" in medians:
        ratios["plan_over_import_tensorflow"] = medians["plan"] / medians["import_tensorflow"]
    table = [["command", "seconds"]]
    table += [
        [f"python {' '.join(args)}", fmt(medians[name], 3)] for name, args in commands.items()
    ]
    return Result(
        workload={
            "commands": {name: f"python {' '.join(a)}" for name, a in commands.items()},
            "repeats": len(rows),
        },  # fmt: skip
        repeats=rows,
        medians=medians,
        ratios=ratios,
        table=table,
        notes=notes,
    )


def _time(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    python(*args, cwd=cwd)
    return time.perf_counter() - start
