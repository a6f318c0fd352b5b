"""The `plan` command: what each ablation variant or search extreme builds, without training.

Every row is a real Keras model built with random weights (nothing is loaded, no image is
decoded): its parameter count, the output shape after each block, FLOPs per image, or a warning
when the feature map collapses. The input shape and class count come from the data config (and
the class folders of an image folder that is there); a user's own ``data.loader`` is called
once, since only its result tells them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sweeps.config import MODEL_OWN_KEYS, RunConfig, apply_overrides, check_own_code, model_key
from sweeps.data import load_dataset
from sweeps.errors import ConfigError, one_line
from sweeps.models import ModelConfigError, create_model
from sweeps.report_files import table_console
from sweeps.trial import input_size

# Fixed image geometry of the bundled datasets: (decoded size, channels, classes).
_DATASETS = {"digits": (8, 1, 10), "fashion_mnist": (28, 1, 10)}
_GLOBAL_POOLS = ("GlobalAveragePooling2D", "GlobalMaxPooling2D")  # common in users' own models
_BLOCK_KINDS = ("MaxPooling2D", "AveragePooling2D", "Flatten", *_GLOBAL_POOLS)
_SHOWN_KINDS = ("Conv2D", "MaxPooling2D", "AveragePooling2D", "Flatten", "Dense", "PReLU",
                *_GLOBAL_POOLS)  # fmt: skip


@dataclass(frozen=True)
class Layer:
    """One layer of a planned model (activations and dropout, which change nothing, left out)."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    flops: int


@dataclass(frozen=True)
class PlanRow:
    """One planned model.

    Attributes:
        name: Variant name, ``base``, or ``key=value`` for a search extreme.
        overrides: What the row changes in the study's config.
        input_shape: ``(h, w, c)`` the model sees.
        num_classes: Classes of the output layer.
        param_count: All weights, or None when the model cannot be built.
        trainable: Trainable weights.
        flops: FLOPs per image (2 x multiply-adds of conv and dense layers).
        blocks: Output shape after each block (pooling layers, then the flattened features).
        layers: Per-layer detail.
        warning: Why the model cannot be built (a collapsing feature map, a bad value).
    """

    name: str
    overrides: dict[str, Any]
    input_shape: tuple[int, int, int]
    num_classes: int
    param_count: int | None = None
    trainable: int | None = None
    flops: int | None = None
    blocks: list[tuple[int, ...]] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    warning: str = ""


def plan_study(cfg: RunConfig, console: Console | None = None) -> list[PlanRow]:
    """Builds, prints and returns the rows of the study's mode (ablation or search)."""
    console = console or wide_console()
    rows = plan_rows(cfg)
    print_plan(cfg, rows, console)
    return rows


def plan_rows(cfg: RunConfig) -> list[PlanRow]:
    """One row per ablation variant, or per search-space extreme, in config order."""
    check_own_code(cfg)  # a user's builder or loader: imported, its arguments checked
    if cfg.sweep.mode == "ablation":
        cases = [(v.name, v.overrides) for v in cfg.variants]
    else:
        cases = search_extremes(cfg)
    return [plan_row(cfg.raw, name, overrides) for name, overrides in cases]


def search_extremes(cfg: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """The base config, then each model parameter of the space at each end, one at a time.

    Train parameters (batch size, learning rate, ...) do not change the model, so they are
    left out; a conditional parameter brings the values its condition needs.
    """
    cases: list[tuple[str, dict[str, Any]]] = [("base", {})]
    seen = [cfg.model]
    for p in cfg.space:
        if not p.name.startswith("model."):
            continue
        for value in p.extremes():
            overrides = {path: allowed[0] for path, allowed in p.when}
            overrides[p.name] = value
            model = apply_overrides(cfg.raw, overrides)["model"]
            if model in seen:  # an end that is the base value, or a row already planned
                continue
            seen.append(model)
            name = ", ".join(f"{k.removeprefix('model.')}={_text(v)}" for k, v in overrides.items())
            cases.append((name, overrides))
    return cases


def plan_row(raw: dict[str, Any], name: str, overrides: dict[str, Any]) -> PlanRow:
    """Builds one model with random weights and summarises it; problems become a warning."""
    config = apply_overrides(raw, overrides)
    shape, num_classes = input_geometry(config)
    kwargs = {k: v for k, v in config["model"].items() if k not in MODEL_OWN_KEYS}
    model = model_key(config["model"])  # a registry name, or a user's builder module:function
    if model == "transfer":
        kwargs["weights"] = "random"  # the shapes and counts do not depend on the weights
    base = PlanRow(name, dict(overrides), shape, num_classes)
    try:
        return _built(base, model, kwargs)
    except ModelConfigError as exc:  # ArchitectureError included: a collapsing feature map
        return replace(base, warning=str(exc))


def _built(row: PlanRow, model_name: str, kwargs: dict[str, Any]) -> PlanRow:
    """The row with the built model's numbers; create_model checks the architecture first."""
    import keras

    from sweeps.models.summary import describe  # imports Keras

    keras.backend.clear_session()  # one plan builds many models; keep only the current one
    model = create_model(
        model_name, input_shape=row.input_shape, num_classes=row.num_classes, **kwargs
    )
    summary = describe(model)
    layers = [
        Layer(info.name, info.kind, tuple(info.output_shape), info.params, info.flops)
        for info in summary.layers
        if info.kind in _SHOWN_KINDS
    ]
    return replace(
        row,
        param_count=summary.param_count,
        trainable=summary.trainable_params,
        flops=summary.flops_per_image,
        blocks=[la.output_shape for la in layers if la.kind in _BLOCK_KINDS],
        layers=layers,
    )


def input_geometry(config: dict[str, Any]) -> tuple[tuple[int, int, int], int]:
    """``(h, w, c)`` the model sees and the number of classes, from the config alone.

    The size is ``model.input_size``, else the size the data is decoded at, as in training.

    Raises:
        ConfigError: when neither the model nor the data config fixes the image size.
    """
    data, model = config["data"], config["model"]
    name = data.get("loader") or data.get("name")
    if data.get("loader"):
        (*decoded, channels), classes = _loaded_geometry(data)
    elif name in _DATASETS:
        decoded, channels, classes = _DATASETS[name]
        decoded = data.get("image_size") or decoded
    else:
        decoded = data.get("image_size")
        channels = int(data.get("channels") or 3)
        # Not named and no folder to count them in (plan needs no data): two, as in the
        # document studies.
        classes = len(data["classes"]) if data.get("classes") else _class_folders(data) or 2
    size = input_size(model.get("input_size")) or input_size(decoded)
    if size is None:
        raise ConfigError(
            f"plan needs an image size: set model.input_size or data.image_size (data {name})"
        )
    return (size[0], size[1], channels), classes


def _class_folders(data: dict[str, Any]) -> int | None:
    """How many class folders an image folder at ``data.root`` has, when it is there."""
    root = Path(str(data.get("root") or ""))
    folder = root / "train" if data.get("layout", "splits") == "splits" else root
    if not data.get("root") or not folder.is_dir():
        return None
    count = sum(1 for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return count if count >= 2 else None


_LOADED: dict[str, tuple[tuple[int, int, int], int]] = {}


def _loaded_geometry(data: dict[str, Any]) -> tuple[tuple[int, int, int], int]:
    """Image shape and class count of a user's own loader: only loading tells them."""
    key = json.dumps(data, sort_keys=True, default=str)
    if key not in _LOADED:
        kwargs = {k: v for k, v in data.items() if k not in ("name", "loader")}
        loaded = load_dataset(str(data["loader"]), **kwargs)
        _LOADED[key] = (loaded.image_shape, loaded.num_classes)
    return _LOADED[key]


# -- printing ------------------------------------------------------------------------------


def wide_console() -> Console:
    """The console tables are printed on (:func:`sweeps.report_files.table_console`)."""
    return table_console()


def print_plan(cfg: RunConfig, rows: list[PlanRow], console: Console) -> None:
    """A summary table of every row, then per-layer tables, one per distinct architecture."""
    mode = "ablation variants" if cfg.sweep.mode == "ablation" else "search-space extremes"
    table = Table(title=f"plan of {cfg.sweep.name}: {mode} (random weights, nothing trained)")
    for column in ("model", "input", "params", "trainable", "FLOPs/image", "after each block"):
        table.add_column(
            column,
            justify="right" if column in ("params", "trainable") else "left",
            overflow="fold",
        )
    for row in rows:
        table.add_row(
            row.name,
            _shape(row.input_shape),
            _count(row.param_count),
            _count(row.trainable),
            _flops(row.flops),
            " > ".join(_shape(b) for b in row.blocks)
            or (f"[yellow]warning: {row.warning}[/yellow]" if row.warning else ""),
        )
    console.print(table)
    for names, layers in _architectures(rows):
        detail = Table(title=_title(names))
        for column in ("layer", "kind", "output", "params", "FLOPs"):
            detail.add_column(column, justify="right" if column in ("params", "FLOPs") else "left")
        for la in layers:
            detail.add_row(
                la.name, la.kind, _shape(la.output_shape), _count(la.params), _flops(la.flops)
            )
        console.print(detail)
    for row in rows:
        if row.warning:
            console.print(f"[yellow]warning[/yellow] {row.name}: {one_line(row.warning)}")


def _architectures(rows: list[PlanRow]) -> list[tuple[list[str], list[Layer]]]:
    """Rows grouped by identical layer lists, so a dropout-only change prints no second table."""
    groups: dict[tuple[Layer, ...], list[str]] = {}
    for row in rows:
        if row.layers:
            groups.setdefault(tuple(row.layers), []).append(row.name)
    return [(names, list(layers)) for layers, names in groups.items()]


def _title(names: list[str]) -> str:
    """The rows sharing one architecture, each setting once: a conditional parameter's row
    repeats its condition (``activation=leaky_relu, leaky_alpha=0.01`` beside the row
    ``activation=leaky_relu``), and one key's values are merged (``dense_dropout=0|0.5``)."""
    values: dict[str, list[str]] = {}
    for name in names:
        for part in name.split(", "):
            key, sep, value = part.partition("=")
            shown = values.setdefault(key if sep else part, [])
            if sep and value not in shown:
                shown.append(value)
    return ", ".join(f"{key}={'|'.join(vals)}" if vals else key for key, vals in values.items())


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _count(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def _flops(n: int | None) -> str:
    if n is None:
        return ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
