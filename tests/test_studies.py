"""Every study in conf/study composes, validates and plans, and runs real trials on tiny data.

The data is made here (generated image folders) or is real and small (scikit-learn's digits,
a slice of the Debian Fashion-MNIST files). Each study runs its baseline and one variant for
one epoch through `run_study` (the real engine, Keras and MLflow), on shrunken inputs.
"""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
from conftest import compose, compose_raw
from imagegen import make_image_folder
from rich.console import Console
from sweeps.data import fashion_mnist

from sweeps.catalogue import conf_dir, study_names
from sweeps.config import RunConfig, load
from sweeps.plan import plan_rows
from sweeps.report import report_study
from sweeps.report_ablation import SHOWN
from sweeps.runner import run_study
from sweeps.storage import open_storage

STUDIES = study_names()
FOLDER_STUDIES = {"age_gap", "gender_resolution", "cats_dogs_transfer"}
TINY = ("train.epochs=1", "train.verbose=0", "sweep.repeats=1")
needs_fashion = pytest.mark.skipif(
    not all(Path(fashion_mnist.SEARCH_PATHS[0], f).is_file() for f in fashion_mnist.FILES.values()),
    reason="apt-get install dataset-fashion-mnist",
)


def test_the_documents_studies_are_all_there() -> None:
    assert {
        "age_gap",
        "gender_resolution",
        "fashion_mnist_dropout",
        "cats_dogs_transfer",
        "lenet5",
        "quickstart",
    } <= set(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_study_composes_and_validates_in_both_modes(study: str) -> None:
    root = ["data.root=/data"] if study in FOLDER_STUDIES else []
    cfg = compose(study, *root)
    assert cfg.space, f"{study} declares no search space"
    if study == "quickstart":
        return  # a sweep demo, not a document: search only
    ablation = compose(study, *root, "sweep.mode=ablation")
    assert ablation.variants[0].name == "baseline" and len(ablation.variants) >= 2


@pytest.mark.parametrize(
    ("study", "published"),
    [
        ("age_gap", {"baseline": 0.8298, "dropout_0.1+adam+k5": 0.9124, "deeper_4_blocks": 0.8361}),
        (
            "gender_resolution",
            {"baseline": 0.90, "scenario_2_64px": 0.95, "scenario_3_pool3": 0.92},
        ),
        ("fashion_mnist_dropout", {"baseline": 0.9184, "dropout": 0.9230}),
        (
            "cats_dogs_transfer",
            {
                "baseline": 0.733,
                "augmentation": 0.818,
                "vgg19_frozen": 0.884,
                "vgg19_block5_finetuned": 0.941,
            },
        ),
    ],
)
def test_every_table_row_is_a_variant_with_its_published_test_accuracy(
    study: str, published: dict[str, float]
) -> None:
    variants = {v.name: v for v in compose(study, "data.root=/data").variants}
    for name, test_acc in published.items():
        assert variants[name].published["test_acc"] == test_acc


def test_age_gap_has_every_row_of_the_post() -> None:
    names = [v.name for v in compose("age_gap", "data.root=/data").variants]
    assert len(names) == 11  # 8 table rows, batch 8 and 32 beside the baseline's 16, deeper
    assert {"batch_8+dropout_0.1+adam+k5", "batch_32+dropout_0.1+adam+k5"} <= set(names)


# -- plan and one tiny real run per study ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_a_study_that_sets_patience_says_why(study: str) -> None:
    # Patience ends each row at its own plateau, which widens an ablation's paired spread:
    # off by default, and a study that turns it on gives its reason beside it.
    text = (conf_dir() / "study" / f"{study}.yaml").read_text()
    lines = text.splitlines()
    found = [i for i, line in enumerate(lines) if line.strip().startswith("patience:")]
    for i in found:
        if lines[i].split(":", 1)[1].split("#")[0].strip() in ("null", "~", ""):
            continue
        block = i
        while block > 0 and not lines[block - 1].startswith("#") and lines[block - 1].strip():
            block -= 1  # up through the section to the comment above it
        comment = []
        while block > 0 and lines[block - 1].startswith("#"):
            block -= 1
            comment.insert(0, lines[block])
        said = " ".join(comment).lower() + lines[i].lower()
        assert "plateau" in said or "patience" in said or "epoch" in said, (
            f"{study}: train.patience is set without a comment saying why"
        )


@pytest.mark.parametrize("study", STUDIES)
def test_study_plans_without_data(study: str) -> None:
    mode = "sweep.mode=search" if study == "quickstart" else "sweep.mode=ablation"
    cfg = compose(study, mode, "data.root=/nowhere")
    rows = plan_rows(cfg)
    assert rows and all(row.param_count for row in rows), [r.warning for r in rows]


def _tiny(study: str, tmp: Path) -> RunConfig:
    """The study on tiny data, with its baseline and one telling variant, in `tmp`."""
    builders = {
        "age_gap": _age_gap,
        "gender_resolution": _gender,
        "cats_dogs_transfer": _cats_dogs,
        "fashion_mnist_dropout": _fashion,
        "lenet5": _lenet5,
        "quickstart": _quickstart,
    }
    return builders[study](tmp)


def _ablation(study: str, tmp: Path, keep: str, *overrides: str, edit=None) -> RunConfig:
    raw = compose_raw(study, f"store_dir={tmp / 'store'}", "sweep.mode=ablation", *TINY, *overrides)
    raw["ablation"]["variants"] = [v for v in raw["ablation"]["variants"] if v["name"] == keep]
    if edit:
        edit(raw["ablation"]["variants"][0]["set"])
    return load(raw, study=study)


def _age_gap(tmp: Path) -> RunConfig:
    make_image_folder(tmp / "lag", classes=("old", "young"), per_class=4, odd=False)
    return _ablation(
        "age_gap",
        tmp,
        "dropout_0.1+adam+k5",
        f"data.root={tmp / 'lag'}",
        "data.image_size=[32,32]",
        "model.input_size=[32,32]",
    )


def _gender(tmp: Path) -> RunConfig:
    make_image_folder(
        tmp / "mw",
        layout="classes",
        classes=("a_resized", "b_resized"),
        per_class=12,
        size=(40, 40),
        odd=False,
    )
    return _ablation(
        "gender_resolution",
        tmp,
        "scenario_2_64px",
        f"data.root={tmp / 'mw'}",
        "data.image_size=[48,48]",
        "model.input_size=[48,48]",
    )


def _cats_dogs(tmp: Path) -> RunConfig:
    make_image_folder(tmp / "cd", classes=("cats", "dogs"), per_class=3, size=(48, 48), odd=False)

    def small_random_vgg(changes: dict) -> None:
        changes["model"].update(input_size=[48, 48], weights="random")

    return _ablation(
        "cats_dogs_transfer",
        tmp,
        "vgg19_block5_finetuned",
        f"data.root={tmp / 'cd'}",
        "data.image_size=[48,48]",
        "model.input_size=[48,48]",
        "train.batch_size=4",
        edit=small_random_vgg,
    )


def _fashion(tmp: Path) -> RunConfig:
    return _ablation("fashion_mnist_dropout", tmp, "dropout", "data.limit=64")


def _lenet5(tmp: Path) -> RunConfig:
    return _ablation("lenet5", tmp, "avg_pooling", "data.limit=60")


def _quickstart(tmp: Path) -> RunConfig:
    return compose("quickstart", *TINY, "sweep.n_trials=1", "data.limit=60", store=tmp / "store")


@pytest.mark.slow
@pytest.mark.parametrize(
    "study",
    [pytest.param(s, marks=needs_fashion) if s == "fashion_mnist_dropout" else s for s in STUDIES],
)
def test_study_runs_tiny_real_trials_and_reports_them(study: str, tmp_path: Path) -> None:
    cfg = _tiny(study, tmp_path)
    assert run_study(cfg) == 0
    trials = _trials(cfg)
    expected = 1 if cfg.sweep.mode == "search" else 2
    assert [t.state.name for t in trials] == ["COMPLETE"] * expected, [
        t.user_attrs.get("sweeps.reason") for t in trials
    ]
    assert all(0 <= t.user_attrs["test_acc"] <= 1 for t in trials)
    console = Console(file=io.StringIO(), width=220)
    assert report_study(cfg, console=console)
    printed = console.file.getvalue()
    for variant in cfg.variants:  # the document's numbers beside the runs, e.g. 0.9184 / 0.9230
        shown = [v for k, v in variant.published.items() if k in SHOWN]  # train_acc: CSV only
        assert all(f"{value:.4f}" in printed for value in shown)
    assert ("1/1" in printed) if cfg.variants else (f"search of {study}" in printed)


@pytest.mark.slow
def test_inspecting_a_fine_tuned_vgg_checkpoint(tmp_path: Path, monkeypatch) -> None:
    # One search trial whose base model is the fine-tuned VGG row, so it is the best trial.
    make_image_folder(
        tmp_path / "cd", classes=("cats", "dogs"), per_class=3, size=(48, 48), odd=False
    )
    raw = compose_raw(
        "cats_dogs_transfer",
        f"store_dir={tmp_path / 'store'}",
        f"data.root={tmp_path / 'cd'}",
        "data.image_size=[48,48]",
        *TINY,
        "sweep.n_trials=1",
        "train.batch_size=4",
        "report.inspect=true",
        "report.filter_steps=2",
        "report.filters_per_layer=2",
        "report.pattern_size=32",
        "report.maps_per_layer=2",
        "report.examples=4",
        "report.inspect_layers=[vgg19/block2_conv1,vgg19/block5_conv1]",
    )
    finetuned = next(v for v in raw["ablation"]["variants"] if v["name"].endswith("finetuned"))
    raw["model"] = {**finetuned["set"]["model"], "input_size": [48, 48], "weights": "random"}
    raw["space"] = {"train": {"learning_rate": "log(1e-5, 1e-4)"}}
    cfg = load(raw, study="cats_dogs_transfer")
    assert run_study(cfg) == 0
    import keras

    loads = []
    real_load = keras.saving.load_model

    def spy_load(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", spy_load)
    files = report_study(cfg, console=Console(file=io.StringIO()))
    assert [kw.get("safe_mode") for kw in loads] == [True]  # the checkpoint, in safe mode
    inspect = {p.name for p in files if p.parent.name == "inspect"}
    assert {"filters_vgg19_block2_conv1.png", "filters_vgg19_block5_conv1.png"} <= inspect
    # VGG's convs carry their relu: 16 convs and 5 poolings, opened inside the nested base.
    assert len([n for n in inspect if n.startswith("activations_")]) == 21
    assert "activations_01_vgg19_block1_conv1.png" in inspect
    # An untrained VGG on 3 + 3 test images gets some right and some wrong: both grids.
    assert {"correct.png", "wrong.png"} <= inspect


def _trials(cfg: RunConfig) -> list:
    storage = open_storage(cfg.storage, cfg.store_dir, lambda study, trial: None)
    study = optuna.load_study(study_name=cfg.sweep.name, storage=storage)
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
