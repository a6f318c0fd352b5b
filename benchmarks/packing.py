"""packing: memory one trial takes, per study, to say how many trials fit on one GPU.

Each study's own model (its fixed config: filters, input size, batch size, optimizer) trains
a few steps on random images of its input shape in a fresh process on the CPU, in float32.
Two figures per study:

- **measured**: the process's peak resident memory (``ru_maxrss``) during training minus its
  resident memory just before ``fit`` (TensorFlow imported, model built and compiled, the
  batch in memory), plus the weights already allocated: what training adds on top of the
  runtime (activations kept for the backward pass, gradients, optimizer slots, workspaces).
- **analytic**: from the Keras layer shapes: weights, gradients and optimizer slots
  (4 bytes x parameters x (2 + slots)) plus every layer's output for one batch, twice
  (kept for the backward pass, and its gradient).

On a GPU the same tensors live in GPU memory; each process also holds a CUDA context and
cuDNN workspaces (about 0.5 GB here, assumed). The GPU figures are estimates from these.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

from benchmarks.common import Result, child_result, emit, fmt, median

STUDIES = {"age_gap": [], "cats_dogs_transfer": [], "gender_resolution": []}
QUICK = {"quickstart": []}
STEPS = 3
CUDA_CONTEXT_MB = 500.0  # per process on the GPU: CUDA context, cuDNN/cuBLAS handles (assumed)
CARDS_GB = (24, 80, 141)
SLOTS = {"adam": 2, "adamw": 2, "nadam": 2, "rmsprop": 1, "sgd": 0}


def run(quick: bool, repeats: int | None = None) -> Result:
    studies = QUICK if quick else STUDIES
    rows = []
    for r in range(repeats or 1):
        for study, overrides in studies.items():
            row = {"study": study, "repeat": r, **child_result("packing", study, *overrides)}
            rows.append(row)
            print(f"packing: {study}: {row['measured_mb']:.0f} MB measured, "
                  f"{row['analytic_mb']:.0f} MB analytic", flush=True)  # fmt: skip
    return _result(studies, rows)


def _result(studies: dict[str, list[str]], rows: list[dict[str, Any]]) -> Result:
    medians: dict[str, float] = {}
    ratios: dict[str, float] = {}
    table = [["study", "params", "batch", "input", "measured MB", "analytic MB",
              *(f"trials on {g} GB" for g in CARDS_GB)]]  # fmt: skip
    for study in studies:
        mine = [r for r in rows if r["study"] == study]
        measured = median(r["measured_mb"] for r in mine)
        analytic = median(r["analytic_mb"] for r in mine)
        medians[f"{study}_measured_mb"], medians[f"{study}_analytic_mb"] = measured, analytic
        ratios[f"{study}_measured_over_analytic"] = measured / analytic
        per_trial = max(measured, analytic) + CUDA_CONTEXT_MB
        fits = [int(g * 1024 // per_trial) for g in CARDS_GB]
        for g, n in zip(CARDS_GB, fits, strict=True):
            medians[f"{study}_trials_on_{g}gb"] = n
        first = mine[0]
        table.append([study, f"{first['params']:,}", str(first["batch"]), first["input"],
                      fmt(measured, 0), fmt(analytic, 0), *map(str, fits)])  # fmt: skip
    ratios["measured_over_analytic"] = median(ratios.values())
    return Result(
        workload={"studies": list(studies), "steps": STEPS, "precision": "float32",
                  "cuda_context_mb_assumed": CUDA_CONTEXT_MB},
        repeats=rows,
        medians=medians,
        ratios=ratios,
        table=table,
        notes=["measured: peak RSS during fit minus RSS before it, plus the weights (CPU)",
               "analytic: 4 B x params x (2 + optimizer slots) + 2 x 4 B x every layer's "
               "output for one batch",
               f"trials on N GB: N / (max(measured, analytic) + {CUDA_CONTEXT_MB:.0f} MB CUDA "
               "context): an estimate, not measured on a GPU"],
    )  # fmt: skip


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(study: str, *overrides: str) -> dict[str, Any]:
    """One study's model, trained STEPS batches of random images, in this process."""
    import keras
    import numpy as np
    from sweeps.models import create_model
    from sweeps.models.compile import compile_model

    from benchmarks.common import compose
    from sweeps.trial import make_spec

    cfg = compose(study, "train.jit_compile=false", *overrides)
    spec = make_spec(cfg, cfg.raw, 0, 0, {}, cfg.store_dir)
    h, w = spec.input_size
    batch, classes = spec.train.batch_size, 2
    keras.mixed_precision.set_global_policy("float32")
    model = create_model(spec.model_name, input_shape=(h, w, 3), num_classes=classes,
                         **spec.model_kwargs)  # fmt: skip
    compile_model(model, optimizer=spec.train.optimizer, learning_rate=spec.train.learning_rate,
                  num_classes=classes, jit_compile=False)  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.random((batch * STEPS, h, w, 3), dtype=np.float32)
    y = rng.integers(0, classes, batch * STEPS)
    params = model.count_params()
    before = _rss_mb()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    outputs = sum(int(np.prod(layer.output.shape[1:])) for layer in model.layers)
    slots = SLOTS.get(spec.train.optimizer, 2)
    analytic = (4 * params * (2 + slots) + 2 * 4 * outputs * batch) / 2**20
    return {"params": params, "batch": batch, "input": f"{h}x{w}",
            "optimizer": spec.train.optimizer, "rss_before_mb": before, "peak_rss_mb": peak,
            "measured_mb": peak - before + 4 * params / 2**20, "analytic_mb": analytic}  # fmt: skip


if __name__ == "__main__":  # the child: python -m benchmarks.packing STUDY [OVERRIDES]
    emit(measure(sys.argv[1], *sys.argv[2:]))
