"""What a person watching a sweep sees.

On a terminal: a live view, a progress bar over the study's trials and a table of this run's
trials (number, the parameters that vary, state, value, best so far), redrawn in place. Off a
terminal (CI, log files): one line per finished trial. Either way a closing summary names the
best trial, where the results are and the command that opens them. Keras's own epoch lines
appear only with ``train.verbose=2``.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from sweeps.errors import mask_url
from sweeps.keys import SPURIOUS_ATTR

_COLORS = {"COMPLETE": "green", "PRUNED": "yellow", "RUNNING": "cyan"}


@dataclass
class _Row:
    number: int
    params: dict[str, Any]
    state: str = "RUNNING"
    value: float | None = None  # the trial's result, or its last epoch's while it runs
    epoch: int = 0
    best: float | None = None  # the study's best when this trial ended
    note: str = ""
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0


class ConsoleProgress:
    """The console display of one `run`.

    Args:
        study: The study's name (``sweep.name``).
        metric: The optimised metric (``sweep.metric``).
        console: Where to print; a new console on stdout by default.
        store_dir: The embedded store, named in the closing summary.
        study_arg: The ``+study=`` name, for the report command in the closing summary.
        live: Force the live view on or off; by default on exactly on a terminal.
    """

    def __init__(
        self,
        study: str,
        metric: str,
        console: Console | None = None,
        *,
        store_dir: Path | None = None,
        study_arg: str | None = None,
        live: bool | None = None,
    ) -> None:
        self.study, self.metric = study, metric
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.store_dir, self.study_arg = store_dir, study_arg
        self.use_live = self.console.is_terminal if live is None else live
        self.total: int | None = None
        self.done = 0
        self.best: float | None = None
        self.maximize = metric.endswith("acc")
        self.rows: dict[int, _Row] = {}
        self._t0 = time.monotonic()
        self._live: Live | None = None
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    # -- the engine's calls --------------------------------------------------------------------

    def note(self, text: str) -> None:
        """One dim line (the data summary, the backend)."""
        self.console.print(f"[dim]{text}[/dim]")

    def start(self, total: int | None, done: int, plan: str = "") -> None:
        """The study's opening line: what it holds, and (``total`` None) what it will run."""
        self.total, self.done = total, done
        self._t0 = time.monotonic()
        if total:
            line = f"{done} of {total} trials already done"
        else:
            line = f"{done} trials already done" + (f"; {plan}" if plan else "")
        self.console.print(f"[bold]study {self.study}[/bold]: {line}")
        if self.use_live and (total is None or done < total):
            self._live = Live(
                get_renderable=self._render,
                console=self.console,
                refresh_per_second=2,
                redirect_stdout=True,  # Keras's epoch lines (train.verbose=2) print above it
                redirect_stderr=True,
            )
            self._live.start()
            self._route_logging()

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self.rows[number] = _Row(number, dict(params))
        self._refresh()

    def epoch_ended(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        row = self.rows.get(number)
        if row is not None:
            row.epoch, row.value = epoch, metrics.get(self.metric, row.value)
            self._refresh()

    def trial_ended(self, number: int, state: str, value: float | None, note: str) -> None:
        self.done += 1
        row = self.rows.setdefault(number, _Row(number, {}))
        row.seconds = time.monotonic() - row.started
        if value is not None and (
            self.best is None or (value > self.best if self.maximize else value < self.best)
        ):
            self.best = value
        row.state, row.note, row.best = state, note, self.best
        if value is not None or state != "PRUNED":
            row.value = value
        if self._live is None:
            self.console.print(self._line(row))
        self._refresh()

    def stop(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()  # the last view stays on screen
            self._live = None
            self._unroute_logging()

    def summary(self, summary: Any, study: Any) -> None:
        """The closing lines: counts, the best trial, where the results are, how to open them."""
        counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        for t in study.get_trials(deepcopy=False):
            if t.state.name in counts and not t.user_attrs.get(SPURIOUS_ATTR):
                counts[t.state.name] += 1
        ran = ", ".join(f"{n} {s.lower()}" for s, n in summary.ran.items()) or "no trials"
        state = "complete" if getattr(summary, "complete", False) else "not complete"
        self.console.print(
            f"[bold]study {summary.study}[/bold] ({state}): this run {ran}; study total "
            f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
        )
        if summary.best_value is not None:
            tests = getattr(summary, "best_test", {}) or {}
            shown = ", ".join(
                [f"{self.metric} {summary.best_value:.4f}"]
                + [f"{k} {tests[k]:.4f}" for k in ("test_acc", "test_loss") if k in tests]
            )
            params = ", ".join(f"{k}={_short(v)}" for k, v in summary.best_params.items())
            self.console.print(f"[bold]best trial {summary.best_number}[/bold]: {shown}")
            self.console.print(f"  {params}")
        for line in self._where(summary):
            self.console.print(line, soft_wrap=True)
        if summary.interrupted:
            self.console.print("[red]interrupted[/red]: rerun the same command to resume")

    # -- rendering -----------------------------------------------------------------------------

    def _render(self) -> Group:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            Text(self.study, style="bold"),
            ProgressBar(total=self.total or max(self.done, 1), completed=self.done, width=30),
            Text(self._count()),
            Text(self._best_text()),
            Text(_clock(time.monotonic() - self._t0), style="dim"),
        )
        return Group(bar, self._table(max(self.console.height - 3, 3)))

    def _best_text(self) -> str:
        return f"best {self.metric} {self.best:.4f}" if self.best is not None else "no result yet"

    def _table(self, lines: int) -> Table:
        """The latest trials that fit in ``lines`` terminal lines."""
        keys, rows = self._param_keys(), list(self.rows.values())
        split = True
        unbounded = self.console.options.update_width(10_000)
        if Measurement.get(self.console, unbounded, self._make_table(keys, rows, True)).maximum > (
            self.console.width
        ):
            split = False  # one wrapped column of k=v
        shown = rows[-lines:]
        while True:
            table = self._make_table(keys, shown, split)
            if len(shown) <= 1 or len(self.console.render_lines(table, pad=False)) <= lines:
                return table
            shown = shown[1:]

    def _param_keys(self) -> list[str]:
        keys: list[str] = []
        for row in self.rows.values():
            names = list(row.params)
            if "ablation.variant" in row.params:  # the overrides follow from the variant
                names = ["ablation.variant", "ablation.repeat"]
            keys += [k for k in names if k not in keys]
        return keys

    def _make_table(self, keys: list[str], rows: list[_Row], split: bool) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("trial", justify="right", no_wrap=True)
        heads = _headers(keys)
        if split:
            for head in heads:
                table.add_column(head, no_wrap=True)
        else:
            table.add_column("parameters", overflow="fold", ratio=1)
        table.add_column("state", no_wrap=True)
        table.add_column(self.metric, justify="right", no_wrap=True)
        table.add_column("best", justify="right", no_wrap=True)
        for row in rows:
            values = [_short(row.params[k]) if k in row.params else "" for k in keys]
            pairs = zip(heads, values, strict=True)
            cells = values if split else [" ".join(f"{h}={v}" for h, v in pairs if v)]
            table.add_row(
                str(row.number),
                *cells,
                self._state_cell(row),
                "" if row.value is None else f"{row.value:.4f}",
                "" if row.best is None else f"{row.best:.4f}",
            )
        return table

    def _state_cell(self, row: _Row) -> Text:
        color = _COLORS.get(row.state, "red")
        if row.state == "RUNNING":
            return Text(f"epoch {row.epoch}" if row.epoch else "starting", style=color)
        label = row.state.lower()
        if row.state == "PRUNED" and row.note.startswith("pruned at epoch"):
            label = f"pruned @{row.note.split()[-1]}"
        elif row.state == "FAIL":
            label = "failed"
        return Text(label, style=color)

    def _line(self, row: _Row) -> str:
        color = _COLORS.get(row.state, "red")
        value = f" {self.metric}={row.value:.4f}" if row.value is not None else ""
        best = f" | best {self.best:.4f}" if self.best is not None else ""
        count = self._count()
        params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in row.params.items())
        note = f" ({row.note})" if row.note else ""
        return (
            f"[{color}]trial {row.number} {row.state}[/{color}]{value}{note} in "
            f"{row.seconds:.0f}s [{count}]{best}: {params}"
        )

    def _count(self) -> str:
        return f"{self.done}/{self.total}" if self.total else str(self.done)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def _where(self, summary: Any) -> list[str]:
        uri = getattr(summary, "tracking_uri", "")
        lines = []
        if self.store_dir is not None:
            lines.append(f"results: {Path(self.store_dir).resolve()}")
        exp = getattr(summary, "experiment_id", "")
        # MLflow 3's UI opens on its GenAI pages unless asked for the runs of model training.
        page = f"#/experiments/{exp}/runs?workflowType=machine_learning" if exp else ""
        view = getattr(summary, "view_key", "")
        if page and view:  # the runs table with the study's answer in its columns
            page += f"&viewStateShareKey={view}"
        if uri.startswith("sqlite:///"):
            lines.append(f"open them: [bold]mlflow ui --backend-store-uri {uri}[/bold]")
            lines.append(f"  then http://127.0.0.1:5000/{page}")
        elif uri.startswith(("http://", "https://")):
            lines.append(f"MLflow: {mask_url(uri).rstrip('/')}/{page}")
        if self.study_arg:
            extra = f" sweep.name={self.study}" if self.study != self.study_arg else ""
            store = self.store_dir
            if store is not None and str(store) != "sweeps-store":
                extra += f" store_dir={store}"
            lines.append(f"report: python -m sweeps report +study={self.study_arg}{extra}")
        return lines

    # -- log lines while the live view is up ---------------------------------------------------

    def _route_logging(self) -> None:
        """Sends console log handlers through the live view, so a warning prints above it."""
        for handler in logging.getLogger().handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and stream in (
                sys.__stdout__,
                sys.__stderr__,
            ):
                self._handlers.append((handler, stream))
                handler.setStream(sys.stdout if stream is sys.__stdout__ else sys.stderr)

    def _unroute_logging(self) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers = []


def _headers(keys: list[str]) -> list[str]:
    """The last part of each key, or the whole key where two last parts are the same."""
    short = [k.split(".")[-1] for k in keys]
    return [s if short.count(s) == 1 else k for s, k in zip(short, keys, strict=True)]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
