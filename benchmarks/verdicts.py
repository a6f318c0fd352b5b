"""verdicts: the error rates, power and repeats of the locked decision rule, by simulation.

Scripted studies where the truth is known (``sweeps.stats.design.simulate``): ten rows against
one baseline, each run's metric its row's true effect plus normal seed noise of sd ``spread``
(0.005, 0.01, 0.02: 0.5, 1 and 2 accuracy points); every row shares the baseline's runs, so a
paired difference has sd ``spread * sqrt(2)`` (no help from pairing), except where a setting
says otherwise. Every figure is a share or mean over studies with its Monte Carlo standard
error. Also: the boundaries' own crossing rates on fresh null t paths, and the rule this
replaces (per-row O'Brien-Fleming levels, Holm at each look, no futility) on the same studies.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from benchmarks.common import Result, machine

SPREADS = (0.005, 0.01, 0.02)
STUDIES, QUICK_STUDIES = 20_000, 500
FRESH_PATHS, QUICK_PATHS = 2_000_000, 100_000


def run(quick: bool, repeats: int | None = None) -> Result:
    """Runs every setting on ``repeats`` studies (20,000; 500 with ``quick``)."""
    from sweeps.stats.design import Rule

    rule = Rule()
    studies = repeats or (QUICK_STUDIES if quick else STUDIES)
    null, delta = [0.0] * 10, rule.delta
    settings: list[tuple[str, dict[str, Any]]] = []
    for s in SPREADS:
        settings.append((f"null10_s{s}", {"effects": null, "spread": s}))
        settings.append((f"locked4_null10_s{s}", {"effects": null, "spread": s, "max": 4}))
        settings.append((f"unlocked4to10_null10_s{s}", {"effects": null, "spread": s,
                                                        "first_max": 4}))  # fmt: skip
        settings.append((f"one_at_delta_s{s}", {"effects": [delta] + null[1:], "spread": s}))
        settings.append((f"ten_at_delta_s{s}", {"effects": [delta] * 10, "spread": s}))
    # Pairing that halves the variance of a difference: sd of a difference 1 point.
    settings.append(("one_at_delta_dsd0.01", {"effects": [delta] + null[1:],
                                              "spread": 0.01 / math.sqrt(2)}))  # fmt: skip
    settings.append(("five_real_five_null_s0.01", {"effects": [0.03] * 5 + [0.0] * 5,
                                                   "spread": 0.01}))  # fmt: skip
    rows = []
    for i, (name, setting) in enumerate(settings):
        started = time.perf_counter()
        out = _simulate(rule, setting, studies, seed=1000 + i)
        out.update(setting=name, seconds=round(time.perf_counter() - started, 2))
        if len(set(setting["effects"])) == 1:
            del out["rows"]  # alike rows: the pooled figures say it all, and the JSON stays short
        rows.append(out)
        print(f"verdicts: {name}: FWER {_pm(out['fwer'])}, null repeats "
              f"{_pm(out['null']['repeats'])}, power at delta {_pm(out['at_delta']['power'])}"
              f" ({out['seconds']:.1f}s)", flush=True)  # fmt: skip
    for s in SPREADS:
        started = time.perf_counter()
        old = _old_rule([0.0] * 10, s, studies, seed=2000 + int(s * 1000))
        old.update(setting=f"old_rule_null10_s{s}", seconds=round(time.perf_counter() - started, 2))
        rows.append(old)
        print(f"verdicts: {old['setting']}: FWER {_pm(old['fwer'])}, null repeats "
              f"{_pm(old['null']['repeats'])}", flush=True)  # fmt: skip
    crossing = _crossing(rule, QUICK_PATHS if quick else FRESH_PATHS)
    result = _result(rule, studies, rows, crossing)
    print(_markdown(result.table))
    return result


def _simulate(rule: Any, setting: dict[str, Any], studies: int, seed: int) -> dict[str, Any]:
    import dataclasses

    from sweeps.stats.design import simulate

    r = dataclasses.replace(rule, max_repeats=setting["max"]) if "max" in setting else rule
    first_max, p_studies = setting.get("first_max"), min(studies, 2000)
    return simulate(r, setting["effects"], setting["spread"], studies, seed,
                    first_max=first_max, p_better_studies=p_studies)  # fmt: skip


def _old_rule(effects: list[float], spread: float, studies: int, seed: int) -> dict[str, Any]:
    """The rule before the lock: each row at its own O'Brien-Fleming level per look (Lan-DeMets,
    simulated t levels), Holm across rows at each look, a decided row standing, no futility."""
    from sweeps.stats.paired import TStats, decide, paired_stats
    from sweeps.stats.sequential import sequential_levels

    low, high = 3, 10
    levels = sequential_levels(low, high)
    rng = np.random.default_rng(seed)
    eff = np.asarray(effects)
    base = rng.normal(0.0, spread, (studies, 1, high))
    diffs = eff[None, :, None] + rng.normal(0.0, spread, (studies, eff.size, high)) - base
    shape = (studies, eff.size)
    code, n, stopped = np.zeros(shape, int), np.full(shape, low), np.zeros(shape, bool)
    mean, se, df = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for look in range(low, high + 1):
        now = paired_stats(diffs[:, :, :look])
        going = ~stopped
        mean, se = np.where(going, now.mean, mean), np.where(going, now.se, se)
        df, n = np.where(going, now.df, df), np.where(going, look, n)
        found = decide(TStats(mean, se, df), np.vectorize(levels.get)(n), margin=0.01).code
        newly = going & (found != 0)
        code, stopped = np.where(newly, found, code), stopped | newly
    null = eff == 0
    wrong = np.isin(code, (1, 2))
    return {
        "effects": effects,
        "spread": spread,
        "studies": studies,
        "seed": seed,
        "fwer": _estimate(wrong[:, null].any(axis=1)),
        "per_row_false": _estimate(wrong[:, null].mean(axis=1)),
        "null": {
            "repeats": _estimate(n[:, null].mean(axis=1)),
            "equivalent": _estimate((code[:, null] == 3).mean(axis=1)),
        },  # fmt: skip
    }


def _estimate(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"estimate": float(v.mean()), "se": float(v.std(ddof=1) / math.sqrt(v.size))}


def _crossing(rule: Any, paths: int) -> dict[str, Any]:
    """Per-hypothesis chance of ever crossing, on fresh null t paths (not the boundaries')."""
    from sweeps.stats.design import boundaries

    lo, hi = rule.min_repeats, rule.max_repeats
    n = np.arange(lo, hi + 1)
    shares = (1, 2, 5, 10)
    eff = {j: np.array(list(boundaries(rule.alpha / j, lo, hi, rule.efficacy_spending).values()))
           for j in shares}  # fmt: skip
    fut = np.array(list(boundaries(rule.beta, lo, hi, rule.futility_spending, 1).values()))
    crossed: dict[str, list[np.ndarray]] = {f"alpha_over_{j}": [] for j in shares}
    crossed["beta_one_sided"] = []
    rng = np.random.default_rng(99)
    for start in range(0, paths, 250_000):  # in chunks: 2,000,000 paths at once take 0.5 GB
        d = rng.standard_normal((min(250_000, paths - start), hi))
        s, q = np.cumsum(d, axis=1)[:, lo - 1 :], np.cumsum(d * d, axis=1)[:, lo - 1 :]
        t = s / np.sqrt(n) / np.sqrt((q - s * s / n) / (n - 1))
        for j in shares:
            crossed[f"alpha_over_{j}"].append((np.abs(t) > eff[j]).any(axis=1))
        crossed["beta_one_sided"].append((t > fut).any(axis=1))
    levels = {f"alpha_over_{j}": rule.alpha / j for j in shares} | {"beta_one_sided": rule.beta}
    out: dict[str, Any] = {
        key: {"level": levels[key], **_estimate(np.concatenate(parts))}
        for key, parts in crossed.items()
    }
    out["paths"] = paths
    return out


def _pm(x: dict[str, float] | None, digits: int = 3) -> str:
    if x is None or x["estimate"] != x["estimate"]:
        return "-"
    return f"{x['estimate']:.{digits}f} ± {x['se']:.{digits}f}"


def _result(rule: Any, studies: int, rows: list[dict[str, Any]], crossing: dict) -> Result:
    import scipy

    by = {r["setting"]: r for r in rows}
    figures: dict[str, float] = {}
    table = [["setting", "spread", "FWER", "null repeats", "null: no effect", "power at delta",
              "delta: no effect", "RCI coverage", "P(>) coverage",
              "runs / exhaustive"]]  # fmt: skip
    for r in rows:
        name = r["setting"]
        figures[f"{name}_fwer"], figures[f"{name}_fwer_se"] = r["fwer"]["estimate"], r["fwer"]["se"]
        nr = r["null"]["repeats"]
        figures[f"{name}_null_repeats"], figures[f"{name}_null_repeats_se"] = (
            nr["estimate"], nr["se"])  # fmt: skip
        power = r.get("at_delta", {}).get("power")
        if power and power["estimate"] == power["estimate"]:
            figures[f"{name}_power"], figures[f"{name}_power_se"] = power["estimate"], power["se"]
        cov = r.get("coverage", {})
        runs = r.get("runs")
        if runs:
            figures[f"{name}_runs_over_exhaustive"] = runs["estimate"] / r["runs_exhaustive"]
        futile = r.get("at_delta", {}).get("no_effect")
        if futile and futile["estimate"] == futile["estimate"]:
            figures[f"{name}_delta_no_effect"] = futile["estimate"]
            figures[f"{name}_delta_no_effect_se"] = futile["se"]
        table.append([
            name, f"{r['spread']:.4f}", _pm(r["fwer"]),
            _pm(nr), _pm(r["null"].get("no_effect")), _pm(power),
            _pm(r.get("at_delta", {}).get("no_effect")),
            _pm(cov.get("rci"), 4), _pm(cov.get("p_better"), 4),
            f"{runs['estimate'] / r['runs_exhaustive']:.2f}" if runs else "-",
        ])  # fmt: skip
    for key, value in crossing.items():
        if isinstance(value, dict):
            figures[f"crossing_{key}"], figures[f"crossing_{key}_se"] = (
                value["estimate"], value["se"])  # fmt: skip
    ratios = {
        f"fwer_over_alpha_s{s}": by[f"null10_s{s}"]["fwer"]["estimate"] / rule.alpha
        for s in SPREADS
    }
    ratios.update({
        f"unlocked_fwer_over_alpha_s{s}":
            by[f"unlocked4to10_null10_s{s}"]["fwer"]["estimate"] / rule.alpha for s in SPREADS
    })  # fmt: skip
    ratios.update({
        f"null_repeats_over_max_s{s}":
            by[f"null10_s{s}"]["null"]["repeats"]["estimate"] / rule.max_repeats for s in SPREADS
    })  # fmt: skip
    targets = {f"null10_s{s}_fwer": "<= 0.05" for s in SPREADS}
    targets.update({f"locked4_null10_s{s}_fwer": "<= 0.05" for s in SPREADS})
    targets.update({f"null10_s{s}_null_repeats": "<= 5" for s in SPREADS})
    targets["one_at_delta_s0.01_power"] = ">= 0.8"
    targets["ten_at_delta_s0.01_power"] = ">= 0.8"
    return Result(
        workload={
            "studies_per_setting": studies,
            "rule": rule.to_record(),
            "rows": 10,
            "spreads": list(SPREADS),
            "model": "run = true effect + N(0, spread) per seed; rows share the baseline's runs",
            "settings": {
                r["setting"]: {k: r.get(k) for k in ("effects", "spread", "first_max")}
                for r in rows
            },  # fmt: skip
            "crossing_on_fresh_paths": crossing,
            "scipy": scipy.__version__,
            "numpy": np.__version__,
            "cpu_model": machine()["cpu_model"],
        },
        repeats=rows,
        medians=figures,
        ratios=ratios,
        targets=targets,
        table=table,
        notes=[
            "each figure: estimate and Monte Carlo standard error over the simulated studies",
            "FWER: share of studies where any row with no effect ended better or worse",
            "null repeats: mean repeats of a row with no effect; null: no effect: share of "
            "them ending 'no effect >= delta' (futility)",
            "power at delta: share of rows whose true effect is delta (2 points) ending better; "
            "delta: no effect: share of them stopped for futility (at most beta = 0.2)",
            "RCI coverage: the repeated interval at the row's family level holds the truth at "
            "the stopping look; P(>) coverage: on the first 2,000 studies",
            "unlocked4to10: the old behaviour, first looks planned for max_repeats=4, then "
            "continued to 10 under the 10-look boundaries",
            "old_rule: per-row O'Brien-Fleming levels with Holm at each look and no futility "
            "(the rule before the lock)",
            "one_at_delta_dsd0.01: differences of sd 1 point (pairing that halves the variance)",
            "power >= 0.8 at a one-point spread is out of reach for one row among ten: a single "
            "look at 10 pairs at alpha/10 has power 0.75",
        ],
    )


def _markdown(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)
