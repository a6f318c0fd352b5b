"""A user's own study files, model builder and data loader, found and checked like ours."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import error_line, run_cli

from sweeps.errors import ConfigError

STUDY = """\
# @package _global_
# mine: a small study of my own, on the bundled digits.
#   python -m sweeps run +study=mine
defaults:
  - override /data: digits
  - override /model: builder
model:
  builder: {builder}
  width: 4
train:
  epochs: 1
space:
  model:
    width: choice(2, 4)
"""

MODULE = """\
def build(input_shape, num_classes, width=8):
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


not_a_function = 42
"""


def project(root: Path, builder: str = "mymodel:build", **studies: str) -> Path:
    """A project folder: conf/study/*.yaml and mymodel.py."""
    (root / "conf" / "study").mkdir(parents=True, exist_ok=True)
    (root / "conf" / "study" / "mine.yaml").write_text(STUDY.format(builder=builder))
    for name, text in studies.items():
        (root / "conf" / "study" / f"{name}.yaml").write_text(text)
    (root / "mymodel.py").write_text(MODULE)
    return root


# -- finding study files ---------------------------------------------------------------------


def test_studies_lists_the_users_and_the_packaged_ones_with_their_origin(tmp_path: Path) -> None:
    shadow = "# @package _global_\n# quickstart: my own take on it.\nsweep:\n  n_trials: 99\n"
    project(tmp_path, quickstart=shadow)
    proc = run_cli("studies", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines()}
    assert "conf/study/mine.yaml" in lines["mine"]
    assert lines["mine"].endswith("a small study of my own, on the bundled digits")
    assert "package" in lines["age_gap"] and "Large Age-Gap" in lines["age_gap"]
    # A user's file of the same name comes first, and says so.
    assert "in front of the package's" in lines["quickstart"]
    assert "my own take" in lines["quickstart"]
    proc = run_cli("run", "+study=quickstart", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # It replaces the packaged file (nothing of the package's quickstart is merged in).
    assert "n_trials: 99" in proc.stdout and "kernel_size: choice(3, 5)" not in proc.stdout


def test_config_dir_flag_and_variable_and_unknown_names(tmp_path: Path) -> None:
    conf = project(tmp_path / "elsewhere") / "conf"
    work = tmp_path / "work"
    work.mkdir()
    flag = run_cli("studies", "--config-dir", str(conf), cwd=work)
    env = run_cli("studies", cwd=work, env={"SWEEPS_CONFIG_DIR": str(conf)})
    old = run_cli("studies", cwd=work, env={"SWEEPS_CONF_DIR": str(conf)})
    for proc in (flag, env, old):
        assert proc.returncode == 0, proc.stderr
        assert "mine " in proc.stdout and "quickstart " in proc.stdout
    assert "SWEEPS_CONF_DIR is deprecated: use SWEEPS_CONFIG_DIR" in old.stderr
    # Without it, the working directory has no conf/: only the packaged studies.
    assert "mine " not in run_cli("studies", cwd=work).stdout
    unknown = run_cli("plan", "+study=nope", f"--config-dir={conf}", cwd=work)
    line = error_line(unknown)
    assert "unknown study 'nope'" in line and "mine" in line and "quickstart" in line
    missing = run_cli("studies", "--config-dir", str(tmp_path / "absent"), cwd=work)
    assert "does not exist" in error_line(missing)


def test_search_path_puts_the_users_folder_before_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hydra import compose, initialize_config_dir

    from sweeps.catalogue import config_path as _config_path

    project(tmp_path)
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(_config_path()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+study=mine"], return_hydra_config=True)
    sources = [s["provider"] for s in cfg.hydra.runtime.config_sources]
    assert sources.index("sweeps-user") < sources.index("main")
    assert cfg.model.builder == "mymodel:build" and cfg.data.name == "digits"


# -- a user's model builder ------------------------------------------------------------------


def test_a_builder_that_does_not_import_is_one_line_before_any_trial(tmp_path: Path) -> None:
    project(tmp_path, builder="nope.x:build")
    proc = run_cli("run", "+study=mine", cwd=tmp_path)
    assert proc.returncode == 2
    assert error_line(proc).startswith(
        "sweeps: error: model.builder=nope.x:build: cannot import module 'nope'; give "
        f"module:function on PYTHONPATH or in the working directory ({tmp_path})"
    )
    assert not (tmp_path / "sweeps-store" / "optuna.journal").exists()  # before any trial


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        ("mymodel", "model.builder=mymodel: not a module:function path"),
        ("mymodel.sub:build", "cannot import module 'mymodel.sub'"),
        ("mymodel:missing", "model.builder=mymodel:missing: module 'mymodel' has no 'missing'"),
        ("mymodel:not_a_function", "mymodel:not_a_function is a int, not a function"),
    ],
)
def test_a_bad_builder_path_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builder: str, expected: str
) -> None:
    from sweeps.config import check_own_code

    project(tmp_path, builder=builder)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        check_own_code(compose_user("mine"))  # what run and plan call before building
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_key_the_builder_does_not_take_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeps.config import check_own_code

    project(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="got unknown argument.s. depth: accepted are width"):
        check_own_code(compose_user("mine", "+model.depth=3"))
    with pytest.raises(ConfigError, match="override /model: builder"):
        compose_user("mine", "+model.name=cnn")  # the cnn keys are not the builder's


@pytest.mark.slow  # builds Keras models
def test_user_builder_goes_through_registry_checks_and_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeps.models import ModelConfigError, check_architecture, create_model

    from sweeps.plan import plan_rows

    project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    shapes = check_architecture("mymodel:build", input_shape=(8, 8, 1), num_classes=10, width=3)
    assert shapes == []  # a user's builder has no shape function: Keras checks when it builds
    assert str(tmp_path) in sys.path  # the working directory was made importable
    with pytest.raises(ModelConfigError, match="unknown argument"):
        create_model("mymodel:build", input_shape=(8, 8, 1), num_classes=10, depth=2)
    rows = {row.name: row for row in plan_rows(compose_user("mine"))}
    # conv 3*3*1*w + w, dense w*10 + 10: the digits' one channel and ten classes reached it.
    assert rows["base"].param_count == 10 * 4 + 4 * 10 + 10
    assert rows["width=2"].param_count == 10 * 2 + 2 * 10 + 10
    assert rows["base"].blocks == [(4,)]  # after the global pooling


def compose_user(study: str, *overrides: str):
    """The study as the CLI composes it from the working directory's conf/, validated."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeps.catalogue import config_path as _config_path
    from sweeps.config import load

    with initialize_config_dir(config_dir=str(_config_path()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+study={study}", *overrides])
    return load(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), study=study)


@pytest.fixture(autouse=True)
def _forget_user_modules():
    """Each test writes its own mymodel.py / mydata.py: none may see another's import."""
    yield
    for name in ("mymodel", "mydata"):
        sys.modules.pop(name, None)


# -- a user's data loader --------------------------------------------------------------------


LOADER = """\
import numpy as np
from sweeps.data import ImageData, Split


def load(n=6, classes=3):
    rng = np.random.default_rng(0)

    def split():
        x = rng.integers(0, 256, (n, 12, 10, 1), dtype=np.uint8)
        return Split(x, np.arange(n, dtype=np.int64) % classes)

    return ImageData(split(), split(), split(), [f"c{i}" for i in range(classes)],
                     skipped=0, fingerprint="mine-v1", source="mydata.load")


def wrong():
    return [1, 2, 3]
"""


def test_user_loader_loads_and_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeps.data import DataError, load_dataset

    from sweeps.plan import input_geometry

    (tmp_path / "mydata.py").write_text(LOADER)
    monkeypatch.chdir(tmp_path)
    data = load_dataset("mydata:load", n=9)
    assert data.sizes == {"train": 9, "validation": 9, "test": 9} and data.num_classes == 3
    with pytest.raises(DataError, match="has no option size"):
        load_dataset("mydata:load", size=3)
    with pytest.raises(DataError, match="returned list, not a sweeps.data.ImageData"):
        load_dataset("mydata:wrong")
    with pytest.raises(DataError, match="cannot import module 'nodata'"):
        load_dataset("nodata:load")
    # plan learns the shape and the classes by loading once.
    geometry = input_geometry({"data": {"loader": "mydata:load", "classes": 4}, "model": {}})
    assert geometry == ((12, 10, 1), 4)


def test_loader_config_is_checked_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "mydata.py").write_text(LOADER)
    study = textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /data: loader
        data:
          loader: {loader}
          n: 6
        space:
          model:
            kernel_size: choice(3, 5)
        """)
    (tmp_path / "conf" / "study").mkdir(parents=True)
    for name, loader in (("good", "mydata:load"), ("bad", "nodata.sub:load")):
        (tmp_path / "conf" / "study" / f"{name}.yaml").write_text(study.format(loader=loader))
    bad = run_cli("run", "+study=bad", cwd=tmp_path)
    assert "data.loader=nodata.sub:load: cannot import module 'nodata'" in error_line(bad)
    unset = run_cli("run", "+study=good", "data.loader=???", cwd=tmp_path)
    assert "data.loader is not set" in error_line(unset)


def test_plan_counts_the_class_folders_of_an_image_folder(tmp_path: Path) -> None:
    from sweeps.plan import input_geometry

    for name in ("a", "b", "c", ".hidden"):
        (tmp_path / name).mkdir()
    data = {"name": "image_folder", "root": str(tmp_path), "layout": "classes",
            "image_size": [16, 16], "channels": 3, "classes": None}  # fmt: skip
    assert input_geometry({"data": data, "model": {}}) == ((16, 16, 3), 3)
    data["root"] = str(tmp_path / "absent")  # no folder: the documents' two classes
    assert input_geometry({"data": data, "model": {}}) == ((16, 16, 3), 2)


# -- plan titles and litter ------------------------------------------------------------------


def test_plan_titles_name_each_setting_once() -> None:
    from sweeps.plan import Layer, PlanRow, _architectures, _title

    layers = [Layer("output", "Dense", (10,), 650, 1280)]
    names = ["base", "activation=leaky_relu", "activation=leaky_relu, leaky_alpha=0.01",
             "dense_dropout=0", "dense_dropout=0.5"]  # fmt: skip
    rows = [PlanRow(n, {}, (8, 8, 1), 10, 650, 650, 1280, [(10,)], layers) for n in names]
    ((grouped, _),) = _architectures(rows)  # one architecture: one per-layer table
    title = _title(grouped)
    assert title == "base, activation=leaky_relu, leaky_alpha=0.01, dense_dropout=0|0.5"
    assert _title(["dropout_0.2+adam+k5"]) == "dropout_0.2+adam+k5"  # variant names stay


def test_an_empty_run_folder_is_removed_up_to_the_store(tmp_path: Path) -> None:
    from sweeps.cli import _remove_empty_run_dir
    from sweeps.runner import remove_empty_dirs

    store = tmp_path / "sweeps-store"
    run_dir = store / "hydra" / "2026-01-01" / "10-00-00"
    run_dir.mkdir(parents=True)
    handler = logging.FileHandler(run_dir / "cli.log")
    logging.getLogger().addHandler(handler)
    try:
        _remove_empty_run_dir(run_dir, store)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert not store.exists() and tmp_path.exists()
    # A log with lines stays, and so does everything above it.
    run_dir.mkdir(parents=True)
    (run_dir / "cli.log").write_text("a warning\n")
    _remove_empty_run_dir(run_dir, store)
    assert (run_dir / "cli.log").is_file()
    # The trials' work folder goes when empty; the store stays.
    work = store / "work" / "mine"
    work.mkdir(parents=True)
    remove_empty_dirs(work, store)
    assert not (store / "work").exists() and store.is_dir()


def test_config_error_is_raised_for_an_unset_builder() -> None:
    from conftest import compose

    with pytest.raises(ConfigError, match="model.builder is not set"):
        compose("quickstart", "model=builder")
