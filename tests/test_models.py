"""Tests of sweeps.models: registry, architectures, published parameter counts, helpers."""

import math
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from sweeps.models import (
    ACTIVATIONS,
    OPTIMIZERS,
    POOLINGS,
    ArchitectureError,
    ModelConfigError,
    check_architecture,
    create_model,
    model_names,
)
from sweeps.models.compile import compile_model, make_optimizer
from sweeps.models.summary import describe
from sweeps.models.transfer import WEIGHT_FILES, resolve_weights

# Small enough to build and run in well under a second each; exercises the optional layers.
TINY_KWARGS = {
    "cnn": {
        "filters": [4, 8],
        "dense_units": [8],
        "activation": "prelu",
        "batch_norm": True,
        "block_dropout": 0.1,
    },
    "transfer": {"weights": "random", "dense_units": [8]},
}
SEED000 = {
    "filters": [64, 128, 256, 512],
    "padding": ["valid", "same", "same", "same"],
    "dense_units": [128],
    "dense_dropout": 0.0,
}
SEED003 = {
    "filters": [32, 64, 128],
    "activation": "leaky_relu",
    "leaky_alpha": 0.1,
    "pool_padding": "same",
    "dense_units": [128],
    "dense_dropout": 0.0,
}
LENET5 = {
    "filters": [6, 16],
    "kernel_size": 5,
    "padding": "valid",
    "dense_units": [120, 84],
    "dense_dropout": 0.0,
}
HEAD_PARAMS = 512 * 16 + 16 + 16 + 1  # transfer head at 32x32: flatten(1x1x512) -> 16 -> 1


@pytest.fixture(scope="module")
def frozen_vgg19() -> keras.Model:
    """VGG19 transfer model at 32x32, random weights, frozen base; built once (~0.5 s)."""
    return create_model(
        "transfer", input_shape=(32, 32, 3), num_classes=2, weights="random", dense_units=[16]
    )


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any download attempt fail loudly instead of reaching the network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_import_and_check_do_not_load_tensorflow() -> None:
    code = (
        "import sys, sweeps.models as m\n"
        "m.check_architecture('cnn', input_shape=(32, 32, 3), num_classes=10)\n"
        "m.check_architecture('transfer', input_shape=(32, 32, 3), num_classes=2,"
        " weights='random')\n"
        "loaded = {k.split('.')[0] for k in sys.modules} & {'tensorflow', 'keras'}\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_runs_forward(name: str, num_classes: int) -> None:
    model = create_model(
        name, input_shape=(32, 32, 3), num_classes=num_classes, **TINY_KWARGS.get(name, {})
    )
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype="float32")
    outputs = keras.ops.convert_to_numpy(model(images, training=False))
    assert outputs.shape == (2, 1 if num_classes == 2 else num_classes)
    assert np.isfinite(outputs).all()


@pytest.mark.parametrize(
    ("input_shape", "num_classes", "kwargs", "expected"),
    [
        pytest.param((100, 100, 3), 2, {}, 618_593, id="seed001-baseline"),
        pytest.param((100, 100, 3), 2, {"kernel_size": 5}, 669_281, id="seed001-kernel5"),
        pytest.param((256, 256, 3), 2, SEED000, 16_296_833, id="seed000-256"),
        pytest.param((64, 64, 3), 2, SEED000, 2_141_057, id="seed000-64"),
        pytest.param((256, 256, 3), 2, SEED000 | {"pool_size": 3}, 2_141_057, id="seed000-pool3"),
        pytest.param((28, 28, 1), 10, SEED003, 356_234, id="seed003"),
        pytest.param(
            (28, 28, 1),
            10,
            SEED003 | {"block_dropout": [0.25, 0.25, 0.4], "dense_dropout": 0.3},
            356_234,
            id="seed003-dropout",
        ),
        pytest.param(
            (150, 150, 3),
            2,
            {"filters": [32, 64, 128, 128], "padding": "valid", "dense_units": [512]},
            3_453_121,
            id="seed004-small-cnn",
        ),
    ],
)
def test_published_parameter_counts(
    input_shape: tuple[int, int, int], num_classes: int, kwargs: dict, expected: int
) -> None:
    model = create_model("cnn", input_shape=input_shape, num_classes=num_classes, **kwargs)
    assert model.count_params() == expected


def test_lenet5_per_layer_parameters_and_shapes() -> None:
    model = create_model("cnn", input_shape=(32, 32, 1), num_classes=10, **LENET5)
    params = {layer.name: layer.count_params() for layer in model.layers if layer.weights}
    assert params == {
        "block1_conv": 156,
        "block2_conv": 2_416,
        "dense1": 48_120,
        "dense2": 10_164,
        "output": 850,
    }
    shapes = check_architecture("cnn", input_shape=(32, 32, 1), num_classes=10, **LENET5)
    assert [s.output_shape for s in shapes[:4]] == [
        (28, 28, 6),
        (14, 14, 6),
        (10, 10, 16),
        (5, 5, 16),
    ]


def test_layers_have_readable_names() -> None:
    model = create_model(
        "cnn",
        input_shape=(8, 8, 1),
        num_classes=3,
        filters=[2],
        dense_units=[4],
        batch_norm=True,
        block_dropout=0.2,
    )
    assert [layer.name for layer in model.layers] == [
        "input",
        "block1_conv",
        "block1_bn",
        "block1_act",
        "block1_pool",
        "block1_drop",
        "flatten",
        "dense1",
        "dense1_act",
        "dense1_drop",
        "output",
    ]


@pytest.mark.parametrize(
    ("input_shape", "kwargs"),
    [
        ((100, 100, 3), {"kernel_size": 5}),
        ((128, 128, 3), SEED000 | {"pool_size": 3}),
        ((28, 28, 1), SEED003 | {"pooling": "avg"}),
        ((32, 32, 1), LENET5),
        ((30, 45, 3), {"filters": [4, 8], "padding": "valid", "depth": 3}),
        ((33, 17, 3), {"filters": [4], "depth": 3, "pool_padding": "same", "dense_units": []}),
    ],
)
def test_check_architecture_agrees_with_keras(input_shape: tuple, kwargs: dict) -> None:
    shapes = check_architecture("cnn", input_shape=input_shape, num_classes=5, **kwargs)
    model = create_model("cnn", input_shape=input_shape, num_classes=5, **kwargs)
    for shape in shapes:
        layer = model.get_layer(shape.name)
        assert (type(layer).__name__, tuple(layer.output.shape[1:])) == (
            shape.kind,
            shape.output_shape,
        ), shape.name


def test_collapsing_architecture_names_the_block() -> None:
    # 32 -conv5-> 28 -pool-> 14 -conv5-> 10 -pool-> 5 -conv5-> 1 -pool-> 0
    kwargs = {"filters": [8] * 5, "kernel_size": 5, "padding": "valid"}
    with pytest.raises(ArchitectureError, match=r"collapses to 0x0 at block 3 pool") as error:
        create_model("cnn", input_shape=(32, 32, 3), num_classes=10, **kwargs)
    message = str(error.value)
    assert "\n" not in message and "input 32x32" in message and "padding=same" in message
    with pytest.raises(ArchitectureError, match="block 4 conv"):
        check_architecture(
            "cnn", input_shape=(32, 32, 3), num_classes=10, pool_padding="same", **kwargs
        )
    with pytest.raises(ArchitectureError, match="at least 32x32"):
        check_architecture("transfer", input_shape=(31, 64, 3), num_classes=2, weights="random")


@pytest.mark.parametrize(
    ("filters", "depth", "expected"),
    [
        ((32, 32, 64), 4, [32, 32, 64, 128]),
        ((32, 32, 64), 2, [32, 32]),
        ((256,), 3, [256, 512, 512]),
        ((32, 32, 64), None, [32, 32, 64]),
    ],
)
def test_depth_truncates_or_extends_filters(
    filters: tuple, depth: int | None, expected: list[int]
) -> None:
    shapes = check_architecture(
        "cnn", input_shape=(64, 64, 3), num_classes=2, filters=filters, depth=depth
    )
    assert [s.output_shape[-1] for s in shapes if s.kind == "Conv2D"] == expected


def test_depth_repeats_the_last_per_block_setting() -> None:
    shapes = check_architecture("cnn", input_shape=(256, 256, 3), num_classes=2, depth=5, **SEED000)
    # Block 1 is valid (256 -> 254); the added block 5 repeats "same" (15 -> 15), width capped.
    convs = [s.output_shape for s in shapes if s.kind == "Conv2D"]
    assert convs[0] == (254, 254, 64) and convs[4] == (15, 15, 512)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet", {}, "cnn, transfer"),
        ("cnn", {"activation": "gelu"}, ", ".join(ACTIVATIONS)),
        ("cnn", {"pooling": "min"}, ", ".join(POOLINGS)),
        ("cnn", {"padding": ["valid", "full", "same"]}, "same, valid"),
        ("cnn", {"padding": ["valid", "same"]}, "one value or one per block"),
        ("cnn", {"dropout": 0.2}, "dropout.*accepted are filters, depth.*dense_dropout"),
        ("cnn", {"block_dropout": 1.0}, r"block_dropout=1.0.*\[0, 1\)"),
        ("cnn", {"filters": 32}, "filters=32 is not valid: give a list of layer widths"),
        ("cnn", {"depth": 0}, "depth=0 is not valid: give an integer >= 1"),
        ("transfer", {"base": "resnet50"}, "vgg16, vgg19"),
        ("transfer", {"activation": "elu", "weights": "random"}, ", ".join(ACTIVATIONS)),
    ],
)
def test_bad_names_and_values_list_the_valid_ones(name: str, kwargs: dict, expected: str) -> None:
    with pytest.raises(ModelConfigError, match=expected) as error:
        create_model(name, input_shape=(32, 32, 3), num_classes=2, **kwargs)
    assert "\n" not in str(error.value)


def test_none_kwargs_fall_back_to_builder_defaults() -> None:
    shapes = check_architecture(
        "cnn", input_shape=(100, 100, 3), num_classes=2, filters=None, kernel_size=None
    )
    assert [s.output_shape for s in shapes if s.kind == "Conv2D"][-1] == (25, 25, 64)


def test_prelu_has_one_slope_per_channel() -> None:
    # Per-channel slopes keep the parameter count independent of the input resolution.
    for size in (16, 64):
        model = create_model(
            "cnn", input_shape=(size, size, 3), num_classes=2, filters=[4], activation="prelu"
        )
        assert model.get_layer("block1_act").count_params() == 4
        assert model.get_layer("dense1_act").count_params() == 64


def test_describe_counts_flops_of_a_tiny_model() -> None:
    model = create_model(
        "cnn", input_shape=(8, 8, 1), num_classes=3, filters=[2], dense_units=[4], dense_dropout=0
    )
    summary = describe(model)
    conv = 2 * (3 * 3 * 1 * 2) * (8 * 8)  # 2 * k*k*cin*cout * Hout*Wout
    dense = 2 * (4 * 4 * 2) * 4  # flatten(4x4x2) -> 4
    output = 2 * 4 * 3
    assert summary.flops_per_image == conv + dense + output == 2_584
    assert summary.param_count == summary.trainable_params == 20 + 132 + 15
    rows = {row.name: row for row in summary.layers}
    assert rows["block1_pool"].output_shape == (4, 4, 2)
    assert (rows["block1_conv"].params, rows["block1_conv"].flops) == (20, conv)


def test_describe_recurses_into_the_vgg_base(frozen_vgg19: keras.Model) -> None:
    summary = describe(frozen_vgg19)
    rows = {row.name: row for row in summary.layers}
    assert rows["vgg19/block5_conv4"].output_shape == (2, 2, 512)
    assert rows["vgg19/block5_pool"].output_shape == (1, 1, 512)
    assert sum(row.params for row in summary.layers) == summary.param_count
    block1_conv1 = 2 * (3 * 3 * 3 * 64) * (32 * 32)
    assert rows["vgg19/block1_conv1"].flops == block1_conv1
    assert summary.flops_per_image > 100 * block1_conv1


def test_frozen_transfer_trains_only_the_head(frozen_vgg19: keras.Model) -> None:
    assert describe(frozen_vgg19).trainable_params == HEAD_PARAMS


def test_trainable_layers_unfreezes_the_last_weighted_layers() -> None:
    model = create_model(
        "transfer",
        input_shape=(32, 32, 3),
        num_classes=2,
        weights="random",
        dense_units=[16],
        trainable_layers=2,
    )
    base = model.get_layer("vgg19")
    assert [layer.name for layer in base.layers if layer.trainable_weights] == [
        "block5_conv3",
        "block5_conv4",
    ]
    block5_conv = 3 * 3 * 512 * 512 + 512
    assert describe(model).trainable_params == HEAD_PARAMS + 2 * block5_conv
    with pytest.raises(ModelConfigError, match="vgg19 has 16 layers with weights"):
        create_model(
            "transfer",
            input_shape=(32, 32, 3),
            num_classes=2,
            weights="random",
            trainable_layers=17,
        )


def test_transfer_maps_unit_pixels_to_vgg_preprocessing(frozen_vgg19: keras.Model) -> None:
    pixels = np.random.default_rng(0).random((2, 8, 8, 3), dtype="float32")
    expected = keras.applications.vgg19.preprocess_input(pixels * 255.0)
    layer = frozen_vgg19.get_layer("vgg_preprocess")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(pixels)), expected, atol=1e-3)
    assert not layer.trainable


def test_imagenet_weights_missing_from_cache_fail_without_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path, no_network: None
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ModelConfigError, match=WEIGHT_FILES["vgg19"]) as error:
        create_model("transfer", input_shape=(32, 32, 3), num_classes=2)
    assert str(tmp_path / "models") in str(error.value)


def test_imagenet_weights_are_read_from_the_keras_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = tmp_path / "models" / WEIGHT_FILES["vgg16"]
    cached.parent.mkdir()
    cached.touch()
    assert resolve_weights("vgg16", "imagenet") == str(cached)
    with pytest.raises(ModelConfigError, match="is not a file"):
        resolve_weights("vgg16", str(tmp_path / "missing.h5"))


def test_transfer_loads_weights_from_a_path(tmp_path, no_network: None) -> None:
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    base.save_weights(path)
    model = create_model(
        "transfer", input_shape=(32, 32, 3), num_classes=2, base="vgg16", weights=str(path)
    )
    loaded = model.get_layer("vgg16").get_layer("block1_conv1").kernel
    expected = base.get_layer("block1_conv1").kernel
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded), expected.numpy())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_make_optimizer(name: str) -> None:
    default, tuned = make_optimizer(name, None), make_optimizer(name, 0.123)
    assert type(default).__name__.lower() == name
    assert math.isclose(float(tuned.learning_rate), 0.123, rel_tol=1e-6)
    expected_default = 0.01 if name == "sgd" else 0.001
    assert math.isclose(float(default.learning_rate), expected_default, rel_tol=1e-6)
    if name == "sgd":
        assert default.momentum == 0.9


def test_unknown_optimizer_lists_the_valid_ones() -> None:
    with pytest.raises(ModelConfigError, match=", ".join(OPTIMIZERS)):
        make_optimizer("adagrad", None)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_compiled_model_logs_loss_and_acc(num_classes: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((8, 8, 8, 1), dtype="float32")
    labels = rng.integers(0, num_classes, size=8)  # int labels of shape (N,) for both losses
    model = create_model(
        "cnn", input_shape=(8, 8, 1), num_classes=num_classes, filters=[2], dense_units=[4]
    )
    compile_model(
        model, optimizer="adam", learning_rate=None, num_classes=num_classes, jit_compile=False
    )
    history = model.fit(
        images, labels, validation_data=(images, labels), epochs=1, batch_size=4, verbose=0
    )
    assert set(history.history) == {"loss", "acc", "val_loss", "val_acc"}
    assert all(np.isfinite(values).all() for values in history.history.values())
