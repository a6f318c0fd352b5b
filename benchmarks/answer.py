"""answer: how long an ablation takes to answer, the exhaustive way against the fast way.

Two parts, one invocation, one machine:

- **epoch cost**: seed 001's baseline CNN (conf/study/age_gap.yaml, 618,593 parameters at
  100x100) in a plain Keras ``fit`` on 1,200 random images, batch 16, in float32 and in the
  policy ``train.precision=auto`` picks here; each run is a fresh process, the precisions
  alternate, and the first epoch (graph tracing) is left out of the per-epoch figures.
- **time to answer**: an ablation on real Fashion-MNIST (the Debian package's files, the first
  ``data.limit`` images of each split of the document's seed-13 split) with the rows of
  conf/study/fashion_mnist_dropout.yaml plus one row that trains the baseline in mixed
  bfloat16, run through the real CLI (``python -m sweeps run``, then ``report``) two ways:
  exhaustive (fixed ``sweep.repeats``, every epoch, float32) and fast (``sweep.repeats=auto``,
  ``train.patience``, ``train.precision=auto``). Verdicts are read back with
  :func:`sweeps.verdict.verdicts_for_study` under the study's recorded rule, as the report does.

The precision row answers "does mixed bfloat16 cost accuracy?": in the exhaustive way it is
mixed bfloat16 against a float32 baseline, paired by seed, and should come out ``equivalent``
within ``report.margin``. In the fast way the baseline itself trains in the auto policy, so that
row is the baseline again.
"""

from __future__ import annotations

import copy
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Result, child_env, emit, fmt, median

STUDY, SOURCE_STUDY = "answer_fashion", "fashion_mnist_dropout"
PRECISION_ROW = "mixed_bfloat16"


@dataclass(frozen=True)
class Workload:
    limit: int  # images per split (train, validation, test)
    epochs: int  # the study's epochs: both ways cap at it
    exhaustive_repeats: int
    min_repeats: int
    max_repeats: int
    patience: int
    cost_images: int  # epoch-cost part: random images, batch 16
    cost_size: int
    cost_epochs: int
    cost_repeats: int
    precision_row: bool = False  # a row equal to the baseline under auto is refused


# Sized for about 40 minutes on a shared 2-core box: 300 images per split keep 30 exhaustive
# trials of the study's 20 epochs affordable; the epoch-cost part is seed 001's CNN on 1,200
# images at 100x100.
FULL = Workload(limit=300, epochs=20, exhaustive_repeats=10, min_repeats=3, max_repeats=10,
                patience=3, cost_images=1200, cost_size=100, cost_epochs=3,
                cost_repeats=3)  # fmt: skip
# CI smoke test: every part runs, on a workload too small for its figures to mean anything.
QUICK = Workload(limit=100, epochs=2, exhaustive_repeats=2, min_repeats=2, max_repeats=2,
                 patience=1, cost_images=64, cost_size=32, cost_epochs=2, cost_repeats=1,
                 precision_row=False)  # fmt: skip


def run(quick: bool, repeats: int | None = None) -> Result:
    """Runs the epoch-cost part, then the ablation the exhaustive way and the fast way."""
    work = QUICK if quick else FULL
    if repeats:
        work = Workload(**{**work.__dict__, "cost_repeats": repeats})
    with tempfile.TemporaryDirectory(prefix="bench-answer-") as tmp:
        root = Path(tmp)
        conf = _conf_with_study(root / "conf", work)
        # The CLI searches this folder in front of the installed configs.
        os.environ["SWEEPS_CONFIG_DIR"] = str(conf)
        auto = _auto_repeats_available(conf, root)
        ways = {"exhaustive": _exhaustive(work), "fast": _fast(work, auto)}
        results = {name: _way(name, args, root, work) for name, args in ways.items()}
    cost_rows = [_epoch_cost(work, precision, r) for r in range(work.cost_repeats)
                 for precision in ("float32", "auto")]  # fmt: skip
    return _result(work, cost_rows, results, ways, auto)


# -- epoch cost: one fresh process per measurement -------------------------------------------


def _epoch_cost(work: Workload, precision: str, repeat: int) -> dict[str, Any]:
    args = [str(work.cost_images), str(work.cost_size), str(work.cost_epochs), precision]
    command = [sys.executable, "-m", "benchmarks.answer", "cost", *args]
    proc = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=1800)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"epoch-cost child failed:\n{proc.stderr[-2000:]}")
    import json

    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"answer: epoch cost {precision} ({got['policy']}) repeat {repeat + 1}: "
          f"{got['cpu_per_epoch_s']:.2f} CPU s, {got['wall_per_epoch_s']:.2f} s per epoch",
          flush=True)  # fmt: skip
    return {"kind": "epoch_cost", "repeat": repeat, "precision": precision, **got}


def cost_child(images: int, size: int, epochs: int, precision: str) -> dict[str, Any]:
    """Trains the age_gap baseline CNN on random images; per-epoch wall and CPU seconds."""
    import keras
    import numpy as np
    from sweeps.models import create_model
    from sweeps.models.compile import compile_model

    from sweeps import precision as precision_mod

    policy = precision_mod.apply(precision)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((images, size, size, 3), dtype=np.float32)
    y = rng.integers(0, 2, size=images)
    model = create_model("cnn", input_shape=(size, size, 3), num_classes=2, filters=[32, 32, 64],
                         kernel_size=3, padding="same", activation="relu", pooling="max",
                         pool_size=2, dense_units=[64], dense_dropout=0.5)  # fmt: skip
    compile_model(model, optimizer="rmsprop", learning_rate=None, num_classes=2)
    clock = _EpochClock()
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[clock.callback()])
    steady = clock.epochs[1:] or clock.epochs  # the first epoch traces the graph
    return {"policy": policy, "params": int(model.count_params()),
            "wall_per_epoch_s": median(w for w, _ in steady),
            "cpu_per_epoch_s": median(c for _, c in steady),
            "first_epoch_wall_s": clock.epochs[0][0], "epochs": clock.epochs,
            "load_average": os.getloadavg()[0]}  # fmt: skip


class _EpochClock:
    """Wall and CPU seconds (every thread of the process) of each epoch."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, float]] = []

    def callback(self) -> Any:
        import keras

        outer = self

        class Clock(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.start = (time.perf_counter(), time.process_time())

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                wall, cpu = self.start
                outer.epochs.append((time.perf_counter() - wall, time.process_time() - cpu))

        return Clock()


# -- time to answer: the real CLI, two ways ---------------------------------------------------


def _conf_with_study(conf: Path, work: Workload) -> Path:
    """A copy of conf/ with the benchmark's study: fashion_mnist_dropout plus a precision row."""
    import shutil

    import yaml

    from sweeps.catalogue import conf_dir

    shutil.copytree(conf_dir(), conf, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    study = yaml.safe_load((conf / "study" / f"{SOURCE_STUDY}.yaml").read_text())
    study.pop("space", None)
    variants = study["ablation"]["variants"]
    if work.precision_row:
        variants.append({"name": PRECISION_ROW, "set": {"train.precision": "mixed_bfloat16"},
                         "note": "the baseline trained in mixed bfloat16"})  # fmt: skip
    header = f"# @package _global_\n# {STUDY}: {SOURCE_STUDY} plus a precision row (benchmark)\n"
    (conf / "study" / f"{STUDY}.yaml").write_text(header + yaml.safe_dump(study, sort_keys=False))
    return conf


def _common(work: Workload) -> list[str]:
    return [f"data.limit={work.limit}", f"train.epochs={work.epochs}", "train.verbose=0",
            "sweep.mode=ablation"]  # fmt: skip


def _exhaustive(work: Workload) -> list[str]:
    return [*_common(work), f"sweep.repeats={work.exhaustive_repeats}", "train.precision=float32"]


def _fast(work: Workload, auto: bool) -> list[str]:
    repeats = (["sweep.repeats=auto", f"sweep.min_repeats={work.min_repeats}",
                f"sweep.max_repeats={work.max_repeats}"] if auto
               else [f"sweep.repeats={work.min_repeats}"])  # fmt: skip
    return [*_common(work), *repeats, f"train.patience={work.patience}", "train.precision=auto"]


def _compose(conf: Path, *overrides: str) -> Any:
    """The validated config the CLI runs for these overrides, from the copied config tree."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeps.config import load

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+study={STUDY}", *overrides])
    return load(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), study=STUDY)


def _auto_repeats_available(conf: Path, root: Path) -> bool:
    """Whether this checkout accepts ``sweep.repeats=auto`` (else the fast way uses fixed)."""
    try:
        _compose(conf, "sweep.mode=ablation", "sweep.repeats=auto", f"store_dir={root / 'probe'}")
    except Exception:
        return False
    return True


def _way(name: str, args: list[str], root: Path, work: Workload) -> dict[str, Any]:
    """Runs ``sweeps run`` then ``sweeps report`` for one way; times them; reads the verdicts."""
    store = root / name
    full = [f"+study={STUDY}", *args, f"store_dir={store}", f"sweep.name=answer-{name}"]
    log = root / f"{name}.log"
    before, start = _children_cpu(), time.perf_counter()
    with log.open("w") as out:
        for command in ("run", "report"):
            code = subprocess.run([sys.executable, "-m", "sweeps", command, *full], cwd=root,
                                  env=child_env(), stdout=out, stderr=subprocess.STDOUT,
                                  timeout=7200).returncode  # fmt: skip
            if code != 0:
                tail = "\n".join(log.read_text().splitlines()[-20:])
                raise RuntimeError(f"sweeps {command} ({name}) exited {code}:\n{tail}")
    wall, cpu = time.perf_counter() - start, _children_cpu() - before
    facts = _read_study(root / "conf", full[1:])
    print(f"answer: {name}: {wall:.0f}s wall, {cpu:.0f} CPU s, {facts['trials']} trials, "
          f"{facts['epochs']} epochs, verdicts {facts['verdicts']}", flush=True)  # fmt: skip
    return {"kind": "way", "way": name, "wall_s": wall, "cpu_s": cpu,
            "cpu_per_epoch_s": cpu / max(facts["epochs"], 1), **facts}  # fmt: skip


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _read_study(conf: Path, overrides: list[str]) -> dict[str, Any]:
    """Trials, epochs, repeats and verdict per row, from the study's storage."""
    import optuna

    from benchmarks.common import epochs_trained
    from sweeps import keys, verdict
    from sweeps.storage import open_storage

    cfg = _compose(conf, *overrides)
    storage = open_storage(cfg.storage, cfg.store_dir, lambda study, trial: None)
    study = optuna.load_study(study_name=cfg.sweep.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    rule = verdict.settle_rule(study, cfg, record=False)
    metric = rule.metric if rule is not None else "test_acc"
    state = (study.user_attrs.get(keys.AUTO_ATTR) or {}).get("_state")
    found = verdict.verdicts_for_study(cfg, trials, metric, rule, state)
    names = [v.name for v in cfg.variants]
    values = verdict.paired_values(trials, metric, names)
    reasons: dict[str, int] = {}
    for t in done:
        why = str(t.user_attrs.get("stop_reason", "epochs"))
        reasons[why] = reasons.get(why, 0) + 1
    return {
        "trials": len(done),
        "failed": sum(t.state.name == "FAIL" for t in trials),
        "epochs": sum(epochs_trained(t) for t in done),
        "stop_reasons": reasons,
        "repeats_per_row": {name: len(values.get(name, {})) for name in names},
        "verdicts": {name: v.verdict for name, v in found.items()},
        "diffs": {name: [v.diff, v.low, v.high] for name, v in found.items()},
        "auto_record": copy.deepcopy(study.user_attrs.get(keys.AUTO_ATTR)),
    }


# -- the result ----------------------------------------------------------------------------


def compare(exhaustive: dict[str, str], fast: dict[str, str]) -> dict[str, int]:
    """Counts of the fast way's rows: decided and agreeing, decided and not, left undecided."""
    counts = {"rows": len(fast), "fast_decided": 0, "agree": 0, "conflict": 0,
              "exhaustive_undecided": 0, "fast_undecided": 0}  # fmt: skip
    for name, word in fast.items():
        if word == "undecided":
            counts["fast_undecided"] += 1
            continue
        counts["fast_decided"] += 1
        other = exhaustive.get(name, "undecided")
        if other == word:
            counts["agree"] += 1
        elif other == "undecided":
            counts["exhaustive_undecided"] += 1  # the fast way claims what 10 repeats did not
        else:
            counts["conflict"] += 1
    return counts


def _result(work: Workload, cost_rows: list[dict[str, Any]], ways: dict[str, dict[str, Any]],
            overrides: dict[str, list[str]], auto: bool) -> Result:  # fmt: skip
    f32 = [r for r in cost_rows if r["precision"] == "float32"]
    fast_p = [r for r in cost_rows if r["precision"] == "auto"]
    pairs = list(zip(f32, fast_p, strict=True))
    exh, fast = ways["exhaustive"], ways["fast"]
    counts = compare(exh["verdicts"], fast["verdicts"])
    agree_share = counts["agree"] / counts["fast_decided"] if counts["fast_decided"] else 1.0
    medians = {
        "float32_cpu_per_epoch_s": median(r["cpu_per_epoch_s"] for r in f32),
        "auto_cpu_per_epoch_s": median(r["cpu_per_epoch_s"] for r in fast_p),
        "float32_wall_per_epoch_s": median(r["wall_per_epoch_s"] for r in f32),
        "auto_wall_per_epoch_s": median(r["wall_per_epoch_s"] for r in fast_p),
        **{f"{w}_{k}": float(ways[w][k]) for w in ways
           for k in ("wall_s", "cpu_s", "epochs", "trials", "cpu_per_epoch_s")},
        **{k: float(v) for k, v in counts.items()},
    }  # fmt: skip
    ratios = {
        "fast_wall_over_exhaustive": fast["wall_s"] / exh["wall_s"],
        "fast_cpu_over_exhaustive": fast["cpu_s"] / exh["cpu_s"],
        "fast_epochs_over_exhaustive": fast["epochs"] / max(exh["epochs"], 1),
        "float32_cpu_per_epoch_over_auto": median(a["cpu_per_epoch_s"] / b["cpu_per_epoch_s"]
                                                  for a, b in pairs),
        "float32_wall_per_epoch_over_auto": median(a["wall_per_epoch_s"] / b["wall_per_epoch_s"]
                                                   for a, b in pairs),
        "decided_rows_agreeing_share": agree_share,
    }  # fmt: skip
    notes = [
        f"the precision auto resolves to here: {fast_p[0]['policy']}",
        "fast-way rows: decided and agreeing / decided where the exhaustive way stayed "
        "undecided / decided otherwise (conflict) / left undecided: "
        f"{counts['agree']} / {counts['exhaustive_undecided']} / {counts['conflict']} / "
        f"{counts['fast_undecided']}",
        "wall and CPU of a way: `sweeps run` plus `sweeps report`, as a user waits for them; "
        "CPU counts every thread of both processes",
    ]
    if not auto:
        notes.append(f"sweep.repeats=auto is not in this checkout: the fast way ran fixed "
                     f"sweep.repeats={work.min_repeats}")  # fmt: skip
    if work.precision_row:
        word = exh["verdicts"].get(PRECISION_ROW, "missing")
        diff = exh["diffs"].get(PRECISION_ROW)
        notes.append(f"mixed bfloat16 against the float32 baseline (exhaustive way, paired, "
                     f"margin 1 point): {word}, test_acc diff and 95% CI {diff}")  # fmt: skip
    return Result(
        workload={
            "epoch_cost": {
                "model": "age_gap baseline CNN",
                "images": work.cost_images,
                "image_size": work.cost_size,
                "batch_size": 16,
                "epochs": work.cost_epochs,
                "repeats": work.cost_repeats,
                "data": "random, plain keras fit",
            },
            "ablation": {
                "study": f"{SOURCE_STUDY} rows"
                + (f" + {PRECISION_ROW}" if work.precision_row else ""),
                "data": f"fashion_mnist, data.limit={work.limit} per split",
                "epochs_cap": work.epochs,
            },
            "commands": {
                w: f"python -m sweeps run +study={STUDY} " + " ".join(a)
                for w, a in overrides.items()
            },
            "auto_repeats": auto,
        },  # fmt: skip
        repeats=[*cost_rows, *ways.values()],
        medians=medians,
        ratios=ratios,
        targets={
            "fast_wall_over_exhaustive": "<= 0.35",
            "float32_cpu_per_epoch_over_auto": ">= 1.3",
            "decided_rows_agreeing_share": ">= 1.0",
        },  # fmt: skip
        table=_table(medians, ratios, ways),
        notes=notes,
    )


def _table(medians: dict[str, float], ratios: dict[str, float],
           ways: dict[str, dict[str, Any]]) -> list[list[str]]:  # fmt: skip
    table = [["measure", "float32 / exhaustive", "auto / fast", "ratio"]]
    table.append(["CPU s per epoch (age_gap CNN)", fmt(medians["float32_cpu_per_epoch_s"]),
                  fmt(medians["auto_cpu_per_epoch_s"]),
                  fmt(ratios["float32_cpu_per_epoch_over_auto"], 3)])  # fmt: skip
    table.append(["wall s per epoch (age_gap CNN)", fmt(medians["float32_wall_per_epoch_s"]),
                  fmt(medians["auto_wall_per_epoch_s"]),
                  fmt(ratios["float32_wall_per_epoch_over_auto"], 3)])  # fmt: skip
    table.append(
        [
            "ablation wall s (run + report)",
            fmt(medians["exhaustive_wall_s"], 0),
            fmt(medians["fast_wall_s"], 0),
            fmt(ratios["fast_wall_over_exhaustive"], 3),
        ]
    )
    table.append(
        [
            "ablation epochs",
            fmt(medians["exhaustive_epochs"], 0),
            fmt(medians["fast_epochs"], 0),
            fmt(ratios["fast_epochs_over_exhaustive"], 3),
        ]
    )
    for name in ways["fast"]["verdicts"]:
        row = [f"row {name}: verdict (repeats)"]
        for way in ("exhaustive", "fast"):
            got = ways[way]
            row.append(f"{got['verdicts'].get(name, '-')} ({got['repeats_per_row'].get(name)})")
        table.append([*row, ""])
    return table


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    if kind != "cost":
        raise SystemExit(f"unknown child {kind!r}")
    emit(cost_child(int(rest[0]), int(rest[1]), int(rest[2]), rest[3]))
