"""``report.inspect=true``: the best trial's checkpoint, drawn by :mod:`sweeps.models.inspect`.

Activation maps, filter patterns and grids of correctly and wrongly classified test images,
for the study's best trial, from the checkpoint its MLflow run holds and the study's data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from sweeps import services
from sweeps.config import ReportConfig, RunConfig
from sweeps.data import DataError
from sweeps.data.arrays import prepare_images
from sweeps.errors import SweepsError, one_line
from sweeps.keys import RUN_ID_ATTR
from sweeps.models import inspect

if TYPE_CHECKING:
    import keras

CHECKPOINT = "checkpoint/best.keras"  # where the trainer logs the best epoch's model
MAX_TEST_IMAGES = 1000  # predicted for the example grids; enough to find wrong ones


def inspect_best(
    cfg: RunConfig,
    study: Any,
    tracker: Any | None,
    out: Path,
    options: ReportConfig,
    console: Console,
) -> list[Path]:
    """Draws every figure for the study's best trial into ``out``; returns the files.

    Skips (saying why, returning []) when there is no checkpoint or the data cannot be loaded.
    """
    best = study.best_trial
    model = _load_checkpoint(best, tracker, console)
    if model is None:
        return []
    try:
        data = services.load_data(cfg)
    except (SweepsError, DataError) as exc:
        console.print(
            f"[yellow]inspect skipped[/yellow]: the data cannot be loaded ({one_line(exc)})"
        )
        return []
    out.mkdir(parents=True, exist_ok=True)
    x, y = sample_test_images(model, data.test, MAX_TEST_IMAGES)
    pred = inspect.predict_classes(model, x)
    console.print(
        f"inspecting trial {best.number} ({_trial_label(best)}): test accuracy of the "
        f"checkpoint on {len(y)} test images {np.mean(pred == y):.4f}"
    )
    paths = inspect.activation_grids(model, x[0], out, options.maps_per_layer)
    for name in options.inspect_layers or inspect.pattern_layers(model):
        try:
            paths.append(
                inspect.pattern_sheet(model, name, options.filters_per_layer,
                                      options.filter_steps, options.pattern_size, out)
            )  # fmt: skip
        except ValueError as exc:  # an unknown layer, or a map that collapses at this size
            console.print(f"[yellow]filter patterns of {name} skipped[/yellow]: {one_line(exc)}")
    names = data.class_names
    for chosen, title, file in ((pred == y, "correctly classified", "correct.png"),
                                (pred != y, "wrongly classified", "wrong.png")):  # fmt: skip
        paths += inspect.example_grid(x, y, pred, names, chosen, title, out / file,
                                      options.examples)  # fmt: skip
    return paths


def _trial_label(trial: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in trial.params.items()) or "no parameters"


def _load_checkpoint(trial: Any, tracker: Any | None, console: Console) -> keras.Model | None:
    import keras

    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if tracker is None or not run_id:
        console.print(f"[yellow]inspect skipped[/yellow]: trial {trial.number} has no MLflow run")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.download_artifact(run_id, CHECKPOINT, Path(tmp))
        if path is None:
            console.print(
                f"[yellow]inspect skipped[/yellow]: run {run_id} of trial "
                f"{trial.number} has no {CHECKPOINT} (tracking.log_checkpoint=false?)"
            )
            return None
        return keras.saving.load_model(path, compile=False, safe_mode=True)  # no optimizer needed


def sample_test_images(model: keras.Model, split: Any, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` test images spread over the split, prepared as the trainer feeds them."""
    idx = np.unique(np.linspace(0, len(split) - 1, min(limit, len(split))).astype(int))
    h, w, c = model.input_shape[1:]
    # The pipelines' own preparation and rescale, without either pipeline: any backend.
    x = prepare_images(split.x[idx], (h, w), c).astype("float32") / 255.0
    return x, split.y[idx]
