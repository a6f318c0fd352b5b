"""train.patience and train.precision: scripted curves, host detection, tiny real trainings."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import fake_smi
import numpy as np
import optuna
import pytest
from cli_helpers import error_line, run_cli
from conftest import compose
from fakes import FakeTrainer

from sweeps import host, precision
from sweeps.errors import ConfigError
from sweeps.runner import run_study
from sweeps.storage import open_storage
from sweeps.trial import TrialOutcome

REPO = Path(__file__).resolve().parents[1]


# -- patience: the callback on a scripted curve -----------------------------------------------


class _Model:
    """What the callback touches of a Keras model."""

    def __init__(self) -> None:
        self.stop_training = False
        self.step = 0

    def get_weights(self) -> list[np.ndarray]:
        return [np.array([self.step])]


def _play(curve: list[float], patience: int | None, metric: str = "val_acc"):
    """Feeds ``curve`` to the trainer's callback epoch by epoch, as Keras's fit loop would."""
    from sweeps.trainer import _best_epoch

    keeper = _best_epoch(lambda epoch, metrics, state=None: None, metric, patience)
    model = _Model()
    keeper.set_model(model)
    ran = 0
    for epoch, value in enumerate(curve):
        if model.stop_training:
            break
        model.step = epoch
        key = "val_acc" if metric == "val_acc" else "val_loss"
        keeper.on_epoch_end(epoch, {key: value, "loss": 1.0})
        ran += 1
    return keeper, ran


def test_a_curve_that_plateaus_stops_after_patience_epochs_and_keeps_the_best():
    curve = [0.50, 0.60, 0.70, 0.70, 0.69, 0.71, 0.72, 0.73]  # plateau after epoch 3
    keeper, ran = _play(curve, patience=2)
    assert ran == 5  # epochs 4 and 5 do not beat 0.70
    assert keeper.stop_reason == "patience"
    assert keeper.best_epoch == 3 and keeper.best_weights[0].item() == 2


def test_patience_counts_from_the_last_improvement_and_minimises_losses():
    keeper, ran = _play([0.9, 0.8, 0.85, 0.7, 0.75, 0.76, 0.74], patience=3, metric="val_loss")
    assert (ran, keeper.best_epoch, keeper.stop_reason) == (7, 4, "patience")


def test_without_patience_every_epoch_runs():
    keeper, ran = _play([0.5, 0.5, 0.5, 0.5], patience=None)
    assert (ran, keeper.stop_reason) == (4, "epochs")
    keeper, ran = _play([0.5, 0.6, 0.7], patience=1)  # never stalls: the cap ends it
    assert (ran, keeper.stop_reason) == (3, "epochs")


class _StoppingTrainer(FakeTrainer):
    """The scripted trainer, saying its trials stopped on patience."""

    def run(self, spec, report) -> TrialOutcome:
        outcome = super().run(spec, report)
        outcome.stop_reason = "patience"
        return outcome


def test_the_stop_reason_and_epochs_are_kept_with_the_trial(store):
    cfg = compose("quickstart", "sweep.n_trials=2", "sweep.pruner=none", store=store)
    run_study(cfg, trainer=_StoppingTrainer())
    trials = _trials(cfg)
    assert [t.user_attrs["stop_reason"] for t in trials] == ["patience", "patience"]
    assert all(t.user_attrs["epochs_trained"] == cfg.train.epochs for t in trials)


# -- precision: what auto picks, from the host's facts ------------------------------------------


@pytest.mark.parametrize(
    ("flags", "capability", "expected"),
    [
        ("fpu sse2 avx2 avx512f avx512_bf16", None, "mixed_bfloat16"),
        ("fpu sse2 avx2 amx_tile amx_bf16", None, "mixed_bfloat16"),
        ("fpu sse2 avx2 avx512f", None, "float32"),
        ("", None, "float32"),
        ("", 9.0, "mixed_bfloat16"),  # a GPU trains: its capability decides
        ("", 8.0, "mixed_bfloat16"),  # Ampere: bfloat16 tensor cores
        ("avx512_bf16", 7.5, "mixed_float16"),  # Volta, Turing: float16 ones, loss-scaled
        ("avx512_bf16", 7.0, "mixed_float16"),
        ("avx512_bf16", 6.1, "float32"),
    ],
)
def test_auto_resolves_from_cpu_flags_and_gpu_capability(flags, capability, expected):
    assert precision.resolve("auto", cpu_flags=flags.split(), gpu_capability=capability) == expected


def test_an_explicit_precision_is_kept():
    for name in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert precision.resolve(name, cpu_flags=[], gpu_capability=8.0) == name


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\n")
    assert host.cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert host.cpu_flags(tmp_path / "missing") == frozenset()


def _fake_nvidia_smi(folder: Path, caps: list[str], code: int = 0) -> None:
    """An ``nvidia-smi`` answering ``-L`` and ``--query-gpu=index,uuid,compute_cap,...`` as
    the real one does, for one card per entry of ``caps``; ``code`` != 0: a driver not loaded."""
    listing = "".join(f"GPU {i}: NVIDIA Card (UUID: GPU-{i}-fake)\\n" for i in range(len(caps)))
    query = "".join(f"{i}, GPU-{i}-fake, {cap}, [N/A], 16384\\n" for i, cap in enumerate(caps))
    tool = folder / "nvidia-smi"
    tool.write_text(
        "#!/bin/sh\n"
        f"[ {code} -eq 0 ] || exit {code}\n"
        f"if [ \"$1\" = \"-L\" ]; then printf '{listing}'; else printf '{query}'; fi\n"
    )
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_gpu_capability_comes_from_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _fake_nvidia_smi(tmp_path, ["7.5", "9.0"])
    assert host.gpu_capability() == 9.0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # hidden from this process
    assert host.gpu_capability() is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1,1")  # CUDA stops at the first invalid entry
    assert host.gpu_capability() is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # only the cards this worker may use count
    assert host.gpu_capability() == 7.5
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1-fake")
    assert host.gpu_capability() == 9.0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    _fake_nvidia_smi(tmp_path, ["[N/A]"])
    assert host.gpu_capability() is None
    _fake_nvidia_smi(tmp_path, ["8.0"], code=9)  # driver not loaded
    assert host.gpu_capability() is None


@pytest.mark.parametrize(
    ("capability", "expected"),
    [("6.1", "float32"), ("7.5", "mixed_float16"), ("8.0", "mixed_bfloat16"),
     ("9.0", "mixed_bfloat16")],
)  # fmt: skip
def test_auto_on_a_host_with_a_gpu_picks_from_its_capability_and_says_why(
    tmp_path, monkeypatch, capability, expected
):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _fake_nvidia_smi(tmp_path, [capability])
    precision.describe.cache_clear()
    try:
        resolved, line = precision.describe("auto")
    finally:
        precision.describe.cache_clear()
    assert resolved == expected
    assert line == f"precision: {expected} (auto: GPU of compute capability {float(capability):g})"


def test_a_mig_instance_has_the_capability_of_its_card(tmp_path, monkeypatch):
    fake_smi.use(monkeypatch, tmp_path, fake_smi.MIXED, fake_smi.MIXED_QUERY)
    assert host.gpu_capability() == 8.0
    # Card 0 (sliced) a Hopper, card 1 a Turing: an instance of card 0 is a Hopper.
    hopper = fake_smi.MIXED_QUERY.replace("8.0, Enabled", "9.0, Enabled").replace("8.0", "7.5")
    fake_smi.install(tmp_path, fake_smi.MIXED, hopper)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-703fb6ed-3fa0-5e48-8e65-1c5bdcfe2202")
    assert host.gpu_capability() == 9.0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-08279800-1cbe-a71d-f3e6-8f67e15ae54a")
    assert host.gpu_capability() == 7.5
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-00000000-0000-0000-0000-000000000000")
    assert host.gpu_capability() is None  # an instance nvidia-smi does not list
    # Drivers before R470: the card's UUID is in the instance's name.
    fake_smi.install(tmp_path, fake_smi.OLD_DRIVER, fake_smi.SEVEN_SLICES_QUERY)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77/8/0")
    assert host.gpu_capability() == 8.0
    assert host.visible_gpus() == ["MIG-GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77/8/0"]


@pytest.mark.parametrize(
    ("policy", "scaled"), [("mixed_float16", True), ("mixed_bfloat16", False), ("float32", False)]
)
def test_float16_compiles_with_loss_scaling_and_the_others_without(policy, scaled):
    import keras
    from sweeps.models.compile import compile_model

    with precision.policy(policy):  # as the trainer builds and compiles a trial's model
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
        compile_model(model, optimizer="adam", learning_rate=None, num_classes=3)
    loss_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert loss_scaled is scaled


def test_the_reason_line_names_the_cpu_flags():
    line = precision.reason("auto", "mixed_bfloat16", cpu_flags=["avx512_bf16"],
                            gpu_capability=None)  # fmt: skip
    assert line == "precision: mixed_bfloat16 (auto: CPU has avx512_bf16)"


# -- config ----------------------------------------------------------------------------------


def test_the_old_mixed_precision_key_names_its_replacement(store):
    with pytest.raises(ConfigError, match=r"replaced by train\.precision"):
        compose("quickstart", "train.mixed_precision=true", store=store)
    assert compose("quickstart", store=store).train.precision == "auto"


def test_the_old_key_on_the_command_line_is_one_line(tmp_path):
    proc = run_cli("run", "+study=quickstart", "train.mixed_precision=true", cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "train.mixed_precision" in line and "train.precision=" in line


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.precision=half", "must be one of auto, float32, mixed_bfloat16, mixed_float16"),
        ("train.patience=0", "train.patience must be a whole number >= 1"),
    ],
)
def test_bad_values_are_refused(store, override, message):
    with pytest.raises(ConfigError, match=message):
        compose("quickstart", override, store=store)


# -- real Keras on digits ----------------------------------------------------------------------


def _trials(cfg) -> list:
    storage = open_storage(cfg.storage, cfg.store_dir, lambda study, trial: None)
    return optuna.load_study(study_name=cfg.sweep.name, storage=storage).trials


def _runs(store: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store.resolve() / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs(
        [e.experiment_id for e in experiments], "tags.`sweeps.role` = 'trial'"
    )
    return runs


def _small(store: Path, learning_rate: float, *overrides: str):
    """One quickstart trial of one small block at 8x8 (the space pinned where it matters)."""
    space = {"model.input_size": 8, "model.depth": 1, "train.batch_size": 64,
             "train.learning_rate": learning_rate}  # fmt: skip
    pinned = [f"space.{key}='choice({value})'" for key, value in space.items()]
    return compose("quickstart", "sweep.n_trials=1", "sweep.pruner=none", "train.verbose=0",
                   *pinned, *overrides, store=store)  # fmt: skip


@pytest.mark.slow
def test_a_real_trial_on_a_plateau_stops_before_its_cap_and_logs_why(store):
    # SGD at a vanishing rate leaves the weights as they are: val_acc is flat from epoch 1.
    cfg = _small(store, 1e-9, "train.epochs=20", "train.patience=2", "train.optimizer=sgd",
                 "train.precision=float32")  # fmt: skip
    assert run_study(cfg) == 0
    (trial,) = _trials(cfg)
    assert trial.state.name == "COMPLETE"
    assert trial.user_attrs["epochs_trained"] == 3 and trial.user_attrs["stop_reason"] == "patience"
    assert trial.user_attrs["best_epoch"] == 1
    (run,) = _runs(store)
    assert run.data.tags["sweeps.stop_reason"] == "patience"
    assert run.data.tags["sweeps.epochs_trained"] == "3"
    assert run.data.metrics["epochs_trained"] == 3
    assert run.data.params["train.patience"] == "2"


@pytest.mark.slow
def test_a_real_mixed_bfloat16_trial_trains_and_its_checkpoint_loads(store):
    import keras

    cfg = _small(store, 0.01, "train.epochs=3", "train.precision=mixed_bfloat16")
    assert run_study(cfg) == 0
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing leaks out
    (trial,) = _trials(cfg)
    assert trial.state.name == "COMPLETE"
    assert trial.user_attrs["test_acc"] > 0.3  # 10 classes: well above chance after 3 epochs
    assert np.isfinite(trial.user_attrs["test_loss"])
    (run,) = _runs(store)
    assert run.data.params["train.precision"] == "mixed_bfloat16"
    assert run.data.params["train.precision_resolved"] == "mixed_bfloat16"
    assert run.data.tags["sweeps.stop_reason"] == "epochs"
    (checkpoint,) = store.glob("artifacts/**/checkpoint/best.keras")
    model = keras.models.load_model(checkpoint, safe_mode=True)
    conv = next(layer for layer in model.layers if layer.name.endswith("conv"))
    assert conv.dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("output").dtype_policy.name == "float32"
    probs = model.predict(np.zeros((2, 8, 8, 1), dtype="float32"), verbose=0)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_auto_is_printed_and_logged_on_every_run(tmp_path):
    proc = run_cli("run", "+study=quickstart", "sweep.n_trials=1", "train.epochs=1",
                   "train.verbose=0", "space.model.input_size='choice(8)'",
                   "space.model.depth='choice(1)'", f"store_dir={tmp_path / 'store'}",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    resolved, line = precision.describe("auto")
    assert line in proc.stdout
    (run,) = _runs(tmp_path / "store")
    assert run.data.params["train.precision"] == "auto"
    assert run.data.params["train.precision_resolved"] == resolved
    # XLA as Keras's auto chooses it on this host's TensorFlow (off without a GPU).
    from sweeps import backend, host

    xla = backend.jit_compile("auto", "tensorflow", gpu=host.gpu_capability() is not None)
    assert run.data.params["train.jit_compile"] == "auto"
    assert run.data.params["train.jit_compile_resolved"] == str(xla)
