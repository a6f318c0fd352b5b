"""Pages generated from the repository at build time, so they cannot drift from it.

A page asks for generated content with a directive, ``{{ NAME ARGS }}``, which `expand`
replaces; an unknown name or a missing value is an error, so a broken directive fails the
build instead of printing nothing:

- ``{{ config-reference }}``: every key of ``conf/``, its default and its meaning.
- ``{{ studies-table }}``: the study files of ``conf/study/`` with their first sentence.
- ``{{ published STUDY }}``: a study's ablation rows and the numbers its document published.
- ``{{ cli-help }}``: what ``python -m sweeps --help`` prints.
- ``{{ bench-facts NAME }}``, ``{{ bench-table NAME }}``, ``{{ bench-targets NAME }}``,
  ``{{ bench-notes NAME }}``: from ``benchmarks/results/NAME.json``.
- ``{{ bench NAME PATH [FORMAT] }}``: one number of that JSON, e.g.
  ``{{ bench overhead ratios.sweeps_over_bare .3f }}``; a path step ``[key=value]`` picks
  the list item whose key has that value (``[k=v,k2=v2]``: all of them), a format ending in
  ``%pt`` prints percentage points.
- ``{{ bench-plot NAME }}``: a figure drawn from that JSON (see `plots`).
- ``{{ bench-summary }}``: every committed result, when it ran and its targets.
- ``{{ bench-each PREFIX }}``: facts, table, targets and notes of every result whose name
  starts with PREFIX (``gpu-``: one section per card measured).

This module needs PyYAML and, for the figures, matplotlib; MkDocs only in `sweeps_docs`.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTES = Path(__file__).with_name("config_notes.yaml")
# Hydra's own settings and the defaults list are Hydra's business, not a study's keys.
SKIPPED_TOP_KEYS = {"defaults", "hydra"}

DIRECTIVE = re.compile(r"\{\{\s*([a-z][a-z-]*)((?:\s+[^\s}]+)*)\s*\}\}")


class DocgenError(ValueError):
    """A directive that cannot be expanded: unknown, or naming something that is not there."""


# --------------------------------------------------------------------------- directives


def sibling(name: str) -> ModuleType:
    """A module beside this one. MkDocs puts the hooks' folder on `sys.path` only while it
    loads them, so later imports of siblings go by file."""
    full = f"sweeps_docs_{name}"
    if full not in sys.modules:
        spec = importlib.util.spec_from_file_location(full, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules[full]


def expand(markdown: str, root: Path = ROOT) -> str:
    """Replace every directive in `markdown` with what it generates."""

    def replace(match: re.Match[str]) -> str:
        name, args = match.group(1), match.group(2).split()
        handler = DIRECTIVES.get(name)
        if handler is None:
            raise DocgenError(f"unknown directive {{{{ {name} }}}}; known: {sorted(DIRECTIVES)}")
        try:
            return handler(root, *args)
        except TypeError as exc:
            raise DocgenError(f"{{{{ {name} {' '.join(args)} }}}}: {exc}") from None

    return DIRECTIVE.sub(replace, markdown)


# --------------------------------------------------------------------------- config keys


@dataclass(frozen=True)
class Key:
    """One leaf of a config file: its dotted path, its default as written, what it means."""

    path: str
    default: str
    meaning: str


@dataclass(frozen=True)
class ConfigFile:
    """A YAML file of ``conf/``: its header comment and its keys."""

    path: Path
    header: str
    keys: list[Key]


def read_config_file(path: Path, prefix: str = "", scope: str = "") -> ConfigFile:
    """Keys of one config file, with the meaning taken from its comments.

    A key's meaning is the comment on its line (with the comment lines aligned under it), else
    the comment lines right above it at its indentation, else the notes kept beside this
    module for keys the YAML leaves bare (``scope`` is ``group/option`` for per-file notes).
    The comment block that opens a file describes the file, never its first key.
    """
    notes = load_notes()
    per_file = notes.get(scope) if isinstance(notes.get(scope), dict) else {}
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    node = yaml.compose(text)
    header_end = _comment_block_end(lines, 0)
    header = " ".join(_comment_text(line) for line in lines[:header_end]).strip()
    keys: list[Key] = []
    if isinstance(node, yaml.MappingNode):
        for key in _walk(node, lines, prefix, header_end):
            leaf = key.path.removeprefix(prefix)
            meaning = key.meaning or per_file.get(leaf) or notes.get(key.path) or ""
            keys.append(Key(key.path, key.default, str(meaning)))
    return ConfigFile(path, header, keys)


def _walk(node: yaml.MappingNode, lines: list[str], prefix: str, header_end: int) -> Iterator[Key]:
    for key_node, value_node in node.value:
        name = key_node.value
        if not prefix and name in SKIPPED_TOP_KEYS:
            continue
        path = f"{prefix}{name}"
        nested = (
            isinstance(value_node, yaml.MappingNode)
            and not value_node.flow_style
            and value_node.value
        )
        if nested:
            yield from _walk(value_node, lines, f"{path}.", header_end)
        else:
            meaning = _meaning(key_node, value_node, lines, header_end)
            yield Key(path, _source(value_node, lines), meaning)


def _meaning(key_node: yaml.Node, value_node: yaml.Node, lines: list[str], header_end: int) -> str:
    row = key_node.start_mark.line
    line = lines[row]
    # The text after the value on the key's line (or after the colon, for a block value).
    if value_node.end_mark.line == row:
        rest = line[value_node.end_mark.column :]
    else:
        rest = line[key_node.end_mark.column :].lstrip().removeprefix(":")
    parts: list[str] = []
    if rest.strip().startswith("#"):
        hash_col = line.index("#", len(line) - len(rest))
        parts.append(line[hash_col + 1 :].strip())
        # Comment lines aligned under it continue it (`sampler_seed`, `precision`).
        for below in lines[row + 1 :]:
            if below.strip().startswith("#") and below.index("#") == hash_col:
                parts.append(_comment_text(below))
            else:
                break
        return " ".join(parts)
    # A comment block right above the key, at the key's indentation.
    indent = key_node.start_mark.column
    above: list[str] = []
    i = row - 1
    while i >= header_end and lines[i].strip().startswith("#") and lines[i].index("#") == indent:
        above.insert(0, _comment_text(lines[i]))
        i -= 1
    return " ".join(above)


def _comment_block_end(lines: list[str], start: int) -> int:
    i = start
    while i < len(lines) and lines[i].strip().startswith("#"):
        i += 1
    return i


def _comment_text(line: str) -> str:
    return line.strip().removeprefix("#").strip()


def _source(node: yaml.Node, lines: list[str]) -> str:
    """The value exactly as the file writes it (`1.0e-4`, `${oc.env:...}`, `???`)."""
    start, end = node.start_mark, node.end_mark
    if start.line == end.line:
        return lines[start.line][start.column : end.column].strip()
    chunk = [lines[start.line][start.column :]]
    chunk += lines[start.line + 1 : end.line]
    chunk.append(lines[end.line][: end.column])
    return " ".join(part.strip() for part in chunk if part.strip())


@cache
def load_notes(path: Path = NOTES) -> dict[str, str]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def config_groups(root: Path) -> list[tuple[str, str]]:
    """``(group, default option)`` in the order of ``conf/config.yaml``'s defaults list."""
    defaults = yaml.safe_load((root / "conf" / "config.yaml").read_text(encoding="utf-8"))
    groups = []
    for entry in defaults.get("defaults", []):
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            groups.append((group, str(option)))
    return groups


def config_reference(root: Path = ROOT) -> str:
    """Every key of ``conf/``: the top level, then each group with every option file."""
    out = ["## Top level", ""]
    top = read_config_file(root / "conf" / "config.yaml")
    out += [_md(top.header), "", *_key_table(top.keys), ""]
    for group, default in config_groups(root):
        options = sorted((root / "conf" / group).glob("*.yaml"), key=lambda p: p.stem)
        names = [f"`{p.stem}`" + (" (default)" if p.stem == default else "") for p in options]
        out += [f"## {group}", ""]
        out += [
            f"Choose with `{group}=NAME` on the command line or `- override /{group}: NAME` "
            f"in a study file. Options: {', '.join(names)}.",
            "",
        ]
        for option in sorted(options, key=lambda p: (p.stem != default, p.stem)):
            cfg = read_config_file(option, prefix=f"{group}.", scope=f"{group}/{option.stem}")
            out += [f"### {group}: {option.stem}", ""]
            if cfg.header:
                out += [_md(cfg.header), ""]
            out += [*_key_table(cfg.keys), ""]
    return "\n".join(out)


def _key_table(keys: list[Key]) -> list[str]:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key in keys:
        rows.append(f"| `{key.path}` | {_code(key.default)} | {_md(key.meaning)} |")
    return rows


def _code(text: str) -> str:
    # A backtick inside the value needs a longer fence; a pipe would end the table cell.
    fence = "``" if "`" in text else "`"
    return f"{fence}{text.replace('|', '&#124;')}{fence}"


# `_` only where it could open or close emphasis: inside a word (`age_gap`) it stays as is.
_MARKUP = re.compile(r"([*{}\[\]|]|(?<!\w)_|_(?!\w))")


def _md(text: str) -> str:
    """Plain text for a Markdown page, shown as written: code spans kept; `<...>` not read as
    HTML, `*`/`_` not as emphasis, `{...}` not as attributes, `|` not as a cell's end."""
    parts = re.split(r"(`[^`]*`)", text)
    escaped = (_MARKUP.sub(r"\\\1", html.escape(p, quote=False)) for p in parts[::2])
    # re.split with a group alternates: text, code span, text, ...
    return "".join(
        e + (parts[2 * i + 1] if 2 * i + 1 < len(parts) else "") for i, e in enumerate(escaped)
    )


# --------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class Study:
    """A study file's header: what it is and its source document."""

    name: str
    sentence: str
    source: str


def read_study(path: Path) -> Study:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [ln for ln in lines[: _comment_block_end(lines, 0)] if "@package" not in ln]
    text: list[str] = []
    source: list[str] = []
    commands = False
    for line in header:
        body = line.removeprefix("#")
        if body.startswith("   ") and body.strip().startswith("python -m sweeps"):
            commands = True
        elif body.strip().startswith("Source:"):
            source.append(body.strip().removeprefix("Source:").strip())
        elif source and not commands and body.strip():
            source.append(body.strip())  # the source's sentence goes on to the commands
        elif not commands and not source:
            text.append(body.strip())
    sentence = " ".join(text)
    sentence = re.sub(rf"^{re.escape(path.stem)}:\s*", "", sentence, flags=re.IGNORECASE)
    end = re.search(r"\.(\s|$)", sentence)
    first = sentence[: end.start()] if end else sentence
    return Study(path.stem, first, " ".join(source))


def studies_table(root: Path = ROOT) -> str:
    rows = ["| study | what it is | source |", "|---|---|---|"]
    for path in sorted((root / "conf" / "study").glob("*.yaml")):
        study = read_study(path)
        page = root / "docs" / "studies" / f"{study.name}.md"
        name = f"[`{study.name}`](../studies/{study.name}.md)" if page.is_file() else study.name
        rows.append(f"| {name} | {_md(study.sentence)} | {_md(study.source) or '—'} |")
    return "\n".join(rows)


PUBLISHED_ORDER = ("train_acc", "val_acc", "test_acc", "test_loss")


def published(root: Path, study: str) -> str:
    """A study's ablation rows as its file declares them, with the published numbers."""
    path = root / "conf" / "study" / f"{study}.yaml"
    if not path.is_file():
        raise DocgenError(f"no study file {path}")
    ablation = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("ablation") or {}
    rows = [("baseline", ablation.get("baseline") or {})]
    rows += [(v["name"], v) for v in ablation.get("variants") or []]
    metrics = [m for m in PUBLISHED_ORDER if any(m in (r.get("published") or {}) for _, r in rows)]
    head = ["row", "what changes", *[f"published {m}" for m in metrics]]
    out = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(metrics)]
    for name, row in rows:
        changes = _changes(row.get("set") or {})
        note = row.get("note") or ""
        what = "; ".join(part for part in (changes, _md(note)) if part) or "—"
        numbers = [_number((row.get("published") or {}).get(m)) for m in metrics]
        out.append("| " + " | ".join([f"`{name}`", what, *numbers]) + " |")
    return "\n".join(out)


def _changes(overrides: dict[str, Any]) -> str:
    parts = []
    for key, value in overrides.items():
        if isinstance(value, dict) and key == "model":  # a whole model node: its gist
            gist = [f"`{k}={value[k]}`" for k in ("base", "trainable_layers") if k in value]
            parts.append(
                f"`model` → `{value.get('name', '…')}`" + (f" ({', '.join(gist)})" if gist else "")
            )
            continue
        shown = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
        shown = shown.removesuffix("...").strip()
        parts.append(f"`{key}={shown}`")
    return ", ".join(parts)


def _number(value: Any) -> str:
    return "—" if value is None else f"{value:g}"


# --------------------------------------------------------------------------- CLI


def cli_help(root: Path = ROOT) -> str:
    """``python -m sweeps --help`` of the environment that builds the docs."""
    done = subprocess.run(
        [sys.executable, "-m", "sweeps", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise DocgenError(f"python -m sweeps --help failed: {done.stderr.strip()[-500:]}")
    return "```text\n" + done.stdout.rstrip() + "\n```"


# --------------------------------------------------------------------------- benchmarks


@cache
def load_result(name: str, root: Path = ROOT) -> dict[str, Any]:
    path = root / "benchmarks" / "results" / f"{name}.json"
    if not path.is_file():
        raise DocgenError(f"no benchmark result {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def result_names(root: Path = ROOT) -> list[str]:
    return sorted(p.stem for p in (root / "benchmarks" / "results").glob("*.json"))


def lookup(data: Any, path: str) -> Any:
    """``medians.x``, ``repeats.3.best`` or ``repeats[way=fast,kind=way].diffs.dropout.0``."""
    for step in re.findall(r"\[[^\]]*\]|[^.\[]+", path):
        if step.startswith("["):
            wanted = [cond.partition("=")[::2] for cond in step[1:-1].split(",")]
            matches = [i for i in data if all(str(i.get(k)) == v for k, v in wanted)]
            if len(matches) != 1:
                raise DocgenError(f"{path}: {step} matches {len(matches)} items, not one")
            data = matches[0]
        elif isinstance(data, list):
            data = data[int(step)]
        elif isinstance(data, dict) and step in data:
            data = data[step]
        else:
            raise DocgenError(f"{path}: no {step!r}")
    return data


def format_value(value: Any, spec: str = "") -> str:
    """`value` by a format spec; ``%pt`` scales a fraction to percentage points."""
    if spec.endswith("%pt"):
        value, spec = value * 100, spec.removesuffix("%pt")
    text = format(value, spec) if spec else str(value)
    return text.replace("-", "−") if isinstance(value, int | float) else text


def bench_value(root: Path, name: str, path: str, spec: str = "") -> str:
    return format_value(lookup(load_result(name, root), path), spec)


def bench_facts(root: Path, name: str) -> str:
    r = load_result(name, root)
    m = r["machine"]
    gpu = "a GPU" if m.get("gpu") else "no GPU"
    libs = ("tensorflow", "keras", "optuna", "mlflow")
    versions = ", ".join(f"{lib} {m[lib]}" for lib in libs if lib in m)
    load = lambda xs: " / ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    return "\n".join(
        [
            f'!!! info "Measured {r["finished"][:10]} by `{r["command"]}`"',
            f"    {m['cpus_usable']} CPUs ({m['cpu_model']}), {_memory(m['memory'])}, {gpu}; "
            f"Python {m['python']}, {versions}. The run took {r['wall_seconds'] / 60:.0f} minutes; "
            f"load average (1 / 5 / 15 min) {load(r['load_average_before'])} before, "
            f"{load(r['load_average_after'])} after. Every repeat is in "
            f"`benchmarks/results/{name}.json`.",
        ]
    )


def _memory(text: str) -> str:
    kb = int(text.split()[0]) if text.split()[0].isdigit() else 0
    return f"{kb / 1024**2:.0f} GiB RAM" if kb else text


def bench_table(root: Path, name: str) -> str:
    """The table the benchmark wrote into its JSON, numbers right-aligned."""
    table = load_result(name, root).get("table") or []
    if not table:
        raise DocgenError(f"{name}.json has no table")
    head, *body = table
    numeric = [all(_is_number(row[i]) for row in body) for i in range(len(head))]
    out = ["| " + " | ".join(head) + " |"]
    out.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    out += ["| " + " | ".join(_md(str(c)) for c in row) + " |" for row in body]
    return "\n".join(out)


def _is_number(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+−]?[\d,]*\.?\d+(/\d+)?", str(cell).strip()))


def bench_targets(root: Path, name: str) -> str:
    r = load_result(name, root)
    targets = r.get("targets") or {}
    if not targets:
        return "*This benchmark sets no target: it measures.*"
    out = ["| target | measured | |", "|---|---:|---|"]
    for key, goal in targets.items():
        measured = r.get("ratios", {}).get(key, r.get("medians", {}).get(key))
        shown = "—" if measured is None else f"{measured:.3f}"
        met = (r.get("target_met") or {}).get(key)
        verdict = "**met**" if met else "**missed**" if met is not None else ""
        out.append(f"| `{key}` {_md(goal)} | {shown} | {verdict} |")
    return "\n".join(out)


def bench_notes(root: Path, name: str) -> str:
    notes = load_result(name, root).get("notes") or []
    if not notes:
        return ""
    return "\n".join(["Notes recorded with the run:", "", *(f"- {_md(note)}" for note in notes)])


def bench_summary(root: Path) -> str:
    """One row per committed result: when it ran, how long, and its targets."""
    out = ["| benchmark | measured | took | targets |", "|---|---|---:|---|"]
    for name in result_names(root):
        r = load_result(name, root)
        met = r.get("target_met") or {}
        targets = f"{sum(met.values())} of {len(met)} met" if met else "none: it measures"
        # gpu-<card> results share one page, gpu.md
        stem = next((p for p in (name, name.split("-")[0]) if _bench_page(root, p)), None)
        shown = f"[{name}]({stem}.md)" if stem else name
        minutes = f"{r['wall_seconds'] / 60:.0f} min"
        out.append(f"| {shown} | {r['finished'][:10]} | {minutes} | {targets} |")
    return "\n".join(out)


def bench_each(root: Path, prefix: str) -> str:
    """Every committed result whose name starts with ``prefix`` (``gpu-``: one per card
    measured), each under its card's heading; one sentence while there is none."""
    names = [n for n in result_names(root) if n.startswith(prefix)]
    if not names:
        return f"*Nothing measured yet: no `benchmarks/results/{prefix}*.json` is committed.*"
    parts: list[str] = []
    for name in names:
        card = load_result(name, root).get("workload", {}).get("card") or {}
        parts += [f"## {_md(str(card.get('name', name)))}", "", bench_facts(root, name), ""]
        parts += [bench_table(root, name), "", bench_targets(root, name), ""]
        parts += [bench_notes(root, name), ""]
    return "\n".join(parts).rstrip()


def _bench_page(root: Path, stem: str) -> bool:
    return (root / "docs" / "benchmarks" / f"{stem}.md").is_file()


def bench_plot(root: Path, name: str) -> str:
    plots = sibling("plots")
    if name not in plots.PLOTS:
        raise DocgenError(f"no plot for {name}; plots: {sorted(plots.PLOTS)}")
    return f"![{plots.PLOTS[name].alt}]({plot_file(name)})"


def plot_file(name: str) -> str:
    """The figure's file name, beside the benchmark's page."""
    return f"{name}.png"


DIRECTIVES: dict[str, Callable[..., str]] = {
    "config-reference": lambda root: config_reference(root),
    "studies-table": lambda root: studies_table(root),
    "published": published,
    "cli-help": lambda root: cli_help(root),
    "bench": bench_value,
    "bench-facts": bench_facts,
    "bench-table": bench_table,
    "bench-targets": bench_targets,
    "bench-notes": bench_notes,
    "bench-plot": bench_plot,
    "bench-summary": lambda root: bench_summary(root),
    "bench-each": bench_each,
}
