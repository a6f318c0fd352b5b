"""The "Your own study" walk-through (docs/how-to/own-data.md), run as written through the CLI.

The study file and the model module are the page's own code blocks, and the commands are its
bash block, so the test breaks when the page drifts. Only the sizes shrink (appended
overrides, as a user would type them): a generated three-class folder of tiny images, one
epoch, two search trials, one seed per variant; the ablation trains each trial in its own
process (``train.subprocess=true``), which must find the user's module as well.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import optuna
import pytest
import yaml
from cli_helpers import run_cli
from imagegen import make_image_folder

README = Path(__file__).resolve().parents[1] / "docs" / "how-to" / "own-data.md"
SECTION = "## Your own study"
SHRINK = (
    "train.epochs=1",
    "train.verbose=0",
    "sweep.n_trials=2",
    "sweep.repeats=1",
    "data.image_size=[16,16]",
)
CLASSES = ("circle", "square", "triangle")


def readme_section(text: str, title: str = SECTION) -> str:
    """The text of one ``## `` section of the README."""
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + len(title) + 2)
    return text[start : end if end != -1 else len(text)]


def readme_files(section: str) -> dict[str, str]:
    """Code blocks introduced by a line that names their file: ``\\`path\\`:``."""
    pattern = re.compile(r"^`([^`\n]+)`:\n\n```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
    return {path: body for path, body in pattern.findall(section)}


def readme_commands(section: str) -> list[list[str]]:
    """The ``python -m sweeps ...`` lines of the section's bash blocks, comments dropped."""
    blocks = re.findall(r"^```bash\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.startswith("python -m")]


def test_the_readme_walkthrough_is_complete() -> None:
    section = readme_section(README.read_text())
    files = readme_files(section)
    assert set(files) == {"conf/study/shapes.yaml", "mymodels.py"}
    study = yaml.safe_load(files["conf/study/shapes.yaml"])
    assert study["model"]["builder"] == "mymodels:build"
    commands = [" ".join(c[3:]) for c in readme_commands(section)]
    assert commands == [
        "studies",
        "run +study=shapes",
        "run +study=shapes sweep.mode=ablation",
        "report +study=shapes",
    ]


@pytest.mark.slow
def test_own_study_from_the_readme_searches_ablates_and_reports(tmp_path: Path) -> None:
    section = readme_section(README.read_text())
    project = tmp_path / "shapes-project"
    for rel, body in readme_files(section).items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(body)
    study = yaml.safe_load((project / "conf/study/shapes.yaml").read_text())
    make_image_folder(project / study["data"]["root"], layout=study["data"]["layout"],
                      classes=CLASSES, per_class=10, size=(16, 16), odd=False)  # fmt: skip
    out = {}
    for command in readme_commands(section):
        args = command[3:]
        extra = SHRINK if args[0] != "studies" else ()
        if "sweep.mode=ablation" in args:  # trial processes must import the user's module too
            extra = (*extra, "train.subprocess=true")
        proc = run_cli(*args, *extra, cwd=project, timeout=600)
        assert proc.returncode == 0, f"{shlex.join(args)}:\n{proc.stderr[-3000:]}"
        out[" ".join(args)] = proc.stdout

    listed = [ln for ln in out["studies"].splitlines() if ln.startswith("shapes ")]
    assert len(listed) == 1 and "conf/study/shapes.yaml" in listed[0], out["studies"]
    assert "quickstart" in out["studies"]  # the packaged studies are still there

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(project / "sweeps-store/optuna.journal"))
    )
    trials = optuna.load_study(study_name="shapes", storage=storage).get_trials()
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert all(0.0 <= t.user_attrs["test_acc"] <= 1.0 and "test_loss" in t.user_attrs
               for t in trials)  # fmt: skip
    search = [t for t in trials if "ablation.variant" not in t.params]
    ablation = [t.params["ablation.variant"] for t in trials if "ablation.variant" in t.params]
    assert len(search) == 2 and {t.params["model.width"] for t in search} <= {8, 16, 32}
    variants = ["baseline", *(v["name"] for v in study["ablation"]["variants"])]
    assert sorted(ablation) == sorted(variants)
    # README's build() got the three classes: 2 convs, then Dense(3) on 2 * width features.
    for t in search:
        width = t.params["model.width"]
        assert t.user_attrs["param_count"] == 18 * width**2 + 36 * width + 3

    report = out["report +study=shapes"]
    for name in variants:
        # Piped, the report's tables are Markdown: one row per variant.
        assert re.search(rf"^\|\s*{re.escape(name)}\s*\|", report, re.MULTILINE), report

    # No litter: trial scratch folders and their study folder are gone; `report` and `studies`
    # leave no Hydra run folder (each `run` keeps its log).
    store = project / "sweeps-store"
    assert not (store / "work").exists()
    run_dirs = [d for d in (store / "hydra").glob("*/*") if d.is_dir()]
    assert len(run_dirs) <= 2 and all(any(d.iterdir()) for d in run_dirs)
