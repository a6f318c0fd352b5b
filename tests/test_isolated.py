"""train.subprocess=true: real tiny trainings on digits, each in a fresh spawned process."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import compose
from sweeps.models import ArchitectureError

from sweeps import resume
from sweeps.config import apply_overrides
from sweeps.errors import TrialFailed
from sweeps.isolated import SubprocessTrainer
from sweeps.services import load_data
from sweeps.trial import TrialSpec, make_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trainer() -> SubprocessTrainer:
    return SubprocessTrainer(load_data(compose("quickstart")))


def spec(store: Path, epochs: int = 2, **params) -> TrialSpec:
    """A small quickstart trial (8x8 input, one block) with ``params`` applied."""
    cfg = compose("quickstart", f"train.epochs={epochs}", "train.verbose=0", "train.threads=1",
                  store=store)  # fmt: skip
    values = {"model.input_size": 8, "model.depth": 1, "train.batch_size": 64, **params}
    return make_spec(cfg, apply_overrides(cfg.raw, values), 0, cfg.seed, values, store / "work")


def trial_processes() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("sweeps-trial-")]


def test_a_trial_trains_in_its_own_process_and_reports_here(trainer, store):
    reports = []

    def report(epoch: int, metrics: dict[str, float], state: Path | None = None) -> None:
        # Runs in this process while the trial's process waits for the answer; the state
        # the trial process saved at the epoch's end is here to upload.
        assert state is not None and resume.read_meta(state).epoch == epoch
        reports.append((epoch, metrics, os.getpid(), [p.pid for p in trial_processes()]))

    outcome = trainer.run(spec(store), report)

    assert [r[0] for r in reports] == [1, 2]
    assert {r[2] for r in reports} == {os.getpid()}
    children = {tuple(r[3]) for r in reports}
    assert len(children) == 1 and len(next(iter(children))) == 1  # one trial process throughout
    assert trial_processes() == []  # and it is gone: its GPU memory went with it
    assert [r[1] for r in reports] == outcome.history
    assert outcome.best == outcome.history[outcome.best_epoch - 1]
    assert 0.0 <= outcome.test["test_acc"] <= 1.0 and outcome.param_count > 0
    assert outcome.artifacts and all(path.is_file() for path, _ in outcome.artifacts)


def test_report_raising_stops_the_trial_process(trainer, store):
    class Prune(Exception):
        pass

    epochs = []

    def report(epoch: int, metrics: dict[str, float], state: Path | None = None) -> None:
        epochs.append(epoch)
        raise Prune("pruned at epoch 1")

    with pytest.raises(Prune):
        trainer.run(spec(store, epochs=5), report)
    assert epochs == [1]
    assert trial_processes() == []


def test_a_crashed_trial_process_is_a_failed_trial_with_its_exit_code(trainer, store):
    def report(epoch: int, metrics: dict[str, float], state: Path | None = None) -> None:
        (child,) = trial_processes()
        os.kill(child.pid, signal.SIGKILL)  # as the out-of-memory killer would
        child.join(10)

    with pytest.raises(TrialFailed, match=r"died \(exit code -9, killed by SIGKILL\)"):
        trainer.run(spec(store, epochs=3), report)
    assert trial_processes() == []


def test_an_error_in_the_trial_process_keeps_its_type(trainer, store):
    # Three valid-padded 5x5 blocks cannot fit an 8x8 input: the engine prunes on this type.
    collapsing = spec(store, **{"model.depth": 3, "model.kernel_size": 5, "model.padding": "valid"})

    with pytest.raises(ArchitectureError):
        trainer.run(collapsing, lambda epoch, metrics, state=None: None)
    assert trial_processes() == []


def trial_process_of(parent: int) -> int | None:
    """The pid of a spawned trial process whose parent is ``parent``, if there is one."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            return int(stat.parent.name)
    return None


def gone(pid: int, within: float) -> bool:
    """Whether ``pid`` ends within ``within`` seconds (a zombie waiting to be reaped counts)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def start_worker(tmp_path: Path, *overrides: str) -> tuple[subprocess.Popen, int]:
    """`sweeps run` with train.subprocess=true, as soon as its first trial's process is up."""
    cmd = [sys.executable, "-m", "sweeps", "run", "+study=quickstart",
           f"store_dir={tmp_path / 'store'}", "train.subprocess=true", "train.epochs=50",
           "sweep.n_trials=1", "train.verbose=0", *overrides]  # fmt: skip
    # Output to a file: a pipe would stay open in the trial process, and reading it to the
    # end would wait for that process too.
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while (child := trial_process_of(proc.pid)) is None:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    return proc, child


def test_sigterm_during_a_trial_fails_it_and_ends_its_process(tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    proc, child = start_worker(tmp_path)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=60) == 75, (tmp_path / "worker.log").read_text()[-2000:]
    assert gone(child, within=2.0)
    journal = JournalFileBackend(str(tmp_path / "store" / "optuna.journal"))
    storage = optuna.storages.JournalStorage(journal)
    trial, *retry = optuna.load_study(study_name="quickstart", storage=storage).get_trials()
    assert trial.state.name == "FAIL" and trial.user_attrs["sweeps.reason"] == "interrupted"
    assert [t.state.name for t in retry] == ["WAITING"]  # rerunning the command resumes it


def test_a_killed_worker_takes_its_trial_process_with_it(tmp_path):
    # Epochs of several seconds (64x64 inputs, wide blocks): the trial process must go at
    # once, not when it next reports to its dead parent (hours later on a big dataset).
    slow = ["space.model.input_size='choice(64)'", "space.train.batch_size='choice(16)'",
            "model.filters=[64,64,64]"]  # fmt: skip
    proc, child = start_worker(tmp_path, *slow)
    time.sleep(2.0)
    proc.kill()  # no chance to clean up
    proc.wait(timeout=30)
    assert gone(child, within=4.0)
