"""The names sweeps stores in Optuna and MLflow, and the few readings of Optuna's trial records.

Every module that reads a trial's ablation row, its MLflow run, its worker or its retry chain
reads them here, so the names are spelled once. The helpers over Optuna's private trial API
(``_storage``, ``_trial_id``) live here too: one place to mend when Optuna changes.
"""

from __future__ import annotations

from typing import Any

RUN_ID_ATTR = "mlflow_run_id"  # trial user attr: the trial's MLflow run
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attr: the study's MLflow parent run
WORKER_ATTR = "sweeps.worker"  # trial user attr: "host:pid" of the process running it
SPURIOUS_ATTR = "sweeps.spurious"  # trial user attr: dropped unrun (surplus or a duplicate)
AUTO_ATTR = "sweeps.auto_repeats"  # study user attr: repeats=auto's record, per variant
RULE_ATTR = "sweeps.rule"  # study user attr: the decision rule recorded at the first run
VARIANT_PARAM, REPEAT_PARAM = "ablation.variant", "ablation.repeat"


def ablation_key(trial: Any) -> tuple[str | None, int | None]:
    """``(variant, repeat)`` of an ablation trial, queued ones included; (None, None) otherwise."""
    queued = trial.system_attrs.get("fixed_params") or {}  # a waiting trial has no params yet
    params = trial.params if VARIANT_PARAM in trial.params else queued
    return params.get(VARIANT_PARAM), params.get(REPEAT_PARAM)


def is_ablation(trial: Any) -> bool:
    """Whether a trial (run, finished or queued) is an ablation row's repeat."""
    fixed = trial.system_attrs.get("fixed_params") or {}
    return VARIANT_PARAM in trial.params or VARIANT_PARAM in fixed


def replaced_numbers(trials: Any) -> set[int]:
    """Numbers of the failed trials that a retry replaced, at any depth of a retry chain.

    Optuna's retry callback keeps the first trial of a chain in ``failed_trial`` and every
    trial of the chain in ``retry_history``; a trial retried twice has two replaced ones.
    """
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history") or ())
        if t.system_attrs.get("failed_trial") is not None:
            out.add(t.system_attrs["failed_trial"])
    return out


def retried_from(system_attrs: dict[str, Any]) -> int | None:
    """The number of the trial a retry replaces directly (the last of its chain), or None."""
    history = system_attrs.get("retry_history") or []
    return history[-1] if history else system_attrs.get("failed_trial")


def frozen(trial: Any) -> Any:
    """The stored view of a live trial (Optuna 5 keeps system attrs off ``Trial``)."""
    return trial.study._storage.get_trial(trial._trial_id)


def state(name: str) -> Any:
    """Optuna's ``TrialState`` of that name (Optuna imported on first use only)."""
    from optuna.trial import TrialState

    return TrialState[name]
