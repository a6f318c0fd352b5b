"""gpu: what one GPU card gives each study's model, per backend, trials per card and precision.

Three models, built by the product's model builder with their study's settings: seed 001's CNN
(conf/study/age_gap.yaml, 100x100x3, batch 16), the Fashion-MNIST CNN
(conf/study/fashion_mnist_dropout.yaml, 28x28x1, batch 64) and the cats/dogs small CNN
(conf/study/cats_dogs_transfer.yaml's baseline, 150x150x3, batch 100). For each, on every
installed Keras backend, with 1, 2 and 4 worker processes sharing the first card
(``sweep.trials_per_gpu``) and in each precision the card supports (float32, mixed bfloat16 at
compute capability 8.0+, mixed float16 at 7.0+):

- seconds per epoch (median of epochs 2..N; the first also compiles),
- trials per hour per card (the workers' trials over the span they took together),
- peak GPU memory per trial, from the backend's own statistics,
- the card's utilisation (``nvidia-smi``, sampled while the workers train),
- test accuracy after a fixed number of epochs, paired by seed against float32: the mean
  difference, its 95% t interval, and whether that interval lies within 1 point.

Each worker is placed as ``sweep.workers`` places it (``sweeps.launcher.plan_workers``: the
card in ``CUDA_VISIBLE_DEVICES`` and the share of it in ``SWEEPS_GPU_SHARE``; JAX's variables
from ``sweeps.backend.jax_memory_env``), and caps its backend's memory as a trial process does
(``sweeps.backend.configure``, or ``configure_tensorflow`` on TensorFlow). Worker ``i`` trains
with seed ``i``; the workers of a cell wait for each other before training, so they share the
card for the whole measurement. The images are generated in each worker: a blurred spot per
class, at a place and in a colour of its class, jittered and noisy, so that accuracy after a
few epochs is high but not perfect. A JAX or PyTorch worker never imports TensorFlow.

``--dry-run`` (and ``--quick`` on a host without a GPU) runs the same path on the CPU, tiny:
one model, trials per card 1 and 2, float32 and mixed bfloat16, one epoch, two seeds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.common import Result, child_env, emit, fmt, median

BACKENDS = ("tensorflow", "jax", "torch")
SHORT = {"float32": "fp32", "mixed_bfloat16": "bf16", "mixed_float16": "fp16"}
MARGIN = 0.01  # accuracy: "equivalent" when the 95% interval of the difference lies within this
UTIL_EVERY_S = 0.5


@dataclass(frozen=True)
class Model:
    """One study's model as its trials build it, and the images it is measured on.

    ``kwargs`` are the study's model section as ``sweeps.trial.make_spec`` hands it to the
    builder (tests/test_gpu_benchmark.py checks them against the study).
    """

    study: str
    size: int
    channels: int
    classes: int
    batch: int
    optimizer: str
    learning_rate: float | None
    kwargs: dict[str, Any]
    train: int  # training images; validation is a quarter of that, at least 8
    test: int


_CNN = {"depth": None, "kernel_size": 3, "leaky_alpha": 0.3, "pool_size": 2,
        "pool_padding": "valid", "block_dropout": 0.0, "batch_norm": False}  # fmt: skip
MODELS = {
    "age_gap": Model(
        "age_gap", 100, 3, 2, 16, "rmsprop", None,
        {**_CNN, "filters": [32, 32, 64], "padding": "same", "activation": "relu",
         "pooling": "max", "dense_units": [64], "dense_dropout": 0.5},
        train=1200, test=400,
    ),
    "fashion": Model(
        "fashion_mnist_dropout", 28, 1, 10, 64, "adam", None,
        {**_CNN, "filters": [32, 64, 128], "padding": "same", "activation": "leaky_relu",
         "leaky_alpha": 0.1, "pooling": "max", "pool_padding": "same", "dense_units": [128],
         "dense_dropout": 0.0},
        train=6000, test=1000,
    ),
    "cats_dogs": Model(
        "cats_dogs_transfer", 150, 3, 2, 100, "rmsprop", 1e-4,
        {**_CNN, "filters": [32, 64, 128, 128], "padding": "valid", "activation": "relu",
         "pooling": "max", "dense_units": [512], "dense_dropout": 0.0},
        train=1000, test=400,
    ),
}  # fmt: skip
JIT_COMPILE = "auto"  # train.jit_compile's default (conf/train/default.yaml): as trials compile


@dataclass(frozen=True)
class Workload:
    models: dict[str, Model]
    trials_per_gpu: tuple[int, ...]
    epochs: int
    repeats: int
    precisions: tuple[str, ...] | None = None  # None: what the card supports
    dry_run: bool = False
    jit_compile: bool | str = JIT_COMPILE


FULL = Workload(MODELS, trials_per_gpu=(1, 2, 4), epochs=5, repeats=1)
QUICK = Workload({"age_gap": replace(MODELS["age_gap"], train=256, test=128)},
                 trials_per_gpu=(1, 2), epochs=2, repeats=1)  # fmt: skip
DRY_RUN = Workload(
    {"age_gap": replace(MODELS["age_gap"], size=32, train=32, test=16)},
    trials_per_gpu=(1, 2),
    epochs=1,
    repeats=1,
    precisions=("float32", "mixed_bfloat16"),
    dry_run=True,
)


@dataclass
class GpuResult(Result):
    """The benchmark's result, with each cell's figures and the paired accuracy comparisons.

    Attributes:
        cells: One dict per (model, backend, precision, trials per card, repeat).
        accuracy: One dict per (model, backend, mixed precision): test accuracy against
            float32, paired by seed, with the mean difference and its 95% interval.
    """

    cells: list[dict[str, Any]] = field(default_factory=list)
    accuracy: list[dict[str, Any]] = field(default_factory=list)


# -- the parent: one cell after another ------------------------------------------------------


def installed() -> list[str]:
    from sweeps.backend import installed as is_installed

    return [name for name in BACKENDS if is_installed(name)]


def run(quick: bool, repeats: int | None = None, dry_run: bool = False) -> GpuResult:
    """Every model x backend x precision x trials per card, ``repeats`` times.

    Args:
        quick: A tiny run; on a host without a GPU the same as ``dry_run``.
        repeats: How many times each cell runs (default 1).
        dry_run: The whole path on the CPU, tiny; needs neither a GPU nor ``nvidia-smi``.
    """
    from sweeps import host

    devices = [] if dry_run else host.gpu_devices()
    if dry_run or (quick and not devices):
        work, device = DRY_RUN, None
    elif not devices:
        raise SystemExit("gpu: no GPU here (nvidia-smi lists none); --dry-run runs on the CPU")
    else:
        work, device = (QUICK if quick else FULL), devices[0]
    card = _card(device)
    precisions = work.precisions or _precisions()
    backends = installed()
    n = repeats or work.repeats
    cells, rows, failed = [], [], []
    for r in range(n):
        for model in work.models:
            for name in backends:
                for p in precisions:
                    for k in work.trials_per_gpu:
                        try:
                            cell, trials = _cell(work, model, name, p, k, r, device, card)
                        except RuntimeError as e:  # on a card: one combination's failure is
                            if work.dry_run:  # a figure too (out of memory at 4 per card)
                                raise
                            print(e, flush=True)
                            failed.append(str(e).splitlines()[0])
                            continue
                        cells.append(cell)
                        rows += trials
    if not cells:
        raise SystemExit("gpu: every combination failed:\n" + "\n".join(failed))
    return _result(work, card, backends, precisions, cells, rows, failed)


def _precisions() -> tuple[str, ...]:
    """float32, and each mixed precision the card computes in (the product's thresholds)."""
    from sweeps import host, precision

    cap = host.gpu_capability() or 0.0
    mixed = [("mixed_bfloat16", precision.MIN_BF16_CAPABILITY),
             ("mixed_float16", precision.MIN_FP16_CAPABILITY)]  # fmt: skip
    return ("float32", *(p for p, least in mixed if cap >= least))


def _card(device: Any) -> dict[str, Any]:
    """The card's name, slug (for the file name), memory and compute capability."""
    if device is None:
        return {"name": "cpu (dry run)", "slug": "cpu-dry-run", "device": None,
                "memory_mb": None, "capability": None}  # fmt: skip
    from sweeps import host

    out = _smi("--query-gpu=name", "--format=csv,noheader", "-i", device.card) or "gpu"
    name = out.strip().splitlines()[0].strip()
    if device.profile:
        name = f"{name} MIG {device.profile}"
    return {
        "name": name,
        "slug": re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu",
        "device": device.id,
        "index": device.card,
        "memory_mb": host.device_memory_mb(device.id),
        "capability": host.gpu_capability(),
    }


def _smi(*args: str) -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def worker_envs(k: int, device: str | None, backend: str) -> list[dict[str, str]]:
    """The environment changes of the ``k`` workers sharing ``device``, as the launcher makes
    them (``sweep.workers=k sweep.trials_per_gpu=k``); ``device`` None: a pretend card, then
    hidden, so that the dry run carries the same shares and caps on the CPU."""
    from sweeps.backend import jax_memory_env
    from sweeps.config import SweepConfig
    from sweeps.host import SHARE_ENV
    from sweeps.launcher import plan_workers

    slots = plan_workers(SweepConfig(workers=k, trials_per_gpu=k), [device or "0"])
    envs = []
    for slot in slots:
        env = dict(slot.env)
        if backend == "jax":  # what sweeps.launcher.memory_env gives a JAX worker
            share = float(env[SHARE_ENV]) if SHARE_ENV in env else None
            env.update(jax_memory_env({**os.environ, **env}, share=share))
        if device is None:
            env.update({"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"})
        envs.append(env)
    return envs


Rows = list[dict[str, Any]]


def _cell(work: Workload, model: str, backend: str, precision: str, k: int, repeat: int,
          device: Any, card: dict[str, Any]) -> tuple[dict[str, Any], Rows]:  # fmt: skip
    """``k`` workers training ``model`` at once on one card; returns the cell and its trials."""
    with contextlib.ExitStack() as stack:
        return _cell_in(stack, work, model, backend, precision, k, repeat, device, card)


def _cell_in(stack: contextlib.ExitStack, work: Workload, model: str, backend: str,
             precision: str, k: int, repeat: int, device: Any,
             card: dict[str, Any]) -> tuple[dict[str, Any], Rows]:  # fmt: skip
    spec = work.models[model]
    args = [sys.executable, "-m", "benchmarks.gpu", model, precision, str(work.epochs),
            json.dumps(vars(spec)), json.dumps(work.jit_compile)]  # fmt: skip
    procs, logs = [], []
    for i, env in enumerate(worker_envs(k, device.id if device else None, backend)):
        log = stack.enter_context(tempfile.TemporaryFile("w+"))  # noqa: SIM115 (closed by stack)
        full = {**child_env(), **env, "KERAS_BACKEND": backend}
        procs.append(subprocess.Popen([*args, str(i)], env=full, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=log, text=True))  # fmt: skip
        logs.append(log)
    what = f"{model} on {backend} {precision}, {k} per card"
    for proc, log in zip(procs, logs, strict=True):  # every worker built its model: go
        line = proc.stdout.readline()
        if line.strip() != "ready":
            _fail(what, procs, logs, proc, log)
    sampler = _Utilisation(card.get("index"))
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    trials = []
    for i, (proc, log) in enumerate(zip(procs, logs, strict=True)):
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            _fail(what, procs, logs, proc, log)
        got = json.loads(out.strip().splitlines()[-1])
        trials.append({"model": model, "backend": backend, "precision": precision,
                       "trials_per_gpu": k, "worker": i, "repeat": repeat, **got})  # fmt: skip
    util = sampler.stop()
    span = max(t["end"] for t in trials) - min(t["start"] for t in trials)
    peaks = [t["peak_mb"] for t in trials if t["peak_mb"] is not None]
    cell = {
        "model": model, "backend": backend, "precision": precision, "trials_per_gpu": k,
        "repeat": repeat, "span_s": span, "trials_per_hour": k * 3600 / span,
        "epoch_s": median(t["epoch_s"] for t in trials),
        "peak_mb": max(peaks) if peaks else None,
        "util_mean_pct": statistics.fmean(util) if util else None,
        "util_max_pct": max(util) if util else None,
        "test_acc": statistics.fmean(t["test_acc"] for t in trials),
    }  # fmt: skip
    print(f"gpu: {what}: {cell['epoch_s']:.2f} s/epoch, {cell['trials_per_hour']:.0f} "
          f"trials/h, peak {fmt(cell['peak_mb'], 0)} MB, acc {cell['test_acc']:.3f}",
          flush=True)  # fmt: skip
    return cell, trials


def _fail(what: str, procs: list, logs: list, proc: Any, log: Any) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    proc.wait()
    log.seek(0)
    tail = "\n".join(log.read().strip().splitlines()[-15:])
    raise RuntimeError(f"gpu: {what}: a worker exited {proc.returncode}:\n{tail}")


class _Utilisation:
    """Samples the card's ``utilization.gpu`` every UTIL_EVERY_S until stopped; none without
    ``nvidia-smi`` or a card (a dry run), or where the card reports none (a MIG instance)."""

    def __init__(self, index: str | None) -> None:
        self.samples: list[float] = []
        self.done = threading.Event()
        self.thread = None
        if index is not None and shutil.which("nvidia-smi"):
            self.thread = threading.Thread(target=self._loop, args=(index,), daemon=True)
            self.thread.start()

    def _loop(self, index: str) -> None:
        args = ("--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", index)
        while not self.done.wait(UTIL_EVERY_S):
            out = (_smi(*args) or "").strip()
            if out.replace(".", "", 1).isdigit():
                self.samples.append(float(out))

    def stop(self) -> list[float]:
        self.done.set()
        if self.thread is not None:
            self.thread.join()
        return self.samples


# -- the figures -------------------------------------------------------------------------------


def _result(work: Workload, card: dict[str, Any], backends: list[str], precisions: tuple,
            cells: list[dict[str, Any]], rows: list[dict[str, Any]],
            failed: list[str]) -> GpuResult:  # fmt: skip
    def key(c: dict[str, Any]) -> str:
        return f"{c['model']}_{c['backend']}_{c['precision']}_k{c['trials_per_gpu']}"

    groups: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault(key(c), []).append(c)
    medians: dict[str, float] = {}
    for name, group in groups.items():
        for figure in ("epoch_s", "trials_per_hour", "peak_mb", "util_mean_pct", "test_acc"):
            values = [c[figure] for c in group if c[figure] is not None]
            if values:
                medians[f"{name}_{figure}"] = median(values)
    ks = work.trials_per_gpu
    combos = [(m, b) for m in work.models for b in backends]

    def ratio(top: str, bottom: str) -> float | None:
        """The median over models and backends (and precisions, with ``{p}``) of top / bottom,
        over the cells that ran; None when none did."""
        values = []
        for m, bk in combos:
            for p in precisions:
                t, u = top.format(m=m, b=bk, p=p), bottom.format(m=m, b=bk, p=p)
                if t in medians and medians.get(u, 0) > 0:
                    values.append(medians[t] / medians[u])
        return median(values) if values else None

    figures: dict[str, float | None] = {}
    for k in ks[1:]:  # more workers per card against one: trials per hour per card
        figures[f"trials_per_hour_{k}_over_{ks[0]}"] = ratio(
            f"{{m}}_{{b}}_{{p}}_k{k}_trials_per_hour", f"{{m}}_{{b}}_{{p}}_k{ks[0]}_trials_per_hour"
        )
    accuracy = _accuracy(work, backends, precisions, rows)
    for p in precisions[1:]:
        s = SHORT[p]
        figures[f"{s}_over_fp32_epoch_s"] = ratio(
            f"{{m}}_{{b}}_{p}_k{ks[0]}_epoch_s", f"{{m}}_{{b}}_float32_k{ks[0]}_epoch_s"
        )
        mine = [a for a in accuracy if a["precision"] == p]
        if not mine:
            continue
        acc = [statistics.fmean(a["acc"]) / statistics.fmean(a["fp32_acc"]) for a in mine
               if statistics.fmean(a["fp32_acc"]) > 0]  # fmt: skip
        figures[f"{s}_over_fp32_acc"] = median(acc) if acc else None
        medians[f"{s}_minus_fp32_acc"] = median(a["mean_diff"] for a in mine)
        medians[f"{s}_equivalent_share"] = statistics.fmean(
            a["equivalent_within_1_point"] for a in mine
        )
        for a in mine:
            base = f"{a['model']}_{a['backend']}_{s}_minus_fp32_acc"
            medians[base] = a["mean_diff"]
            if a["ci_low"] is not None:
                medians[f"{base}_ci_low"], medians[f"{base}_ci_high"] = a["ci_low"], a["ci_high"]
    ratios = {k: v for k, v in figures.items() if v is not None}
    targets = {}
    if "trials_per_hour_2_over_1" in ratios:
        targets["trials_per_hour_2_over_1"] = ">= 1.3"  # small models leave a card half idle
    if "bf16_equivalent_share" in medians:
        targets["bf16_equivalent_share"] = ">= 1"  # every model and backend within 1 point
    return GpuResult(
        workload={
            "card": card,
            "models": {k: vars(v) for k, v in work.models.items()},
            "backends": backends,
            "precisions": list(precisions),
            "trials_per_gpu": list(ks),
            "epochs": work.epochs,
            "repeats": max(c["repeat"] for c in cells) + 1,
            "seeds": max(ks),
            "jit_compile": work.jit_compile,
            "dry_run": work.dry_run,
            "data": "generated: a blurred spot per class (place and colour of its class), "
            "jittered, with Gaussian noise; validation = 1/4 of the training count",
        },
        repeats=rows,
        medians=medians,
        ratios=ratios,
        targets=targets,
        table=_table(cells, accuracy, ks),
        notes=[
            "s/epoch: median of epochs 2..N (1 when N = 1) over a cell's workers",
            "trials/h/card: the workers' trials over the span from the first start to the last "
            "end, times 3600",
            "peak MB: the backend's own peak (jax memory_stats, torch max_memory_allocated, "
            "tf get_memory_info); - on the CPU",
            f"accuracy: after {work.epochs} epochs; the last cell's seeds 0..{max(ks) - 1}, "
            "paired against float32; 95% t interval; equivalent when within 1 point",
            *(["dry run: the CPU, tiny; no figure here is a GPU's"] if work.dry_run else []),
            *(f"failed: {f}" for f in failed),
        ],
        cells=cells,
        accuracy=accuracy,
    )


def _accuracy(work: Workload, backends: list[str], precisions: tuple,
              rows: list[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """Each mixed precision's test accuracy against float32, paired by seed.

    The cell with the most workers per card gives the seeds (worker i: seed i); a seed's
    accuracy is its mean over repeats.
    """
    k = max(work.trials_per_gpu)

    def by_seed(m: str, b: str, p: str) -> dict[int, float]:
        mine = [r for r in rows if (r["model"], r["backend"], r["precision"],
                                    r["trials_per_gpu"]) == (m, b, p, k)]  # fmt: skip
        seeds = sorted({r["seed"] for r in mine})
        return {s: statistics.fmean(r["test_acc"] for r in mine if r["seed"] == s) for s in seeds}

    out = []
    for m in work.models:
        for b in backends:
            base = by_seed(m, b, "float32")
            for p in precisions[1:]:
                acc = by_seed(m, b, p)
                seeds = [s for s in base if s in acc]
                if not seeds:  # a cell failed
                    continue
                mine, theirs = [acc[s] for s in seeds], [base[s] for s in seeds]
                out.append({"model": m, "backend": b, "precision": p, "seeds": seeds,
                            "fp32_acc": theirs, "acc": mine, **paired(mine, theirs)})  # fmt: skip
    return out


def paired(acc: list[float], base: list[float], margin: float = MARGIN) -> dict[str, Any]:
    """Mean of ``acc - base``, its 95% t interval, the paired t test's p value, and whether the
    interval lies within ``margin`` either side of 0 (None where undefined: under 2 seeds, or
    no spread for p)."""
    diffs = [a - b for a, b in zip(acc, base, strict=True)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else float("nan")
    low = high = p = None
    if n >= 2:
        from scipy import stats

        half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
        low, high = mean - half, mean + half
        value = float(stats.ttest_rel(acc, base).pvalue)
        p = None if math.isnan(value) else value
    equivalent = low is not None and -margin <= low and high <= margin
    return {"mean_diff": mean, "ci_low": low, "ci_high": high, "p_value": p, "n": n,
            "equivalent_within_1_point": bool(equivalent)}  # fmt: skip


def _table(cells: list[dict[str, Any]], accuracy: list[dict[str, Any]],
           ks: tuple[int, ...]) -> list[list[str]]:  # fmt: skip
    table = [["model", "backend", "precision", "per card", "s/epoch", "trials/h/card",
              "peak MB", "util %", "test acc", "acc - fp32 [95% CI]", "within 1 pt"]]  # fmt: skip
    comparisons = {(a["model"], a["backend"], a["precision"]): a for a in accuracy}
    seen = set()
    for c in cells:
        where = (c["model"], c["backend"], c["precision"], c["trials_per_gpu"])
        if where in seen:
            continue
        seen.add(where)
        same = [x for x in cells if (x["model"], x["backend"], x["precision"],
                                     x["trials_per_gpu"]) == where]  # fmt: skip
        a = comparisons.get(where[:3]) if c["trials_per_gpu"] == max(ks) else None
        if a is None:
            diff, within = "-", "-"
        else:
            ci = f" [{a['ci_low']:+.3f}, {a['ci_high']:+.3f}]" if a["ci_low"] is not None else ""
            diff = f"{a['mean_diff']:+.3f}{ci}"
            within = "yes" if a["equivalent_within_1_point"] else "no"
        peaks = [x["peak_mb"] for x in same if x["peak_mb"] is not None]
        util = [x["util_mean_pct"] for x in same if x["util_mean_pct"] is not None]
        acc = statistics.fmean(x["test_acc"] for x in same)
        table.append([c["model"], c["backend"], c["precision"], str(c["trials_per_gpu"]),
                      fmt(median(x["epoch_s"] for x in same)),
                      fmt(median(x["trials_per_hour"] for x in same), 0),
                      fmt(median(peaks) if peaks else None, 0),
                      fmt(median(util) if util else None, 0),
                      fmt(acc, 3), diff, within])  # fmt: skip
    return table


def after_write(path: Path, quick: bool, dry_run: bool) -> Path:
    """Names the JSON after the card (``gpu-<card>.json``; ``gpu-cpu-dry-run.json`` for a dry
    run; a quick run keeps ``gpu-quick.json``) and records ``--dry-run`` in its command."""
    record = json.loads(path.read_text())
    if dry_run:
        record["command"] += " --dry-run"
    path.write_text(json.dumps(record, indent=2) + "\n")
    if quick:
        return path
    named = path.with_name(f"gpu-{record['workload']['card']['slug']}.json")
    path.replace(named)
    return named


# -- the worker: one trial, in a process of its own --------------------------------------------


def images(spec: Model, n: int, seed: int) -> tuple[Any, Any]:
    """``n`` images a CNN can tell apart by class, and their labels, from ``seed``.

    A Gaussian spot per image, centred on its class's point of a circle (jittered by a third
    of the distance between neighbouring classes' points), in its class's colour, with noise.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    c = spec.classes
    y = rng.integers(0, c, n)
    angle = 2 * np.pi * y / c + 0.3
    step = 2 * 0.3 * math.sin(math.pi / c)  # chord between neighbouring classes' points
    cy = 0.5 + 0.3 * np.sin(angle) + rng.normal(0, step / 3, n)
    cx = 0.5 + 0.3 * np.cos(angle) + rng.normal(0, step / 3, n)
    grid = (np.arange(spec.size, dtype=np.float32) + 0.5) / spec.size
    radius = np.float32(0.12)
    colours = np.random.default_rng(1234).uniform(0.4, 1.0, (c, spec.channels))
    x = np.empty((n, spec.size, spec.size, spec.channels), dtype=np.float32)
    for i in range(n):
        gy = np.exp(-((grid - cy[i]) ** 2) / (2 * radius**2))
        gx = np.exp(-((grid - cx[i]) ** 2) / (2 * radius**2))
        spot = np.outer(gy, gx)[..., None] * colours[y[i]].astype(np.float32)
        noise = rng.standard_normal(spot.shape, dtype=np.float32) * np.float32(0.25)
        x[i] = np.clip(spot + noise, 0.0, 1.0)
    return x, y.astype(np.int64)


def worker(model: str, precision_name: str, epochs: int, spec: Model, jit_compile: bool | str,
           seed: int) -> dict[str, Any]:  # fmt: skip
    """Builds the model, says ``ready``, waits for ``go`` on stdin, trains, tests, reports.

    Keras's backend is ``KERAS_BACKEND``'s; its memory cap is set before the backend starts.
    """
    from sweeps import backend, host

    name = backend.select()  # as a trial process does: a JAX or PyTorch one never sees TensorFlow
    if name == "tensorflow":
        from sweeps.trainer import configure_tensorflow

        configure_tensorflow()
    else:
        backend.configure(name)
    import keras
    from sweeps.models import create_model
    from sweeps.models.compile import compile_model

    from sweeps import precision

    x, y = images(spec, spec.train, 0)
    xv, yv = images(spec, max(spec.train // 4, 8), 1)
    xt, yt = images(spec, spec.test, 2)
    keras.utils.set_random_seed(seed)
    shape = (spec.size, spec.size, spec.channels)
    with precision.policy(precision_name) as used:
        net = create_model("cnn", input_shape=shape, num_classes=spec.classes, **spec.kwargs)
        compile_model(net, optimizer=spec.optimizer, learning_rate=spec.learning_rate,
                      num_classes=spec.classes, jit_compile=jit_compile)  # fmt: skip
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.began)

    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    net.fit(x, y, batch_size=spec.batch, epochs=epochs, validation_data=(xv, yv), verbose=0,
            shuffle=True, callbacks=[Clock()])  # fmt: skip
    _, acc = net.evaluate(xt, yt, batch_size=spec.batch, verbose=0)
    end = time.time()
    peak = peak_bytes(name)
    return {
        "seed": seed,
        "policy": used,
        "epoch_s": median(times[1:]) if len(times) > 1 else times[0],
        "first_epoch_s": times[0],
        "trial_s": end - start,
        "start": start,
        "end": end,
        "test_acc": float(acc),
        "peak_mb": None if peak is None else peak / 2**20,
        "params": int(net.count_params()),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_share": host.gpu_share(),
        "jax_env": {k: v for k, v in os.environ.items() if k.startswith("XLA_")},
        "tensorflow_limit_mb": backend.tensorflow_limit_mb(None) if name == "tensorflow" else None,
        "backend_version": backend.version(name),
        "keras_version": keras.__version__,
        "tensorflow_imported": sys.modules.get("tensorflow") is not None,
    }


def peak_bytes(name: str) -> int | None:
    """The backend's own peak of GPU memory in use by this process; None on the CPU."""
    if name == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    if name == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


if __name__ == "__main__":  # python -m benchmarks.gpu MODEL PRECISION EPOCHS SPEC JIT SEED
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    m, prec, ep, spec_json, jit, s = sys.argv[1:]
    emit(worker(m, prec, int(ep), Model(**json.loads(spec_json)), json.loads(jit), int(s)))
