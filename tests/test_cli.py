"""The command line: help without TensorFlow, Hydra overrides, config found from anywhere."""

from __future__ import annotations

import subprocess
import sys

from cli_helpers import run_cli
from conftest import compose, compose_raw


def test_help_lists_commands_without_importing_tensorflow(tmp_path):
    code = (
        "import sys; from sweeps.cli import main; main(['--help']); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'; "
        "assert 'mlflow' not in sys.modules"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for command in ("run", "plan", "report", "sweep.n_trials", "storage.url", "tracking.uri"):
        assert command in out.stdout


def test_studies_are_found_outside_the_repository(tmp_path):
    proc = run_cli("studies", cwd=tmp_path)
    assert proc.returncode == 0
    assert {"quickstart", "age_gap"} <= set(proc.stdout.split())


def test_hydra_cfg_flag_prints_the_composed_config(tmp_path):
    proc = run_cli("run", "+study=quickstart", "train.epochs=3", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epochs: 3" in proc.stdout and "kernel_size: choice(3, 5)" in proc.stdout


def test_public_keys_exist_with_documented_defaults():
    raw = compose_raw("quickstart")
    for dotted in (
        "data.root",
        "train.epochs",
        "train.batch_size",
        "sweep.n_trials",
        "sweep.timeout",
        "sweep.name",
        "sweep.sampler",
        "sweep.pruner",
        "sweep.mode",
        "storage.url",
        "tracking.uri",
        "seed",
    ):
        section, _, key = dotted.partition(".")
        assert (key in raw[section]) if key else (section in raw), dotted
    cfg = compose("quickstart")
    assert cfg.sweep.name == "quickstart"  # defaults to the study's name
    assert (cfg.sweep.sampler, cfg.sweep.pruner, cfg.sweep.mode) == ("tpe", "median", "search")
    assert compose("quickstart", "sweep.name=other").sweep.name == "other"


def test_passwords_are_masked_in_the_trial_config_artifact():
    from sweeps.errors import mask_config

    cfg = {
        "storage": {"url": "postgresql://bob:hunter2@db:5432/sweeps"},
        "seed": 1,
        "tracking": {"uri": "http://user:pw@mlflow:5000"},
        "list": ["mysql://a:b@h/d"],
    }
    masked = mask_config(cfg)
    text = repr(masked)
    assert "hunter2" not in text and ":pw@" not in text and ":b@" not in text
    assert masked["storage"]["url"] == "postgresql://bob:***@db:5432/sweeps"
    assert masked["seed"] == 1
