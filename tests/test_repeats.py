"""``sweep.repeats=auto``: the sequential rule's error rates on simulated studies where the truth
is known, and the real engine adding repeats only where the verdict is open, across a restart
and several workers, with a scripted trainer.

The simulation runs the rule the engine runs (``sweeps.verdict.decide`` at the levels of
``sequential_levels``, a decided row standing, Holm across the variants), vectorised over
thousands of studies. "Seed spread" is the standard deviation of one run's metric over seeds:
each run is its variant's true accuracy plus independent normal noise of that spread, so a
per-seed difference has sqrt(2) times the spread (no help from pairing: the hard case).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import compose
from fakes import FakeTrainer
from rich.console import Console

from sweeps.keys import AUTO_ATTR
from sweeps.report import report_study
from sweeps.runner import run_study
from sweeps.stats.paired import TStats, decide, paired_stats
from sweeps.stats.sequential import sequential_levels
from sweeps.storage import open_storage
from sweeps.verdict import verdicts_for_study

MIN, MAX = 3, 10


def simulate(effects: list[float], studies: int, spread: float, seed: int):
    """Final verdict codes (studies x variants) and repeats used, under repeats=auto."""
    rng = np.random.default_rng(seed)
    levels = sequential_levels(MIN, MAX)
    m = len(effects)
    base = rng.normal(0.0, spread, (studies, 1, MAX))
    runs = np.asarray(effects)[None, :, None] + rng.normal(0.0, spread, (studies, m, MAX))
    diffs = runs - base
    shape = (studies, m)
    code, n = np.zeros(shape, dtype=int), np.full(shape, MIN)
    stopped = np.zeros(shape, dtype=bool)
    mean, se, df = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for look in range(MIN, MAX + 1):
        now = paired_stats(diffs[:, :, :look])
        going = ~stopped  # a decided variant keeps its last statistics and its verdict
        mean, se = np.where(going, now.mean, mean), np.where(going, now.se, se)
        df, n = np.where(going, now.df, df), np.where(going, look, n)
        level = np.vectorize(levels.get)(n)
        found = decide(TStats(mean, se, df), level, margin=0.01).code
        newly = going & (found != 0)
        code, stopped = np.where(newly, found, code), stopped | newly
    return code, n


@pytest.mark.parametrize("variants,studies", [(1, 2000), (3, 400), (10, 200)])
def test_no_real_effect_rarely_ends_better_or_worse(variants: int, studies: int) -> None:
    code, n = simulate([0.0] * variants, studies, spread=0.01, seed=variants)
    false_findings = np.isin(code, (1, 2)).mean()
    assert false_findings <= 0.05, false_findings
    assert n.mean() < MAX  # equivalent rows stop early


@pytest.mark.parametrize("variants", [1, 3])
def test_a_two_point_effect_at_a_one_point_spread_ends_better(variants: int) -> None:
    code, n = simulate([0.02] * variants, 400, spread=0.01, seed=10 + variants)
    assert (code == 1).mean() >= 0.90, (code == 1).mean()
    assert not np.any(code == 2)
    assert n.mean() < MAX  # it stops early, on average


def test_looking_every_round_at_the_plain_level_would_err_too_often() -> None:
    # The reason for the spending levels: the same rule at 0.05 per look errs above 5%.
    rng = np.random.default_rng(5)
    d = rng.normal(0, 0.014, (4000, MAX))
    crossed = np.zeros(len(d), dtype=bool)
    for look in range(MIN, MAX + 1):
        crossed |= decide(paired_stats(d[:, None, :look]), 0.05, None).code[:, 0] > 0
    assert crossed.mean() > 0.10


# -- the engine ----------------------------------------------------------------------------------

EFFECT = {"baseline": 0.0, "dropout": 0.0}


def _curve(effects: dict[str, float], spread: float):
    """val_acc of (variant, repeat): the variant's effect plus seeded noise of ``spread``."""

    def curve(spec) -> list[float]:
        noise = np.random.default_rng([spec.repeat, spec.variant == "baseline"]).normal(0, spread)
        best = 0.8 + effects[spec.variant] + noise
        return [best - 0.1, best]

    return curve


def auto(store: Path, *overrides: str):
    return compose(
        "fashion_mnist_dropout",
        "sweep.mode=ablation",
        "sweep.repeats=auto",
        "train.epochs=2",
        *overrides,
        store=store,
    )


def _study(cfg):
    storage = open_storage(cfg.storage, cfg.store_dir, lambda s, t: None)
    return optuna.load_study(study_name=cfg.sweep.name, storage=storage)


def _keys(study) -> list[tuple[str, int, str]]:
    return sorted(
        (t.params["ablation.variant"], t.params["ablation.repeat"], t.state.name)
        for t in study.get_trials(deepcopy=False)
        if "ablation.variant" in t.params
    )


def test_a_clear_effect_stops_at_the_first_rounds(store: Path) -> None:
    cfg = auto(store)
    trainer = FakeTrainer(curve=_curve({"baseline": 0.0, "dropout": 0.05}, 0.002))
    assert run_study(cfg, trainer=trainer) == 0
    study = _study(cfg)
    record = study.user_attrs[AUTO_ATTR]
    assert record["dropout"]["stopped"] == "decided" and record["dropout"]["verdict"] == "better"
    at = record["dropout"]["at"]
    assert MIN <= at < MAX and record["dropout"]["repeats"] == at
    assert _keys(study) == sorted(
        [(v, r, "COMPLETE") for v in ("baseline", "dropout") for r in range(at)]
    )
    assert len(trainer.specs) == 2 * at
    assert verdicts_for_study(cfg, study.get_trials())["dropout"].verdict == "better"
    # The report, asked without sweep.repeats=auto, uses the levels of the looks the study took.
    plain = compose("fashion_mnist_dropout", "sweep.mode=ablation", "train.epochs=2", store=store)
    console = Console(file=io.StringIO(), width=80)
    report_study(plain, console=console)
    printed = console.file.getvalue()
    assert f"dropout {at} (better at {at} repeats)" in " ".join(printed.split())
    assert max(len(line) for line in printed.splitlines()) <= 80
    with (store / "reports" / "fashion_mnist_dropout" / "ablation.csv").open() as fh:
        row = next(r for r in csv.DictReader(fh) if r["variant"] == "dropout")
    assert float(row["test_acc_level"]) == pytest.approx(sequential_levels(MIN, MAX)[at])
    assert row["test_acc_verdict"] == "better" and row["auto_stopped"] == f"better at {at} repeats"


def test_pure_noise_runs_to_the_budget(store: Path) -> None:
    cfg = auto(store, "sweep.max_repeats=5")
    assert run_study(cfg, trainer=FakeTrainer(curve=_curve(EFFECT, 0.03))) == 0
    study = _study(cfg)
    record = study.user_attrs[AUTO_ATTR]
    assert record["dropout"] == {
        "repeats": 5,
        "finished": 5,
        "verdict": "undecided",
        "stopped": "budget spent",
    }
    assert record["baseline"]["repeats"] == 5
    assert len(_keys(study)) == 10
    # Rerunning a finished study adds nothing.
    trainer = FakeTrainer(curve=_curve(EFFECT, 0.03))
    assert run_study(cfg, trainer=trainer) == 0 and not trainer.specs


def test_a_restart_mid_round_ends_where_one_run_would(store: Path) -> None:
    whole = auto(store, "sweep.max_repeats=5", "sweep.name=uninterrupted")
    assert run_study(whole, trainer=FakeTrainer(curve=_curve(EFFECT, 0.03))) == 0
    expected = _study(whole).user_attrs[AUTO_ATTR]
    assert expected["dropout"]["repeats"] > MIN  # the restart below falls in a later round

    cfg = auto(store, "sweep.max_repeats=5")
    plain = _curve(EFFECT, 0.03)

    def interrupted(spec) -> list[float]:
        if spec.number == 2 * MIN + 1:  # the second trial of the second round
            raise KeyboardInterrupt
        return plain(spec)

    assert run_study(cfg, trainer=FakeTrainer(curve=interrupted)) == 130
    assert run_study(cfg, trainer=FakeTrainer(curve=plain)) == 0
    study = _study(cfg)
    assert study.user_attrs[AUTO_ATTR] == expected
    done = [k for k in _keys(study) if k[2] == "COMPLETE"]
    assert len(done) == len(set(done)) == 2 * expected["dropout"]["repeats"]


def test_enqueueing_a_round_twice_adds_nothing_and_a_raced_duplicate_is_dropped(
    store: Path,
) -> None:
    from sweeps.engine import Engine
    from sweeps.services import open_tracker

    cfg = auto(store, "sweep.max_repeats=4")
    assert run_study(cfg, trainer=FakeTrainer(curve=_curve(EFFECT, 0.03))) == 0
    study = _study(cfg)
    # Another worker that saw the same round enqueued one of its trials at the same instant.
    study.enqueue_trial({"ablation.variant": "dropout", "ablation.repeat": 3})
    tracker = open_tracker(cfg)
    try:
        engine = Engine(
            cfg,
            storage=study._storage,
            tracker=tracker,
            trainer=FakeTrainer(curve=_curve(EFFECT, 0.03)),
            sampler=optuna.samplers.RandomSampler(),
            pruner=optuna.pruners.NopPruner(),
        )
        assert engine.ablation.enqueue_first_round() == 0 and engine.ablation.next_round() == 0
        assert engine.run_one() == "SURPLUS"
    finally:
        tracker.close()
    dropped = [t for t in _study(cfg).get_trials() if t.user_attrs.get("sweeps.spurious")]
    assert len(dropped) == 1 and "duplicate" in dropped[0].user_attrs["sweeps.reason"]
    assert [k for k in _keys(_study(cfg)) if k[2] != "COMPLETE"] == []


WORKER = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from conftest import compose
from fakes import FakeTrainer
from sweeps.runner import run_study

def curve(spec):
    noise = np.random.default_rng([spec.repeat, spec.variant == "baseline"]).normal(0, 0.03)
    return [0.7 + noise, 0.8 + noise]

cfg = compose("fashion_mnist_dropout", "sweep.mode=ablation", "sweep.repeats=auto",
              "sweep.max_repeats=4", "train.epochs=2", store={store!r})
sys.exit(run_study(cfg, trainer=FakeTrainer(curve=curve, epoch_seconds=0.2)))
"""


@pytest.mark.slow
def test_two_workers_share_the_rounds(store: Path, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    tests = str(Path(__file__).parent)
    script.write_text(textwrap.dedent(WORKER.format(tests=tests, store=str(store))))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    from sweeps.services import open_tracker

    # Two processes creating a fresh MLflow SQLite schema at once race in its migrations:
    # the store exists before the workers start, as it does for any study resumed.
    open_tracker(auto(store, "sweep.max_repeats=4")).close()
    workers = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    cfg = auto(store, "sweep.max_repeats=4")
    study = _study(cfg)
    record = study.user_attrs[AUTO_ATTR]
    complete = [k[:2] for k in _keys(study) if k[2] == "COMPLETE"]
    assert len(complete) == len(set(complete))  # no (variant, repeat) ran twice
    assert len(complete) == 8  # pure noise: two rounds, to the budget of 4 repeats
    assert record["dropout"]["stopped"] == "budget spent"
    workers_seen = {t.user_attrs.get("sweeps.worker") for t in study.get_trials()}
    assert len(workers_seen - {None}) == 2  # both took trials
