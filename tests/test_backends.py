"""train.backend: trials on TensorFlow, JAX and PyTorch, and the backend-neutral input pipeline.

The pytest process itself runs Keras on TensorFlow; every other backend trains in a fresh
process (the CLI, or a ``train.subprocess=true`` trial process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fake_smi
import numpy as np
import pytest
import yaml
from cli_helpers import error_line, run_cli
from conftest import compose
from imagegen import make_image_folder
from sweeps.data import AugmentSpec, load_dataset, make_pydataset

from sweeps import backend, host
from sweeps.backend import BACKENDS
from sweeps.config import apply_overrides
from sweeps.errors import ConfigError
from sweeps.trial import make_spec

OTHERS = [
    pytest.param(name, marks=pytest.mark.skipif(not backend.installed(name),
                                                reason=f'pip install -e ".[{name}]"'))
    for name in ("jax", "torch")
]  # fmt: skip
needs_jax = pytest.mark.skipif(not backend.installed("jax"), reason='pip install -e ".[jax]"')
SEED_004 = {"rotation": 40, "shift": 0.2, "shear": 0.2, "zoom": 0.2, "flip": "horizontal"}

# Imported first by every Python process started with this folder on PYTHONPATH: at exit, it
# writes which backend the process ran and whether TensorFlow was ever imported into it.
SITECUSTOMIZE = """
import atexit, json, multiprocessing, os, sys

def _record():
    keras = sys.modules.get("keras")
    path = os.path.join(os.environ["SWEEPS_TEST_RECORD"], f"{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump({"process": multiprocessing.current_process().name,
                   "argv": sys.argv,
                   "backend": keras.backend.backend() if keras else None,
                   "tensorflow": "tensorflow" in sys.modules}, f)

atexit.register(_record)
"""


def recorder(tmp_path: Path) -> tuple[dict[str, str], Path]:
    hook, record = tmp_path / "hook", tmp_path / "record"
    hook.mkdir()
    record.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"PYTHONPATH": str(hook), "SWEEPS_TEST_RECORD": str(record)}, record


def records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in folder.glob("*.json")]


# --- choosing the backend -------------------------------------------------------------------


def test_backend_comes_from_the_key_then_keras_backend_then_tensorflow(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert compose("quickstart").train.backend == "tensorflow"
    assert compose("quickstart", "train.backend=jax").train.backend == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert compose("quickstart").train.backend == "torch"
    assert backend.requested(None) == "torch" and backend.requested("jax") == "jax"
    with pytest.raises(ConfigError, match="train.backend='mxnet': .*tensorflow, jax, torch"):
        compose("quickstart", "train.backend=mxnet")


def test_a_process_keeps_the_backend_keras_was_imported_with_and_says_so():
    code = textwrap.dedent(
        """
        import logging, sys
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
        from sweeps import backend
        first = backend.select("jax")
        import keras
        print(first, keras.backend.backend(), "tensorflow" in sys.modules)
        print(backend.select("torch"))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip
    if not backend.installed("jax"):
        pytest.skip('pip install -e ".[jax]"')
    lines = proc.stdout.split("\n")
    assert lines[0] == "jax jax False", proc.stderr[-2000:]
    assert "train.backend=torch, but this process already runs Keras on jax" in lines[1]
    assert lines[2] == "jax"


def test_a_missing_backend_library_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setattr(backend, "installed", lambda name: name != "torch")
    monkeypatch.setattr(backend, "active", lambda: None)
    with pytest.raises(
        ConfigError, match=r'torch is not installed here; .*pip install -e "\.\[torch\]"'
    ):
        backend.select("torch")


def test_run_tags_name_the_backend_and_its_version():
    tags = backend.run_tags("tensorflow")
    assert tags["sweeps.backend"] == "tensorflow"
    assert tags["sweeps.backend_version"].startswith("2.")
    assert tags["sweeps.keras_version"].startswith("3.")


# --- the input pipelines --------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=40)


def epochs_of(ds, n: int, *, keras_loop: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` epochs of a pipeline as (images, labels), iterated as Keras iterates it."""
    out = []
    for _ in range(n):
        if keras_loop:
            ds.on_epoch_begin()
            batches = [ds[i] for i in range(len(ds))]
            ds.on_epoch_end()
        else:
            batches = [(x.numpy(), y.numpy()) for x, y in ds]
        out.append(tuple(np.concatenate(part) for part in zip(*batches, strict=True)))
    return out


@pytest.mark.parametrize(
    "options",
    [
        {"shuffle": True, "seed": 0},
        {"shuffle": True, "seed": 7, "image_size": (16, 16), "channels": 3},
        {"shuffle": False},
    ],
)
def test_pydataset_and_tf_data_give_the_same_batches_without_augmentation(digits, options):
    from sweeps.data import make_dataset

    tf_epochs = epochs_of(make_dataset(digits.train, batch_size=8, **options), 3, keras_loop=False)
    py = make_pydataset(digits.train, batch_size=8, **options)
    assert py[0][0].shape[0] == 8 and len(py) == 5  # 40 images, batches of 8
    for (tx, ty), (px, py_) in zip(tf_epochs, epochs_of(py, 3, keras_loop=True), strict=True):
        assert px.dtype == np.float32 and py_.dtype == np.int64
        np.testing.assert_array_equal(ty, py_)
        np.testing.assert_array_equal(tx, px)
    if options["shuffle"]:
        assert not np.array_equal(tf_epochs[0][1], tf_epochs[1][1])  # a new order each epoch


def test_pydataset_follows_fits_epoch_not_keras_extra_peek(digits):
    ds = make_pydataset(digits.train, batch_size=8, shuffle=True, seed=1)
    first = ds[0][1]
    callback = ds.epoch_callback()
    ds.on_epoch_begin()
    _ = [ds[i] for i in range(len(ds))]  # a peek that happened to reach the end
    callback.on_epoch_begin(0)
    ds.on_epoch_begin()
    np.testing.assert_array_equal(ds[0][1], first)
    callback.on_epoch_begin(1)
    assert not np.array_equal(ds[0][1], first)


def mean_change(before: np.ndarray, after: np.ndarray) -> float:
    return float(np.mean(np.abs(after - before)))


@pytest.mark.parametrize(
    "augment",
    [{"rotation": 40}, {"shift": 0.2}, {"zoom": 0.2}, {"shear": 20}, SEED_004],
    ids=["rotation", "shift", "zoom", "shear", "seed_004"],
)
def test_numpy_augmentation_has_the_strength_of_the_keras_layers(augment):
    """Mean absolute pixel change over 400 digits at 32x32: within 15 % of tf.data's."""
    from sweeps.data import make_dataset

    data = load_dataset("digits", limit=400)
    spec = AugmentSpec.from_dict(augment)
    common = {"batch_size": 50, "image_size": (32, 32), "seed": 3}
    plain = epochs_of(make_dataset(data.train, **common), 1, keras_loop=False)[0][0]
    tf_aug = epochs_of(make_dataset(data.train, augment=spec, **common), 1, keras_loop=False)
    np_aug = epochs_of(make_pydataset(data.train, augment=spec, **common), 1, keras_loop=True)
    tf_change, np_change = mean_change(plain, tf_aug[0][0]), mean_change(plain, np_aug[0][0])
    assert tf_change > 0.01
    assert np_change == pytest.approx(tf_change, rel=0.15)
    # Per image, too: the spread of the change (how much the draws vary) matches.
    tf_each = np.abs(tf_aug[0][0] - plain).mean(axis=(1, 2, 3))
    np_each = np.abs(np_aug[0][0] - plain).mean(axis=(1, 2, 3))
    assert np.std(np_each) == pytest.approx(np.std(tf_each), rel=0.3)


def test_numpy_flip_flips_half_the_images_and_nothing_else(digits):
    spec = AugmentSpec.from_dict({"flip": "horizontal"})
    plain = epochs_of(make_pydataset(digits.train, batch_size=40), 1, keras_loop=True)[0][0]
    flipped = epochs_of(make_pydataset(digits.train, batch_size=40, augment=spec), 1,
                        keras_loop=True)[0][0]  # fmt: skip
    mirrored = [np.array_equal(a, b[:, ::-1]) and not np.array_equal(a, b)
                for a, b in zip(flipped, plain, strict=True)]  # fmt: skip
    same = [np.array_equal(a, b) for a, b in zip(flipped, plain, strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True))
    assert 0.25 <= np.mean(mirrored) <= 0.75


def test_augmented_pydataset_is_reproducible_per_seed_and_new_each_epoch(digits):
    spec = AugmentSpec.from_dict(SEED_004)

    def stream(seed: int):
        ds = make_pydataset(digits.train, batch_size=8, augment=spec, shuffle=True, seed=seed)
        return epochs_of(ds, 2, keras_loop=True)

    a, b = stream(0), stream(0)
    for (ax, ay), (bx, by) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ax, bx)
        np.testing.assert_array_equal(ay, by)
    assert not np.array_equal(a[0][0], a[1][0])
    assert not np.array_equal(a[0][0], stream(1)[0][0])
    assert a[0][0].min() >= 0 and a[0][0].max() <= 1


def test_the_neutral_pipeline_imports_neither_tensorflow_nor_the_tf_data_module():
    if not (backend.installed("jax") or backend.installed("torch")):
        pytest.skip('needs a backend other than TensorFlow: pip install -e ".[jax]"')
    code = (
        "import sys, sweeps.data; from sweeps.data import make_pydataset; "
        "d = sweeps.data.load_dataset('digits', limit=20); "
        "ds = make_pydataset(d.train, batch_size=4, shuffle=True, "
        "augment=sweeps.data.AugmentSpec(rotation=10)); ds[0]; "
        "print(sorted(m for m in ('tensorflow', 'sweeps.data.pipeline') if m in sys.modules))"
    )
    env = {"PATH": "/usr/bin:/bin", "KERAS_BACKEND": "jax" if backend.installed("jax") else "torch"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


# --- GPU memory caps, set before each backend takes the card -------------------------------

XLA = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION")


def test_jax_never_preallocates_and_takes_its_share_or_gpu_memory_mb_as_a_fraction():
    pre, old, new = XLA
    assert backend.jax_memory_env({}) == {pre: "false"}
    assert backend.jax_memory_env({pre: "true"}) == {}  # the environment's own word stands
    assert backend.jax_memory_env({}, share=0.45) == {pre: "false", old: "0.45"}
    assert backend.jax_memory_env({old: "0.3"}, share=0.45) == {pre: "false"}
    # gpu_memory_mb over the device's memory, rounded down; over the environment's fraction,
    # under the name the environment uses (JAX refuses both names at once).
    env = backend.jax_memory_env({new: "0.3"}, gpu_memory_mb=20000, device_mb=81920, share=0.45)
    assert env == {pre: "false", new: "0.244"}
    assert backend.jax_memory_env({}, gpu_memory_mb=90000, device_mb=81920)[old] == "1"


def test_gpu_memory_mb_on_jax_without_the_device_s_memory_is_one_line_naming_the_fix():
    with pytest.raises(ConfigError) as caught:
        backend.jax_memory_env({}, gpu_memory_mb=4000, device_mb=None)
    line = str(caught.value)
    assert "\n" not in line and line.startswith("train.gpu_memory_mb=4000: JAX caps GPU memory")
    assert "set XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 (the fraction) instead" in line


class _Cuda:
    """What ``cap_torch`` calls of ``torch.cuda``, recording the fractions set."""

    def __init__(self, totals_mb: list[int]) -> None:
        self.totals, self.set = totals_mb, {}

    def is_available(self) -> bool:
        return bool(self.totals)

    def device_count(self) -> int:
        return len(self.totals)

    def get_device_properties(self, i: int):
        return type("Properties", (), {"total_memory": self.totals[i] * 2**20})

    def set_per_process_memory_fraction(self, fraction: float, device: int) -> None:
        self.set[device] = fraction


def test_torch_caps_its_caching_allocator_on_every_visible_gpu():
    cuda = _Cuda([81920, 40960])
    assert backend.cap_torch(cuda, 20480, share=0.45) == [0.25, 0.5]  # gpu_memory_mb first
    assert cuda.set == {0: 0.25, 1: 0.5}
    cuda = _Cuda([81920])
    assert backend.cap_torch(cuda, None, share=0.45) == [0.45] and cuda.set == {0: 0.45}
    assert backend.cap_torch(_Cuda([81920]), 100000, None) == [1.0]
    assert backend.cap_torch(_Cuda([81920]), None, None) == []  # alone on its card: no cap
    assert backend.cap_torch(_Cuda([]), 20480, 0.45) == []  # a CPU build of PyTorch


def test_tensorflow_s_limit_is_gpu_memory_mb_else_the_share_of_the_device(tmp_path, monkeypatch):
    assert backend.memory_limit_mb(20000, 0.45, 40960) == 20000
    assert backend.memory_limit_mb(None, 0.45, 40960) == 18432
    assert backend.memory_limit_mb(None, None, 40960) is None  # memory growth
    assert backend.memory_limit_mb(None, 0.45, None) is None  # memory unknown: growth
    # In a worker: the share from its environment, the memory of the slice it is pinned to.
    fake_smi.use(monkeypatch, tmp_path, fake_smi.SEVEN_SLICES, fake_smi.SEVEN_SLICES_QUERY)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", fake_smi.SLICE_UUIDS[3])
    monkeypatch.setenv("SWEEPS_GPU_SHARE", "0.3")
    assert backend.tensorflow_limit_mb(None) == 1536  # 0.3 of a 1g.5gb slice (5120 MiB)
    assert backend.tensorflow_limit_mb(2000) == 2000


# Runs in a fresh process, as a worker: sets its trainer up, prints what JAX would read.
WORKER = """
import json, os, sys
from conftest import compose
from sweeps import services
from sweeps.errors import ConfigError
try:
    services.keras_trainer(compose("quickstart", *sys.argv[1:]), None)
except ConfigError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({k: v for k, v in os.environ.items() if k.startswith("XLA_")}))
"""


def worker_xla(tmp_path: Path, listing: str, query: str, device: str, *overrides: str,
               share: str = "") -> dict:  # fmt: skip
    """What a worker pinned to ``device`` sets up for JAX, on a host whose ``nvidia-smi``
    answers ``listing`` and ``query``."""
    fake_smi.install(tmp_path / "smi", listing, query)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "SWEEPS_"))}
    path = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    env.update(PATH=f"{tmp_path / 'smi'}{os.pathsep}{env['PATH']}", SWEEPS_GPU_SHARE=share,
               CUDA_VISIBLE_DEVICES=device, PYTHONPATH=path)  # fmt: skip
    out = subprocess.run([sys.executable, "-c", WORKER, *overrides], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_jax
@pytest.mark.parametrize("subprocess_trials", ["false", "true"])
def test_a_jax_worker_sets_its_cap_up_before_keras_imports_jax(tmp_path, subprocess_trials):
    mode = f"train.subprocess={subprocess_trials}"  # trial processes inherit the environment
    host = (fake_smi.SEVEN_SLICES, fake_smi.SEVEN_SLICES_QUERY, fake_smi.SLICE_UUIDS[0])
    got = worker_xla(tmp_path, *host, "train.backend=jax", mode, "train.gpu_memory_mb=2000")
    # 2000 MB of the slice's 5120 MiB.
    assert got == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                   "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.39"}  # fmt: skip
    got = worker_xla(tmp_path, *host, "train.backend=jax", mode, share="0.3")
    assert got["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.3"


@needs_jax
def test_a_jax_worker_refuses_gpu_memory_mb_it_cannot_turn_into_a_fraction(tmp_path):
    unknown = fake_smi.EIGHT_CARDS_QUERY.replace("40960", "[N/A]")  # a card without its own
    got = worker_xla(tmp_path, fake_smi.EIGHT_CARDS, unknown, "3", "train.backend=jax",
                     "train.gpu_memory_mb=2000")  # fmt: skip
    assert got.keys() == {"error"} and got["error"].startswith("train.gpu_memory_mb=2000: JAX")


@needs_jax
def test_the_launcher_refuses_it_in_one_line_before_starting_any_worker(tmp_path):
    fake_smi.install(tmp_path / "smi", fake_smi.EIGHT_CARDS,
                     fake_smi.EIGHT_CARDS_QUERY.replace("40960", "[N/A]"))  # fmt: skip
    env = {"PATH": f"{tmp_path / 'smi'}{os.pathsep}{os.environ['PATH']}"}
    env["CUDA_VISIBLE_DEVICES"] = "0,1"  # as a scheduler gives them
    proc = run_cli("run", "+study=quickstart", "sweep.workers=2", "train.backend=jax",
                   "train.gpu_memory_mb=4000", cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 2
    line = error_line(proc)
    assert "train.gpu_memory_mb=4000" in line and "XLA_PYTHON_CLIENT_MEM_FRACTION=" in line
    assert "worker w0" not in proc.stdout


def test_jit_compile_auto_is_xla_on_jax_on_tensorflow_with_a_gpu_never_on_torch():
    assert [backend.jit_compile("auto", b, gpu=False) for b in BACKENDS] == [False, True, False]
    assert [backend.jit_compile("auto", b, gpu=True) for b in BACKENDS] == [True, True, False]
    assert backend.jit_compile(False, "jax", gpu=True) is False
    assert backend.jit_compile(True, "torch", gpu=False) is True
    assert compose("quickstart").train.jit_compile == "auto"
    with pytest.raises(ConfigError, match="train.jit_compile must be auto, true or false"):
        compose("quickstart", "train.jit_compile=xla")


@pytest.mark.parametrize("name", ["tensorflow", *OTHERS])
def test_jit_compile_auto_resolves_as_keras_resolves_it(name):
    """The logged resolution is Keras's own, read back from a compiled model on this host."""
    code = textwrap.dedent(
        """
        from sweeps import backend
        backend.select(NAME)
        from sweeps.models import create_model
        from sweeps.models.compile import compile_model
        net = create_model("cnn", input_shape=(8, 8, 1), num_classes=10, depth=1)
        compile_model(net, optimizer="adam", learning_rate=None, num_classes=10)
        print(net.jit_compile)
        """
    ).replace("NAME", repr(name))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    gpu = host.gpu_capability() is not None
    assert proc.stdout.split()[-1] == str(backend.jit_compile("auto", name, gpu=gpu))


# --- real trials on each backend ------------------------------------------------------------


def tiny_spec(store: Path, backend_name: str, epochs: int = 2):
    """A small quickstart trial (8x8 digits, one block) on ``backend_name``, in its own process."""
    overrides = (f"train.epochs={epochs}", "train.verbose=0", "train.threads=1",
                 f"train.backend={backend_name}", "train.precision=float32")  # fmt: skip
    cfg = compose("quickstart", *overrides, store=store)
    values = {"model.input_size": 8, "model.depth": 1, "train.batch_size": 64}
    return make_spec(cfg, apply_overrides(cfg.raw, values), 0, cfg.seed, values, store / "work")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tensorflow", *OTHERS])
def test_a_trial_trains_reports_and_tests_on_every_backend(name, store, tmp_path, monkeypatch):
    """The trainer's contract, backend by backend; then the checkpoint loads here, under
    TensorFlow, and scores the same test accuracy."""
    from sweeps.isolated import SubprocessTrainer
    from sweeps.trainer import evaluate

    env, record = recorder(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from sweeps.models import create_model

    data = load_dataset("digits")
    spec = tiny_spec(store, name)
    reports = []
    outcome = SubprocessTrainer(data).run(spec, lambda e, m, state=None: reports.append(e))
    here = create_model(spec.model_name, input_shape=(8, 8, 1), num_classes=10, **spec.model_kwargs)

    assert reports == [1, 2] and len(outcome.history) == 2
    assert outcome.best == outcome.history[outcome.best_epoch - 1]
    assert outcome.param_count == here.count_params()  # the same model on every backend
    assert 0.5 <= outcome.test["test_acc"] <= 1.0
    trial = [r for r in records(record) if r["process"].startswith("sweeps-trial-")]
    assert len(trial) == 1 and trial[0]["backend"] == name
    assert trial[0]["tensorflow"] is (name == "tensorflow")

    import keras

    checkpoint = next(path for path, folder in outcome.artifacts if folder == "checkpoint")
    model = keras.saving.load_model(checkpoint, compile=False, safe_mode=True)
    x = np.concatenate([xb.numpy() for xb, _ in _test_batches(data)])
    test, _, _ = evaluate(model.predict(x, verbose=0), data.test.y, data.class_names)
    assert test["test_acc"] == pytest.approx(outcome.test["test_acc"], abs=1e-9)
    assert test["test_loss"] == pytest.approx(outcome.test["test_loss"], rel=1e-3)


def _test_batches(data):
    from sweeps.data import make_dataset

    return make_dataset(data.test, batch_size=64, image_size=(8, 8), channels=1)


def _runs(store: Path, study: str, name: str) -> list[dict]:
    from sweeps.services import open_tracker

    tracker = open_tracker(compose(study, f"sweep.name={name}", "data.root=/x", store=store))
    try:
        return tracker.trial_runs(name)
    finally:
        tracker.close()


@pytest.mark.slow
@needs_jax
def test_quickstart_runs_end_to_end_on_jax_without_importing_tensorflow(tmp_path):
    env, record = recorder(tmp_path)
    proc = run_cli(
        "run", "+study=quickstart", "train.backend=jax", "sweep.name=qs-jax", "sweep.n_trials=2",
        "train.epochs=2", "train.verbose=0", "sweep.pruner=none", "train.precision=float32",
        "space.model.input_size='choice(8)'", "space.model.depth='int(1, 1)'",
        "space.train.batch_size='choice(64)'", cwd=tmp_path, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend: jax" in proc.stdout
    cli = [r for r in records(record) if "sweeps" in " ".join(r["argv"]) or r["backend"]]
    assert cli and all(r["backend"] == "jax" and not r["tensorflow"] for r in cli), cli
    runs = _runs(tmp_path / "sweeps-store", "quickstart", "qs-jax")
    assert len(runs) == 2
    for run in runs:
        assert run["status"] == "FINISHED" and "test_acc" in run["metrics"]
        assert run["tags"]["sweeps.backend"] == "jax"
        assert run["tags"]["sweeps.backend_version"] == backend.version("jax")
        assert run["params"]["train.backend"] == "jax"


@pytest.mark.slow
@needs_jax
def test_age_gap_ablation_runs_on_jax_in_trial_processes_without_tensorflow(tmp_path):
    """Two variants, one repeat, one epoch, with the study's augmentation (NumPy here)."""
    installed = Path(__file__).resolve().parents[1] / "conf" / "study" / "age_gap.yaml"
    study = yaml.safe_load(installed.read_text())
    study["ablation"]["variants"] = study["ablation"]["variants"][:1]
    conf = tmp_path / "conf"
    (conf / "study").mkdir(parents=True)  # searched in front of the installed studies
    (conf / "study" / "age_gap.yaml").write_text("# @package _global_\n" + yaml.safe_dump(study))
    folder = make_image_folder(tmp_path / "lag", classes=("old", "young"), per_class=6)
    env, record = recorder(tmp_path)
    proc = run_cli(
        "run", "+study=age_gap", f"data.root={folder.root}", "sweep.mode=ablation",
        "sweep.repeats=1", "train.epochs=1", "train.verbose=0", "train.backend=jax",
        "train.subprocess=true", "train.precision=float32", "data.image_size=[16,16]",
        "model.input_size=[16,16]", "sweep.name=lag-jax",
        cwd=tmp_path, env={**env, "SWEEPS_CONFIG_DIR": str(conf)}, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [r for r in records(record) if r["process"].startswith("sweeps-trial-")]
    assert len(trials) == 2, records(record)
    assert all(r["backend"] == "jax" and not r["tensorflow"] for r in trials)
    runs = _runs(tmp_path / "sweeps-store", "age_gap", "lag-jax")
    assert sorted(r["tags"]["sweeps.variant"] for r in runs) == ["baseline", "dropout_0.2"]
    assert all(r["tags"]["sweeps.backend"] == "jax" and "test_acc" in r["metrics"] for r in runs)


INSPECT = """
import json, sys, tempfile
from pathlib import Path
import numpy as np
from sweeps import backend
backend.select()
from sweeps.models.inspect import activation_grids, filter_patterns, pattern_layers
from sweeps.models import create_model
model = create_model("cnn", input_shape=(16, 16, 1), num_classes=10, filters=[4, 8])
patterns = filter_patterns(model, pattern_layers(model)[0], filters=3, steps=4, size=16)
with tempfile.TemporaryDirectory() as tmp:
    maps = activation_grids(model, np.full((16, 16, 1), 0.5, "float32"), Path(tmp), 4)
print(json.dumps({"shape": list(patterns.shape), "finite": bool(np.isfinite(patterns).all()),
                  "spread": float(patterns.std()), "maps": len(maps),
                  "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS)
def test_report_inspect_figures_work_on_every_backend(name):
    """The gradient ascent of the filter patterns and the activation maps on JAX and PyTorch
    (tests/test_studies.py runs them on TensorFlow)."""
    env = {"PATH": "/usr/bin:/bin", "KERAS_BACKEND": name, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", INSPECT], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["shape"] == [3, 16, 16, 1] and got["finite"] and got["spread"] > 0
    assert got["maps"] == 4  # two activations, two poolings
    assert got["tensorflow"] is False
