"""The `report` command: a study read back from Optuna and MLflow, as tables, files and plots.

Ablation trials give one row per variant: runs finished, mean and 95% confidence interval of
test accuracy, validation accuracy and test loss, the difference to the baseline with Welch's
t-test, the parameter count, and the document's published numbers beside them. Search trials
give the best trials and the parameter importances. Everything is printed, written as Markdown,
CSV and PNG under ``{store_dir}/reports/{study}/`` and logged to the study's MLflow parent run.
Optuna's user attributes are the source of the numbers; MLflow fills in learning curves a trial
did not keep, holds the checkpoints ``report.inspect`` looks into, and receives the report.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from sweeps import services
from sweeps.backend import select
from sweeps.config import RunConfig
from sweeps.errors import SweepsError, mask_url, one_line
from sweeps.keys import AUTO_ATTR, PARENT_RUN_ATTR, ablation_key
from sweeps.report_ablation import report_ablation
from sweeps.report_files import table_console
from sweeps.report_inspect import inspect_best
from sweeps.report_search import report_search
from sweeps.storage import resolve_url
from sweeps.verdict import settle_rule


def report_study(cfg: RunConfig, console: Console | None = None) -> list[Path]:
    """Prints the report, writes its files and logs them to the parent run; returns the files.

    Returns an empty list, after saying why, when the study does not exist or nothing in it
    has finished yet.
    """
    console = console or table_console()
    options = cfg.report
    study = load_study(cfg, console)
    if study is None:
        return []
    trials = study.get_trials(deepcopy=False)
    ablation = [t for t in trials if ablation_key(t)[0] is not None]
    search = [t for t in trials if ablation_key(t)[0] is None and t.state.name == "COMPLETE"]
    if not search and not any(t.state.name == "COMPLETE" for t in ablation):
        states = Counter(t.state.name.lower() for t in trials)
        counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no trials"
        console.print(
            f"study {cfg.sweep.name}: nothing has finished yet ({counts}); "
            "run the report again once a trial completes"
        )
        return []
    out = cfg.store_dir / "reports" / cfg.sweep.name
    out.mkdir(parents=True, exist_ok=True)
    tracker = _open_tracker(cfg, console)
    try:
        files: list[tuple[Path, str]] = []
        if any(t.state.name == "COMPLETE" for t in ablation):
            auto = study.user_attrs.get(AUTO_ATTR)
            rule = settle_rule(study, cfg, record=False)
            piped = not console.is_terminal  # a pipe or a CI log: Markdown, not box drawing
            files += report_ablation(cfg, ablation, out, console, tracker, auto, rule, piped)
        if search:
            files += report_search(cfg, study, search, options.top_k, out, console)
        if options.inspect:  # loads the checkpoints: the only part of a report that runs Keras
            select(cfg.train.backend)

            files += [
                (p, "report/inspect")
                for p in inspect_best(cfg, study, tracker, out / "inspect", options, console)
            ]
        _log_to_parent(study, tracker, files, console)
    finally:
        if tracker is not None:
            tracker.close()
    console.print(f"report of {cfg.sweep.name} written to {out}:")
    for path, _ in files:
        console.print(f"  {path}")
    return [p for p, _ in files]


def load_study(cfg: RunConfig, console: Console) -> Any | None:
    """The study from its storage, read-only; None (after saying so) when it does not exist."""
    study = services.existing_study(cfg)
    if study is None:
        url = resolve_url(cfg.storage, cfg.store_dir)
        console.print(
            f"no study '{cfg.sweep.name}' in {mask_url(url)}: run "
            f"`python -m sweeps run +study={cfg.study}` first (same store_dir / storage.url)"
        )
    return study


def _open_tracker(cfg: RunConfig, console: Console) -> Any | None:
    try:
        return services.open_tracker(cfg)
    except SweepsError as exc:
        console.print(f"[yellow]MLflow not used[/yellow]: {one_line(exc)}")
        return None


def _log_to_parent(
    study: Any, tracker: Any | None, files: list[tuple[Path, str]], console: Console
) -> None:
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if tracker is None or not parent:
        console.print("[yellow]report not logged to MLflow[/yellow]: no parent run to log to")
        return
    try:
        for path, artifact_dir in files:
            tracker.log_artifact_now(parent, path, artifact_dir)
    except Exception as exc:  # the files are on disk whatever MLflow says
        console.print(f"[yellow]report not logged to MLflow[/yellow]: {one_line(exc)}")
        return
    console.print(f"logged to MLflow run {parent} (artifacts under report/)")
