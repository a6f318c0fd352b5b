"""Validated, typed views of the composed config, checked before any trial starts.

The composed Hydra config is turned into a plain dict once; the sections the orchestration
reads (train, sweep, storage, tracking) become frozen dataclasses with unknown keys rejected.
Model and data keys are passed to their builders, which reject unknown keys themselves.
Every problem is a one-line :class:`ConfigError` naming the key, the value and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.backend import BACKENDS
from sweeps.data import DataError, dataset_names, resolve_loader
from sweeps.errors import ConfigError
from sweeps.models import ModelConfigError, check_arguments, model_names, names, resolve_builder
from sweeps.precision import PRECISIONS, choose
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
    verbose: int = 0  # 2: Keras's own line per epoch, beside sweeps' trial view
    threads: int | None = None
    # auto: on a GPU mixed bfloat16 at compute capability >= 8.0, mixed float16 (loss-scaled) at
    # 7.x, float32 below; without one mixed bfloat16 on CPUs with bfloat16 instructions, float32
    # elsewhere (sweeps.precision).
    precision: str = "auto"
    # Stop a trial when sweep.metric has not improved for this many epochs (None: never).
    patience: int | None = None
    # XLA: auto is Keras's own choice (always on JAX, on TensorFlow only with a GPU, never on
    # PyTorch); without it a JAX train step runs op by op, twice as slow even on a CPU.
    jit_compile: bool | str = "auto"
    # A fresh process per trial returns all GPU memory to the driver when the trial ends.
    subprocess: bool = False
    # Keras backend of each trial's process: tensorflow, jax or torch (conf: KERAS_BACKEND's
    # value when set). In-process trials run on the worker's backend (sweeps.backend).
    backend: str = "tensorflow"
    # Per-process cap on GPU memory (MB) on every backend (JAX: as a fraction of the card's
    # memory), instead of the share a worker gets of a card it shares (sweeps.backend).
    gpu_memory_mb: int | None = None
    # Save a resumable state at every epoch end (sweeps.resume), so that a stopped or crashed
    # trial goes on from its last epoch, in the same MLflow run.
    resumable: bool = True


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
    # Ablation seeds per variant: an int, or "auto": min_repeats first, then one more round
    # at a time for the variants still undecided, up to max_repeats (sweeps.verdict).
    repeats: int | str = 3
    min_repeats: int = 3
    max_repeats: int = 10
    # None: derived from `seed` and the worker process, so that workers sharing a study do
    # not all sample the same points; an int replays one worker's sequence exactly.
    sampler_seed: int | None = None
    allow_space_change: bool = False
    # Worker processes this `run` starts (an int, or "auto": one per visible GPU, a card or a
    # MIG instance, times trials_per_gpu), and how many of them fill each GPU before the next;
    # see sweeps.launcher.
    workers: int | str = 1
    trials_per_gpu: int = 1
    # TPE's constant liar: "auto" turns it on when more than one worker shares the study.
    constant_liar: bool | str = "auto"

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    @property
    def auto_repeats(self) -> bool:
        """Whether the ablation adds repeats only where the verdict is still open."""
        return self.repeats == "auto"

    @property
    def first_repeats(self) -> int:
        """Repeats every variant gets before any verdict is looked at."""
        return self.min_repeats if self.auto_repeats else int(self.repeats)

    @property
    def repeat_budget(self) -> int:
        """The most repeats a variant can get."""
        return self.max_repeats if self.auto_repeats else int(self.repeats)


@dataclass(frozen=True)
class StorageConfig:
    """Where the Optuna study lives."""

    url: str | None = None
    heartbeat_interval: int = 60
    grace_period: int = 180
    max_retries: int = 2
    # RDB storages: a storage call failing on a lost connection is retried for this long
    # (a database restart or failover), each worker keeping at most pool_size connections.
    retry_timeout: float = 120.0
    pool_size: int = 2
    pool_pre_ping: bool = True


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow runs are logged."""

    uri: str | None = None
    log_checkpoint: bool = True


@dataclass(frozen=True)
class ReportConfig:
    """What ``report`` computes and draws (see conf/config.yaml)."""

    top_k: int = 10
    # Ablation's decision rule (sweeps.stats.design), recorded at the study's first run:
    # the metric decided on, the family-wise error, the equivalence band and the smallest
    # effect of interest (futility), in the metric's units (0.01 = 1 accuracy point).
    metric: str = "test_acc"
    alpha: float = 0.05
    margin: float = 0.01
    delta: float = 0.02
    inspect: bool = False
    inspect_layers: list[str] | None = None
    filter_steps: int = 40
    filters_per_layer: int = 8
    pattern_size: int = 64
    maps_per_layer: int = 16
    examples: int = 25


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
    report: ReportConfig = field(default_factory=ReportConfig)

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
    _check_renamed(raw.get("train") or {})
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
        report=_report(raw.get("report")),
    )
    validate(cfg)
    return cfg


def _report(raw: Mapping[str, Any] | None) -> ReportConfig:
    report = parse_section(ReportConfig, raw, "report")
    margin = report.margin
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin < 1:
        raise ConfigError(
            f"report.margin={margin!r}: must be a number > 0 and < 1 (accuracy, 0.01 = 1 point)"
        )
    for key in ("alpha", "delta"):
        value = getattr(report, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"report.{key}={value!r}: must be a number > 0 and < 1")
    if not margin <= report.delta:
        raise ConfigError(
            f"report.margin={margin}, report.delta={report.delta}: the equivalence band must "
            "not be wider than the smallest effect of interest (margin <= delta)"
        )
    # The test metrics exist once, for the kept epoch; a mean of the last K needs a per-epoch one.
    per_epoch = r"(val|train)_(acc|loss)(_last[1-9]\d*)?"
    if not re.fullmatch(rf"test_(acc|loss|macro_f1)|{per_epoch}", str(report.metric)):
        raise ConfigError(
            f"report.metric={report.metric!r}: test_acc, test_loss, test_macro_f1, val_acc, "
            "val_loss, train_acc, train_loss, or one of the last four as METRIC_lastK (the mean "
            "of the last K epochs, e.g. val_acc_last3)"
        )
    return dataclasses.replace(
        report, margin=float(margin), alpha=float(report.alpha), delta=float(report.delta)
    )


def _check_renamed(train: dict[str, Any]) -> None:
    """Refuses keys that were renamed, naming the new key; drops them when left unset."""
    if train.get("mixed_precision") is not None:
        raise ConfigError(
            f"train.mixed_precision={train['mixed_precision']!r} was replaced by train.precision: "
            "use train.precision=mixed_float16 (GPU), mixed_bfloat16, float32 or auto"
        )
    train.pop("mixed_precision", None)


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
    table = {
        "model.activation": names.ACTIVATIONS,
        "model.pooling": names.POOLINGS,
        "model.padding": names.PADDINGS,
        "model.pool_padding": names.PADDINGS,
        "model.base": names.TRANSFER_BASES,
        "train.optimizer": names.OPTIMIZERS,
        "train.backend": BACKENDS,
        "train.precision": PRECISIONS,
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
    if key == "sweep.workers":
        whole = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        ok = value == "auto" or whole
        return None if ok else "must be a whole number >= 1, or auto (one per visible GPU)"
    if key in ("sweep.constant_liar", "train.jit_compile"):
        return None if value == "auto" or isinstance(value, bool) else "must be auto, true or false"
    if key == "sweep.repeats":
        whole = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if whole or value == "auto" else "must be a whole number >= 1 or auto"
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
    "sweep.min_repeats",
    "sweep.max_repeats",
    "model.kernel_size",
    "model.pool_size",
    "model.depth",
    "model.filters",
    "model.dense_units",
    "train.threads",
    "train.patience",
    "storage.heartbeat_interval",
    "storage.grace_period",
    "storage.pool_size",
    "sweep.trials_per_gpu",
    "train.gpu_memory_mb",
}
_POSITIVE = {"train.learning_rate", "sweep.timeout", "model.leaky_alpha", "storage.retry_timeout"}


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
    """Checks every fixed value, every value the space can produce and every ablation variant.

    The built-in models' value rules (activation names, ...) do not apply to the keys of a
    user's own ``model.builder``: that builder owns its keys.
    """
    own = own_builder(cfg.model) is not None
    for section in ("model", "train", "sweep", "storage"):
        if section == "model" and own:
            continue
        for key, value in _flatten(cfg.raw.get(section) or {}, f"{section}."):
            check_value(key, value)
    for p in cfg.space:
        if own and p.name.startswith("model."):
            continue
        for value in p.extremes():
            check_value(p.name, value, where=f"space.{p.name}: {p.expr}")
    for v in cfg.variants:
        variant_own = own_builder(apply_overrides(cfg.raw, v.overrides)["model"]) is not None
        for key, value in v.overrides.items():
            flat = _flatten(value, f"{key}.") if isinstance(value, Mapping) else [(key, value)]
            for k, val in flat:
                if not (variant_own and k.startswith("model.")):
                    check_value(k, val, where=f"ablation variant '{v.name}': {k}")
    if cfg.sweep.mode == "ablation" and not cfg.variants:
        raise ConfigError(
            f"sweep.mode=ablation but study '{cfg.study}' declares no ablation variants; "
            "use sweep.mode=search"
        )
    _check_repeats(cfg)
    _check_rows_differ(cfg)
    if cfg.sweep.mode == "search" and not cfg.space:
        raise ConfigError(
            f"sweep.mode=search but study '{cfg.study}' declares no search space (space:)"
        )
    _check_registries(cfg)


def _check_repeats(cfg: RunConfig) -> None:
    """repeats=auto needs 2 <= min_repeats <= max_repeats."""
    sweep = cfg.sweep
    if sweep.auto_repeats and not 2 <= sweep.min_repeats <= sweep.max_repeats:
        raise ConfigError(
            f"sweep.min_repeats={sweep.min_repeats}, sweep.max_repeats={sweep.max_repeats}: "
            "sweep.repeats=auto needs 2 <= min_repeats <= max_repeats (a t test needs 2 runs)"
        )


def _check_rows_differ(cfg: RunConfig) -> None:
    """An ablation row that trains exactly what the baseline trains is refused.

    Its differences would all be 0 (same seeds, same data order): no spread, no comparison.
    Compared after ``train.precision`` is resolved on this host, so ``auto`` against the policy
    it resolves to is caught too.
    """
    if cfg.sweep.mode != "ablation" or len(cfg.variants) < 2:
        return

    def resolved(overrides: Mapping[str, Any]) -> dict[str, Any]:
        raw = apply_overrides(cfg.raw, overrides)
        raw.pop("ablation", None)
        train = raw.get("train") or {}
        train["precision"] = choose(str(train.get("precision", "auto")))
        return raw

    base = cfg.variants[0]
    baseline = resolved(base.overrides)
    for v in cfg.variants[1:]:
        if resolved(v.overrides) == baseline:
            raise ConfigError(
                f"ablation variant '{v.name}' trains exactly what '{base.name}' trains on this "
                f"host (set: {v.overrides}): change what it sets, or remove the row"
            )


def own_builder(model: Mapping[str, Any]) -> str | None:
    """The ``module:function`` of a user's own model builder (``model.builder``), or None."""
    builder = model.get("builder")
    return None if builder is None else str(builder)


def model_key(model: Mapping[str, Any]) -> str:
    """What the model registry is asked for: ``model.builder`` when set, else ``model.name``."""
    return own_builder(model) or str(model.get("name"))


# Keys sweeps reads itself; every other model key is a builder argument.
MODEL_OWN_KEYS = ("name", "builder", "input_size")


def _check_registries(cfg: RunConfig) -> None:
    models = [cfg.model] + [apply_overrides(cfg.raw, v.overrides)["model"] for v in cfg.variants]
    space_keys = [p.name.removeprefix("model.") for p in cfg.space if p.name.startswith("model.")]
    for i, model in enumerate(models):
        key = _check_model_name(model)
        if own_builder(model) is not None:
            continue  # its arguments are checked by check_own_code, which imports it
        arguments = {k: v for k, v in model.items() if k not in MODEL_OWN_KEYS}
        if i == 0:  # the space is searched on the base model; variants are ablation rows
            arguments.update(
                {k: None for k in space_keys if k not in (*arguments, *MODEL_OWN_KEYS)}
            )
        try:
            check_arguments(key, **arguments)
        except ModelConfigError as exc:
            raise ConfigError(str(exc)) from None
    _check_data_name(cfg.data)


def check_own_code(cfg: RunConfig) -> None:
    """Imports the user's own builder and loader and checks the builder's arguments.

    ``load`` only checks that their modules can be found, so that ``report`` does not import
    the Keras they import; ``run`` and ``plan`` call this before anything trains or builds.

    Raises:
        ConfigError: one line, when a module does not import, a name is not a function, or
            the builder does not take a model key.
    """
    models = [cfg.model] + [apply_overrides(cfg.raw, v.overrides)["model"] for v in cfg.variants]
    space_keys = [p.name.removeprefix("model.") for p in cfg.space if p.name.startswith("model.")]
    for i, model in enumerate(models):
        builder = own_builder(model)
        if builder is None:
            continue
        arguments = {k: v for k, v in model.items() if k not in MODEL_OWN_KEYS}
        if i == 0:  # the space is searched on the base model; variants are ablation rows
            arguments.update(
                {k: None for k in space_keys if k not in (*arguments, *MODEL_OWN_KEYS)}
            )
        try:
            resolve_builder(builder)
            check_arguments(builder, **arguments)
        except ModelConfigError as exc:
            message = str(exc)
            prefix = f"model.builder={builder}: "
            raise ConfigError(message if message.startswith(prefix) else prefix + message) from None
    loader = cfg.data.get("loader")
    if loader is not None:
        try:
            resolve_loader(str(loader))
        except DataError as exc:
            raise ConfigError(f"data.loader={loader}: {exc}") from None


def _check_model_name(model: Mapping[str, Any]) -> str:
    """Checks ``model.name`` against the registry, or imports ``model.builder``."""
    builder, name = own_builder(model), model.get("name")
    if builder is None:
        if name not in model_names():
            raise ConfigError(f"model.name={name!r}: valid models: {', '.join(model_names())}")
        return str(name)
    if builder == "???":
        raise ConfigError(
            "model.builder is not set: give model.builder=module:function (your Keras builder)"
        )
    if name is not None:
        raise ConfigError(
            f"model.builder={builder} and model.name={name} are both set: start the study from "
            f"`- override /model: builder` (the {name} keys are not your builder's)"
        )
    try:
        resolve_builder(builder, find_only=True)
    except ModelConfigError as exc:
        raise ConfigError(f"model.builder={builder}: {exc}") from None
    return builder


def _check_data_name(data: Mapping[str, Any]) -> None:
    """Checks ``data.name`` against the registry, or imports ``data.loader``."""
    loader = data.get("loader")
    if loader is None:
        if data.get("name") not in dataset_names():
            raise ConfigError(
                f"data.name={data.get('name')!r}: valid datasets: {', '.join(dataset_names())}"
            )
        return
    if loader == "???":
        raise ConfigError(
            "data.loader is not set: give data.loader=module:function (returning ImageData)"
        )
    if data.get("name") is not None:
        raise ConfigError(
            f"data.loader={loader} and data.name={data['name']} are both set: start the study "
            f"from `- override /data: loader` (the {data['name']} keys are not your loader's)"
        )
    try:
        resolve_loader(str(loader), find_only=True)
    except DataError as exc:
        raise ConfigError(f"data.loader={loader}: {exc}") from None
