"""The package declaration installs every config group, without setuptools warnings."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]


def test_every_config_group_is_a_declared_package() -> None:
    # An undeclared folder of YAML files still installs (package-data), but setuptools prints
    # a warning per folder on every install, the first thing a new user sees.
    groups = {p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and any(p.glob("*.yaml"))}
    declared = {
        name.removeprefix("sweeps.conf.")
        for name in _setuptools()["packages"]
        if name.startswith("sweeps.conf.")
    }
    assert groups == declared


def test_declared_packages_map_to_folders_of_the_checkout() -> None:
    setuptools = _setuptools()
    package_dir = setuptools["package-dir"]
    for name in setuptools["packages"]:
        # A subpackage without its own mapping lives inside its parent's folder.
        parent, _, leaf = name.rpartition(".")
        folder = ROOT / package_dir[name] if name in package_dir else None
        if folder is None:
            folder = ROOT / package_dir[parent] / leaf
        assert folder.is_dir(), f"{name} -> {folder}"


def test_every_python_package_of_the_source_is_declared() -> None:
    # An undeclared subpackage is left out of a wheel (the Docker image's `pip install .`),
    # though an editable install finds it: the image would fail at its first import.
    setuptools = _setuptools()
    declared = set(setuptools["packages"])
    for name, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            package = ".".join((name, *parts))
            assert package in declared, f"{package} ({init.parent}) is not in packages"
