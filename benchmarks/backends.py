"""backends: seconds per epoch of the same model on each installed Keras backend.

Two models: seed 001's baseline CNN (conf/study/age_gap.yaml, 618,593 parameters at 100x100,
batch 16) and the Fashion-MNIST CNN (conf/study/fashion_mnist_dropout.yaml, 28x28, batch 64),
each trained on random images with the study's model builder, compile step and input pipeline
as a trial has them (``tf.data`` on TensorFlow, the NumPy ``PyDataset`` elsewhere; the age_gap
augmentation on). Every (model, backend, precision) runs in a fresh process with
``KERAS_BACKEND`` set; the combinations alternate within each repeat, so a shared machine's
drift spreads over all of them. The first epoch also traces and compiles; the figure is the
median of the later epochs.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Result, child_env, emit, fmt, median

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_bfloat16")  # bfloat16: what CPUs (and recent GPUs) speed up


@dataclass(frozen=True)
class Model:
    study: str
    images: int  # training images per epoch
    size: int
    channels: int
    classes: int


@dataclass(frozen=True)
class Workload:
    models: dict[str, Model]
    epochs: int
    repeats: int
    precisions: tuple[str, ...] = PRECISIONS


FULL = Workload(
    {
        "age_gap": Model("age_gap", images=1200, size=100, channels=3, classes=2),
        "fashion": Model("fashion_mnist_dropout", images=6000, size=28, channels=1, classes=10),
    },
    epochs=2,
    repeats=3,  # benchmarks/results/ keeps runs of at least 3 repeats
)
QUICK = Workload(
    {
        "age_gap": Model("age_gap", images=32, size=32, channels=3, classes=2),
        "fashion": Model("fashion_mnist_dropout", images=64, size=28, channels=1, classes=10),
    },
    epochs=2,
    repeats=1,
    precisions=("float32",),
)


def installed() -> list[str]:
    from sweeps.backend import installed as is_installed

    return [name for name in BACKENDS if is_installed(name)]


def run(quick: bool, repeats: int | None = None) -> Result:
    """Every installed backend x precision x model, ``repeats`` times, interleaved."""
    work = QUICK if quick else FULL
    n = repeats or work.repeats
    backends = installed()
    combos = [(m, b, p) for m in work.models for b in backends for p in work.precisions]
    rows = []
    for r in range(n):
        row: dict[str, Any] = {"repeat": r}
        for model, name, precision in combos:
            got = _child(name, model, precision, work)
            row.update({f"{model}_{name}_{precision}_{k}": v for k, v in got.items()})
            print(f"backends: repeat {r + 1}/{n}: {model} on {name} {precision}: "
                  f"{got['epoch_s']:.2f} s/epoch", flush=True)  # fmt: skip
        rows.append(row)
    return _result(work, backends, rows)


def _child(name: str, model: str, precision: str, work: Workload) -> dict[str, Any]:
    import json
    import subprocess

    spec = work.models[model]
    numbers = (spec.images, spec.size, spec.channels, spec.classes, work.epochs)
    args = [sys.executable, "-m", "benchmarks.backends", model, spec.study,
            *map(str, numbers), precision]  # fmt: skip
    env = {**child_env(), "KERAS_BACKEND": name}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{model} on {name} {precision} exited {proc.returncode}:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _result(work: Workload, backends: list[str], rows: list[dict[str, Any]]) -> Result:
    numeric = (int, float)
    keys = [k for k, v in rows[0].items() if k != "repeat" and type(v) in numeric]
    medians = {k: median(row[k] for row in rows) for k in keys}
    ratios = {}
    for model in work.models:
        for name in backends[1:] if backends[0] == "tensorflow" else []:
            for p in work.precisions:
                ratios[f"{name}_over_tensorflow_{model}_{p}"] = median(
                    row[f"{model}_{name}_{p}_epoch_s"] / row[f"{model}_tensorflow_{p}_epoch_s"]
                    for row in rows
                )
    table = [["model", "backend", "version", *[f"{p} s/epoch" for p in work.precisions],
              "first epoch s (float32)", "params"]]  # fmt: skip
    for model in work.models:
        for name in backends:
            cell = f"{model}_{name}"
            table.append([model, name, rows[0][f"{cell}_float32_version"],
                          *[fmt(medians[f"{cell}_{p}_epoch_s"]) for p in work.precisions],
                          fmt(medians[f"{cell}_float32_first_epoch_s"], 1),
                          f"{int(medians[f'{cell}_float32_params']):,}"])  # fmt: skip
    return Result(
        workload={
            "models": {k: vars(v) for k, v in work.models.items()},
            "epochs": work.epochs,
            "repeats": len(rows),
            "backends": backends,
            "precisions": list(work.precisions),
            "data": "random uint8 images, random labels; validation = 1/4 of the training count",
        },
        repeats=rows,
        medians=medians,
        ratios=ratios,
        table=table,
        notes=[
            "s/epoch: median over repeats of the median of epochs 2..N (epoch 1 also compiles)",
            "each (model, backend, precision) is a fresh process; combinations interleave",
            "mixed_bfloat16 via keras.mixed_precision.set_global_policy, the same on every backend",
        ],
    )


# -- the child: one model on one backend -------------------------------------------------------


def child(model: str, study: str, images: int, size: int, channels: int, classes: int,
          epochs: int, precision: str) -> dict[str, Any]:  # fmt: skip
    """Trains ``epochs`` epochs as a trial would; returns seconds per epoch and versions."""
    import keras
    import numpy as np
    from sweeps.data import AugmentSpec, Split
    from sweeps.models import create_model
    from sweeps.models.compile import compile_model

    from benchmarks.common import compose
    from sweeps.backend import version
    from sweeps.trial import make_spec

    cfg = compose(study, "data.root=/unused", f"train.epochs={epochs}")
    spec = make_spec(cfg, cfg.raw, 0, 0, {}, Path("/nonexistent"))
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    shape = (size, size, channels)

    def split(n: int) -> Split:
        x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        return Split(x, rng.integers(0, classes, n).astype(np.int64))

    train, val = split(images), split(max(images // 4, 8))
    net = create_model(spec.model_name, input_shape=shape, num_classes=classes,
                       **spec.model_kwargs)  # fmt: skip
    compile_model(net, optimizer=cfg.train.optimizer, learning_rate=cfg.train.learning_rate,
                  num_classes=classes)  # fmt: skip
    name = keras.backend.backend()
    if name == "tensorflow":
        from sweeps.data import make_dataset as make
    else:
        from sweeps.data import make_pydataset as make
    batch = cfg.train.batch_size
    augment = AugmentSpec.from_dict(cfg.train.augment)
    train_ds = make(train, batch_size=batch, shuffle=True, seed=0, augment=augment)
    val_ds = make(val, batch_size=batch)
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.start)

    feeds = [train_ds.epoch_callback()] if hasattr(train_ds, "epoch_callback") else []
    net.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0,
            callbacks=[Clock(), *feeds])  # fmt: skip
    return {
        "epoch_s": median(times[1:]) if len(times) > 1 else times[0],
        "first_epoch_s": times[0],
        "params": int(net.count_params()),
        "version": version(name),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


if __name__ == "__main__":
    m, s, n, sz, ch, cl, ep, prec = sys.argv[1:]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        from sweeps.backend import select

        select()  # as a trial process does: Keras then never imports TensorFlow
    emit(child(m, s, int(n), int(sz), int(ch), int(cl), int(ep), prec))
