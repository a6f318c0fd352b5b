"""answer: how long an ablation takes to its verdicts, the exhaustive way against the fast way.

Real Fashion-MNIST (the Debian package's files; the document's seed-13 split, the first
``data.limit`` images of each split: 12,000 train, 12,000 validation and the **full 10,000
test images**), the rows of conf/study/fashion_mnist_dropout.yaml (baseline, dropout) plus
``null_seed``, the baseline again under another seed stream (``seed: 1000``): a row with no
real effect by construction. Each way runs through the real CLI (``python -m sweeps run``,
then ``report``) in a store of its own:

- **exhaustive**: ``sweep.repeats=10``, the study's 20 epochs, float32;
- **fast_float32**: the recorded rule (``sweep.repeats=auto``: 3 to 10 repeats, family-wise
  error over rows and looks, futility at delta), float32: the rule's saving alone;
- **fast**: the same rule with ``train.precision=auto``: the precision's saving on top.

Patience is off in every way (ablation mode's default), so a row's epochs do not depend on
where its own plateau fell. The ways run ``rounds`` times each, alternating (A B C, then
C B A), so a drift of the machine's load does not favour one way. Each ``run`` and ``report``
process's CPU seconds (every thread, children included) come from ``wait4``; the load average
before and after each way, and the CPU model and its bfloat16 flags, go into the JSON.

A second part trains the baseline in mixed bfloat16 against float32, paired by seed over
``precision_seeds`` seeds, on the same data and epochs, and gives the verdict and its interval
(target: ``equivalent`` within ``report.margin``, one point).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Result, child_env, fmt, median

STUDY, PRECISION_STUDY, SOURCE_STUDY = "answer_fashion", "answer_precision", "fashion_mnist_dropout"
NULL_ROW, BF16_ROW = "null_seed", "bfloat16"
WAYS = ("exhaustive", "fast_float32", "fast")
SAME_ANSWER = {"equivalent", "no effect >= delta"}  # neither says the row changed anything
DECIDED = {"better", "worse", *SAME_ANSWER}


@dataclass(frozen=True)
class Workload:
    limit: int  # images per split (train, validation, test: all 10,000 at >= 10,000)
    epochs: int  # the study's epochs
    exhaustive_repeats: int
    min_repeats: int
    max_repeats: int
    rounds: int  # each way this many times, alternating
    precision_seeds: int
    source_rows: bool = True  # the document's variant (dropout) beside the null row


FULL = Workload(limit=12_000, epochs=20, exhaustive_repeats=10, min_repeats=3, max_repeats=10,
                rounds=2, precision_seeds=5)  # fmt: skip
# CI smoke test: every part runs, on a workload too small for its figures to mean anything.
QUICK = Workload(limit=60, epochs=1, exhaustive_repeats=2, min_repeats=2, max_repeats=2,
                 rounds=1, precision_seeds=2, source_rows=False)  # fmt: skip


def run(quick: bool, repeats: int | None = None) -> Result:
    """Every way ``rounds`` times, alternating; then bfloat16 against float32."""
    work = QUICK if quick else FULL
    if repeats:
        work = Workload(**{**work.__dict__, "rounds": repeats})
    with tempfile.TemporaryDirectory(prefix="bench-answer-") as tmp:
        root = Path(tmp)
        conf = _conf_with_studies(root / "conf", work)
        os.environ["SWEEPS_CONFIG_DIR"] = str(conf)  # searched in front of the installed configs
        ways = {"exhaustive": _exhaustive(work), "fast_float32": _fast(work, "float32"),
                "fast": _fast(work, "auto")}  # fmt: skip
        rows = []
        for r in range(work.rounds):
            order = WAYS if r % 2 == 0 else tuple(reversed(WAYS))
            for name in order:
                rows.append(_way(name, r, STUDY, ways[name], root, work))
        precision = _way("precision", 0, PRECISION_STUDY, _precision(work), root, work)
    return _result(work, rows, precision, ways)


def _conf_with_studies(conf: Path, work: Workload) -> Path:
    """A copy of conf/ with the benchmark's two studies, built from fashion_mnist_dropout."""
    import shutil

    import yaml

    from sweeps.catalogue import conf_dir

    shutil.copytree(conf_dir(), conf, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    source = yaml.safe_load((conf / "study" / f"{SOURCE_STUDY}.yaml").read_text())
    source.pop("space", None)
    study = copy.deepcopy(source)
    if not work.source_rows:
        study["ablation"]["variants"] = []
    null = "the baseline under another seed stream: no real effect by construction"
    study["ablation"]["variants"].append({"name": NULL_ROW, "set": {"seed": 1000}, "note": null})
    precision = copy.deepcopy(source)
    bf16 = "the baseline trained in mixed bfloat16 (the baseline row: float32)"
    precision["ablation"]["variants"] = [
        {"name": BF16_ROW, "set": {"train.precision": "mixed_bfloat16"}, "note": bf16}
    ]
    studies = ((STUDY, study, "plus a null row"),
               (PRECISION_STUDY, precision, "baseline in bfloat16 vs float32"))  # fmt: skip
    for name, body, what in studies:
        header = f"# @package _global_\n# {name}: {SOURCE_STUDY} {what} (benchmark)\n"
        (conf / "study" / f"{name}.yaml").write_text(header + yaml.safe_dump(body, sort_keys=False))
    return conf


def _common(work: Workload) -> list[str]:
    return [f"data.limit={work.limit}", f"train.epochs={work.epochs}", "train.verbose=0",
            "train.patience=null", "sweep.mode=ablation"]  # fmt: skip


def _exhaustive(work: Workload) -> list[str]:
    return [*_common(work), f"sweep.repeats={work.exhaustive_repeats}", "train.precision=float32"]


def _fast(work: Workload, precision: str) -> list[str]:
    return [*_common(work), "sweep.repeats=auto", f"sweep.min_repeats={work.min_repeats}",
            f"sweep.max_repeats={work.max_repeats}", f"train.precision={precision}"]  # fmt: skip


def _precision(work: Workload) -> list[str]:
    return [*_common(work), f"sweep.repeats={work.precision_seeds}", "train.precision=float32"]


def _compose(conf: Path, study: str, *overrides: str) -> Any:
    """The validated config the CLI runs for these overrides, from the copied config tree."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeps.config import load

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+study={study}", *overrides])
    return load(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), study=study)


def _way(name: str, round_: int, study: str, args: list[str], root: Path,
         work: Workload) -> dict[str, Any]:  # fmt: skip
    """``sweeps run`` then ``sweeps report``, each timed as its own process; the verdicts."""
    label = f"{name}-{round_ + 1}"
    store = root / label
    full = [f"+study={study}", *args, f"store_dir={store}", f"sweep.name=answer-{label}"]
    log = root / f"{label}.log"
    load_before, start = os.getloadavg(), time.perf_counter()
    cpu: dict[str, float] = {}
    with log.open("w") as out:
        for command in ("run", "report"):
            code, cpu[command] = _timed([sys.executable, "-m", "sweeps", command, *full], root,
                                        out)  # fmt: skip
            if code != 0:
                tail = "\n".join(log.read_text().splitlines()[-20:])
                raise RuntimeError(f"sweeps {command} ({label}) exited {code}:\n{tail}")
    wall = time.perf_counter() - start
    facts = _read_study(root / "conf", study, full[1:])
    total = cpu["run"] + cpu["report"]
    print(f"answer: {label}: {wall:.0f}s wall, {total:.0f} CPU s, {facts['trials']} trials, "
          f"{facts['epochs']} epochs, verdicts {facts['verdicts']}", flush=True)  # fmt: skip
    return {"kind": "way", "way": name, "round": round_, "wall_s": wall, "cpu_s": total,
            "cpu_run_s": cpu["run"], "cpu_report_s": cpu["report"],
            "cpu_per_epoch_s": cpu["run"] / max(facts["epochs"], 1),
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()), **facts}  # fmt: skip


def _timed(command: list[str], cwd: Path, out: Any) -> tuple[int, float]:
    """Exit code and CPU seconds (user + system, its children included) of one process."""
    proc = subprocess.Popen(command, cwd=cwd, env=child_env(), stdout=out,
                            stderr=subprocess.STDOUT)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _read_study(conf: Path, study_name: str, overrides: list[str]) -> dict[str, Any]:
    """Trials, epochs, repeats, verdict, interval and stop reason per row, from the storage."""
    import optuna

    from benchmarks.common import epochs_trained
    from sweeps import keys, verdict
    from sweeps.storage import open_storage

    cfg = _compose(conf, study_name, *overrides)
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
    return {
        "trials": len(done),
        "failed": sum(t.state.name == "FAIL" for t in trials),
        "epochs": sum(epochs_trained(t) for t in done),
        "repeats_per_row": {name: len(values.get(name, {})) for name in names},
        "verdicts": {name: v.verdict for name, v in found.items()},
        "stopped": {name: v.stopped for name, v in found.items()},
        "diffs": {name: [v.diff, v.low, v.high] for name, v in found.items()},
        "paired_sd": {name: v.sd for name, v in found.items()},
        "confidence": {name: v.confidence for name, v in found.items()},
        "rule": copy.deepcopy(study.user_attrs.get(keys.RULE_ATTR)),
    }


# -- the result ----------------------------------------------------------------------------


def compare(exhaustive: dict[str, str], fast: dict[str, str]) -> dict[str, int]:
    """How the fast way's verdicts stand against the exhaustive way's, row by row.

    ``opposite``: one says better and the other worse. ``differ``: both decided, with other
    words that do not contradict (better and no effect >= delta can both hold for an effect
    between 0 and delta). ``lost``: rows the exhaustive way decided and the fast way did not.
    ``gained``: rows the fast way decided and the exhaustive way did not.
    """
    counts = {"rows": len(fast), "fast_decided": 0, "agree": 0, "opposite": 0, "differ": 0,
              "lost": 0, "gained": 0}  # fmt: skip
    for name, word in fast.items():
        other = exhaustive.get(name, "undecided")
        if word in DECIDED:
            counts["fast_decided"] += 1
        if word in DECIDED and other in DECIDED:
            if word == other:
                counts["agree"] += 1
            elif {word, other} == {"better", "worse"}:
                counts["opposite"] += 1
            else:
                counts["differ"] += 1
        elif other in DECIDED:
            counts["lost"] += 1
        elif word in DECIDED:
            counts["gained"] += 1
    return counts


def _result(work: Workload, rows: list[dict[str, Any]], precision: dict[str, Any],
            overrides: dict[str, list[str]]) -> Result:  # fmt: skip
    by = {w: [r for r in rows if r["way"] == w] for w in WAYS}
    kinds = ("cpu_s", "wall_s", "epochs", "trials", "cpu_per_epoch_s")
    med = {w: {k: median(r[k] for r in by[w]) for k in kinds} for w in WAYS}
    pairs = [compare(e["verdicts"], f["verdicts"]) for e in by["exhaustive"] for f in by["fast"]]
    total = {k: sum(c[k] for c in pairs) for k in pairs[0]}
    agree_share = total["agree"] / total["fast_decided"] if total["fast_decided"] else 1.0
    ratio = {
        "fast_cpu_over_exhaustive": med["fast"]["cpu_s"] / med["exhaustive"]["cpu_s"],
        "fast_wall_over_exhaustive": med["fast"]["wall_s"] / med["exhaustive"]["wall_s"],
        "fast_epochs_over_exhaustive": med["fast"]["epochs"] / max(med["exhaustive"]["epochs"], 1),
        # each lever alone: the rule at float32, then the precision under the same rule
        "rule_cpu_over_exhaustive": med["fast_float32"]["cpu_s"] / med["exhaustive"]["cpu_s"],
        "precision_cpu_over_float32": med["fast"]["cpu_s"] / med["fast_float32"]["cpu_s"],
        "float32_cpu_per_epoch_over_auto": med["fast_float32"]["cpu_per_epoch_s"]
        / med["fast"]["cpu_per_epoch_s"],
        "decided_rows_agreeing_share": agree_share,
    }  # fmt: skip
    medians = {f"{w}_{k}": float(v) for w in WAYS for k, v in med[w].items()}
    medians.update({f"pairs_{k}": float(v) for k, v in total.items()})
    bf16 = precision["diffs"].get(BF16_ROW, [float("nan")] * 3)
    medians.update(bf16_diff=bf16[0], bf16_low=bf16[1], bf16_high=bf16[2])
    policy = _auto_policy()
    notes = [
        f"train.precision=auto resolves here to {policy}"
        + (
            ""
            if policy != "float32"
            else ": fast and fast_float32 train alike on this CPU, "
            "the precision lever is 1 by construction"
        ),
        f"exhaustive against fast, over {len(pairs)} pairing(s) of their rounds: rows decided "
        f"alike / opposite (better vs worse) / both decided, other words / decided only by the "
        f"exhaustive way / only by the fast way: {total['agree']} / {total['opposite']} / "
        f"{total['differ']} / {total['lost']} / {total['gained']}",
        "CPU seconds of a way: its `sweeps run` and `sweeps report` processes (wait4: every "
        "thread, children included); wall seconds as a user waits",
        f"bfloat16 against float32 ({work.precision_seeds} paired seeds, the baseline): "
        f"{precision['verdicts'].get(BF16_ROW, 'missing')}, test_acc difference "
        f"{100 * bf16[0]:+.2f} points, interval [{100 * bf16[1]:+.2f}, {100 * bf16[2]:+.2f}] "
        f"at {precision['confidence'].get(BF16_ROW, float('nan')):.3f}",
    ]
    return Result(
        workload={
            "study": f"{SOURCE_STUDY} rows + {NULL_ROW} (seed: 1000, no real effect)",
            "data": f"fashion_mnist, data.limit={work.limit} per split (test: all 10,000 at "
            ">= 10,000)",
            "epochs": work.epochs,
            "exhaustive_repeats": work.exhaustive_repeats,
            "auto_repeats": [work.min_repeats, work.max_repeats],
            "rounds": work.rounds,
            "order": "A B C, then C B A, ...",
            "precision_seeds": work.precision_seeds,
            "auto_policy": policy,
            "commands": {
                w: f"python -m sweeps run +study={STUDY} " + " ".join(a)
                for w, a in overrides.items()
            },  # fmt: skip
        },
        repeats=[*rows, {**precision, "kind": "precision"}],
        medians=medians,
        ratios=ratio,
        targets={
            "fast_cpu_over_exhaustive": "<= 0.35",
            "pairs_opposite": "<= 0",
            "pairs_lost": "<= 0",
        },  # fmt: skip
        table=_table(med, ratio, by, precision),
        notes=notes,
    )


def _auto_policy() -> str:
    from sweeps import precision

    return precision.choose("auto")


def _table(
    med: dict[str, dict[str, float]],
    ratio: dict[str, float],
    by: dict[str, list[dict[str, Any]]],
    precision: dict[str, Any],
) -> list[list[str]]:
    table = [["measure", *WAYS, "fast / exhaustive"]]
    table.append(["CPU s, run + report (median)", *(fmt(med[w]["cpu_s"], 0) for w in WAYS),
                  fmt(ratio["fast_cpu_over_exhaustive"], 3)])  # fmt: skip
    table.append(["wall s (median)", *(fmt(med[w]["wall_s"], 0) for w in WAYS),
                  fmt(ratio["fast_wall_over_exhaustive"], 3)])  # fmt: skip
    table.append(["epochs trained", *(fmt(med[w]["epochs"], 0) for w in WAYS),
                  fmt(ratio["fast_epochs_over_exhaustive"], 3)])  # fmt: skip
    for name in by["fast"][0]["verdicts"]:
        cells = []
        for w in WAYS:
            words = [f"{r['verdicts'].get(name, '-')} ({r['repeats_per_row'].get(name)})"
                     for r in by[w]]  # fmt: skip
            cells.append(" / ".join(words))
        table.append([f"row {name}: verdict (repeats), per round", *cells, ""])
    bf16 = precision["diffs"].get(BF16_ROW)
    if bf16:
        table.append(["bfloat16 vs float32: diff [interval], points",
                      f"{100 * bf16[0]:+.2f} [{100 * bf16[1]:+.2f}, {100 * bf16[2]:+.2f}]",
                      precision["verdicts"].get(BF16_ROW, "-"), "", ""])  # fmt: skip
    return table
