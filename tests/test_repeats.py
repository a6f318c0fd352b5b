"""``sweep.repeats=auto`` in the real engine: repeats added only where the recorded rule's verdict
is open, across a restart and several workers, with a scripted trainer; the rule recorded at the
first run and a resume that asks for another refused. The rule's error rates on simulated
studies are in tests/test_design.py.
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

from sweeps.errors import StudyMismatch
from sweeps.keys import AUTO_ATTR, RULE_ATTR
from sweeps.report import report_study
from sweeps.runner import run_study
from sweeps.storage import open_storage
from sweeps.verdict import RuleMismatch, settle_rule, verdicts_for_study

MIN, MAX = 3, 10


# -- the engine ----------------------------------------------------------------------------------

EFFECT = {"baseline": 0.0, "dropout": 0.0}
NOISE = 0.05  # a seed spread of 5 points: no look can rule out an effect of delta (2 points)


def _curve(effects: dict[str, float], spread: float):
    """val_acc of (variant, repeat): the variant's effect plus seeded noise of ``spread``."""

    def curve(spec) -> list[float]:
        stream = spec.repeat + (1000 if spec.variant == "baseline" else 0)  # independent arms
        noise = np.random.default_rng(stream).normal(0, spread)
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
    rule = settle_rule(study, cfg, record=False)
    state = record["_state"]
    found = verdicts_for_study(cfg, study.get_trials(), "test_acc", rule, state)["dropout"]
    assert found.verdict == "better" and found.low > 0  # the interval agrees with the verdict
    assert found.p_adjusted <= 0.05 and found.p_better_low > 0.5
    # The report reads the rule the study recorded; asked for another, it is refused.
    plain = compose("fashion_mnist_dropout", "sweep.mode=ablation", "train.epochs=2", store=store)
    with pytest.raises(RuleMismatch, match=r"^sweep.repeats=3 asks for another decision rule"):
        report_study(plain, console=Console(file=io.StringIO(), width=80))
    console = Console(file=io.StringIO(), width=80)
    report_study(cfg, console=console)
    printed = console.file.getvalue()
    assert f"dropout {at} (better at {at} repeats)" in " ".join(printed.split())
    assert "graphical Holm group-sequential paired t" in " ".join(printed.split())
    with (store / "reports" / "fashion_mnist_dropout" / "ablation.csv").open() as fh:
        row = next(r for r in csv.DictReader(fh) if r["variant"] == "dropout")
    assert float(row["test_acc_level"]) == pytest.approx(0.05)  # one row: it holds all of alpha
    assert row["test_acc_verdict"] == "better" and row["auto_stopped"] == f"better at {at} repeats"
    assert float(row["test_acc_diff_low"]) > 0


def test_wide_noise_runs_to_the_budget(store: Path) -> None:
    cfg = auto(store, "sweep.max_repeats=5")
    assert run_study(cfg, trainer=FakeTrainer(curve=_curve(EFFECT, NOISE))) == 0
    study = _study(cfg)
    record = study.user_attrs[AUTO_ATTR]
    assert record["dropout"] == {
        "repeats": 5,
        "finished": 5,
        "verdict": "undecided",
        "stopped": "budget spent",
        "at": 5,
    }
    assert record["baseline"]["repeats"] == 5
    assert len(_keys(study)) == 10
    # Rerunning a finished study adds nothing.
    trainer = FakeTrainer(curve=_curve(EFFECT, NOISE))
    assert run_study(cfg, trainer=trainer) == 0 and not trainer.specs


def test_a_restart_mid_round_ends_where_one_run_would(store: Path) -> None:
    whole = auto(store, "sweep.max_repeats=5", "sweep.name=uninterrupted")
    assert run_study(whole, trainer=FakeTrainer(curve=_curve(EFFECT, NOISE))) == 0
    expected = _study(whole).user_attrs[AUTO_ATTR]
    assert expected["dropout"]["repeats"] > MIN  # the restart below falls in a later round

    cfg = auto(store, "sweep.max_repeats=5")
    plain = _curve(EFFECT, NOISE)

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
    assert run_study(cfg, trainer=FakeTrainer(curve=_curve(EFFECT, NOISE))) == 0
    study = _study(cfg)
    # Another worker that saw the same round enqueued one of its trials at the same instant.
    study.enqueue_trial({"ablation.variant": "dropout", "ablation.repeat": 3})
    tracker = open_tracker(cfg)
    try:
        engine = Engine(
            cfg,
            storage=study._storage,
            tracker=tracker,
            trainer=FakeTrainer(curve=_curve(EFFECT, NOISE)),
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
    stream = spec.repeat + (1000 if spec.variant == "baseline" else 0)
    noise = np.random.default_rng(stream).normal(0, 0.05)
    return [0.7 + noise, 0.8 + noise]  # 5-point noise: no early stop

cfg = compose("fashion_mnist_dropout", "sweep.mode=ablation", "sweep.repeats=auto",
              "sweep.max_repeats=4", "train.epochs=2", store={store!r})
# Both workers start their studies together: on a loaded box, imports alone can take longer
# than the whole scripted study.
import os, pathlib, time
ready = pathlib.Path({ready!r})
(ready / str(os.getpid())).touch()
deadline = time.monotonic() + 120
while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(run_study(cfg, trainer=FakeTrainer(curve=curve, epoch_seconds=0.2)))
"""


@pytest.mark.slow
def test_two_workers_share_the_rounds(store: Path, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    tests = str(Path(__file__).parent)
    ready = tmp_path / "ready"
    ready.mkdir()
    script.write_text(
        textwrap.dedent(WORKER.format(tests=tests, store=str(store), ready=str(ready)))
    )
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


def test_no_effect_at_a_small_spread_stops_for_futility(store: Path) -> None:
    cfg = auto(store)
    assert run_study(cfg, trainer=FakeTrainer(curve=_curve(EFFECT, 0.002))) == 0
    record = _study(cfg).user_attrs[AUTO_ATTR]
    assert record["dropout"]["stopped"] == "futility"
    assert record["dropout"]["verdict"] == "no effect >= delta"
    assert record["dropout"]["at"] == MIN  # a 0.3-point spread settles it at the first look
    rule = settle_rule(_study(cfg), cfg, record=False)
    found = verdicts_for_study(cfg, _study(cfg).get_trials(), "test_acc", rule, record["_state"])
    row = found["dropout"]
    assert -rule.delta < row.low <= 0 <= row.high < rule.delta  # its interval says so


def test_a_resume_that_asks_for_another_rule_is_refused(store: Path) -> None:
    cfg = auto(store, "sweep.max_repeats=4")
    assert run_study(cfg, trainer=FakeTrainer(curve=_curve(EFFECT, NOISE))) == 0
    recorded = _study(cfg).user_attrs[RULE_ATTR]
    assert recorded["max_repeats"] == 4 and recorded["delta"] == 0.02
    for override, key in (("sweep.max_repeats=10", "sweep.max_repeats=10"),
                          ("report.delta=0.03", "report.delta=0.03"),
                          ("report.margin=0.005", "report.margin=0.005"),
                          ("report.alpha=0.1", "report.alpha=0.1")):  # fmt: skip
        changed = auto(store, "sweep.max_repeats=4", override)
        with pytest.raises(RuleMismatch) as caught:
            run_study(changed, trainer=FakeTrainer())
        message = str(caught.value)
        assert message.startswith(f"{key} asks for another decision rule") and "\n" not in message
        assert "sweep.name" in message
    assert _study(cfg).user_attrs[RULE_ATTR] == recorded  # nothing was recomputed


def test_a_row_added_mid_study_is_refused_in_one_line_by_run_and_report(store: Path) -> None:
    cfg = auto(store)
    assert run_study(cfg, trainer=FakeTrainer(curve=_curve(EFFECT, NOISE))) == 0
    rows = "ablation.variants=[{name: dropout, set: {model.dense_dropout: 0.3}}, " \
           "{name: wider, set: {model.dense_dropout: 0.5}}]"  # fmt: skip
    # allow_space_change lets the rows change; the recorded looks still cannot take them.
    changed = auto(store, rows, "sweep.allow_space_change=true")
    with pytest.raises(StudyMismatch) as caught:
        run_study(changed, trainer=FakeTrainer())
    message = str(caught.value)
    assert "over the rows dropout; this config has dropout, wider" in message
    assert "sweep.name" in message and "\n" not in message
    trials = _study(cfg).get_trials()
    with pytest.raises(StudyMismatch, match="over the rows dropout;"):
        verdicts_for_study(changed, trials, "test_acc", settle_rule(_study(cfg), cfg, record=False),
                           _study(cfg).user_attrs[AUTO_ATTR]["_state"])  # fmt: skip


def test_the_cli_refuses_a_changed_rule_with_exit_code_2(store: Path) -> None:
    cfg = auto(store, "sweep.max_repeats=4")
    assert run_study(cfg, trainer=FakeTrainer(curve=_curve(EFFECT, NOISE))) == 0
    done = subprocess.run(
        [sys.executable, "-m", "sweeps", "run", "+study=fashion_mnist_dropout",
         "sweep.mode=ablation", "sweep.repeats=auto", "sweep.max_repeats=10",
         "train.epochs=2", f"store_dir={store}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("sweeps: error")]
    assert len(lines) == 1 and "sweep.max_repeats=10 asks for another decision rule" in lines[0]
    assert "(max_repeats 4)" in lines[0]
