"""repeats=auto's plan: after each round, which rows get another repeat and which stopped.

The study's bookkeeping around the verdicts (:mod:`sweeps.verdict`): which repeats the study
holds, what to queue next so every pair stays complete, and the record of the rule the study
runs under, kept in the study so every later command decides with the same levels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sweeps.keys import SPURIOUS_ATTR, ablation_key, replaced_numbers
from sweeps.verdict import (
    DECISION_METRIC,
    UNDECIDED,
    decided_verdicts,
    finished_values,
    verdicts_for_study,
)

RULE_KEY = "_rule"  # in the study's record: the min_repeats and max_repeats it ran under


@dataclass(frozen=True)
class AutoPlan:
    """The next round of a repeats=auto ablation.

    Attributes:
        enqueue: ``(variant, repeat)`` to queue now (the baseline's included).
        record: Per variant: ``repeats`` it holds (with this round), ``finished`` runs,
            ``stopped`` (``decided``, ``budget spent``, or ``""`` while open), ``verdict``
            and ``at`` (the repeats it was decided at).
        open: Variants still undecided.
    """

    enqueue: list[tuple[str, int]]
    record: dict[str, dict[str, Any]]
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


def auto_plan(cfg: Any, trials: Sequence[Any], record: Mapping[str, Any] | None = None) -> AutoPlan:
    """What repeats=auto does after a round: who gets another repeat, who stopped and why.

    A variant stops once its verdict on :data:`DECISION_METRIC` is reached (it then stands,
    whatever later rounds of other variants do to Holm's correction) or once it holds
    ``sweep.max_repeats`` repeats. Every open variant gets its lowest repeat index not yet
    held; the baseline gets every index an open variant gets, so the pairs stay complete.
    """
    names = [v.name for v in cfg.variants]
    if not names:
        return AutoPlan([], {}, [])
    base, budget = names[0], int(cfg.sweep.max_repeats)
    held, unfinished = held_repeats(trials)
    record = dict(record or {})
    verdicts = verdicts_for_study(
        cfg, trials, DECISION_METRIC, decided_verdicts(record), bootstrap=False
    )
    enqueue: list[tuple[str, int]] = []
    out: dict[str, dict[str, Any]] = {}
    still_open: list[str] = []
    for name in names[1:]:
        v, got = verdicts[name], held.get(name, set())
        before = record.get(name) if isinstance(record.get(name), Mapping) else {}
        entry = {"repeats": len(got), "finished": v.n, "verdict": v.verdict, "stopped": ""}
        if v.verdict != UNDECIDED:
            decided_before = before.get("stopped") == "decided"
            entry.update(stopped="decided", at=before.get("at") if decided_before else v.pairs)
        elif len(got) >= budget:
            entry["stopped"] = "budget spent"
        else:
            still_open.append(name)
            if name not in unfinished:
                repeat = min(set(range(budget)) - got)
                enqueue.append((name, repeat))
                entry["repeats"] += 1
        out[name] = entry
    base_got = held.get(base, set())
    needed = sorted({r for _, r in enqueue} - base_got)
    enqueue = [(base, r) for r in needed] + enqueue
    finished_base = len(finished_values(trials, DECISION_METRIC, [base]).get(base, {}))
    out[base] = {
        "repeats": len(base_got) + len(needed),
        "finished": finished_base,
        "verdict": "baseline",
        "stopped": "" if still_open else "every variant stopped",
    }
    record_out: dict[str, Any] = {name: out[name] for name in names}
    # The rule this study runs under, so `report` computes the same levels without being told.
    record_out[RULE_KEY] = {"min_repeats": cfg.sweep.min_repeats, "max_repeats": budget}
    return AutoPlan(enqueue, record_out, still_open)


def with_recorded_rule(cfg: Any, record: Mapping[str, Any] | None) -> Any:
    """``cfg`` with the repeats=auto rule a study recorded, so its verdicts use the levels of
    the looks it really took, whatever ``sweep.repeats`` the caller passed; else ``cfg``."""
    rule = (record or {}).get(RULE_KEY)
    if not isinstance(rule, Mapping):
        return cfg
    sweep = dataclasses.replace(
        cfg.sweep,
        repeats="auto",
        min_repeats=int(rule["min_repeats"]),
        max_repeats=int(rule["max_repeats"]),
    )
    return dataclasses.replace(cfg, sweep=sweep)
