"""The benchmarks: each runs ``--quick`` and writes JSON with its named ratios and repeats.

No test asserts a time: the machines are shared and noisy, and the figures are for people.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RATIOS = {
    "overhead": ["sweeps_over_bare", "sweeps_cpu_over_bare", "sweeps_call_over_bare",
                 "autolog_over_bare", "autolog_cpu_over_bare", "autolog_call_over_bare"],
    "pruning": ["tpe_median_best_over_grid", "tpe_median_epochs_over_grid",
                "tpe_hyperband_best_over_grid", "tpe_hyperband_epochs_over_grid"],
    "workers": ["quickstart_two_over_one", "quickstart_two_over_one_span"],
    "startup": ["help_over_python", "studies_over_python"],
    "liar": ["best_on_over_off", "top5_on_over_off"],
    "packing": ["measured_over_analytic"],
    "answer": ["fast_wall_over_exhaustive", "fast_cpu_over_exhaustive",
               "float32_cpu_per_epoch_over_auto", "decided_rows_agreeing_share"],
    "backends": ["jax_over_tensorflow_age_gap_float32", "jax_over_tensorflow_fashion_float32"],
    "verdicts": ["fwer_over_alpha_s0.01", "unlocked_fwer_over_alpha_s0.01",
                 "null_repeats_over_max_s0.01"],
    "pooler": ["transaction_over_direct_trials_per_minute",
               "transaction_connections_over_direct"],
    "gpu": ["trials_per_hour_2_over_1", "bf16_over_fp32_acc", "bf16_over_fp32_epoch_s"],
    "spread": ["chosen_sd_over_test_acc_sd"],
}  # fmt: skip
MACHINE = {"cpu_count", "platform", "python", "tensorflow", "keras", "optuna", "mlflow"}


def check_record(record: dict, name: str) -> None:
    """What every result must hold for the README to quote it."""
    assert record["benchmark"] == name
    assert record["command"].startswith(f"python -m benchmarks {name}")
    assert set(record["machine"]) >= MACHINE
    assert set(RATIOS[name]) <= set(record["ratios"])
    # A share (answer's agreeing rows) may be 0; times and counts never are.
    assert all(math.isfinite(v) and v >= 0 for v in record["ratios"].values())
    assert record["repeats"] and record["medians"]
    assert set(record["target_met"]) == set(record["targets"])


@pytest.mark.slow
# gpu's quick run is its CPU dry run, checked in tests/test_gpu_benchmark.py.
@pytest.mark.parametrize("name", [n for n in RATIOS if n != "gpu"])
def test_quick_run_writes_json_with_named_ratios(name, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", name, "--quick", "--out", str(tmp_path)],
        cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / f"{name}-quick.json").read_text())
    check_record(record, name)
    assert record["quick"] is True
    assert f"wrote {tmp_path / f'{name}-quick.json'}" in proc.stdout
    for key, target in record["targets"].items():
        verdict = "met" if record["target_met"][key] else "MISSED"
        value = record["ratios"].get(key, record["medians"].get(key))
        assert f"target {key} {target}: {value:.3f} {verdict}" in proc.stdout


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "results").glob("*.json")),
                         ids=lambda p: p.name)  # fmt: skip
def test_published_results_are_full_runs_with_their_ratios(path):
    record = json.loads(path.read_text())
    # gpu names its file after the card it measured (gpu-<card>.json); the others by name.
    name = "gpu" if path.stem.startswith("gpu-") else path.stem
    check_record(record, name)
    if name == "overhead":  # the GPU workers' mode: every trial in a fresh process
        assert "sweeps_subprocess_over_bare" in record["ratios"]
    if name == "gpu":
        assert path.stem == f"gpu-{record['workload']['card']['slug']}" != "gpu-cpu-dry-run"
    assert record["quick"] is False and record["command"] == f"python -m benchmarks {name}"
    assert len(record["repeats"]) >= 3


def test_answer_counts_opposite_lost_and_compatible_verdicts_apart():
    from benchmarks.answer import compare

    exhaustive = {"a": "better", "b": "better", "c": "worse", "d": "equivalent", "e": "undecided"}
    fast = {"a": "better", "b": "no effect >= delta", "c": "better", "d": "undecided",
            "e": "worse"}  # fmt: skip
    got = compare(exhaustive, fast)
    assert got == {"rows": 5, "fast_decided": 4, "agree": 1, "opposite": 1, "differ": 1,
                   "lost": 1, "gained": 1}  # fmt: skip


def test_equal_spread_test_tells_a_wider_paired_sample_from_an_equal_one():
    from scipy import stats

    from benchmarks.spread import equal_spread_p

    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 40)
    wide, alike = a + rng.normal(0, 3, 40), a + rng.normal(0, 0.05, 40)
    assert equal_spread_p(a, wide) < 0.001 and equal_spread_p(a, alike) > 0.05
    # The published form: r of sums and differences, t on n - 2 degrees of freedom.
    r = np.corrcoef(a + wide, a - wide)[0, 1]
    t = r * np.sqrt(38 / (1 - r**2))
    assert equal_spread_p(a, wide) == pytest.approx(2 * stats.t.sf(abs(t), 38))
    assert math.isnan(equal_spread_p(a[:2], wide[:2])) and math.isnan(equal_spread_p(a, a))


def test_equal_spread_test_holds_its_false_alarm_rate_in_simulation():
    """Equal spreads, correlated pairs of 5 as in the spread run: rejections at 0.05 stay
    within the Monte Carlo error of 5 % (3 standard errors)."""
    from benchmarks.spread import equal_spread_p

    rng, sims, n = np.random.default_rng(11), 4000, 5
    cov = [[1.0, 0.5], [0.5, 1.0]]
    rejected = sum(
        equal_spread_p(*rng.multivariate_normal([0, 0], cov, n).T) < 0.05 for _ in range(sims)
    )
    rate, se = rejected / sims, math.sqrt(0.05 * 0.95 / sims)
    assert abs(rate - 0.05) < 3 * se, (rate, se)
