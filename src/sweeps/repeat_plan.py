"""repeats=auto's plan: after each round, which rows get another repeat and which stopped.

The study's bookkeeping around the decision (:mod:`sweeps.verdict`): the repeats the study
holds, one look of the recorded rule at every row's complete pairs, and what to queue next so
that every pair stays complete. The look's state is kept in the study (``sweeps.auto_repeats``)
with, per row, what it holds and why it stopped, so every worker, after any restart, finds the
same next round and ``report`` the same verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sweeps.config import RunConfig
from sweeps.keys import SPURIOUS_ATTR, ablation_key, replaced_numbers
from sweeps.stats.design import Rule, look, needs_more
from sweeps.verdict import check_rows, pair_differences, paired_values

STATE_KEY = "_state"  # in the study's record: the look state of sweeps.stats.design


@dataclass(frozen=True)
class AutoPlan:
    """The next round of a repeats=auto ablation.

    Attributes:
        enqueue: ``(variant, repeat)`` to queue now (the baseline's included).
        record: Per variant: ``repeats`` it holds (with this round), ``finished`` pairs,
            ``stopped`` (``decided``, ``futility``, ``budget spent``, or ``""`` while open),
            ``verdict`` and ``at`` (the pairs it stopped at); and the look state.
        open: Variants still open.
    """

    enqueue: list[tuple[str, int]]
    record: dict[str, Any]
    open: list[str]


def held_repeats(trials: Sequence[Any]) -> tuple[dict[str, set[int]], set[str]]:
    """Per variant, the repeats the study holds in any state (not failed trials already
    retried, nor dropped duplicates); and the variants with a trial waiting or running."""
    retried = replaced_numbers(trials)
    held: dict[str, set[int]] = {}
    unfinished: set[str] = set()
    for t in trials:
        if t.user_attrs.get(SPURIOUS_ATTR) or t.number in retried:
            continue
        name, repeat = ablation_key(t)
        if name is None or repeat is None:
            continue
        held.setdefault(name, set()).add(int(repeat))
        if t.state.name in ("WAITING", "RUNNING"):
            unfinished.add(name)
    return held, unfinished


def auto_plan(
    cfg: RunConfig, rule: Rule, trials: Sequence[Any], record: Mapping[str, Any] | None = None
) -> AutoPlan:
    """What repeats=auto does after a round: who gets another repeat, who stopped and why.

    One look of ``rule`` at every row's complete pairs (rows stopped at an earlier look stand).
    Every open row gets its lowest repeat index not yet held, up to ``max_repeats``; the
    baseline gets every index a row holds, so no pair waits for a missing baseline repeat.
    """
    names = [v.name for v in cfg.variants]
    if len(names) < 2:
        return AutoPlan([], {}, [])
    base, rows, budget = names[0], names[1:], rule.max_repeats
    held, unfinished = held_repeats(trials)
    record = dict(record or {})
    check_rows(record.get(STATE_KEY), rows, cfg.sweep.name)
    values = paired_values(trials, rule.metric, names)
    results, state = look(rule, pair_differences(values, base, rows), record.get(STATE_KEY))
    enqueue: list[tuple[str, int]] = []
    out: dict[str, Any] = {}
    still_open: list[str] = []
    for name in rows:
        row, got = results[name], held.get(name, set())
        entry = {"repeats": len(got), "finished": row.n, "verdict": row.verdict,
                 "stopped": row.stopped}  # fmt: skip
        if row.stopped:
            entry["at"] = row.n
        elif needs_more(row) and len(got) < budget:
            still_open.append(name)
            if name not in unfinished:
                enqueue.append((name, min(set(range(budget)) - got)))
                entry["repeats"] += 1
        elif needs_more(row):
            entry["stopped"] = "budget spent"  # every repeat held; some never finished
        out[name] = entry
    base_got = held.get(base, set())
    wanted = set().union(*(held.get(n, set()) for n in rows), {r for _, r in enqueue})
    needed = sorted(wanted - base_got)
    enqueue = [(base, r) for r in needed] + enqueue
    out[base] = {
        "repeats": len(base_got) + len(needed),
        "finished": len(values.get(base, {})),
        "verdict": "baseline",
        "stopped": "" if still_open else "every variant stopped",
    }
    record_out: dict[str, Any] = {name: out[name] for name in names}
    record_out[STATE_KEY] = state
    return AutoPlan(enqueue, record_out, still_open)
