"""The ablation's queue: every row's repeats, the rounds of repeats=auto, duplicates dropped.

Queued trials are keyed by ``(variant, repeat)``, so every worker may enqueue the same round:
two workers doing it at the same instant leave a duplicate, which the later-numbered copy
finds and drops unrun. The next round of ``sweep.repeats=auto`` is computed from the trials
alone (:mod:`sweeps.repeat_plan`), so any worker, after any restart, finds the same round.
"""

from __future__ import annotations

import logging
from typing import Any

from sweeps.config import RunConfig
from sweeps.keys import AUTO_ATTR, REPEAT_PARAM, VARIANT_PARAM, ablation_key, frozen
from sweeps.ledger import Ledger
from sweeps.repeat_plan import auto_plan
from sweeps.stats.design import Rule

log = logging.getLogger("sweeps.engine")


class AblationQueue:
    """Enqueues an ablation's trials into its study.

    Args:
        cfg: The validated config (its variants and repeats).
        study: The Optuna study.
        ledger: The study's counts, shared with the study loop.
        rule: The study's recorded decision rule (repeats=auto decides by it).
    """

    def __init__(self, cfg: RunConfig, study: Any, ledger: Ledger, rule: Rule | None) -> None:
        self.cfg, self.study, self.ledger, self.rule = cfg, study, ledger, rule

    def enqueue_first_round(self) -> int:
        """Enqueues every variant x first-round repeat not already in the study; returns how
        many. With ``sweep.repeats=auto`` later rounds come from :meth:`next_round`."""
        first = self.cfg.sweep.first_repeats
        return self.enqueue([(v.name, r) for r in range(first) for v in self.cfg.variants])

    def held_keys(self) -> set[tuple[Any, Any]]:
        """``(variant, repeat)`` of every ablation trial in the study, queued ones included,
        but not failed trials already retried (their retry holds the key)."""
        return {ablation_key(t) for t in self.ledger.trials() if not self.ledger.dropped(t)}

    def enqueue(self, keys: list[tuple[str, int]]) -> int:
        """Enqueues the trials of ``keys`` the study does not hold yet; returns how many."""
        existing = self.held_keys()
        added = 0
        for name, repeat in keys:
            if (name, repeat) in existing:
                continue
            self.study.enqueue_trial(
                {VARIANT_PARAM: name, REPEAT_PARAM: repeat}, skip_if_exists=True
            )
            existing.add((name, repeat))
            added += 1
        return added

    def next_round(self) -> int:
        """repeats=auto, once a round has finished: one more repeat for every variant still
        undecided on the decision metric (and for the baseline), until ``max_repeats``.

        What each variant got and why it stopped is recorded in the study's user attribute
        ``sweeps.auto_repeats``. Returns the trials enqueued.
        """
        if self.rule is None:
            return 0
        trials = self.study.get_trials(deepcopy=False)
        record = self.study.user_attrs.get(AUTO_ATTR)
        plan = auto_plan(self.cfg, self.rule, trials, record)
        if plan.record != record:
            self.study.set_user_attr(AUTO_ATTR, plan.record)
        added = self.enqueue(plan.enqueue)
        if added:
            log.info("repeats=auto: %d more trials for %s", added, ", ".join(plan.open))
        return added

    def is_duplicate(self, trial: Any) -> bool:
        """Whether a queued ablation trial repeats the (variant, repeat) of an earlier one.

        Two workers ending a round together may both enqueue its next repeats; the storage
        numbers trials atomically, so the later copy is dropped. Retries never are.
        """
        stored = frozen(trial)
        if "failed_trial" in stored.system_attrs:
            return False
        key = ablation_key(stored)
        if key[0] is None:
            return False
        return any(
            t.number < trial.number and ablation_key(t) == key and not self.ledger.dropped(t)
            for t in self.ledger.trials()
        )
