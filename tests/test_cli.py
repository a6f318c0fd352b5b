"""The command line: help without TensorFlow, Hydra overrides, config found from anywhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_cli
from conftest import compose

pytest_plugins = ["pg"]  # the `postgres` fixture: a throwaway PostgreSQL cluster

README = Path(__file__).resolve().parents[1] / "README.md"


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


def _readme_defaults() -> dict[str, str]:
    """The README's "Config keys" table: key -> the default column, as written."""
    text = README.read_text()
    table = text[text.index("### Config keys") :].split("\n\n")[1]
    rows = {}
    for line in table.splitlines()[2:]:  # below the header and the |---| line
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1]
    return rows


def _documented_value(cell: str) -> tuple[bool, object]:
    """(True, value) when the cell starts with a literal (`name`, a number, none, true/false);
    (False, None) for prose ("per study", "the study's name"): the code fills it in."""
    head = cell.split()[0]
    if head.lower() in ("none", "null"):
        return True, None
    if head.startswith("`") and head.endswith("`") and len(head) > 2:
        return True, yaml.safe_load(head[1:-1])
    if re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?|true|false", head, flags=re.IGNORECASE):
        return True, yaml.safe_load(head)
    return False, None


def _base_config() -> dict:
    """The composed base config, before any study overrides it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from sweeps.catalogue import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name="config")
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def test_every_row_of_the_readme_defaults_table_matches_the_config():
    documented = _readme_defaults()
    assert len(documented) >= 13, documented  # the table was found and read
    base = _base_config()
    for key, cell in documented.items():
        node = base
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key}: not in the composed config"
            node = node[part]
        literal, value = _documented_value(cell)
        if literal:
            assert node == value, f"{key}: README says {cell!r}, the config has {node!r}"
        else:  # prose: filled in per study or at run time, or one of the values it names
            named = [yaml.safe_load(v) for v in re.findall(r"`([^`]+)`", cell)]
            assert node in (None, "???", *named), (
                f"{key}: README says {cell!r}, the config has {node!r}"
            )
    cfg = compose("quickstart")
    assert cfg.sweep.name == "quickstart"  # "the study's name"
    assert compose("quickstart", "sweep.name=other").sweep.name == "other"


@pytest.mark.slow
def test_passwords_are_masked_in_the_trial_config_artifact(tmp_path, postgres):
    """A real study on a password-protected PostgreSQL: the password appears nowhere."""
    url = postgres.create_database("masked")
    password = postgres.password
    assert password in url
    proc = run_cli(
        "run",
        "+study=quickstart",
        f"storage.url={url}",
        "sweep.n_trials=1",
        "train.epochs=1",
        "data.limit=60",
        "train.verbose=0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert password not in proc.stdout + proc.stderr
    cfg = compose("quickstart", f"storage.url={url}", store=tmp_path / "sweeps-store")
    from sweeps.services import open_tracker

    tracker = open_tracker(cfg)
    try:
        (run,) = tracker.trial_runs("quickstart")
        assert run["status"] == "FINISHED", run
        assert not any(password in str(v) for v in run["params"].values())
        assert not any(password in str(v) for v in run["tags"].values())
        path = tracker.download_artifact(run["run_id"], "config.yaml", tmp_path / "dl")
    finally:
        tracker.close()
    assert path is not None
    logged = yaml.safe_load(path.read_text())
    masked = url.replace(f":{password}@", ":***@")
    assert logged["storage"]["url"] == masked
    # Nothing the run wrote (MLflow database, artifacts, Hydra's logs) holds the password.
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert password.encode() not in file.read_bytes(), file
