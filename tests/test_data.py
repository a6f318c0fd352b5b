"""Tests of sweeps.data: real data where it exists (scikit-learn digits, the Debian
Fashion-MNIST files), generated image folders otherwise."""

from __future__ import annotations

import gzip
import logging
import math
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from imagegen import BROKEN_KINDS, ODD_KINDS, make_image_folder
from sweeps.data import (
    AugmentSpec,
    DataError,
    ImageData,
    Split,
    dataset_names,
    load_dataset,
    register_dataset,
)
from sweeps.data import fashion_mnist as fmnist
from sweeps.data import images as image_io

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not all((FASHION_DIR / f).is_file() for f in fmnist.FILES.values()),
    reason="apt-get install dataset-fashion-mnist",
)


def load_folder(root: Path, **kwargs) -> ImageData:
    return load_dataset("image_folder", root=str(root), **kwargs)


# --- package and registry ---------------------------------------------------------------


def test_import_stays_free_of_tensorflow_and_sklearn():
    code = (
        "import sys, sweeps.data; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registry_lists_names_and_rejects_unknown_ones():
    assert {"digits", "fashion_mnist", "image_folder"} <= set(dataset_names())
    with pytest.raises(DataError, match="valid names: digits, fashion_mnist, image_folder"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="no option imgsize"):
        load_dataset("digits", imgsize=32)
    with pytest.raises(DataError, match="needs option root"):
        load_dataset("image_folder")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("digits")(lambda: None)


def test_none_options_fall_back_to_defaults():
    assert (
        load_dataset("digits", image_size=None, limit=None, seed=None).fingerprint
        == load_dataset("digits").fingerprint
    )


# --- digits -------------------------------------------------------------------------------


def test_digits_loads_the_real_data_with_stratified_splits():
    data = load_dataset("digits")
    assert sum(data.sizes.values()) == 1797
    assert data.image_shape == (8, 8, 1) and data.train.x.dtype == np.uint8
    assert data.train.x.max() == 255 and data.train.y.dtype == np.int64
    assert data.class_names == [str(d) for d in range(10)] and data.skipped == 0
    for split in data.splits.values():
        # Per-class rounding: each class's share of a split is the split's share +- 1 image.
        share = np.bincount(split.y, minlength=10) / np.bincount(
            np.concatenate([s.y for s in data.splits.values()]), minlength=10
        )
        assert np.ptp(share) < 0.02


def test_digits_is_reproducible_and_fingerprints_the_options():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.test.y, b.test.y)
    other_seed = load_dataset("digits", seed=1)
    assert not np.array_equal(a.train.y, other_seed.train.y)
    resized = load_dataset("digits", image_size=32, limit=50)
    assert resized.image_shape == (32, 32, 1) and set(resized.sizes.values()) == {50}
    fingerprints = {
        a.fingerprint,
        other_seed.fingerprint,
        resized.fingerprint,
        load_dataset("digits", val_fraction=0.1).fingerprint,
    }
    assert len(fingerprints) == 4


# --- fashion_mnist ------------------------------------------------------------------------


@needs_fashion
def test_fashion_mnist_full_set_is_split_exactly_like_the_source():
    from sklearn.model_selection import train_test_split

    data = load_dataset("fashion_mnist")
    assert data.sizes == {"train": 48000, "validation": 12000, "test": 10000}
    assert data.image_shape == (28, 28, 1) and data.class_names[6] == "Shirt"
    assert data.source == str(FASHION_DIR)
    # The seed 003 post: train_test_split(train_X, train_label, test_size=0.2, random_state=13)
    x = fmnist.read_idx(FASHION_DIR / fmnist.FILES["train_images"], 0x803)
    y = fmnist.read_idx(FASHION_DIR / fmnist.FILES["train_labels"], 0x801)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=13)
    assert np.array_equal(data.train.y, y_train) and np.array_equal(data.validation.y, y_val)
    assert np.array_equal(data.train.x[:100, ..., 0], x_train[:100])
    assert np.array_equal(data.validation.x[-100:, ..., 0], x_val[-100:])


@needs_fashion
def test_fashion_mnist_limit_caps_every_split():
    small = load_dataset("fashion_mnist", limit=100)
    assert small.sizes == {"train": 100, "validation": 100, "test": 100}
    assert small.fingerprint != load_dataset("fashion_mnist", limit=200).fingerprint


def test_fashion_mnist_missing_files_list_the_places_looked(tmp_path, monkeypatch):
    places = (str(tmp_path / "a"), str(tmp_path / "b"))
    monkeypatch.setattr(fmnist, "SEARCH_PATHS", places)
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist")
    message = str(err.value)
    assert all(p in message for p in places) and "apt-get install dataset-fashion-mnist" in message
    assert all(name in message for name in fmnist.FILES.values())
    # An explicit root is the only place looked in, even though the defaults may exist.
    monkeypatch.undo()
    with pytest.raises(DataError, match=str(tmp_path)):
        load_dataset("fashion_mnist", root=tmp_path)


def write_idx_folder(folder: Path, n_train: int = 20, n_test: int = 5) -> None:
    """Tiny Fashion-MNIST-format files, to test the parser and its error handling."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(header + images.tobytes())
        )
        header = (0x801).to_bytes(4, "big") + n.to_bytes(4, "big")
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(header + labels.tobytes())
        )


def test_fashion_mnist_parses_idx_from_root_and_rejects_corrupt_files(tmp_path):
    write_idx_folder(tmp_path)
    data = load_dataset("fashion_mnist", root=tmp_path)
    assert data.sizes == {"train": 16, "validation": 4, "test": 5}
    labels = tmp_path / fmnist.FILES["train_labels"]
    labels.write_bytes(gzip.compress((0x803).to_bytes(4, "big") + b"\0" * 24))
    with pytest.raises(DataError, match="magic number"):
        load_dataset("fashion_mnist", root=tmp_path)
    write_idx_folder(tmp_path)
    images = tmp_path / fmnist.FILES["test_images"]
    good = images.read_bytes()
    images.write_bytes(good[: len(good) // 2])  # a cut-off download
    with pytest.raises(DataError, match="not a readable gzip file"):
        load_dataset("fashion_mnist", root=tmp_path)
    images.write_bytes(gzip.compress(gzip.decompress(good)[:-10]))  # idx data cut short
    with pytest.raises(DataError, match="truncated or corrupt idx file"):
        load_dataset("fashion_mnist", root=tmp_path)


# --- image_folder: loading ------------------------------------------------------------------


def test_splits_layout_loads_every_readable_image_and_counts_the_broken(tmp_path, caplog):
    gen = make_image_folder(tmp_path, broken=8)
    with caplog.at_level(logging.INFO, logger="sweeps.data"):
        data = load_folder(tmp_path, image_size=(20, 16))
    assert data.class_names == ["old", "young"] and data.image_shape == (20, 16, 3)
    assert data.skipped == 8 == gen.broken
    for split in ("train", "validation", "test"):
        assert np.bincount(data.splits[split].y).tolist() == list(gen.counts[split].values())
    assert data.source == str(tmp_path)
    summary = [r.getMessage() for r in caplog.records if r.name.startswith("sweeps.data")]
    assert summary == [
        f"{tmp_path}: loaded train=12 validation=6 test=6 images; skipped 8 unreadable files"
    ]


@pytest.mark.parametrize("channels", [1, 3])
def test_every_format_and_mode_decodes_to_the_requested_shape(tmp_path, channels):
    # 10 images per class covers every kind in ODD_KINDS, in every size variant.
    make_image_folder(tmp_path, layout="classes", per_class=len(ODD_KINDS))
    data = load_folder(tmp_path, layout="classes", image_size=12, channels=channels)
    assert data.image_shape == (12, 12, channels) and sum(data.sizes.values()) == 20
    x = np.concatenate([s.x for s in data.splits.values()]).astype(float)
    y = np.concatenate([s.y for s in data.splits.values()])
    brightness = x.mean(axis=(1, 2, 3))
    # The class signal survives every format: class 0 is dark, class 1 bright.
    assert brightness[y == 0].max() + 50 < brightness[y == 1].min()


def test_decode_image_converts_modes_to_rgb_or_gray(tmp_path):
    red = np.zeros((6, 8, 3), np.uint8)
    red[..., 2] = 255  # BGR on disk
    cv2.imwrite(str(tmp_path / "red.png"), red)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([red, np.zeros((6, 8), np.uint8)]))
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((6, 8), 77, np.uint8))
    for name in ("red.png", "rgba.png"):
        rgb = image_io.decode_image(tmp_path / name, None, 3)
        assert rgb.shape == (6, 8, 3) and rgb[0, 0].tolist() == [255, 0, 0]
    assert image_io.decode_image(tmp_path / "gray.png", (3, 4), 3)[0, 0].tolist() == [77] * 3
    assert image_io.decode_image(tmp_path / "red.png", (3, 4), 1).shape == (3, 4, 1)
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert image_io.decode_image(tmp_path / "empty.jpg", None, 3) is None
    assert image_io.decode_image(tmp_path / "missing.jpg", None, 3) is None


@pytest.mark.parametrize("layout", ["splits", "classes"])
def test_each_kind_of_broken_file_is_skipped_and_counted(tmp_path, layout):
    gen = make_image_folder(
        tmp_path,
        layout=layout,
        broken=2 * len(BROKEN_KINDS),
        per_class=None if layout == "splits" else 20,
    )
    data = load_folder(tmp_path, layout=layout, image_size=16)
    assert data.skipped == 8 and sum(data.sizes.values()) == gen.total


def test_classes_layout_splits_per_class_with_a_fixed_seed(tmp_path):
    make_image_folder(tmp_path, layout="classes", per_class=20, odd=False)
    data = load_folder(tmp_path, layout="classes")
    # Per class: round(20 * 0.2) = 4 test, round(20 * 0.1) = 2 validation, 14 train.
    assert data.sizes == {"train": 28, "validation": 4, "test": 8}
    assert all(
        np.bincount(s.y).tolist() == [n // 2] * 2
        for s, n in zip(data.splits.values(), data.sizes.values(), strict=True)
    )
    again = load_folder(tmp_path, layout="classes", workers=1)
    assert np.array_equal(data.train.x, again.train.x) and data.fingerprint == again.fingerprint
    reseeded = load_folder(tmp_path, layout="classes", seed=1)
    assert not np.array_equal(data.test.x, reseeded.test.x)
    assert reseeded.fingerprint != data.fingerprint


def test_classes_option_sets_label_order_and_names(tmp_path):
    make_image_folder(tmp_path, layout="classes", per_class=10, odd=False)
    data = load_folder(tmp_path, layout="classes", classes={"young": "Y", "old": "O"})
    assert data.class_names == ["Y", "O"]
    bright = data.train.x.mean(axis=(1, 2, 3))
    assert bright[data.train.y == 0].min() > bright[data.train.y == 1].max()  # young is bright
    listed = load_folder(tmp_path, layout="classes", classes=["young", "old"])
    assert listed.class_names == ["young", "old"]
    assert np.array_equal(listed.train.y, data.train.y)


def test_limit_draws_every_class_into_every_split(tmp_path):
    make_image_folder(tmp_path, per_class=6)
    data = load_folder(tmp_path, image_size=16, limit=4)
    assert data.sizes == {"train": 4, "validation": 4, "test": 4}
    assert all(np.bincount(s.y).tolist() == [2, 2] for s in data.splits.values())
    assert data.fingerprint != load_folder(tmp_path, image_size=16).fingerprint
    with pytest.raises(DataError, match="limit=1"):
        load_folder(tmp_path, image_size=16, limit=1)


# --- image_folder: errors before any training ----------------------------------------------


def one_class(root: Path) -> Path:
    make_image_folder(root, classes=("old",))
    return root / "train"


def no_class_folders(root: Path) -> Path:
    for split in ("train", "validation", "test"):
        (root / split).mkdir(parents=True)
    return root / "train"


def missing_split(root: Path) -> Path:
    make_image_folder(root)
    shutil.rmtree(root / "validation")
    return root


def class_without_readable_images(root: Path) -> Path:
    make_image_folder(root)
    for f in (root / "test" / "young").iterdir():
        f.write_bytes(b"")
    return root / "test" / "young"


def all_unreadable(root: Path) -> Path:
    for name in ("old", "young"):
        (root / "train" / name).mkdir(parents=True)
        (root / "validation" / name).mkdir(parents=True)
        (root / "test" / name).mkdir(parents=True)
        (root / "train" / name / "x.jpg").write_text("not an image")
    return root


def missing_class_folder(root: Path) -> Path:
    make_image_folder(root)
    shutil.rmtree(root / "test" / "old")
    return root / "test" / "old"


def mixed_sizes_without_image_size(root: Path) -> Path:
    make_image_folder(root, odd=True)
    return root


def empty_root(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize(
    "build, layout, message",
    [
        (lambda root: root, "splits", "folder does not exist"),
        (empty_root, "splits", "folder is empty"),
        (no_class_folders, "splits", "no class folders"),
        (one_class, "splits", "only one class folder 'old'"),
        (missing_split, "splits", "missing split folder validation"),
        (missing_class_folder, "splits", "class folder missing"),
        (class_without_readable_images, "splits", "no readable images"),
        (all_unreadable, "splits", "none of the 2 image files could be decoded"),
        (mixed_sizes_without_image_size, "splits", "pass image_size"),
        (lambda root: make_image_folder(root).root, "classes", "layout='splits'?"),
        (lambda root: make_image_folder(root, "classes").root, "splits", "layout='classes'?"),
    ],
)
def test_bad_folders_fail_early_with_the_path_and_expected_layout(tmp_path, build, layout, message):
    path = build(tmp_path / "data")
    with pytest.raises(DataError) as err:
        load_folder(tmp_path / "data", layout=layout, image_size=None)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text
    assert "expected layout" in text


def test_explicit_class_folder_must_exist(tmp_path):
    make_image_folder(tmp_path, layout="classes")
    with pytest.raises(DataError, match=str(tmp_path / "cats")):
        load_folder(tmp_path, layout="classes", classes=["old", "cats"])


# --- image_folder: cache ------------------------------------------------------------------


def test_cache_round_trip_skips_decoding(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", broken=4)
    options = {"image_size": 16, "cache_dir": str(tmp_path / "cache")}
    first = load_folder(tmp_path / "data", **options)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these images")

    monkeypatch.setattr(image_io, "decode_image", no_decoding)
    second = load_folder(tmp_path / "data", **options)
    for name, split in first.splits.items():
        assert np.array_equal(split.x, second.splits[name].x)
        assert np.array_equal(split.y, second.splits[name].y)
    assert (second.fingerprint, second.skipped, second.class_names) == (
        first.fingerprint,
        4,
        first.class_names,
    )
    cached = list((tmp_path / "cache").iterdir())
    assert [p.name for p in cached] == [f"image_folder-{first.fingerprint}.npz"]
    # A changed folder has a new fingerprint, so the stale cache is not used.
    cv2.imwrite(str(tmp_path / "data" / "train" / "old" / "new.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(AssertionError, match="decoded although"):
        load_folder(tmp_path / "data", **options)


def test_damaged_cache_is_ignored_and_rewritten(tmp_path):
    make_image_folder(tmp_path / "data")
    options = {"image_size": 16, "cache_dir": str(tmp_path / "cache")}
    first = load_folder(tmp_path / "data", **options)
    cache_file = tmp_path / "cache" / f"image_folder-{first.fingerprint}.npz"
    cache_file.write_bytes(b"half a zip file")
    again = load_folder(tmp_path / "data", **options)
    assert np.array_equal(first.train.x, again.train.x)
    assert cache_file.stat().st_size > 1000


def test_folder_fingerprint_follows_the_files_and_the_options(tmp_path):
    make_image_folder(tmp_path / "data", per_class=3, odd=False)
    first = load_folder(tmp_path / "data", image_size=16).fingerprint
    assert load_folder(tmp_path / "data", image_size=16).fingerprint == first  # unchanged
    assert load_folder(tmp_path / "data", image_size=12).fingerprint != first
    # One image rewritten in place, same name: a new fingerprint.
    image = sorted((tmp_path / "data" / "test" / "young").iterdir())[0]
    cv2.imwrite(str(image), np.full((20, 20), 7, np.uint8))
    changed = load_folder(tmp_path / "data", image_size=16).fingerprint
    assert changed != first
    # A file renamed: the same bytes under another name are another listing.
    image.rename(image.with_name("renamed" + image.suffix))
    assert load_folder(tmp_path / "data", image_size=16).fingerprint not in (first, changed)


def test_concurrent_loads_share_one_cache_file(tmp_path):
    make_image_folder(tmp_path / "data")
    options = {"image_size": 16, "cache_dir": str(tmp_path / "cache")}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: load_folder(tmp_path / "data", **options), range(4)))
    assert len({r.fingerprint for r in results}) == 1
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]  # no .tmp left


# --- pipeline -----------------------------------------------------------------------------

SEED_004 = {"rotation": 40, "shift": 0.2, "shear": 0.2, "zoom": 0.2, "flip": "horizontal"}


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_dataset("digits", limit=40)


def batches(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_make_dataset_yields_rescaled_float_batches_with_int_labels(digits):
    from sweeps.data import make_dataset

    ds = make_dataset(digits.train, batch_size=16)
    shapes = [tuple(x.shape) for x, _ in ds]
    assert shapes == [(16, 8, 8, 1), (16, 8, 8, 1), (8, 8, 8, 1)]
    x, y = batches(ds)
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() == 1.0
    np.testing.assert_allclose(x * 255, digits.train.x, atol=1e-3)
    assert y.dtype == np.int64 and np.array_equal(y, digits.train.y)


def test_make_dataset_resizes_and_converts_channels(digits, tmp_path):
    from sweeps.data import make_dataset

    x, _ = batches(make_dataset(digits.test, batch_size=8, image_size=32, channels=3))
    assert x.shape == (40, 32, 32, 3)
    assert np.array_equal(x[..., 0], x[..., 2])  # gray replicated into RGB
    assert abs(x.mean() - digits.test.x.mean() / 255) < 0.02
    make_image_folder(tmp_path, odd=False)
    rgb = load_folder(tmp_path)
    gray, _ = batches(make_dataset(rgb.train, batch_size=4, channels=1, cache=False))
    assert gray.shape == (12, 24, 24, 1)


def test_augmentation_is_random_per_epoch_but_reproducible_for_a_seed(digits):
    from sweeps.data import make_dataset

    spec = AugmentSpec.from_dict(SEED_004)

    def pipeline(seed: int):
        return make_dataset(
            digits.train, batch_size=8, image_size=(16, 16), augment=spec, shuffle=True, seed=seed
        )

    ds = pipeline(0)
    epoch1, epoch2 = batches(ds), batches(ds)
    again = pipeline(0)
    assert all(np.array_equal(a, b) for a, b in zip(epoch1, batches(again), strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(epoch2, batches(again), strict=True))
    assert not np.array_equal(epoch1[0], epoch2[0])
    assert not np.array_equal(epoch1[0], batches(pipeline(1))[0])
    plain_x, plain_y = batches(
        make_dataset(digits.train, batch_size=8, image_size=(16, 16), shuffle=True, seed=0)
    )
    assert np.array_equal(plain_y, epoch1[1])  # same shuffle, labels untouched
    assert not np.allclose(plain_x, epoch1[0], atol=0.05)
    assert epoch1[0].min() >= 0 and epoch1[0].max() <= 1


def test_make_datasets_augments_and_shuffles_train_only(digits):
    from sweeps.data import make_dataset, make_datasets

    spec = AugmentSpec.from_dict(SEED_004)
    pipelines = make_datasets(digits, batch_size=8, augment=spec, seed=3, eval_batch_size=16)
    train_x, train_y = batches(pipelines["train"])
    assert sorted(train_y) == sorted(digits.train.y)
    assert not np.array_equal(train_y, digits.train.y)
    for name in ("validation", "test"):
        x, y = batches(pipelines[name])
        expected_x, expected_y = batches(make_dataset(digits.splits[name], batch_size=16))
        assert np.array_equal(x, expected_x) and np.array_equal(y, expected_y)


def test_augment_spec_from_config():
    assert AugmentSpec.from_dict(None) is None and AugmentSpec.from_dict({}) is None
    assert AugmentSpec.from_dict({"rotation": 0, "flip": None}) is None
    with pytest.raises(DataError, match="unknown key rotate"):
        AugmentSpec.from_dict({"rotate": 40})
    with pytest.raises(DataError, match="flip='sideways'"):
        AugmentSpec.from_dict({"flip": "sideways"})
    layers = AugmentSpec.from_dict(SEED_004).keras_layers()
    names = [type(layer).__name__ for layer in layers]
    assert names == [
        "RandomRotation",
        "RandomTranslation",
        "RandomShear",
        "RandomZoom",
        "RandomFlip",
    ]
    # ImageDataGenerator's shear_range is in degrees: 0.2 means a 0.2 degree shear.
    assert layers[2].x_factor[1] == pytest.approx(math.tan(math.radians(0.2)))


@pytest.mark.slow
def test_generated_folder_is_learnable(tmp_path):
    import keras
    from sweeps.data import make_datasets

    make_image_folder(tmp_path, per_class={"train": 20, "validation": 10, "test": 10})
    data = load_folder(tmp_path, image_size=16, channels=1)
    pipelines = make_datasets(data, batch_size=8, seed=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    # The brightness signal is linear, so one sigmoid unit with a large step learns it.
    model.compile(
        keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=[keras.metrics.BinaryAccuracy()]
    )
    model.fit(pipelines["train"], epochs=10, shuffle=False, verbose=0)  # shuffled by tf.data
    _, accuracy = model.evaluate(pipelines["test"], verbose=0)
    assert accuracy >= 0.9


def test_split_head_and_image_data_checks():
    x = np.zeros((4, 2, 2, 1), np.uint8)
    split = Split(x, np.array([0, 1, 0, 1], dtype=np.int64))
    assert len(split.head(2)) == 2 and split.head(None) is split
    with pytest.raises(DataError, match="labels outside 0..1"):
        ImageData(split, split, Split(x, np.array([0, 1, 2, 0])), ["a", "b"], 0, "f", "src")
    with pytest.raises(DataError, match="validation split is empty"):
        ImageData(split, Split(x[:0], split.y[:0]), split, ["a", "b"], 0, "f", "src")
    ok = ImageData(split, split.head(2), split, ["a", "b"], 3, "f", "src")
    assert ok.sizes == {"train": 4, "validation": 2, "test": 4}
    assert ok.image_shape == (2, 2, 1) and ok.skipped == 3
