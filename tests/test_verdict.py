"""The verdict statistics, checked against scipy and by hand: paired and Welch t tests and
intervals, Holm, TOST, P(A > B), the bootstrap, repeats to decide, claims, the sequential
levels, and the config keys that steer them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import compose
from scipy import stats

from sweeps.errors import ConfigError
from sweeps.stats.paired import (
    BETTER,
    CONFIRMED,
    CONTRADICTED,
    EQUIVALENT,
    OPEN,
    UNDECIDED,
    WORSE,
    bootstrap_interval,
    claim,
    decide,
    holm,
    holm_factor,
    p_better,
    p_two_sided,
    paired_stats,
    repeats_needed,
    t_interval,
    tost_p,
    welch_stats,
)
from sweeps.stats.sequential import obf_spending, sequential_levels
from sweeps.verdict import measure, rule_of, verdicts_for_study

VARIANT, BASE = [0.85, 0.84, 0.89], [0.79, 0.81, 0.83]  # per-seed differences 0.06, 0.03, 0.06


def test_paired_t_by_hand_and_against_scipy() -> None:
    # Differences 0.06, 0.03, 0.06: mean 0.05, sd 0.0173, se 0.01, t = 5 with 2 df.
    s = paired_stats(np.subtract(VARIANT, BASE))
    assert float(s.mean) == pytest.approx(0.05) and float(s.se) == pytest.approx(0.01)
    assert float(p_two_sided(s)) == pytest.approx(2 * stats.t.sf(5.0, 2))
    res = stats.ttest_rel(VARIANT, BASE)
    assert float(p_two_sided(s)) == pytest.approx(res.pvalue)
    low, high = t_interval(s)
    ci = res.confidence_interval(0.95)
    assert (float(low), float(high)) == pytest.approx((ci.low, ci.high))
    assert float(high) - 0.05 == pytest.approx(4.302653 * 0.01, rel=1e-6)


def test_welch_against_scipy() -> None:
    a, b = [0.80, 0.82, 0.84, 0.86], [0.70, 0.71, 0.75]
    s = welch_stats(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    assert float(p_two_sided(s)) == pytest.approx(res.pvalue)
    ci = res.confidence_interval(0.95)
    assert tuple(float(x) for x in t_interval(s)) == pytest.approx((ci.low, ci.high))
    assert float(s.df) == pytest.approx(res.df)


def test_differences_that_do_not_vary() -> None:
    s = paired_stats([[0.02, 0.02, 0.02], [0.0, 0.0, 0.0]])
    assert p_two_sided(s).tolist() == [0.0, 1.0]
    assert tost_p(s, 0.01).tolist() == [1.0, 0.0]


def test_holm_by_hand_with_nan_left_out() -> None:
    # Sorted 0.01, 0.03, 0.04: x3, x2, x1 = 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.01, np.nan, 0.04, 0.03])
    assert math.isnan(out[1]) and out[[0, 2, 3]].tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]).tolist() == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_factor([0.04, 0.01, np.nan, 0.03]).tolist()[:2] == [1.0, 3.0]
    rows = np.array([[0.01, 0.04, 0.03], [0.2, 0.001, 0.5]])
    assert np.allclose(holm(rows), np.stack([holm(rows[0]), holm(rows[1])]))


def test_tost_is_two_one_sided_t_tests() -> None:
    d = np.array([0.004, -0.002, 0.003, 0.001, 0.0])
    margin = 0.01
    lower = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, margin, alternative="less").pvalue
    s = paired_stats(d)
    assert float(tost_p(s, margin)) == pytest.approx(max(lower, upper))
    # Below 0.05 exactly when the whole 90% interval is inside the margin.
    low, high = t_interval(s, 0.90)
    assert (float(tost_p(s, margin)) < 0.05) == (-margin < low and high < margin)


def test_no_verdict_contradicts_the_interval_shown_beside_it() -> None:
    # 20,000 random rows of 3 to 10 pairs: better/worse only with the 95% interval off 0,
    # equivalent only with the 95% interval inside the margin.
    rng = np.random.default_rng(7)
    for n in (3, 5, 10):
        d = rng.normal(rng.normal(0, 0.01, (2000, 4, 1)), rng.uniform(0.001, 0.02, (2000, 4, 1)),
                       (2000, 4, n))  # fmt: skip
        s = paired_stats(d)
        code = decide(s, 0.05, 0.01).code
        low, high = t_interval(s)
        assert np.all(low[code == 1] > 0) and np.all(high[code == 2] < 0)
        assert np.all((low[code == 3] > -0.01) & (high[code == 3] < 0.01))
        assert {1, 2, 3} <= set(np.unique(code))  # every verdict occurs


def test_losses_are_better_lower() -> None:
    s = paired_stats([[-0.05, -0.04, -0.06]])
    assert decide(s, 0.05, None, lower_is_better=True).code.tolist() == [1]
    assert decide(s, 0.05, None, lower_is_better=False).code.tolist() == [2]


def test_p_better_by_hand() -> None:
    assert p_better(VARIANT, BASE, paired=True) == 1.0
    assert p_better([0.8, 0.7, 0.9], [0.75, 0.75, 0.9], paired=True) == pytest.approx(1.5 / 3)
    # Unpaired: 9 pairs, the variant wins 0.85>0.79, 0.85>0.81, 0.85>0.83, 0.84>0.79, ...
    assert p_better(VARIANT, BASE, paired=False) == pytest.approx(9 / 9)
    assert p_better([0.1, 0.3], [0.2], paired=False) == 0.5
    assert p_better([0.1], [0.2], paired=True, lower_is_better=True) == 1.0


def test_bootstrap_interval_is_scipys() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.8, 0.01, 8), rng.normal(0.79, 0.01, 8)
    res = stats.bootstrap(
        (a - b,), np.mean, n_resamples=2000, rng=np.random.default_rng(0), method="BCa"
    )
    assert bootstrap_interval(a, b, paired=True) == pytest.approx(
        (res.confidence_interval.low, res.confidence_interval.high)
    )
    low, high = bootstrap_interval(VARIANT, BASE, paired=True)
    assert 0.03 - 1e-9 <= low <= 0.05 <= high <= 0.06 + 1e-9  # within the differences
    low, high = bootstrap_interval(VARIANT, BASE, paired=False)
    assert low < 0.05 < high
    assert all(math.isnan(x) for x in bootstrap_interval([0.5], BASE, paired=False))


def test_repeats_needed_by_hand() -> None:
    # mean 0.02, sd 0.01414: t = 0.02 / (0.01414 / sqrt(n)) is 2.45, 2.83, 3.16 at n = 3, 4, 5
    # against t(0.975) = 4.30, 3.18, 2.78: n = 5 decides.
    assert repeats_needed(0.02, 0.01414, 0.05, None) == 5
    assert repeats_needed(0.0, 0.01, 0.05, None) is None
    # Equivalence instead: mean 0, sd 0.01, margin 0.01: t(0.975, n-1) * 0.01 / sqrt(n) < 0.01.
    assert repeats_needed(0.0, 0.01, 0.05, 0.01) == 7
    assert repeats_needed(0.02, 0.01414, 0.05, None, paired=False) > 5


def test_claims() -> None:
    assert claim(BETTER, 0.03, 0.01, False) == CONFIRMED
    assert claim(BETTER, -0.03, 0.01, False) == CONTRADICTED
    assert claim(WORSE, 0.03, 0.01, False) == CONTRADICTED
    assert claim(EQUIVALENT, 0.03, 0.01, False) == CONTRADICTED
    assert claim(EQUIVALENT, 0.004, 0.01, False) == CONFIRMED
    assert claim(UNDECIDED, 0.03, 0.01, False) == OPEN
    assert claim(BETTER, -0.5, None, True) == CONFIRMED  # a loss that fell
    assert claim(BETTER, float("nan"), 0.01, False) == ""


def test_sequential_levels_spend_alpha_over_the_looks() -> None:
    levels = sequential_levels(3, 10)
    assert list(levels) == list(range(3, 11))
    values = list(levels.values())
    assert values == sorted(values) and values[-1] < 0.05  # O'Brien-Fleming: strict early
    assert sequential_levels(3, 3) == {3: 0.05}
    assert obf_spending(1.0) == pytest.approx(0.05)
    # With no real difference, t tests at these levels after every round err 5% of the time:
    # checked on fresh paths (another seed than the one the levels were found on).
    rng = np.random.default_rng(99)
    d = rng.standard_normal((200_000, 10))
    crossed = np.zeros(len(d), dtype=bool)
    for n, level in levels.items():
        crossed |= p_two_sided(paired_stats(d[:, :n])) < level
    assert crossed.mean() == pytest.approx(0.05, abs=0.003)


def _trial(number: int, variant: str, repeat: int, acc: float, history=None):
    """A finished ablation trial as Optuna stores it (the fields the verdicts read)."""
    return SimpleNamespace(
        number=number,
        state=SimpleNamespace(name="COMPLETE"),
        params={"ablation.variant": variant, "ablation.repeat": repeat},
        system_attrs={},
        user_attrs={"test_acc": acc, "val_acc": acc + 0.01, "history": history or []},
    )


def _trials(rows: dict[str, list[float]]) -> list:
    out = []
    for name, values in rows.items():
        out += [_trial(len(out) + i, name, r, v) for i, (r, v) in enumerate(enumerate(values))]
    return [SimpleNamespace(**{**vars(t), "number": i}) for i, t in enumerate(out)]


def test_the_rule_follows_the_config() -> None:
    fixed = rule_of(compose("fashion_mnist_dropout", "sweep.repeats=4"))
    assert (fixed.min_repeats, fixed.max_repeats, fixed.metric) == (4, 4, "test_acc")
    auto = rule_of(compose("fashion_mnist_dropout", "sweep.repeats=auto", "sweep.max_repeats=6",
                           "report.delta=0.03", "report.alpha=0.1"))  # fmt: skip
    assert (auto.min_repeats, auto.max_repeats, auto.delta, auto.alpha) == (3, 6, 0.03, 0.1)
    assert auto.direction == "maximize" and auto.margin == 0.01
    loss = rule_of(compose("fashion_mnist_dropout", "sweep.repeats=3", "report.metric=test_loss",
                           "report.margin=0.05", "report.delta=0.1"))  # fmt: skip
    assert loss.direction == "minimize"
    assert rule_of(compose("fashion_mnist_dropout", "sweep.repeats=1")) is None


def test_a_look_decides_the_rule_metric_and_describes_the_others() -> None:
    cfg = compose("fashion_mnist_dropout", "sweep.mode=ablation", "sweep.repeats=3")
    trials = _trials({"baseline": BASE, "dropout": VARIANT})
    rule = rule_of(cfg)
    decided = verdicts_for_study(cfg, trials, "test_acc", rule)["dropout"]
    assert decided.decision and decided.pairs == 3 and decided.diff == pytest.approx(0.05)
    assert decided.confidence >= 0.95 and decided.low < decided.diff < decided.high
    assert decided.verdict in (BETTER, UNDECIDED)
    assert (decided.verdict == BETTER) == (decided.low > 0) == (decided.p_adjusted <= 0.05)
    assert decided.p_better_low <= decided.p_better <= decided.p_better_high
    described = verdicts_for_study(cfg, trials, "val_acc", rule)["dropout"]
    assert not described.decision and described.verdict == "" and described.claim == ""
    assert described.p == pytest.approx(stats.ttest_rel(VARIANT, BASE).pvalue)
    assert described.confidence == 0.95


def test_only_complete_pairs_enter() -> None:
    cfg = compose("fashion_mnist_dropout", "sweep.mode=ablation", "sweep.repeats=3")
    trials = _trials({"baseline": [0.79, 0.81], "dropout": VARIANT})  # baseline repeat 2 missing
    found = verdicts_for_study(cfg, trials, "test_acc", rule_of(cfg))["dropout"]
    assert found.pairs == 2 and found.verdict == UNDECIDED  # never Welch: the pair waits
    assert "before the first look" in found.note


def test_mean_of_the_last_epochs_is_a_measure() -> None:
    history = [{"val_acc": v} for v in (0.5, 0.7, 0.8, 0.9)]
    trial = _trial(0, "baseline", 0, 0.8, history)
    assert measure(trial, "val_acc_last3") == pytest.approx(0.8)
    assert measure(trial, "test_acc") == 0.8
    assert math.isnan(measure(_trial(1, "baseline", 0, 0.8, history[:2]), "val_acc_last3"))


def test_a_row_identical_to_the_baseline_is_refused() -> None:
    with pytest.raises(ConfigError, match="'same' trains exactly what 'baseline' trains"):
        compose("fashion_mnist_dropout", "sweep.mode=ablation",
                "+ablation.variants=[{name: same, set: {model.dense_dropout: 0.0}}]")  # fmt: skip
    # auto against the policy it resolves to on this host is the same training too.
    from sweeps.precision import choose

    resolved = choose("auto")
    with pytest.raises(ConfigError, match="trains exactly what"):
        row = f"{{name: p, set: {{train.precision: {resolved}}}}}"
        compose("fashion_mnist_dropout", "sweep.mode=ablation", f"+ablation.variants=[{row}]")


def test_config_keys_are_checked() -> None:
    cfg = compose("fashion_mnist_dropout", "sweep.repeats=auto", "sweep.min_repeats=2")
    assert cfg.sweep.auto_repeats and cfg.sweep.first_repeats == 2
    assert cfg.sweep.repeat_budget == 10
    fixed = compose("fashion_mnist_dropout", "sweep.repeats=4")
    assert not fixed.sweep.auto_repeats and fixed.sweep.first_repeats == fixed.sweep.repeat_budget
    with pytest.raises(ConfigError, match="whole number >= 1 or auto"):
        compose("fashion_mnist_dropout", "sweep.repeats=often")
    with pytest.raises(ConfigError, match="min_repeats <= max_repeats"):
        compose("fashion_mnist_dropout", "sweep.repeats=auto", "sweep.min_repeats=1")
    with pytest.raises(ConfigError, match="min_repeats <= max_repeats"):
        compose("fashion_mnist_dropout", "sweep.repeats=auto", "sweep.max_repeats=2")
    with pytest.raises(ConfigError, match="report.margin"):
        compose("fashion_mnist_dropout", "report.margin=0")
    with pytest.raises(ConfigError, match="margin <= delta"):
        compose("fashion_mnist_dropout", "report.margin=0.03")
    with pytest.raises(ConfigError, match="report.alpha"):
        compose("fashion_mnist_dropout", "report.alpha=1.5")
    for wrong in ("accuracy", "test_acc_last3", "val_macro_f1", "val_acc_last0"):
        with pytest.raises(ConfigError, match=f"report.metric='{wrong}'"):
            compose("fashion_mnist_dropout", f"report.metric={wrong}")
    assert compose("fashion_mnist_dropout", "report.metric=val_acc_last3").report.metric == (
        "val_acc_last3"
    )
