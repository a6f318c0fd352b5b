"""`plan`: the documents' exact parameter counts, shapes, FLOPs and collapse warnings, from the
real study configs, with nothing trained and no dataset on disk."""

from __future__ import annotations

import io

import pytest
from conftest import compose
from rich.console import Console

from sweeps.errors import ConfigError
from sweeps.plan import input_geometry, plan_rows, plan_study, print_plan, search_extremes


def rows_by_name(study: str, *overrides: str) -> dict:
    cfg = compose(study, "sweep.mode=ablation", "data.root=/not/needed", *overrides)
    return {row.name: row for row in plan_rows(cfg)}


@pytest.fixture(scope="module")
def gender() -> tuple:
    """The gender_resolution plan, built once: its 16M-parameter model takes a while."""
    cfg = compose("gender_resolution", "sweep.mode=ablation", "data.root=/not/needed")
    return cfg, plan_rows(cfg)


def test_gender_resolution_counts_of_the_three_scenarios(gender: tuple) -> None:
    rows = {row.name: row for row in gender[1]}
    assert rows["baseline"].param_count == 16_296_833
    assert rows["scenario_2_64px"].param_count == 2_141_057
    assert rows["scenario_3_pool3"].param_count == 2_141_057
    assert rows["baseline"].input_shape == (256, 256, 3)
    assert rows["scenario_2_64px"].input_shape == (64, 64, 3)
    # Shapes after each block, as the post's model.summary() prints them.
    assert rows["baseline"].blocks == [
        (127, 127, 64),
        (63, 63, 128),
        (31, 31, 256),
        (15, 15, 512),
        (115200,),
    ]
    assert rows["scenario_3_pool3"].blocks[:4] == [
        (84, 84, 64),
        (28, 28, 128),
        (9, 9, 256),
        (3, 3, 512),
    ]


def test_fashion_mnist_count_with_and_without_dropout() -> None:
    rows = rows_by_name("fashion_mnist_dropout")
    assert rows["baseline"].param_count == rows["dropout"].param_count == 356_234
    assert rows["baseline"].input_shape == (28, 28, 1) and rows["baseline"].num_classes == 10
    assert rows["baseline"].blocks == [(14, 14, 32), (7, 7, 64), (4, 4, 128), (2048,)]


def test_lenet5_per_layer_counts_and_shapes() -> None:
    row = rows_by_name("lenet5")["baseline"]
    weighted = [(la.name, la.output_shape, la.params) for la in row.layers if la.params]
    assert weighted == [
        ("block1_conv", (28, 28, 6), 156),
        ("block2_conv", (10, 10, 16), 2_416),
        ("dense1", (120,), 48_120),
        ("dense2", (84,), 10_164),
        ("output", (10,), 850),
    ]
    assert row.blocks == [(14, 14, 6), (5, 5, 16), (400,)]
    # 2 x multiply-adds: conv1 5*5*1*6 at 28x28, conv2 5*5*6*16 at 10x10, then the dense layers.
    expected = 2 * (150 * 784 + 2400 * 100 + 400 * 120 + 120 * 84 + 84 * 10)
    assert row.flops == expected


def test_age_gap_counts_of_3x3_and_5x5_kernels() -> None:
    rows = rows_by_name("age_gap")
    assert rows["baseline"].param_count == 618_593
    assert rows["dropout_0.2+adam+k5"].param_count == 669_281


def test_printed_plan_shows_counts_and_per_layer_tables(gender: tuple) -> None:
    buffer = io.StringIO()
    print_plan(*gender, Console(file=buffer, width=200))
    out = buffer.getvalue()
    assert "16,296,833" in out and out.count("2,141,057") >= 2
    assert "127x127x64 > 63x63x128 > 31x31x256 > 15x15x512 > 115200" in out
    assert "14,745,728" in out  # the Dense(128) row of the baseline's per-layer table


def test_collapsing_feature_map_is_a_warning_not_a_crash(
    capsys: pytest.CaptureFixture,
) -> None:
    cfg = compose(
        "gender_resolution", "sweep.mode=ablation", "data.root=/x", "model.input_size=[32,32]"
    )
    rows = {row.name: row for row in plan_study(cfg)}
    # 32 -> conv 30 -> pool3 10 -> 3 -> 1 -> 0 at block 4: no model, a warning instead.
    collapsed = rows["scenario_3_pool3"]
    assert collapsed.param_count is None and "collapses" in collapsed.warning
    assert "block 4 pool" in collapsed.warning
    assert rows["baseline"].param_count is not None
    assert "warning" in capsys.readouterr().out


def test_search_plan_takes_each_model_parameter_to_its_ends_once() -> None:
    cfg = compose("lenet5")
    names = [name for name, _ in search_extremes(cfg)]
    # Train parameters are left out; values equal to the base are not planned twice.
    assert names == [
        "base",
        "kernel_size=3",
        "padding=same",
        "activation=prelu",
        "activation=leaky_relu",
        "pooling=avg",
        "dense_dropout=0.5",
    ]
    rows = {row.name: row for row in plan_rows(cfg)}
    assert rows["base"].param_count == 61_706
    assert rows["padding=same"].blocks[1] == (8, 8, 16)


def test_conditional_parameters_bring_their_condition() -> None:
    cfg = compose("quickstart")
    cases = dict(search_extremes(cfg))
    assert cases["activation=leaky_relu, leaky_alpha=0.01"] == {
        "model.activation": "leaky_relu",
        "model.leaky_alpha": 0.01,
    }


@pytest.mark.parametrize(
    ("data", "model", "expected"),
    [
        ({"name": "digits", "image_size": None}, {}, ((8, 8, 1), 10)),
        ({"name": "digits", "image_size": 32}, {}, ((32, 32, 1), 10)),
        ({"name": "fashion_mnist"}, {"input_size": 56}, ((56, 56, 1), 10)),
        (
            {"name": "image_folder", "image_size": [100, 100], "channels": 3, "classes": None},
            {},
            ((100, 100, 3), 2),
        ),
        (
            {
                "name": "image_folder",
                "image_size": [64, 48],
                "channels": 1,
                "classes": {"a": "x", "b": "y", "c": "z"},
            },
            {"input_size": None},
            ((64, 48, 1), 3),
        ),
    ],
)
def test_input_geometry_comes_from_the_config(data: dict, model: dict, expected: tuple) -> None:
    assert input_geometry({"data": data, "model": model}) == expected


def test_input_geometry_needs_some_image_size() -> None:
    with pytest.raises(ConfigError, match="model.input_size or data.image_size"):
        input_geometry({"data": {"name": "image_folder", "image_size": None}, "model": {}})
