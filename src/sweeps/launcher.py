"""``sweep.workers=N|auto``: one ``run`` command starts N worker processes sharing the study.

No scheduler of our own: each worker is the same ``python -m sweeps run`` command with
``sweep.workers=1``, and the study (the journal file, or PostgreSQL) hands out the trials, as
it does to workers on other hosts. ``auto`` starts one worker per visible GPU (a card, or a
MIG instance) times ``sweep.trials_per_gpu``, a number N that many, each pinned to its GPU
with ``CUDA_VISIBLE_DEVICES`` and given its share of a GPU it shares (``SWEEPS_GPU_SHARE``,
and JAX's ``XLA_PYTHON_CLIENT_*``); the GPUs are found by :mod:`sweeps.host`, without
importing TensorFlow.
The parent prints every worker's lines prefixed by its name and device, forwards Ctrl-C and
SIGTERM (each worker's running trial ends as FAIL, to be retried), and says which worker died.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from sweeps import host, services
from sweeps.backend import jax_memory_env
from sweeps.config import RunConfig, SweepConfig
from sweeps.host import DEVICE_ENV, LAUNCHED_ENV, PARALLEL_ENV, SHARE_ENV, given_parallel
from sweeps.keys import WORKER_ATTR
from sweeps.signals import exit_code

_OWN_KEYS = ("sweep.workers=", "sweep.trials_per_gpu=")
_POLL_S = 2.0  # seconds between the parent's reads of the study's totals
_RESIGNAL_S = 10.0  # after Ctrl-C or SIGTERM, a worker still in its trial is signalled again
# Of a GPU its workers share, what their caps add up to: the rest holds each process's CUDA
# context and cuDNN workspace, which no backend's allocator cap counts.
SHARE_HEADROOM = 0.9


@dataclass(frozen=True)
class Slot:
    """One worker process: its name, the device it gets and its environment changes."""

    name: str
    device: str  # "gpu:0", "gpu:MIG-<uuid>", or "cpu"
    env: dict[str, str]


def plan_workers(sweep: SweepConfig, gpus: Sequence[str]) -> list[Slot]:
    """The worker processes ``sweep.workers`` asks for on a host with ``gpus``.

    ``auto`` is ``len(gpus) * trials_per_gpu`` workers, or one on a host without GPUs; a
    number N is N workers. Either way each GPU (a card, or a MIG instance) gets
    ``trials_per_gpu`` workers before the next, and workers beyond ``len(gpus) *
    trials_per_gpu`` wrap around to the first again. A worker sharing its GPU with others gets
    its share, ``SHARE_HEADROOM`` split evenly, as ``SWEEPS_GPU_SHARE``.
    """
    per_gpu = sweep.trials_per_gpu
    count = int(sweep.workers) if sweep.workers != "auto" else len(gpus) * per_gpu or 1
    cards = [gpus[(i // per_gpu) % len(gpus)] for i in range(count)] if gpus else []
    sharing = Counter(cards)
    slots = []
    for i in range(count):
        if not cards:
            slots.append(Slot(f"w{i}", "cpu", {DEVICE_ENV: "cpu"}))
            continue
        card, device = cards[i], f"gpu:{cards[i]}"
        # nvidia-smi counts cards in PCI order, CUDA fastest first unless told otherwise.
        env = {"CUDA_VISIBLE_DEVICES": card, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", DEVICE_ENV: device}
        if sharing[card] > 1:
            env[SHARE_ENV] = f"{int(SHARE_HEADROOM / sharing[card] * 1000) / 1000:g}"
        slots.append(Slot(f"w{i}", device, env))
    return slots


def wrap_note(sweep: SweepConfig, gpus: Sequence[str]) -> str | None:
    """What the parent says when there are more workers than GPUs times ``trials_per_gpu``."""
    room = len(gpus) * sweep.trials_per_gpu
    if sweep.workers == "auto" or not gpus or int(sweep.workers) <= room:
        return None
    return (
        f"sweep.workers={sweep.workers} is more than {len(gpus)} GPUs x "
        f"sweep.trials_per_gpu={sweep.trials_per_gpu}: the workers wrap around, more than "
        f"{sweep.trials_per_gpu} on some GPUs"
    )


def memory_env(cfg: RunConfig, slot: Slot) -> dict[str, str]:
    """The backend's GPU memory settings in a worker's environment, set before it starts.

    JAX's are environment variables (``XLA_PYTHON_CLIENT_*``) read when its GPU client starts;
    PyTorch and TensorFlow read the share (``SWEEPS_GPU_SHARE``) and ``train.gpu_memory_mb``
    in the worker.

    Raises:
        ConfigError: ``train.gpu_memory_mb`` where the backend cannot apply it.
    """
    if cfg.train.backend != "jax":
        return {}
    card = slot.env.get("CUDA_VISIBLE_DEVICES")
    mb = cfg.train.gpu_memory_mb if card else None
    share = float(slot.env[SHARE_ENV]) if SHARE_ENV in slot.env else None
    device_mb = host.device_memory_mb(card) if mb else None
    environ = {**os.environ, **slot.env}
    return jax_memory_env(environ, gpu_memory_mb=mb, device_mb=device_mb, share=share)


def child_overrides(overrides: Sequence[str]) -> list[str]:
    """The worker's overrides: the parent's, with ``sweep.workers=1``."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(_OWN_KEYS)]
    return [*kept, "sweep.workers=1"]


def launch_workers(
    cfg: RunConfig, overrides: Sequence[str], executable: str = sys.executable
) -> int | None:
    """Starts the workers ``sweep.workers`` asks for and waits for them; returns the exit code.

    Returns None when this process is to run the study itself: one worker, or a process a
    launcher started.

    Args:
        cfg: The validated config.
        overrides: The command line's Hydra overrides, given again to every worker.
        executable: The Python interpreter of the workers.
    """
    if os.environ.get(LAUNCHED_ENV) or cfg.sweep.workers == 1:
        return None
    gpus = host.visible_gpus()
    slots = plan_workers(cfg.sweep, gpus)
    if len(slots) == 1 and cfg.sweep.workers == "auto":
        os.environ.update(slots[0].env)  # one card, or none: this process is the worker
        return None
    slots = [Slot(s.name, s.device, {**s.env, **memory_env(cfg, s)}) for s in slots]
    return Launcher(cfg, slots, overrides, executable, note=wrap_note(cfg.sweep, gpus)).run()


class Launcher:
    """Runs the worker processes of one ``run`` command and shows their output as one view."""

    def __init__(
        self,
        cfg: RunConfig,
        slots: list[Slot],
        overrides: Sequence[str],
        executable: str,
        note: str | None = None,
    ) -> None:
        self.cfg, self.slots, self.note = cfg, slots, note
        debug = ["--debug"] if os.environ.get("HYDRA_FULL_ERROR") == "1" else []
        self.argv = [executable, "-m", "sweeps", "run", *child_overrides(overrides), *debug]
        self.procs: list[subprocess.Popen] = []
        self.signal: int | None = None
        self._signalled_at = self._polled_at = 0.0
        self._opened: Any = None
        self._last_line = ""
        self._lock = threading.Lock()
        self._out: IO[str] = sys.stdout

    def run(self) -> int:
        """Starts every worker, relays their lines, and returns the command's exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._say(
                f"study {self.cfg.sweep.name}: {len(self.slots)} workers on "
                f"{socket.gethostname()} (sweep.workers={self.cfg.sweep.workers}, "
                f"trials_per_gpu={self.cfg.sweep.trials_per_gpu})"
            )
            if self.note:
                self._say(self.note)
            _create_local_tracking(self.cfg)
            # A signal while they start: the ones started get it, no more are started.
            readers = [self._start(slot) for slot in self.slots if self.signal is None]
            codes = self._wait()
            for reader in readers:
                reader.join(timeout=5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._finish(codes)

    def _start(self, slot: Slot) -> threading.Thread:
        # Other hosts' launchers (SWEEPS_PARALLEL of this one) each start as many workers.
        total = (given_parallel() or 1) * len(self.slots)
        env = {**os.environ, **slot.env, LAUNCHED_ENV: slot.name, "PYTHONUNBUFFERED": "1",
               PARALLEL_ENV: str(total)}  # fmt: skip
        # A session of its own: a terminal's Ctrl-C reaches the parent only, which passes it
        # on once (a second SIGINT inside a worker would cut its trial's bookkeeping short).
        proc = subprocess.Popen(self.argv, env=env, stdout=subprocess.PIPE, text=True,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        shown = ("CUDA_VISIBLE_DEVICES", SHARE_ENV)
        pinned = "".join(f", {k}={slot.env[k]}" for k in shown if k in slot.env)
        self._say(f"worker {slot.name}: pid {proc.pid}, device {slot.device}{pinned}")
        reader = threading.Thread(target=self._relay, args=(slot, proc), daemon=True)
        reader.start()
        return reader

    def _relay(self, slot: Slot, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        prefix = f"[{slot.name} {slot.device}] "
        for line in proc.stdout:
            with self._lock:
                self._out.write(prefix + line)
                self._out.flush()

    def _say(self, text: str) -> None:
        with self._lock:
            self._out.write(f"sweeps: {text}\n")
            self._out.flush()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signal is not None:
            return  # passed on already; the workers are ending their trials
        self.signal, self._signalled_at = signum, time.monotonic()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def _wait(self) -> list[int]:
        """Waits for every worker, saying at once when one of them dies."""
        codes: dict[int, int] = {}
        while len(codes) < len(self.procs):
            self._signal_again()
            self._progress()
            for i, proc in enumerate(self.procs):
                if i in codes or proc.poll() is None:
                    continue
                codes[i] = proc.returncode
                if proc.returncode and self.signal is None:
                    self._say(self._death_note(self.slots[i], proc.returncode))
            time.sleep(0.2)
        return [codes[i] for i in range(len(self.procs))]

    def _progress(self) -> None:
        """The study's totals across every worker, printed when they change (every 2 s)."""
        if time.monotonic() - self._polled_at < _POLL_S:
            return
        self._polled_at = time.monotonic()
        try:
            line = self._totals_line()
        except Exception:  # not created yet, or the storage is briefly away
            return
        if line != self._last_line:
            self._last_line = line
            self._say(line)

    def _totals_line(self) -> str:
        counts, best = study_totals(self._study())
        names = {"FAIL": "failed", "WAITING": "queued for retry"}
        shown = ", ".join(f"{n} {names.get(s, s.lower())}" for s, n in counts.items() if n)
        line = f"study {self.cfg.sweep.name}: {shown or 'no trials yet'}"
        if best is not None:
            line += f"; best {self.cfg.sweep.metric} {best[1]:.4f} (trial {best[0]})"
        return line

    def _study(self) -> Any:
        if self._opened is None:
            self._opened = _open_study(self.cfg)
        return self._opened

    def _signal_again(self) -> None:
        """Signals again a worker still inside its trial ``_RESIGNAL_S`` after the signal.

        Python raises KeyboardInterrupt where the main thread happens to be; inside a garbage
        collector callback (JAX registers one) it is printed and dropped. The worker remembers
        the signal and stops at its epoch's end, which on a long epoch is later than this.
        """
        if self.signal is None or time.monotonic() - self._signalled_at < _RESIGNAL_S:
            return
        self._signalled_at = time.monotonic()
        try:
            pids = running_trial_pids(self._study())
        except Exception:  # the storage may be gone too; the workers end on their own
            return
        for slot, proc in zip(self.slots, self.procs, strict=True):
            if proc.poll() is None and proc.pid in pids:
                self._say(f"worker {slot.name} is still in its trial: signalling it again")
                proc.send_signal(self.signal)

    def _death_note(self, slot: Slot, code: int) -> str:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        others = "the other workers retry" if len(self.slots) > 1 else "the next run retries"
        return f"worker {slot.name} ({slot.device}) stopped ({how}); {others} its running trial"

    def _finish(self, codes: list[int]) -> int:
        """The exit code: 130 after Ctrl-C, 75 after SIGTERM (requeue me), else 0 when every
        worker exited cleanly."""
        self._summary()
        if self.signal is not None:
            return exit_code(self.signal)
        failed = [c for c in codes if c]
        if not failed:
            return 0
        self._say(f"{len(failed)} of {len(codes)} workers failed (exit codes {failed})")
        return failed[0] if len(set(failed)) == 1 and failed[0] > 0 else 1

    def _summary(self) -> None:
        """The study's totals, read back from its storage (all workers together)."""
        try:
            self._say(self._totals_line())
        except Exception as exc:  # the storage may be what failed the workers
            self._say(f"could not read the study back: {type(exc).__name__}")


def _create_local_tracking(cfg: RunConfig) -> None:
    """Creates a new SQLite MLflow store once, before the workers start.

    N processes creating one SQLite database at once race through its schema migrations,
    and under load some time out; a tracking server or an existing store needs nothing.
    """
    uri = cfg.tracking.uri
    if uri is None or uri.startswith("sqlite:"):
        services.open_tracker(cfg).close()


def _open_study(cfg: RunConfig) -> Any:
    import optuna

    return optuna.load_study(study_name=cfg.sweep.name, storage=services.study_storage(cfg))


def running_trial_pids(study: Any) -> set[int]:
    """Process ids of this host's workers that have a RUNNING trial in the study."""
    from optuna.trial import TrialState

    host, pids = socket.gethostname(), set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner, _, pid = str(t.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
        if owner == host and pid.isdigit():
            pids.add(int(pid))
    return pids


def study_totals(study: Any) -> tuple[dict[str, int], tuple[int, float] | None]:
    """Trials per state and the best (number, value) of the study, as every worker left it."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return counts, None
    pick = max if study.direction == StudyDirection.MAXIMIZE else min
    best = pick(done, key=lambda t: t.value)
    return counts, (best.number, float(best.value))
