"""The layers of the code (docs/concepts/architecture.md), enforced from the imports.

Every import of a sweeps module, at the top of a file or inside a function, must point to the
importer's own floor or one below it; the module graph has no circle; the statistics import
nothing else of sweeps; no command imports another; and an import inside a function is there
for a heavy library (TensorFlow, Keras, MLflow, Optuna) only, never to dodge a loop.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folders and the package each installs as (pyproject's package-dir).
PACKAGES = {"src/sweeps": "sweeps", "src/models": "sweeps.models", "src/data": "sweeps.data"}

# From the bottom up. A module may import from its own floor and the floors below.
LAYERS: list[tuple[str, set[str]]] = [
    ("values and pure functions", {
        "sweeps", "sweeps.errors", "sweeps.keys", "sweeps.signals", "sweeps.host",
        "sweeps.userpath", "sweeps.quiet", "sweeps.stats", "sweeps.space", "sweeps.plots",
        "sweeps.report_files", "sweeps.precision", "sweeps.backend", "sweeps.resume",
    }),
    ("models and data", {"sweeps.models", "sweeps.data"}),
    ("config", {"sweeps.config", "sweeps.catalogue"}),
    ("services built from config", {
        "sweeps.storage", "sweeps.tracking", "sweeps.trial", "sweeps.trainer",
        "sweeps.isolated", "sweeps.progress",
    }),
    ("the study: verdicts, the trial's life, the loop", {
        "sweeps.verdict", "sweeps.repeat_plan", "sweeps.ledger", "sweeps.ablation",
        "sweeps.recovery", "sweeps.lifecycle", "sweeps.parent", "sweeps.engine",
    }),
    ("the services of every command, built once", {"sweeps.services"}),
    ("commands", {
        "sweeps.runner", "sweeps.launcher", "sweeps.plan", "sweeps.report",
        "sweeps.report_ablation", "sweeps.report_search", "sweeps.report_inspect",
    }),
    ("entry point", {"sweeps.cli", "sweeps.__main__"}),
]  # fmt: skip

# The commands: none imports another (the report's own parts excepted).
COMMANDS = {
    "sweeps.runner": set(),
    "sweeps.launcher": set(),
    "sweeps.plan": set(),
    "sweeps.report": {"sweeps.report_ablation", "sweeps.report_search", "sweeps.report_inspect"},
}

# Imports inside a function: only of what loads a heavy library when imported.
LAZY_OK = {
    "sweeps.models.compile": "imports Keras",
    "sweeps.models.summary": "imports Keras",
    "sweeps.models.layers": "imports Keras",
    "sweeps.data.pipeline": "imports TensorFlow",
    "sweeps.data.pydataset": "imports Keras",
    "sweeps.data.make_dataset": "tf.data: imports TensorFlow",
    "sweeps.data.make_datasets": "tf.data: imports TensorFlow",
    "sweeps.data.make_pydataset": "imports Keras",
}
# The entry point imports the command it runs only: `--help` and `studies` answer in tens of
# milliseconds instead of the half second NumPy, Rich and OmegaConf take.
LAZY_IMPORTERS = {"sweeps.cli"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def imports(name: str, path: Path) -> Iterator[tuple[str, bool, int]]:
    """``(module or module.name, inside a function, line)`` of every sweeps import."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    nested = {id(x) for f in functions for x in ast.walk(f) if x is not f}
    for node in ast.walk(tree):
        inside = id(node) in nested
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sweeps":
                    yield alias.name, inside, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "sweeps":
                continue
            for alias in node.names:
                yield f"{target}.{alias.name}", inside, node.lineno


def resolve(target: str, known: dict[str, Path]) -> str:
    """The module an import names: ``sweeps.x.name`` is ``sweeps.x`` unless ``name`` is one."""
    return target if target in known else target.rsplit(".", 1)[0]


def floor(module: str) -> int:
    best, found = -1, None
    for i, (_, members) in enumerate(LAYERS):
        for m in members:
            if (module == m or module.startswith(m + ".")) and len(m) > best:
                best, found = len(m), i
    assert found is not None, f"{module} is on no floor: add it to LAYERS (and the docs)"
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for target, _, _ in imports(name, path):
            mod = resolve(target, known)
            if mod != name and mod in known:
                edges[name].add(mod)
    return edges


def test_every_module_is_on_a_floor():
    for name in modules():
        floor(name)


def upward_imports(extra: dict[str, list[str]] | None = None) -> list[str]:
    """Every import that runs up a floor, as ``file:line: who (floor) imports what (floor)``."""
    known = modules()
    wrong = []
    for name, path in known.items():
        found = [*imports(name, path), *((t, False, 0) for t in (extra or {}).get(name, []))]
        for target, _, line in found:
            mod = resolve(target, known)
            if floor(mod) > floor(name):
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line}: {name} ({LAYERS[floor(name)][0]}) imports "
                    f"{mod} ({LAYERS[floor(mod)][0]})"
                )
    return wrong


def test_no_import_runs_up_a_floor():
    wrong = upward_imports()
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_the_statistics_import_nothing_else_of_sweeps():
    for name, targets in graph().items():
        if name == "sweeps.stats" or name.startswith("sweeps.stats."):
            outside = {t for t in targets if not t.startswith("sweeps.stats")}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_no_command_imports_another():
    edges = graph()
    for command, own_parts in COMMANDS.items():
        reached = edges[command] & (set(COMMANDS) | set().union(*COMMANDS.values()))
        assert reached <= own_parts, f"{command} imports {sorted(reached - own_parts)}"
    for part in ("sweeps.report_ablation", "sweeps.report_search", "sweeps.report_inspect"):
        assert not edges[part] & set(COMMANDS), f"{part} imports a command"


def test_imports_inside_functions_are_for_heavy_libraries_only():
    known = modules()
    wrong = []
    for name, path in known.items():
        if name in LAZY_IMPORTERS:
            continue
        for target, inside, line in imports(name, path):
            if inside and target not in LAZY_OK and resolve(target, known) not in LAZY_OK:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {target} (import it at the top)")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["sweeps.config", "sweeps.storage", "sweeps.engine"])
def test_an_import_back_up_a_floor_is_caught(module):
    # The loops of old: config -> verdict, storage -> launcher, engine -> launcher.
    upward = {"sweeps.config": "sweeps.verdict.margin_of",
              "sweeps.storage": "sweeps.launcher.sharing_workers",
              "sweeps.engine": "sweeps.launcher.placement_tags"}[module]  # fmt: skip
    wrong = upward_imports({module: [upward]})
    assert len(wrong) == 1 and f"{module} (" in wrong[0]
