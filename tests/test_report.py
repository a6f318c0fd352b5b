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
from sweeps.stats.summary import mean_ci, mean_curve, variant_stats, welch_p

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
    # Paired by seed: differences 0.06, 0.03, 0.06, se 0.01, t = 5 on 2 df.
    # One look (fixed repeats) at one row holding all of alpha: the repeated interval is the
    # paired t interval itself, and the adjusted p-value the paired t-test's.
    paired = stats.ttest_rel(drop_acc, base_acc)
    assert drop["test_acc_pairs"] == "3" and float(drop["test_acc_confidence"]) == 0.95
    assert float(drop["test_acc_p_adjusted"]) == pytest.approx(paired.pvalue, rel=0.02)
    assert float(drop["test_acc_p_adjusted"]) == pytest.approx(2 * stats.t.sf(5.0, 2), rel=0.02)
    ci = paired.confidence_interval(0.95)
    assert float(drop["test_acc_diff_low"]) == pytest.approx(ci.low, rel=1e-3)
    assert float(drop["test_acc_diff_high"]) == pytest.approx(0.05 + 4.302653 * 0.01, rel=1e-3)
    assert float(drop["test_acc_level"]) == 0.05  # the one row holds all of alpha
    # P(>) = Phi(mean / sd) = Phi(0.05 / 0.01732), with its interval around it.
    assert float(drop["test_acc_p_better"]) == pytest.approx(stats.norm.cdf(0.05 / 0.0173205))
    assert float(drop["test_acc_p_better_low"]) < float(drop["test_acc_p_better"])
    assert drop["test_acc_verdict"] == "better" and drop["test_acc_stopped"] == "decided"
    # The document's +0.46 points lie below the interval [+0.7, +9.3]: contradicted.
    assert float(drop["published_test_acc_diff"]) == pytest.approx(0.923 - 0.9184)
    assert drop["test_acc_claim"] == "contradicted"
    assert 0.03 - 1e-9 <= float(drop["test_acc_boot_low"]) <= float(drop["test_acc_boot_high"])
    assert float(drop["test_acc_boot_high"]) <= 0.06 + 1e-9
    assert base["test_acc_p_adjusted"] == "" and base["test_acc_diff"] == ""
    assert base["test_acc_verdict"] == ""
    # val_acc = best val_acc: 0.80, 0.82, 0.84 and 0.86, 0.85, 0.90; its own t intervals.
    base_val, drop_val = [0.80, 0.82, 0.84], [0.86, 0.85, 0.90]
    for row, values in ((base, base_val), (drop, drop_val)):
        low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
        assert float(row["val_acc_mean"]) == pytest.approx(np.mean(values))
        assert float(row["val_acc_ci_low"]) == pytest.approx(low)
        assert float(row["val_acc_ci_high"]) == pytest.approx(high)
    val = stats.ttest_rel(drop_val, base_val)
    assert float(drop["val_acc_p_value"]) == pytest.approx(val.pvalue)
    assert float(drop["val_acc_diff_low"]) == pytest.approx(val.confidence_interval().low)
    # test_loss = 1 - best val_acc: 0.20, 0.18, 0.16 (mean 0.18, sd 0.02, half-width 0.0497);
    # its difference has the opposite sign, and lower is better.
    assert float(base["test_loss_mean"]) == pytest.approx(0.18)
    assert float(base["test_loss_ci_high"]) - 0.18 == pytest.approx(0.0496826, abs=1e-6)
    drop_loss = [1 - v for v in drop_val]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(drop_loss), scale=stats.sem(drop_loss))
    assert float(drop["test_loss_ci_low"]) == pytest.approx(low)
    assert float(drop["test_loss_ci_high"]) == pytest.approx(high)
    assert float(drop["test_loss_diff"]) == pytest.approx(-0.05)
    loss_ci = stats.ttest_rel(drop_loss, [1 - v for v in base_val]).confidence_interval()
    assert float(drop["test_loss_diff_high"]) == pytest.approx(loss_ci.high)
    # Described, not decided: no verdict, no claim.
    assert drop["test_loss_verdict"] == "" and drop["test_loss_claim"] == ""
    assert float(drop["published_test_acc"]) == 0.923
    assert float(drop["published_test_loss"]) == 0.2146
    assert float(base["published_test_acc"]) == 0.9184
    assert drop["param_count"] == "1030"  # the fake trainer's count for kernel size 3


def test_ablation_markdown_shows_published_numbers_beside_intervals(store: Path) -> None:
    cfg = fashion(store)
    run_study(cfg, trainer=FakeTrainer(curve=scripted))
    report_study(cfg, console=quiet())
    md = (store / "reports" / "fashion_mnist_dropout" / "ablation.md").read_text()
    section = md.split("## test acc: variant − baseline, paired by seed (the decision)")[1]
    section = section.split("## ")[0]
    lines = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if "|" in line}
    assert "| 3/3 |  | 0.8100 ± 0.0497 |" in lines["baseline"] and "| 0.9184 |" in lines["baseline"]
    assert "| better at 3 repeats |" in lines["dropout"]
    assert "| +0.0500 [+0.0070, +0.0930] | 95.00% |" in lines["dropout"]
    assert "| better |" in lines["dropout"]
    assert "| 0.9230 | +0.0046 | contradicted |" in lines["dropout"]
    loss = md.split("## test loss")[1]
    assert "(described, not decided)" in loss.splitlines()[0]
    assert "0.2146" in loss and "0.4637" in loss and "| -0.0500 ± 0.0430 |" in loss
    assert "## val acc" in md and "## variants" in md
    assert "graphical Holm group-sequential paired t" in md  # the recorded rule is named
    # Every row of every table has exactly its header's columns (the published column lines up).
    for table in md.split("\n\n"):
        rows = [line for line in table.splitlines() if line.startswith("|")]
        if rows:
            assert {line.count(" | ") for line in rows if "---" not in line} == {
                rows[0].count(" | ")
            }, table


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
    assert rows["dropout"]["test_acc_ci_low"] == ""
    assert rows["dropout"]["test_acc_p_adjusted"] == ""
    assert rows["dropout"]["test_acc_verdict"] == "undecided"
    assert rows["dropout"]["test_acc_pairs"] == "1"
    printed = console.file.getvalue()
    assert "2/3 (1 waiting)" in printed and "1/3 (2 waiting)" in printed
    assert "n/a" in printed and "partial rows" in printed and "too few runs" in printed
    assert "2 more complete pair(s) before the first look" in printed


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
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "80"}
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
    # Piped, the tables are plain Markdown: one line per row, never wrapped.
    tables = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert tables and all(line.endswith("|") for line in tables)
    header = next(line for line in tables if line.startswith("| variant |"))
    assert all(line.count(" | ") <= header.count(" | ") + 1 for line in tables)
    assert "better" in done.stdout and "contradicted" in done.stdout


def test_ablation_tables_fit_80_columns_without_splitting_a_number(store: Path) -> None:
    def curve(spec) -> list[float]:
        best = 0.8 + 0.01 * (len(spec.variant) % 5) + 0.005 * spec.repeat
        return [best - 0.1, best]

    cfg = compose("age_gap", "sweep.mode=ablation", "sweep.repeats=2", "train.epochs=2",
                  "data.root=unused", store=store)  # fmt: skip
    run_study(cfg, trainer=FakeTrainer(curve=curve))
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    report_study(cfg, console=console)
    printed = console.file.getvalue()
    assert max(len(line) for line in printed.splitlines()) <= 80
    rows = read_csv(store / "reports" / "age_gap" / "ablation.csv")
    words = set(printed.split())
    for row in rows.values():  # every printed number is whole on one line
        for key in ("published_val_acc", "published_test_loss"):  # described tables
            if row[key]:
                assert f"{float(row[key]):.4f}" in words
        if row["published_test_acc_diff"]:  # the decision's table: the published difference
            assert f"{float(row['published_test_acc_diff']):+.4f}" in words
        if row["test_acc_diff"]:
            assert f"{float(row['test_acc_diff']):+.4f}" in words
    # Long variant names fold at their joints: "dropout_0.2" is never cut inside "0.2".
    assert not any(w.endswith(("_0", "_0.", "_0.0")) for w in words)
    assert any(w.startswith("dropout_0.2+") for w in words)


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
    md = (store / "reports" / "quickstart" / "search.md").read_text()
    table = md[md.index("## parameter importances") :]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "| importance |" not in ln]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]
    shown = {name: float(value) for name, value in cells}
    study = optuna.load_study(study_name="quickstart", storage=_journal(store))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ranked = sorted(complete, key=lambda t: t.value, reverse=True)  # as the report ranks them
    expected, _ = importances(ranked, study.direction)
    assert shown == {k: pytest.approx(v, abs=5e-4) for k, v in expected.items()}
    assert sum(shown.values()) == pytest.approx(1.0, abs=0.01)  # shares of the variance
    assert list(shown) == sorted(shown, key=shown.get, reverse=True)  # ranked


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


def test_importances_match_the_variance_shares_by_hand() -> None:
    # A full factorial: value = x + 0.25 y, z has no effect. Variance of x over its five
    # levels 0, .25, .., 1 is 0.125, of 0.25 y over 0/1 is 0.015625: shares 0.889 and 0.111.
    dist = {k: optuna.distributions.FloatDistribution(0, 1) for k in "xyz"}
    trials = [
        optuna.trial.create_trial(
            params={"x": x / 4, "y": y, "z": z}, distributions=dist, value=x / 4 + 0.25 * y
        )
        for x in range(5)
        for y in (0.0, 1.0)
        for z in (0.0, 1.0)
    ]
    found, _ = importances(trials, optuna.study.StudyDirection.MAXIMIZE)
    assert list(found) == ["x", "y", "z"]  # ranked
    assert found["x"] == pytest.approx(0.125 / 0.140625, abs=0.03)
    assert found["y"] == pytest.approx(0.015625 / 0.140625, abs=0.03)
    assert found["z"] == pytest.approx(0.0, abs=0.02)


def _journal(store: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(store / "optuna.journal")))
