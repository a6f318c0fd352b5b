"""What a trainer receives for one trial, and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps import backend
from sweeps.config import (
    RunConfig,
    TrainConfig,
    check_value,
    model_key,
    own_builder,
    parse_section,
)
from sweeps.errors import mask_url
from sweeps.precision import choose


@dataclass
class TrialSpec:
    """One trial, fully resolved: plain values a trainer can use without Optuna or Hydra.

    Attributes:
        params: What the sampler chose (or the ablation variant and its overrides).
        config: The whole config with ``params`` applied.
        input_size: ``(h, w)`` the model sees, or None for the data's own size.
        workdir: Scratch folder for the trial's artifacts; removed once they are uploaded.
    """

    study: str
    number: int
    seed: int
    params: dict[str, Any]
    config: dict[str, Any]
    train: TrainConfig
    model_name: str
    model_kwargs: dict[str, Any]
    input_size: tuple[int, int] | None
    workdir: Path
    log_checkpoint: bool = True
    metric: str = "val_acc"
    variant: str | None = None
    repeat: int | None = None
    # A saved state (sweeps.resume) this trial goes on from, instead of epoch 0.
    resume_from: Path | None = None

    @property
    def state_path(self) -> Path | None:
        """Where the trainer writes the resumable state at every epoch end (None: it doesn't)."""
        return self.workdir / "resume" / "state.zip" if self.train.resumable else None

    def loggable_params(self) -> dict[str, Any]:
        """The parameters logged to MLflow: the trial's model, train and data settings."""
        out: dict[str, Any] = {"seed": self.seed}
        for section in ("model", "train", "data"):
            for key, value in (self.config.get(section) or {}).items():
                out[f"{section}.{key}"] = value
        out["train.precision_resolved"] = choose(self.train.precision)
        out["train.jit_compile_resolved"] = backend.jit_compile_here(
            self.train.jit_compile, self.train.backend
        )
        if self.variant is not None:
            out["ablation.variant"], out["ablation.repeat"] = self.variant, self.repeat
        return {k: mask_url(str(v)) if k == "data.root" else v for k, v in out.items()}


@dataclass
class TrialOutcome:
    """What a finished trial produced.

    Attributes:
        history: One dict per epoch: train_loss, train_acc, val_loss, val_acc.
        best_epoch: Epoch (from 1) whose weights were kept.
        best: The history entry of the best epoch.
        test: Metrics of the best epoch's weights on the test split (test_loss, test_acc, ...).
        artifacts: ``(file, artifact folder or None)`` to upload.
        stop_reason: Why training ended: ``epochs`` (all of train.epochs ran) or ``patience``
            (train.patience epochs without a better sweep.metric).
    """

    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float]
    test: dict[str, float]
    param_count: int
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)
    stop_reason: str = "epochs"


def input_size(value: Any) -> tuple[int, int] | None:
    """``n`` or ``[h, w]`` as ``(h, w)``."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def make_spec(
    cfg: RunConfig,
    raw: dict[str, Any],
    number: int,
    seed: int,
    params: dict[str, Any],
    work_root: Path,
    *,
    variant: str | None = None,
    repeat: int | None = None,
) -> TrialSpec:
    """Builds the spec of one trial from the config with its parameters applied."""
    model = dict(raw["model"])
    name = model_key(model)  # the registry name, or a user's own builder's module:function
    if own_builder(model) is None:  # a user's builder owns its keys' values
        for key, value in model.items():
            check_value(f"model.{key}", value)
    train = parse_section(TrainConfig, raw["train"], "train")
    for key, value in raw["train"].items():
        check_value(f"train.{key}", value)
    model.pop("name", None)
    model.pop("builder", None)
    size = input_size(model.pop("input_size", None))
    return TrialSpec(
        study=cfg.sweep.name,
        number=number,
        seed=seed,
        params=params,
        config=raw,
        train=train,
        model_name=name,
        model_kwargs=model,
        input_size=size,
        workdir=work_root / f"trial-{number:04d}",
        log_checkpoint=cfg.tracking.log_checkpoint,
        metric=cfg.sweep.metric,
        variant=variant,
        repeat=repeat,
    )
