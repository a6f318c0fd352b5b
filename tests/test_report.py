"""`report`: statistics checked against hand-computed values and scipy, on studies the real engine
ran with a scripted trainer (no TensorFlow): complete, partial, empty, and search mode."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import compose
from fakes import FakeTrainer
from rich.console import Console
from scipy import stats

from sweeps.report import report_study
from sweeps.report_search import importances
from sweeps.runner import run_study
from sweeps.stats import mean_ci, mean_curve, variant_stats, welch_p

# Best val_acc of each (variant, repeat); the fake trainer reports test_acc = val_acc - 0.01
# and test_loss = 1 - val_acc.
BEST = {
    ("baseline", 0): 0.80,
    ("baseline", 1): 0.82,
    ("baseline", 2): 0.84,
    ("dropout", 0): 0.86,
    ("dropout", 1): 0.85,
    ("dropout", 2): 0.90,
}


def scripted(spec) -> list[float]:
    best = BEST[(spec.variant, spec.repeat)]
    return [best - 0.1, best]  # two epochs, the second is the best


def interrupted_at(number: int):
    """A curve that plays `scripted` but is interrupted (Ctrl-C) when trial `number` starts."""

    def curve(spec) -> list[float]:
        if spec.number == number:
            raise KeyboardInterrupt
        return scripted(spec)

    return curve


def fashion(store: Path, *overrides: str):
    return compose(
        "fashion_mnist_dropout",
        "sweep.mode=ablation",
        "sweep.repeats=3",
        "train.epochs=2",
        *overrides,
        store=store,
    )


def quiet() -> Console:
    return Console(file=io.StringIO(), width=220)


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as fh:
        return {row["variant"]: row for row in csv.DictReader(fh)}


# -- the statistics, by hand -------------------------------------------------------------------


def test_mean_ci_matches_the_t_table() -> None:
    # [1, 2, 3]: mean 2, sd 1; t(0.975, df=2) = 4.3027, so the half-width is 4.3027 / sqrt(3).
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert (high - low) / 2 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([0.5])[1]) and math.isnan(mean_ci([])[0])


def test_welch_p_by_hand_and_against_scipy() -> None:
    # Equal spread and n: t = -3 / sqrt(2/3) = -3.674 with 4 degrees of freedom.
    assert welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(2 * stats.t.sf(3 / math.sqrt(2 / 3), 4))
    assert welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.0213116, abs=1e-7)
    # Unequal spread: Welch's degrees of freedom (3.72 here), not Student's 4.
    a, b = [0.80, 0.82, 0.84], [0.70, 0.71, 0.75]
    assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p(a, b) != pytest.approx(stats.ttest_ind(a, b).pvalue)


def test_p_value_is_undefined_below_two_runs_or_without_spread() -> None:
    assert math.isnan(welch_p([0.5], [0.4, 0.6]))
    assert math.isnan(welch_p([0.5, 0.5], [0.5, 0.5]))
    stats_ = variant_stats([0.9], [0.8, 0.82])
    assert stats_["n"] == 1 and stats_["mean"] == 0.9 and math.isnan(stats_["ci_low"])
    assert stats_["diff"] == pytest.approx(0.09) and math.isnan(stats_["p_value"])


def test_baseline_has_no_difference_to_itself() -> None:
    result = variant_stats([0.8, 0.82], [])
    assert math.isnan(result["diff"]) and math.isnan(result["p_value"])


def test_mean_curve_averages_each_epoch_over_the_runs_that_reached_it() -> None:
    assert mean_curve([[0.5, 0.7], [0.7, 0.9, 1.0]]).tolist() == pytest.approx([0.6, 0.8, 1.0])
    assert mean_curve([]).size == 0


# -- ablation reports of studies run by the real engine -------------------------------------


def test_ablation_report_numbers(store: Path) -> None:
    cfg = fashion(store)
    assert run_study(cfg, trainer=FakeTrainer(curve=scripted)) == 0
    files = report_study(cfg, console=quiet())
    out = store / "reports" / "fashion_mnist_dropout"
    assert {p.name for p in files} == {"ablation.csv", "ablation.md", "ablation.png"}
    assert all(p.parent == out and p.stat().st_size > 0 for p in files)
    rows = read_csv(out / "ablation.csv")
    assert list(rows) == ["baseline", "dropout"]
    base_acc = [v - 0.01 for k, v in BEST.items() if k[0] == "baseline"]  # 0.79, 0.81, 0.83
    drop_acc = [v - 0.01 for k, v in BEST.items() if k[0] == "dropout"]  # 0.85, 0.84, 0.89
    base, drop = rows["baseline"], rows["dropout"]
    assert (base["n"], base["repeats"], base["status"]) == ("3", "3", "done")
    # Hand: mean 0.81, sd 0.02, half-width 4.3027 * 0.02 / sqrt(3) = 0.049683.
    assert float(base["test_acc_mean"]) == pytest.approx(0.81)
    assert float(base["test_acc_ci_high"]) - 0.81 == pytest.approx(0.0496826, abs=1e-6)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(drop_acc), scale=stats.sem(drop_acc))
    assert float(drop["test_acc_ci_low"]) == pytest.approx(low)
    assert float(drop["test_acc_ci_high"]) == pytest.approx(high)
    assert float(drop["test_acc_diff"]) == pytest.approx(0.86 - 0.81)
    welch = stats.ttest_ind(drop_acc, base_acc, equal_var=False).pvalue
    assert float(drop["test_acc_p_value"]) == pytest.approx(welch)
    assert base["test_acc_p_value"] == "" and base["test_acc_diff"] == ""
    # test_loss = 1 - best val_acc; its difference has the opposite sign.
    assert float(drop["test_loss_diff"]) == pytest.approx(-0.05)
    assert float(drop["published_test_acc"]) == 0.923
    assert float(drop["published_test_loss"]) == 0.2146
    assert float(base["published_test_acc"]) == 0.9184
    assert drop["param_count"] == "1030"  # the fake trainer's count for kernel size 3


def test_ablation_markdown_shows_published_numbers_beside_intervals(store: Path) -> None:
    cfg = fashion(store)
    run_study(cfg, trainer=FakeTrainer(curve=scripted))
    report_study(cfg, console=quiet())
    md = (store / "reports" / "fashion_mnist_dropout" / "ablation.md").read_text()
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if "|" in line}
    welch = welch_p([0.85, 0.84, 0.89], [0.79, 0.81, 0.83])
    assert "| 3/3 | 0.8100 ± 0.0497 | 0.9184 | baseline |" in lines["baseline"]
    assert f"| +0.0500 | {welch:.3f} |" in lines["dropout"] and "0.9230" in lines["dropout"]
    assert "0.2146" in lines["dropout"] and "0.4637" in lines["baseline"]


def test_report_is_logged_to_the_parent_run(store: Path) -> None:
    from mlflow import MlflowClient

    cfg = fashion(store)
    run_study(cfg, trainer=FakeTrainer(curve=scripted))
    report_study(cfg, console=quiet())
    study = optuna.load_study(study_name="fashion_mnist_dropout", storage=_journal(store))
    parent = study.user_attrs["mlflow_parent_run_id"]
    client = MlflowClient(f"sqlite:///{store.resolve() / 'mlflow.db'}")
    logged = {Path(a.path).name for a in client.list_artifacts(parent, "report")}
    assert logged == {"ablation.csv", "ablation.md", "ablation.png"}


def test_partial_study_marks_its_rows(store: Path) -> None:
    cfg = fashion(store)
    # Trials run baseline/0, dropout/0, baseline/1, dropout/1: the fourth is interrupted.
    assert run_study(cfg, trainer=FakeTrainer(curve=interrupted_at(3))) == 130
    console = quiet()
    report_study(cfg, console=console)
    rows = read_csv(store / "reports" / "fashion_mnist_dropout" / "ablation.csv")
    assert (rows["baseline"]["n"], rows["baseline"]["status"]) == ("2", "1 waiting")
    assert (rows["dropout"]["n"], rows["dropout"]["status"]) == ("1", "2 waiting")
    assert rows["dropout"]["test_acc_ci_low"] == "" and rows["dropout"]["test_acc_p_value"] == ""
    assert float(rows["dropout"]["test_acc_diff"]) == pytest.approx(0.85 - 0.80)
    printed = console.file.getvalue()
    assert "2/3 (1 waiting)" in printed and "1/3 (2 waiting)" in printed
    assert "n/a" in printed and "partial rows" in printed


def test_nothing_finished_says_so(store: Path) -> None:
    cfg = fashion(store)
    run_study(cfg, trainer=FakeTrainer(curve=interrupted_at(0)))
    console = quiet()
    assert report_study(cfg, console=console) == []
    assert "nothing has finished yet" in console.file.getvalue()
    assert not (store / "reports").exists()


def test_missing_study_says_so_without_creating_one(store: Path) -> None:
    console = quiet()
    assert report_study(fashion(store), console=console) == []
    assert "no study 'fashion_mnist_dropout'" in console.file.getvalue()
    assert not (store / "optuna.journal").exists()


def test_report_command_exits_0_and_prints_published_numbers(store: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable,
        "-m",
        "sweeps",
        "report",
        "+study=fashion_mnist_dropout",
        f"store_dir={store}",
    ]
    empty = subprocess.run(command, capture_output=True, text=True, env=env)
    assert empty.returncode == 0 and "no study" in empty.stdout
    run_study(fashion(store), trainer=FakeTrainer(curve=scripted))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "0.9184" in done.stdout and "0.9230" in done.stdout and "ablation.png" in done.stdout


# -- search mode -------------------------------------------------------------------------------


def test_search_report_lists_best_trials_and_importances(store: Path) -> None:
    cfg = compose(
        "quickstart",
        "sweep.n_trials=8",
        "train.epochs=2",
        "sweep.pruner=none",
        "report.top_k=3",
        store=store,
    )
    run_study(cfg, trainer=FakeTrainer())
    console = quiet()
    files = report_study(cfg, console=console)
    assert {p.name for p in files} == {"search.csv", "search.md", "search.png"}
    with (store / "reports" / "quickstart" / "search.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    values = [float(r["value"]) for r in rows]
    assert len(rows) == 8 and values == sorted(values, reverse=True)
    printed = console.file.getvalue()
    assert "best 3 of 8 complete trials" in printed
    assert "parameter importances (fANOVA)" in printed
    assert "model.kernel_size" in (store / "reports" / "quickstart" / "search.md").read_text()


def test_importances_need_two_trials_and_a_varying_parameter() -> None:
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def trial(x: float, value: float):
        return optuna.trial.create_trial(params={"x": x}, distributions=dist, value=value)

    direction = optuna.study.StudyDirection.MAXIMIZE
    assert importances([trial(0.1, 0.5)], direction) == ({}, "needs at least 2 complete trials")
    same = importances([trial(0.1, 0.5), trial(0.1, 0.6)], direction)
    assert same == ({}, "no parameter took more than one value")
    found, why_not = importances([trial(0.1, 0.5), trial(0.9, 0.6), trial(0.5, 0.55)], direction)
    assert list(found) == ["x"] and why_not == ""


def _journal(store: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(store / "optuna.journal")))
