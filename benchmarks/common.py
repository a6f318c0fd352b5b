"""What the benchmarks share: the result record, machine facts, medians, configs, processes."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = RESULTS_DIR.parents[1]
PACKAGES = ("tensorflow", "keras", "optuna", "mlflow", "hydra-core", "numpy")
# Children inherit this; TensorFlow's C++ banner would bury the benchmark's own lines.
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


@dataclass
class Result:
    """What one benchmark measured: written as JSON, printed as a table.

    Attributes:
        workload: What ran (sizes, epochs, studies, commands), enough to rerun it.
        repeats: One dict per repeat with every measurement of that repeat.
        medians: Medians over the repeats.
        ratios: The named ratios the README quotes (``sweeps_over_bare``, ...).
        targets: Target of a ratio or median, as ``"<= 1.03"`` or ``">= 1.3"``; printed with
            met or missed, never asserted.
        table: A header row, then rows; printed as they are.
        notes: What a reader needs to read the numbers right.
    """

    workload: dict[str, Any]
    repeats: list[dict[str, Any]]
    medians: dict[str, float]
    ratios: dict[str, float]
    targets: dict[str, str] = field(default_factory=dict)
    table: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def machine() -> dict[str, Any]:
    """CPU, memory, OS, Python and the versions of the libraries that set the numbers."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    flags = (_proc_field("/proc/cpuinfo", "flags") or "").split()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        # bfloat16 instructions decide what train.precision=auto trains in on a CPU
        "cpu_bf16_flags": [f for f in ("avx512_bf16", "amx_bf16") if f in flags],
        "memory": _proc_field("/proc/meminfo", "MemTotal"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": Path("/proc/driver/nvidia/gpus").is_dir(),  # an NVIDIA driver with a card
        **versions,
    }


def _proc_field(path: str, key: str) -> str | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), None)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def paired_ratio(rows: Sequence[Mapping[str, Any]], top: str, bottom: str) -> float:
    """Median over repeats of ``row[top] / row[bottom]``.

    Pairing the ways of one repeat, which ran minutes apart, cancels the slow drift of a
    shared machine better than a ratio of two medians does.
    """
    return median(row[top] / row[bottom] for row in rows)


def epochs_trained(trial: Any) -> int:
    """Epochs a finished trial trained: stored on complete trials, reported ones otherwise."""
    if "epochs_trained" in trial.user_attrs:
        return int(trial.user_attrs["epochs_trained"])
    return len(trial.intermediate_values)


def target_met(value: float, target: str) -> bool:
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def compose(study: str, *overrides: str, space: Mapping[str, Any] | None = None) -> Any:
    """The validated config ``python -m sweeps run +study=STUDY OVERRIDES`` would run.

    Args:
        study: A study of conf/study/.
        overrides: Hydra overrides, as on the command line.
        space: Replaces the study's search space (a Hydra override would merge into it).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from sweeps.catalogue import conf_dir
    from sweeps.config import load

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"+study={study}", *overrides])
    raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    if space is not None:
        raw["space"] = dict(space)
    return load(raw, study=study)


def image_folder(root: Path, per_class: Mapping[str, int], size: int) -> Path:
    """A two-class folder in the age_gap layout ``{train,validation,test}/{old,young}/*.png``."""
    # The test suite's generator: classes a small CNN can learn, so training is realistic.
    from tests.imagegen import make_image_folder

    make_image_folder(root, layout="splits", classes=("old", "young"), per_class=dict(per_class),
                      size=(size, size), odd=False)  # fmt: skip
    return root


def python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs ``python ARGS`` from ``cwd`` (default: the repository root); raises with stderr's
    tail on failure."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd or REPO, env=child_env(),
                          capture_output=True, text=True, timeout=3600)  # fmt: skip
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"python {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc


def child_env() -> dict[str, str]:
    return {**os.environ, **CHILD_ENV}


def child_result(module: str, *args: str) -> dict[str, Any]:
    """Runs ``python -m benchmarks.MODULE ARGS``; returns the JSON of its last output line."""
    out = python("-m", f"benchmarks.{module}", *args).stdout
    return json.loads(out.strip().splitlines()[-1])


def emit(result: Mapping[str, Any]) -> None:
    """A child's answer to its parent: one JSON line, last on stdout."""
    print(json.dumps(result), flush=True)


def write(name: str, quick: bool, result: Result, out_dir: Path, started: float,
          load_before: tuple[float, ...]) -> Path:  # fmt: skip
    """Writes the run's JSON: the command, the machine, the result and how busy the box was."""
    command = f"python -m benchmarks {name}" + (" --quick" if quick else "")
    record = {
        "benchmark": name,
        "command": command,
        "quick": quick,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        # Other people's tests share the box: load averages before and after show how much.
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **asdict(result),
        "target_met": {k: target_met(_figure(result, k), t) for k, t in result.targets.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _figure(result: Result, key: str) -> float:
    return result.ratios[key] if key in result.ratios else result.medians[key]


def render(result: Result) -> str:
    """The table, then each target with met or missed, then the notes."""
    widths = [max(len(row[i]) for row in result.table) for i in range(len(result.table[0]))]
    lines = ["  ".join(_cells(row, widths)) for row in result.table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for key, target in result.targets.items():
        value = _figure(result, key)
        verdict = "met" if target_met(value, target) else "MISSED"
        lines.append(f"target {key} {target}: {value:.3f} {verdict}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _cells(row: list[str], widths: list[int]) -> list[str]:
    """The first column left-aligned (names), the others right-aligned (numbers)."""
    return [row[0].ljust(widths[0])] + [
        c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
    ]


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
