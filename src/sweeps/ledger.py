"""What a study holds, as this worker counts it: finished, running, waiting, and left out.

Failed trials that a retry replaced, trials dropped unrun (surplus, duplicates) and the other
mode's trials (one study name may hold a search and an ablation) are not counted.
"""

from __future__ import annotations

from typing import Any

from sweeps.keys import SPURIOUS_ATTR, is_ablation, replaced_numbers


class Ledger:
    """Counts a study's trials for one mode.

    Args:
        study: The Optuna study.
        ablation: Whether this worker runs the ablation (else the search).
    """

    def __init__(self, study: Any, ablation: bool) -> None:
        self.study, self.ablation = study, ablation
        self.replaced: set[int] = set()  # failed trials a retry replaced, as last read

    def trials(self) -> list[Any]:
        """Every trial of the study, re-reading which failed ones were retried."""
        trials = self.study.get_trials(deepcopy=False)
        self.replaced = replaced_numbers(trials)
        return trials

    def counts(self) -> tuple[int, int, int]:
        """Trials finished for good, running, and waiting in the queue."""
        done = running = waiting = 0
        for t in self.trials():
            if self.other_mode(t):
                continue
            if t.state.name == "RUNNING":
                running += 1
            elif t.state.name == "WAITING":
                waiting += 1
            elif not self.excluded(t):
                done += 1
        return done, running, waiting

    def dropped(self, t: Any) -> bool:
        """A failed trial that a retry replaced, or one dropped unrun."""
        return t.state.name == "FAIL" and (
            t.number in self.replaced or bool(t.user_attrs.get(SPURIOUS_ATTR))
        )

    def excluded(self, t: Any) -> bool:
        """Dropped trials and the other mode's do not count."""
        return self.other_mode(t) or self.dropped(t)

    def other_mode(self, t: Any) -> bool:
        """An ablation trial seen by a search, or the reverse: one study name holds both."""
        return is_ablation(t) != self.ablation
