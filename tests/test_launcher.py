"""``sweep.workers=N|auto``: worker processes on one host, their cards, signals and deaths.

The fast tests run the real launcher with scripted workers (a shell script in place of the
Python interpreter records the environment each worker got) and a fake ``nvidia-smi`` on PATH;
the slow ones run real ``python -m sweeps run sweep.workers=2`` commands on the quickstart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import fake_smi
import pytest
from conftest import compose

from sweeps.errors import ConfigError
from sweeps.host import LAUNCHED_ENV, PARALLEL_ENV, visible_gpus
from sweeps.launcher import child_overrides, launch_workers, plan_workers
from sweeps.storage import make_sampler

FAKE_SMI = """#!/bin/sh
[ "$1" = "-L" ] || exit 2
for i in $(seq 0 $(($FAKE_GPUS - 1))); do
  echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i-fake)"
done
"""
# Stands in for the workers' Python: records what the launcher gave it, then exits.
FAKE_PYTHON = """#!/bin/sh
echo "$CUDA_VISIBLE_DEVICES|$SWEEPS_DEVICE|$SWEEPS_PARALLEL|$*" > "$RECORD/$SWEEPS_LAUNCHED"
env > "$RECORD/$SWEEPS_LAUNCHED.env"
[ "$SWEEPS_LAUNCHED" = "$DIE" ] && kill -9 $$
exit 0
"""


def script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A host with ``n`` fake GPUs, or a listing of :mod:`fake_smi`, on PATH."""

    def make(n: int | str, query: str = "") -> None:
        """``n`` cards, or ``nvidia-smi -L``'s listing ``n`` with ``query``'s answer."""
        if isinstance(n, str):
            fake_smi.use(monkeypatch, tmp_path / "smi", n, query)
            return
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        script(bin_dir / "nvidia-smi", FAKE_SMI)
        monkeypatch.setenv("FAKE_GPUS", str(n))
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    monkeypatch.delenv(LAUNCHED_ENV, raising=False)
    monkeypatch.delenv(PARALLEL_ENV, raising=False)
    return make


def scripted_launch(tmp_path: Path, monkeypatch, *overrides: str, die: str = "") -> tuple:
    """Runs the launcher with scripted workers; returns its code and each worker's record."""
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("RECORD", str(record))
    monkeypatch.setenv("DIE", die)
    fake = script(tmp_path / "python", FAKE_PYTHON)
    cfg = compose("quickstart", *overrides, store=tmp_path / "store")
    code = launch_workers(cfg, ["+study=quickstart", *overrides], executable=str(fake))
    rows = {p.name: p.read_text().strip().split("|") for p in record.glob("w*[0-9]")}
    return code, rows


def worker_envs(tmp_path: Path) -> dict[str, dict[str, str]]:
    """Each scripted worker's whole environment, as it started, by worker name."""
    envs = {}
    for path in (tmp_path / "record").glob("*.env"):
        pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        envs[path.stem] = dict(pairs)
    return dict(sorted(envs.items(), key=lambda kv: int(kv[0][1:])))


def test_auto_with_two_trials_per_gpu_starts_two_workers_pinned_to_each_of_four_cards(
    gpus, tmp_path, monkeypatch, capsys
):
    gpus(4)
    overrides = ("sweep.workers=auto", "sweep.trials_per_gpu=2")
    code, rows = scripted_launch(tmp_path, monkeypatch, *overrides)
    assert code == 0
    assert sorted(rows) == [f"w{i}" for i in range(8)]
    cards = Counter(cuda for cuda, *_ in rows.values())
    assert cards == {"0": 2, "1": 2, "2": 2, "3": 2}
    for cuda, device, parallel, argv in rows.values():
        assert device == f"gpu:{cuda}"
        assert parallel == "8"  # each worker knows it is one of eight: constant liar on
        args = argv.split()
        assert args[:4] == ["-m", "sweeps", "run", "+study=quickstart"]
        assert args.count("sweep.workers=1") == 1 and "sweep.workers=auto" not in args
    out = capsys.readouterr().out
    for i in range(8):
        assert f"worker w{i}: pid " in out
    assert "device gpu:3, CUDA_VISIBLE_DEVICES=3" in out


def test_gpu_discovery_prefers_cuda_visible_devices_and_auto_is_one_without_gpus(gpus, monkeypatch):
    gpus(4)
    assert visible_gpus() == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == []
    sweep = compose("quickstart", "sweep.workers=auto", "sweep.trials_per_gpu=3").sweep
    (alone,) = plan_workers(sweep, [])
    assert alone.device == "cpu" and "CUDA_VISIBLE_DEVICES" not in alone.env
    # A number of workers goes round the cards.
    sweep = compose("quickstart", "sweep.workers=3").sweep
    assert [s.device for s in plan_workers(sweep, ["5", "7"])] == ["gpu:5", "gpu:7", "gpu:5"]


# -- MIG and non-MIG nodes, numeric workers, each backend's memory cap -------------------------

XLA = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION")


@pytest.fixture
def no_xla(monkeypatch):
    """No XLA setting, nor a share, inherited from the shell running the tests."""
    for name in (*XLA, "SWEEPS_GPU_SHARE"):
        monkeypatch.delenv(name, raising=False)


# Scripted workers log nothing: no MLflow store for the launcher to create first (seconds).
NO_STORE = "tracking.uri=http://127.0.0.1:9"


def pinned(envs: dict[str, dict[str, str]], *keys: str) -> list[tuple[str, ...]]:
    """``CUDA_VISIBLE_DEVICES`` and ``keys`` of each worker, in the workers' order."""
    return [(e["CUDA_VISIBLE_DEVICES"], *(e.get(k, "") for k in keys)) for e in envs.values()]


def test_a_plain_eight_card_node_pins_one_worker_to_each_card(gpus, tmp_path, monkeypatch, no_xla):
    gpus(fake_smi.EIGHT_CARDS, fake_smi.EIGHT_CARDS_QUERY)
    assert visible_gpus() == [str(i) for i in range(8)]
    code, _ = scripted_launch(tmp_path, monkeypatch, NO_STORE, "sweep.workers=auto")
    envs = worker_envs(tmp_path)
    assert code == 0 and list(envs) == [f"w{i}" for i in range(8)]
    # A card each: no share, no cap.
    assert pinned(envs, "SWEEPS_DEVICE", "SWEEPS_GPU_SHARE") == [
        (str(i), f"gpu:{i}", "") for i in range(8)
    ]
    # nvidia-smi counts in PCI order; CUDA, unless told, fastest first.
    assert {e["CUDA_DEVICE_ORDER"] for e in envs.values()} == {"PCI_BUS_ID"}


def test_seven_mig_slices_of_an_a100_are_seven_workers_pinned_by_uuid(
    gpus, tmp_path, monkeypatch, capsys, no_xla
):
    gpus(fake_smi.SEVEN_SLICES, fake_smi.SEVEN_SLICES_QUERY)
    assert visible_gpus() == fake_smi.SLICE_UUIDS  # the card itself is no device with MIG on
    code, _ = scripted_launch(tmp_path, monkeypatch, NO_STORE, "sweep.workers=auto")
    envs = worker_envs(tmp_path)
    assert code == 0
    assert pinned(envs, "SWEEPS_DEVICE") == [(u, f"gpu:{u}") for u in fake_smi.SLICE_UUIDS]
    last = fake_smi.SLICE_UUIDS[6]
    assert f"device gpu:{last}, CUDA_VISIBLE_DEVICES={last}" in capsys.readouterr().out


def test_a_mixed_node_has_the_slices_of_one_card_and_the_whole_other_card(
    gpus, tmp_path, monkeypatch, no_xla
):
    gpus(fake_smi.MIXED, fake_smi.MIXED_QUERY)
    slices = [line.split("UUID: ")[1].rstrip(")") for line in fake_smi.MIXED.splitlines()
              if "MIG" in line]  # fmt: skip
    whole = "GPU-08279800-1cbe-a71d-f3e6-8f67e15ae54a"  # by UUID: with MIG, indices mislead
    assert visible_gpus() == [*slices, whole]
    code, _ = scripted_launch(
        tmp_path, monkeypatch, NO_STORE, "sweep.workers=auto", "sweep.trials_per_gpu=2"
    )
    envs = worker_envs(tmp_path)
    assert code == 0
    assert [cuda for (cuda,) in pinned(envs)] == [d for d in (*slices, whole) for _ in range(2)]
    # A MIG-enabled card with no instance yet gives CUDA nothing to run on.
    first, *_, second = fake_smi.MIXED.splitlines()
    gpus(f"{first}\n{second}\n", fake_smi.MIXED_QUERY)
    assert visible_gpus() == [whole]


def test_numeric_workers_fill_each_card_with_trials_per_gpu_before_the_next(
    gpus, tmp_path, monkeypatch, capsys, no_xla
):
    gpus(4)
    overrides = ("sweep.workers=4", "sweep.trials_per_gpu=2")
    code, _ = scripted_launch(tmp_path, monkeypatch, NO_STORE, *overrides)
    assert code == 0
    # Two per card, each told its share of the card: 0.9 of it split between them.
    assert pinned(worker_envs(tmp_path), "SWEEPS_GPU_SHARE") == [
        ("0", "0.45"), ("0", "0.45"), ("1", "0.45"), ("1", "0.45")
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert "worker w1: pid" in out and "CUDA_VISIBLE_DEVICES=0, SWEEPS_GPU_SHARE=0.45" in out
    assert "wrap around" not in out
    sweep = compose("quickstart", *overrides).sweep
    assert [s.device for s in plan_workers(sweep, ["0", "1", "2", "3"])] == [
        "gpu:0", "gpu:0", "gpu:1", "gpu:1"
    ]  # fmt: skip


def test_more_workers_than_cards_times_trials_per_gpu_wrap_around_and_say_so(
    gpus, tmp_path, monkeypatch, capsys, no_xla
):
    gpus(2)
    code, _ = scripted_launch(
        tmp_path, monkeypatch, NO_STORE, "sweep.workers=5", "sweep.trials_per_gpu=2"
    )
    assert code == 0
    # Card 0 takes the fifth worker: three share it, so each gets 0.3 of it.
    assert pinned(worker_envs(tmp_path), "SWEEPS_GPU_SHARE") == [
        ("0", "0.3"), ("0", "0.3"), ("1", "0.45"), ("1", "0.45"), ("0", "0.3")
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert "sweep.workers=5 is more than 2 GPUs x sweep.trials_per_gpu=2: the workers wrap" in out


def test_jax_workers_get_no_preallocation_and_their_share_as_xla_fraction(
    gpus, tmp_path, monkeypatch, no_xla
):
    gpus(fake_smi.EIGHT_CARDS, fake_smi.EIGHT_CARDS_QUERY)
    overrides = ("train.backend=jax", "sweep.workers=4", "sweep.trials_per_gpu=2")
    assert scripted_launch(tmp_path, monkeypatch, NO_STORE, *overrides)[0] == 0
    assert pinned(worker_envs(tmp_path), *XLA) == [
        ("0", "false", "0.45", ""), ("0", "false", "0.45", ""),
        ("1", "false", "0.45", ""), ("1", "false", "0.45", ""),
    ]  # fmt: skip


def test_a_jax_worker_alone_on_its_card_still_never_preallocates(
    gpus, tmp_path, monkeypatch, no_xla
):
    gpus(fake_smi.EIGHT_CARDS, fake_smi.EIGHT_CARDS_QUERY)
    code, _ = scripted_launch(
        tmp_path, monkeypatch, NO_STORE, "train.backend=jax", "sweep.workers=2"
    )
    assert code == 0
    assert pinned(worker_envs(tmp_path), *XLA) == [("0", "false", "", ""), ("1", "false", "", "")]


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_torch_and_tensorflow_workers_read_their_share_from_the_environment(
    backend, gpus, tmp_path, monkeypatch, no_xla
):
    gpus(fake_smi.SEVEN_SLICES, fake_smi.SEVEN_SLICES_QUERY)
    overrides = (f"train.backend={backend}", "sweep.workers=auto", "sweep.trials_per_gpu=3")
    assert scripted_launch(tmp_path, monkeypatch, NO_STORE, *overrides)[0] == 0
    envs = worker_envs(tmp_path)
    assert len(envs) == 21  # seven slices, three workers on each
    assert {e["SWEEPS_GPU_SHARE"] for e in envs.values()} == {"0.3"}
    assert not any(k in e for e in envs.values() for k in XLA)  # JAX's settings, JAX only


def test_gpu_memory_mb_on_jax_is_a_fraction_of_the_card_or_of_the_slice(
    gpus, tmp_path, monkeypatch, no_xla
):
    gpus(fake_smi.MIXED, fake_smi.MIXED_QUERY)
    overrides = ("train.backend=jax", "sweep.workers=auto", "train.gpu_memory_mb=4000")
    assert scripted_launch(tmp_path, monkeypatch, NO_STORE, *overrides)[0] == 0
    # 4000 MB of a 2g.10gb slice (10240 MiB) and of the whole 40960 MiB card; over any share.
    fractions = [fraction for _, fraction in pinned(worker_envs(tmp_path), XLA[1])]
    assert fractions == ["0.39", "0.39", "0.39", "0.097"]


def test_gpu_memory_mb_on_jax_is_refused_in_one_line_where_the_card_memory_is_unknown(
    gpus, tmp_path, monkeypatch, no_xla
):
    # A card sharing the host's memory reports none (memory.total [N/A]).
    gpus(fake_smi.EIGHT_CARDS, fake_smi.EIGHT_CARDS_QUERY.replace("40960", "[N/A]"))
    overrides = ("train.backend=jax", "sweep.workers=2", "train.gpu_memory_mb=4000")
    with pytest.raises(ConfigError) as caught:
        scripted_launch(tmp_path, monkeypatch, NO_STORE, *overrides)
    line = str(caught.value)
    assert "\n" not in line and line.startswith("train.gpu_memory_mb=4000: JAX caps GPU memory")
    assert "set XLA_PYTHON_CLIENT_MEM_FRACTION=" in line
    assert not list((tmp_path / "record").iterdir())  # no worker was started


def test_the_environment_s_own_xla_fraction_wins_over_the_share_and_keeps_its_name(
    gpus, tmp_path, monkeypatch, no_xla
):
    gpus(2)
    monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", "0.2")  # JAX refuses both names at once
    overrides = ("train.backend=jax", "sweep.workers=4", "sweep.trials_per_gpu=2")
    assert scripted_launch(tmp_path, monkeypatch, NO_STORE, *overrides)[0] == 0
    assert {e[2:] for e in pinned(worker_envs(tmp_path), *XLA)} == {("", "0.2")}


def test_a_worker_that_dies_is_named_and_the_command_fails(gpus, tmp_path, monkeypatch, capsys):
    gpus(0)
    code, rows = scripted_launch(tmp_path, monkeypatch, "sweep.workers=3", die="w1")
    assert sorted(rows) == ["w0", "w1", "w2"]
    assert code == 1
    out = capsys.readouterr().out
    assert "worker w1 (cpu) stopped (killed by SIGKILL); the other workers retry" in out


def test_a_launched_worker_or_a_single_worker_runs_in_this_process(gpus, monkeypatch):
    gpus(2)
    cfg = compose("quickstart", "sweep.workers=4")
    monkeypatch.setenv(LAUNCHED_ENV, "w0")
    assert launch_workers(cfg, [], executable="/nonexistent") is None
    monkeypatch.delenv(LAUNCHED_ENV)
    assert launch_workers(compose("quickstart"), [], executable="/nonexistent") is None
    assert child_overrides(["+study=x", "sweep.workers=auto", "++sweep.trials_per_gpu=2"]) == [
        "+study=x",
        "sweep.workers=1",
    ]


def test_constant_liar_is_on_with_several_workers_unless_the_study_says_otherwise(monkeypatch):
    monkeypatch.delenv(PARALLEL_ENV, raising=False)

    def liar(*overrides: str) -> bool:
        cfg = compose("quickstart", *overrides)
        return make_sampler(cfg.sweep, cfg.space, 0)._constant_liar

    assert liar() is False
    assert liar("sweep.workers=4") is True
    assert liar("sweep.workers=4", "sweep.constant_liar=false") is False
    assert liar("sweep.constant_liar=true") is True
    monkeypatch.setenv(PARALLEL_ENV, "3")  # set by a launcher, the sbatch file or the Job
    assert liar() is True


@pytest.mark.parametrize(
    "override, key",
    [
        ("sweep.workers=0", "sweep.workers"),
        ("sweep.workers=many", "sweep.workers"),
        ("sweep.trials_per_gpu=0", "sweep.trials_per_gpu"),
        ("sweep.constant_liar=sometimes", "sweep.constant_liar"),
        ("train.gpu_memory_mb=0", "train.gpu_memory_mb"),
    ],
)
def test_bad_worker_settings_are_one_line_errors(override, key):
    with pytest.raises(ConfigError, match=key):
        compose("quickstart", override)


# -- real workers ----------------------------------------------------------------------------

REAL = ["+study=quickstart", "train.verbose=0", "train.threads=1", "sweep.pruner=none"]


def start_run(tmp_path: Path, *overrides: str) -> tuple[subprocess.Popen, Path]:
    env = {k: v for k, v in os.environ.items() if k not in (LAUNCHED_ENV, PARALLEL_ENV)}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")  # no GPUs: cpu workers
    log = tmp_path / "run.log"
    argv = [sys.executable, "-m", "sweeps", "run", *REAL, *overrides,
            f"store_dir={tmp_path / 'store'}"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)  # fmt: skip
    return proc, log


def load(tmp_path: Path):
    import optuna

    from sweeps.config import StorageConfig
    from sweeps.storage import open_storage

    storage = open_storage(StorageConfig(), tmp_path / "store", lambda s, t: None)
    return optuna.load_study(study_name="quickstart", storage=storage)


def wait_running(tmp_path: Path, proc: subprocess.Popen, count: int, epochs: int = 1) -> list:
    """Trials running with at least ``epochs`` reported, once ``count`` of them are."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + 300  # a loaded machine starts TensorFlow slowly
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its trials were seen"
        try:
            running = load(tmp_path).get_trials(states=(TrialState.RUNNING,))
        except (KeyError, OSError):  # not created yet
            running = []
        ready = [t for t in running if len(t.intermediate_values) >= epochs]
        if len(ready) >= count:
            return ready
        time.sleep(0.3)
    raise AssertionError("the workers were not seen inside trials")


def counted(trials: list) -> list:
    """Trials that count towards n_trials: not replaced by a retry, not surplus."""
    replaced = {t.system_attrs.get("failed_trial") for t in trials}
    return [t for t in trials if t.number not in replaced and not t.user_attrs.get(
        "sweeps.spurious")]  # fmt: skip


@pytest.mark.slow
def test_two_workers_run_every_trial_once_tagged_with_host_and_device(tmp_path):
    from mlflow import MlflowClient

    proc, log = start_run(tmp_path, "sweep.workers=2", "sweep.n_trials=4", "train.epochs=1")
    try:
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log.read_text()[-3000:]
    trials = load(tmp_path).get_trials()
    assert [t.state.name for t in counted(trials)] == ["COMPLETE"] * 4
    assert "RUNNING" not in {t.state.name for t in trials}
    assert len({t.user_attrs["sweeps.worker"] for t in trials}) == 2  # two processes ran them
    text = log.read_text()
    assert "worker w0: pid" in text and "worker w1: pid" in text and "[w1 cpu] " in text
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    for t in trials:
        tags = client.get_run(t.user_attrs["mlflow_run_id"]).data.tags
        assert tags["sweeps.device"] == "cpu" and tags["sweeps.host"] == os.uname().nodename


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_retried_by_the_other(tmp_path):
    proc, log = start_run(tmp_path, "sweep.workers=2", "sweep.n_trials=3", "train.epochs=4")
    try:
        victim = wait_running(tmp_path, proc, count=1)[0]
        os.kill(int(victim.user_attrs["sweeps.worker"].rpartition(":")[2]), signal.SIGKILL)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "stopped (killed by SIGKILL); the other workers retry its running trial" in text
    trials = load(tmp_path).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert states[victim.number] == "FAIL" and "RUNNING" not in states.values()
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state.name == "COMPLETE" and retry.params == victim.params
    assert [t.state.name for t in counted(trials)] == ["COMPLETE"] * 3


@pytest.mark.slow
def test_sigint_to_the_parent_ends_every_running_trial_as_fail_and_exits_130(tmp_path):
    proc, log = start_run(tmp_path, "sweep.workers=2", "sweep.n_trials=6", "train.epochs=20")
    try:
        wait_running(tmp_path, proc, count=2, epochs=0)
        time.sleep(1.0)  # inside training, not between ask and the run's start
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, log.read_text()[-3000:]
    trials = load(tmp_path).get_trials()
    states = Counter(t.state.name for t in trials)
    assert states["FAIL"] >= 2 and "RUNNING" not in states, states
    # Each interrupted trial is queued again with its parameters, for the next run.
    failed = {t.number: t.params for t in trials if t.state.name == "FAIL"}
    queued = {t.system_attrs.get("failed_trial"): t.params for t in trials
              if t.state.name == "WAITING"}  # fmt: skip
    assert queued == failed and set(states) <= {"FAIL", "WAITING", "COMPLETE", "PRUNED"}
