"""Validated, typed views of the composed config, checked before any trial starts.

The composed Hydra config is turned into a plain dict once; the sections the orchestration
reads (train, sweep, storage, tracking) become frozen dataclasses with unknown keys rejected.
Model and data keys are passed to their builders, which reject unknown keys themselves.
Every problem is a one-line :class:`ConfigError` naming the key, the value and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.errors import ConfigError
from sweeps.space import Param, parse_space

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp")
PRUNERS = ("median", "hyperband", "none")
MODES = ("search", "ablation")
METRICS = {"val_acc": "maximize", "val_loss": "minimize"}


@dataclass(frozen=True)
class TrainConfig:
    """How one trial trains."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float | None = None
    augment: dict | None = None
    verbose: int = 2
    threads: int | None = None
    mixed_precision: bool = False
    jit_compile: bool = False
    # A fresh process per trial returns all GPU memory to the driver when the trial ends.
    subprocess: bool = False


@dataclass(frozen=True)
class SweepConfig:
    """How the study samples, prunes and stops."""

    name: str = ""
    mode: str = "search"
    n_trials: int = 20
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    metric: str = "val_acc"
    startup_trials: int = 5
    warmup_epochs: int = 1
    repeats: int = 3
    # None: derived from `seed` and the worker process, so that workers sharing a study do
    # not all sample the same points; an int replays one worker's sequence exactly.
    sampler_seed: int | None = None
    allow_space_change: bool = False

    @property
    def direction(self) -> str:
        return METRICS[self.metric]


@dataclass(frozen=True)
class StorageConfig:
    """Where the Optuna study lives."""

    url: str | None = None
    heartbeat_interval: int = 60
    grace_period: int = 180
    max_retries: int = 2


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow runs are logged."""

    uri: str | None = None
    log_checkpoint: bool = True


@dataclass(frozen=True)
class Variant:
    """One row of an ablation: a name, its overrides and the document's numbers."""

    name: str
    overrides: dict[str, Any]
    published: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class RunConfig:
    """Everything the run, plan and report commands need, validated."""

    raw: dict[str, Any]
    train: TrainConfig
    sweep: SweepConfig
    storage: StorageConfig
    tracking: TrackingConfig
    space: list[Param]
    variants: list[Variant]
    seed: int
    store_dir: Path
    study: str

    @property
    def data(self) -> dict[str, Any]:
        return self.raw["data"]

    @property
    def model(self) -> dict[str, Any]:
        return self.raw["model"]


def parse_section(cls: type, raw: Mapping[str, Any] | None, name: str):
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {name}.{unknown[0]}; valid keys of {name}: {', '.join(sorted(fields))}"
        )
    return cls(**raw)


def load(raw: Mapping[str, Any], study: str = "") -> RunConfig:
    """Validates a composed config (as a plain dict) and returns its typed view.

    Args:
        raw: The composed config, resolved, as plain containers.
        study: The study's config name, used when ``sweep.name`` is not set.

    Raises:
        ConfigError: on an unknown key, an unknown name or an impossible value.
    """
    raw = copy.deepcopy(dict(raw))
    known = {
        "data",
        "model",
        "train",
        "sweep",
        "storage",
        "tracking",
        "seed",
        "store_dir",
        "space",
        "ablation",
        "report",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown top-level key '{unknown[0]}'; valid: {', '.join(sorted(known))}"
        )
    sweep = parse_section(SweepConfig, raw.get("sweep"), "sweep")
    if not sweep.name:
        if not study:
            raise ConfigError("no study chosen: add +study=NAME (see conf/study/)")
        sweep = dataclasses.replace(sweep, name=study)
    cfg = RunConfig(
        raw=raw,
        train=parse_section(TrainConfig, raw.get("train"), "train"),
        sweep=sweep,
        storage=parse_section(StorageConfig, raw.get("storage"), "storage"),
        tracking=parse_section(TrackingConfig, raw.get("tracking"), "tracking"),
        space=parse_space(raw.get("space")),
        variants=_variants(raw.get("ablation") or {}),
        seed=int(raw.get("seed", 0)),
        store_dir=Path(str(raw.get("store_dir", "sweeps-store"))),
        study=study or sweep.name,
    )
    validate(cfg)
    return cfg


def _variants(ablation: Mapping[str, Any]) -> list[Variant]:
    unknown = sorted(set(ablation) - {"baseline", "variants"})
    if unknown:
        raise ConfigError(f"unknown key ablation.{unknown[0]}; valid: baseline, variants")
    baseline = ablation.get("baseline") or {}
    rows = [{"name": "baseline", **baseline}] if ablation.get("variants") else []
    rows += list(ablation.get("variants") or [])
    variants, seen = [], set()
    for i, row in enumerate(rows):
        extra = sorted(set(row) - {"name", "set", "published", "note"})
        if extra or not row.get("name"):
            raise ConfigError(
                f"ablation variant #{i}: needs a name and takes set, published, note"
                + (f" (unknown key {extra[0]})" if extra else "")
            )
        if row["name"] in seen:
            raise ConfigError(f"ablation variant name '{row['name']}' is used twice")
        seen.add(row["name"])
        variants.append(
            Variant(
                name=str(row["name"]),
                overrides=dict(row.get("set") or {}),
                published={k: float(v) for k, v in (row.get("published") or {}).items()},
                note=str(row.get("note") or ""),
            )
        )
    return variants


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Returns a copy of ``raw`` with dotted-path overrides set; the parent path must exist.

    Raises:
        ConfigError: when a path names a key the config does not have.
    """
    out = copy.deepcopy(dict(raw))
    for path, value in overrides.items():
        node = out
        *parents, leaf = str(path).split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"override {path}: the config has no section '{key}'")
            node = node[key]
        if leaf not in node and parents and parents[0] not in ("model", "data"):
            raise ConfigError(f"override {path}: unknown key '{leaf}' in {'.'.join(parents)}")
        node[leaf] = copy.deepcopy(value)
    return out


# -- value rules ---------------------------------------------------------------------------


def _names(key: str) -> tuple[str, ...]:
    from sweeps.models import names

    table = {
        "model.activation": names.ACTIVATIONS,
        "model.pooling": names.POOLINGS,
        "model.padding": names.PADDINGS,
        "model.pool_padding": names.PADDINGS,
        "model.base": names.TRANSFER_BASES,
        "train.optimizer": names.OPTIMIZERS,
        "sweep.sampler": SAMPLERS,
        "sweep.pruner": PRUNERS,
        "sweep.mode": MODES,
        "sweep.metric": tuple(METRICS),
    }
    return table.get(key, ())


def _rule(key: str, value: Any) -> str | None:
    """Why ``value`` is impossible for ``key``, or None when it is fine."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and key in _PER_BLOCK:
        return next((r for r in (_rule(key, v) for v in value) if r), None)
    valid = _names(key)
    if valid:
        return None if value in valid else f"must be one of {', '.join(valid)}"
    if key.endswith("dropout") or key.endswith("_fraction"):
        ok = isinstance(value, (int, float)) and 0 <= value < 1
        return None if ok else "must be >= 0 and < 1"
    if key in _POSITIVE_INT:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else "must be a whole number >= 1"
    if key in _POSITIVE:
        ok = isinstance(value, (int, float)) and value > 0
        return None if ok else "must be > 0"
    if key == "model.input_size":
        sizes = value if isinstance(value, (list, tuple)) else [value]
        ok = all(isinstance(s, int) and s >= 1 for s in sizes) and len(sizes) in (1, 2)
        return None if ok else "must be n or [h, w] with whole numbers >= 1"
    return None


_PER_BLOCK = {"model.padding", "model.block_dropout", "model.filters", "model.dense_units"}
_POSITIVE_INT = {
    "train.epochs",
    "train.batch_size",
    "sweep.n_trials",
    "sweep.repeats",
    "model.kernel_size",
    "model.pool_size",
    "model.depth",
    "model.filters",
    "model.dense_units",
    "train.threads",
    "storage.heartbeat_interval",
    "storage.grace_period",
}
_POSITIVE = {"train.learning_rate", "sweep.timeout", "model.leaky_alpha"}


def _flatten(node: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, Mapping) and key not in ("augment", "classes"):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check_value(key: str, value: Any, where: str = "") -> None:
    """Raises a one-line ConfigError when ``value`` is impossible for ``key``."""
    reason = _rule(key, value)
    if reason:
        raise ConfigError(f"{where or key}={value!r}: {key} {reason}")


def validate(cfg: RunConfig) -> None:
    """Checks every fixed value, every value the space can produce and every ablation variant."""
    for section in ("model", "train", "sweep", "storage"):
        for key, value in _flatten(cfg.raw.get(section) or {}, f"{section}."):
            check_value(key, value)
    for p in cfg.space:
        for value in p.extremes():
            check_value(p.name, value, where=f"space.{p.name}: {p.expr}")
    for v in cfg.variants:
        apply_overrides(cfg.raw, v.overrides)
        for key, value in v.overrides.items():
            flat = _flatten(value, f"{key}.") if isinstance(value, Mapping) else [(key, value)]
            for k, val in flat:
                check_value(k, val, where=f"ablation variant '{v.name}': {k}")
    if cfg.sweep.mode == "ablation" and not cfg.variants:
        raise ConfigError(
            f"sweep.mode=ablation but study '{cfg.study}' declares no ablation variants; "
            "use sweep.mode=search"
        )
    if cfg.sweep.mode == "search" and not cfg.space:
        raise ConfigError(
            f"sweep.mode=search but study '{cfg.study}' declares no search space (space:)"
        )
    _check_registries(cfg)


def _check_registries(cfg: RunConfig) -> None:
    from sweeps.data import dataset_names
    from sweeps.models import model_names

    models = [cfg.model.get("name")] + [
        v.overrides["model"].get("name") for v in cfg.variants if "model" in v.overrides
    ]
    for name in models:
        if name not in model_names():
            raise ConfigError(f"model.name={name!r}: valid models: {', '.join(model_names())}")
    if cfg.data.get("name") not in dataset_names():
        raise ConfigError(
            f"data.name={cfg.data.get('name')!r}: valid datasets: {', '.join(dataset_names())}"
        )
