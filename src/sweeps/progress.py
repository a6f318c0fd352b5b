"""What a person watching a sweep sees: one line per trial with the best value so far."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class ConsoleProgress:
    """Prints a line when a trial starts and ends, with the count and the best so far.

    Keras's own per-epoch line appears between them (``train.verbose=2``). On an interactive
    terminal a progress bar over trials stays at the bottom; in logs and CI only the lines.
    """

    def __init__(self, study: str, metric: str, console: Console | None = None) -> None:
        self.study, self.metric = study, metric
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.total: int | None = None
        self.done = 0
        self.best: float | None = None
        self.maximize = metric.endswith("acc")
        self._t0: dict[int, float] = {}
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")

    def start(self, total: int | None, done: int) -> None:
        self.total, self.done = total, done
        target = f"{total} trials" if total else "trials"
        self.console.print(f"[bold]study {self.study}[/bold]: {done} of {target} already done")
        if self.console.is_terminal and total:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._task = self._bar.add_task(self._describe(), total=total, completed=done)
            self._bar.start()

    def _describe(self) -> str:
        best = f"best {self.metric} {self.best:.4f}" if self.best is not None else "no result yet"
        return f"{self.study}: {best}"

    def _count(self) -> str:
        return f"{self.done}/{self.total}" if self.total else str(self.done)

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self._t0[number] = time.monotonic()
        shown = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in params.items())
        self.console.print(f"[cyan]trial {number}[/cyan] started: {shown}")

    def trial_ended(self, number: int, state: str, value: float | None, note: str) -> None:
        self.done += 1
        secs = time.monotonic() - self._t0.pop(number, time.monotonic())
        if value is not None and (
            self.best is None or (value > self.best if self.maximize else value < self.best)
        ):
            self.best = value
        color = {"COMPLETE": "green", "PRUNED": "yellow"}.get(state, "red")
        shown = f" {self.metric}={value:.4f}" if value is not None else ""
        best = f" | best {self.best:.4f}" if self.best is not None else ""
        extra = f" ({note})" if note else ""
        self.console.print(
            f"[{color}]trial {number} {state}[/{color}]{shown}{extra} in {secs:.0f}s"
            f" [{self._count()}]{best}"
        )
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=self._describe())

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def summary(self, summary: Any, study: Any) -> None:
        from optuna.trial import TrialState

        counts = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        for t in study.get_trials(deepcopy=False):
            if t.state.name in counts:
                counts[t.state.name] += 1
        ran = ", ".join(f"{n} {s.lower()}" for s, n in summary.ran.items()) or "no trials"
        self.console.print(
            f"[bold]study {summary.study}[/bold]: this run {ran}; study total "
            f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
        )
        if summary.best_value is not None:
            params = ", ".join(f"{k}={_short(v)}" for k, v in summary.best_params.items())
            self.console.print(
                f"best trial {summary.best_number}: {self.metric}={summary.best_value:.4f} "
                f"({params})"
            )
        if summary.interrupted:
            self.console.print("[red]interrupted[/red]: rerun the same command to resume")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
