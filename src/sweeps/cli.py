"""``python -m sweeps COMMAND +study=NAME [key=value ...]``.

Hydra composes the config (so its overrides, ``hydra.run.dir=...`` and ``--cfg job`` work as
Hydra users expect); this module only picks the command, turns known errors into one line and
sets exit codes. It imports neither TensorFlow nor MLflow: ``--help`` answers at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from sweeps.catalogue import config_path, fail, study_lines, study_names, take_config_dir

USAGE = """\
usage: python -m sweeps COMMAND +study=NAME [key=value ...] [--debug]

Hyperparameter sweeps with experiment tracking for Keras image classifiers.

commands:
  run      run the study's trials (search or ablation) and log them to MLflow
  plan     dry run: parameter counts, output shapes and FLOPs, no training
  report   per-variant statistics (or best trials) from Optuna and MLflow
  studies  list the studies: installed ones and yours (./conf/study/, --config-dir DIR)

common keys (Hydra overrides):
  data.root=DIR  train.epochs=N  train.batch_size=N  sweep.n_trials=N  sweep.timeout=SECONDS
  sweep.name=NAME  sweep.sampler=tpe|random|grid|cmaes|gp  sweep.pruner=median|hyperband|none
  sweep.mode=search|ablation  storage.url=URL  tracking.uri=URI  seed=N

examples:
  python -m sweeps run +study=quickstart
  python -m sweeps run +study=age_gap data.root=/data/lag train.epochs=2 sweep.n_trials=2
  python -m sweeps plan +study=gender_resolution
  python -m sweeps report +study=fashion_mnist_dropout

Your own studies: conf/study/NAME.yaml (and conf/model/, conf/data/, ...) in the working
directory, or in --config-dir DIR (SWEEPS_CONFIG_DIR), in front of the installed configs.
--debug (or HYDRA_FULL_ERROR=1) shows full tracebacks. Hydra's own help: COMMAND --hydra-help
"""

COMMANDS = ("run", "plan", "report")


def _check_study(args: list[str]) -> None:
    """One clear line for a missing or unknown study, before Hydra's longer message."""
    chosen = [a.split("=", 1)[1] for a in args if a.lstrip("+~").startswith("study=")]
    available = ", ".join(study_names())
    if not chosen:
        fail(f"no study given: add +study=NAME (available: {available})")
    if chosen[-1] not in study_names():
        fail(f"unknown study '{chosen[-1]}' (available: {available})")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m sweeps`` and the ``sweeps`` script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    args = take_config_dir(args)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    command, rest = args[0], args[1:]
    if command == "studies":
        print("\n".join(study_lines()))
        return
    if command not in COMMANDS:
        fail(f"unknown command '{command}'; valid commands: {', '.join(COMMANDS)} (see --help)")
    if not any(a.startswith("-") for a in rest):  # Hydra flags (--cfg job, ...) pass through
        _check_study(rest)
        _check_composes(rest, debug)
    if not debug:
        from sweeps.quiet import quiet_environment

        quiet_environment()  # before anything imports TensorFlow or MLflow
    _run_hydra(command, rest, debug)


def _check_composes(overrides: list[str], debug: bool) -> None:
    """Composes once with Hydra's compose API, so a bad override is one line, not Hydra's
    multi-line report (`hydra.main` below composes again, for its run dir and logging)."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(config_path()), version_base="1.3"):
            compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception as exc:
        if debug:
            raise
        fail(_first_line(exc))


def _run_hydra(command: str, overrides: list[str], debug: bool) -> None:
    import hydra
    from omegaconf import DictConfig

    task: Callable[[DictConfig], None] = _TASKS[command]
    run_dirs: list[tuple[Path, Path]] = []

    @hydra.main(config_path=str(config_path()), config_name="config", version_base="1.3")
    def app(cfg: DictConfig) -> None:
        if command in ("plan", "report"):  # they log nothing worth a file: tidied below
            from hydra.core.hydra_config import HydraConfig

            output = Path(HydraConfig.get().runtime.output_dir)
            run_dirs.append((output, Path(str(cfg.get("store_dir") or "sweeps-store"))))
        _guarded(command, cfg, task, debug)

    sys.argv = [f"sweeps {command}", *overrides]
    _install_signal_handlers()
    try:
        app()
    except SystemExit:
        raise
    except Exception as exc:  # a config error raised while Hydra composes
        if debug:
            raise
        fail(_first_line(exc))
    finally:
        for run_dir, store_dir in run_dirs:
            _remove_empty_run_dir(run_dir, store_dir)


def _remove_empty_run_dir(run_dir: Path, store_dir: Path) -> None:
    """Removes Hydra's run folder when it holds only an empty job log, and the folders above
    it that this leaves empty, up to and including the store folder (never beyond it)."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if not isinstance(handler, logging.FileHandler):
            continue
        log_file = Path(handler.baseFilename)
        if log_file.parent.resolve() != run_dir.resolve():
            continue
        handler.flush()
        if log_file.is_file() and log_file.stat().st_size == 0:
            root.removeHandler(handler)
            handler.close()
            log_file.unlink(missing_ok=True)
    store = store_dir.resolve()
    path = run_dir.resolve()
    inside = path.is_relative_to(store)
    while True:
        try:
            path.rmdir()  # fails on a folder that holds anything: a log with lines stays
        except OSError:
            return
        if not inside or path == store:
            return
        path = path.parent


def _first_line(exc: BaseException) -> str:
    from sweeps.errors import mask_url

    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return mask_url(" ".join(lines[:2]) if lines else type(exc).__name__)


def _guarded(command: str, cfg, task, debug: bool) -> None:
    """Runs a command; known errors become one line and an exit code, never a traceback."""
    from omegaconf.errors import OmegaConfBaseException

    from sweeps.errors import SweepsError, mask_url, one_line

    if not debug:
        from sweeps.quiet import quiet_logging

        quiet_logging()  # Hydra has just set logging up
    try:
        task(cfg)
    except KeyboardInterrupt as exc:  # outside a trial (loading data, opening storage)
        print("sweeps: interrupted", file=sys.stderr)
        raise SystemExit(getattr(exc, "exit_code", 130)) from None
    except SweepsError as exc:
        if debug:
            raise
        fail(one_line(exc), exc.exit_code)
    except OmegaConfBaseException as exc:
        if debug:
            raise
        fail(_omegaconf_message(exc))
    except Exception as exc:
        from sweeps.data import DataError
        from sweeps.models import ModelConfigError

        if debug:
            raise
        if isinstance(exc, (DataError, ModelConfigError)):  # their messages are one line
            fail(mask_url(" ".join(str(exc).split())))
        fail(f"{one_line(exc)} (run again with --debug for the traceback)", 1)


def _omegaconf_message(exc: Exception) -> str:
    key = getattr(exc, "full_key", "") or ""
    text = str(exc).splitlines()[0]
    if "Missing mandatory value" in text:
        return f"{key} is not set: give it on the command line, e.g. {key}=..."
    return f"{text} ({key})" if key else text


def _install_signal_handlers() -> None:
    """SIGINT and SIGTERM end the running trial to be resumed, exiting 130 or 75 (requeue)."""
    from sweeps.signals import on_stop_signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # nohup, a background job
        signal.signal(signal.SIGINT, on_stop_signal)
    signal.signal(signal.SIGTERM, on_stop_signal)


def _study_name() -> str:
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().runtime.choices.get("study") or "")


def _load(cfg):
    import optuna
    from omegaconf import OmegaConf

    from sweeps.config import load

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say it all
    raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return load(raw, study=_study_name())


def _keras_backend(cfg) -> None:
    """Sets the study's Keras backend up: Keras reads it once, before anything imports it."""
    from sweeps.backend import select

    select(cfg.train.backend)


def _run(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from sweeps.launcher import launch_workers
    from sweeps.runner import run_study

    loaded = _load(cfg)
    _keras_backend(loaded)
    code = launch_workers(loaded, list(HydraConfig.get().overrides.task))  # sweep.workers
    if code is None:
        code = run_study(loaded)
    if code:
        raise SystemExit(code)


def _plan(cfg) -> None:
    from sweeps.plan import plan_study

    loaded = _load(cfg)
    _keras_backend(loaded)  # plan builds every model
    plan_study(loaded)


def _report(cfg) -> None:
    from sweeps.report import report_study

    report_study(_load(cfg))


_TASKS = {"run": _run, "plan": _plan, "report": _report}
