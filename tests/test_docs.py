"""The documentation's generated pages match the repository they are generated from.

The generator (``docs/hooks/docgen.py``) is loaded by file, as MkDocs loads it; it needs
neither MkDocs nor the network, so these tests run with the ``dev`` extra alone.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
BENCH_PAGES = ROOT / "docs" / "benchmarks"
RESULTS = ROOT / "benchmarks" / "results"
HEADING = re.compile(r"^#{2,3} (.+)$", re.M)
ROW = re.compile(r"^\| `([^`]+)` \| (`+)(.*?)\2 \|", re.M)


def _load(name: str) -> ModuleType:
    path = ROOT / "docs" / ("hooks" if name == "docgen" else "scripts") / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


docgen = _load("docgen")


def _sections(markdown: str) -> dict[str, dict[str, str]]:
    """``{heading: {key: default as written}}`` of the reference's key tables."""
    out: dict[str, dict[str, str]] = {}
    parts = HEADING.split(markdown)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        out[heading.strip()] = {m.group(1): m.group(3) for m in ROW.finditer(body)}
    return out


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a loaded config and their values; an empty mapping is a leaf."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if not prefix and key in ("defaults", "hydra"):
                continue
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _config_files(root: Path) -> list[tuple[str, Path]]:
    """``(section heading, file)`` of every config file the reference documents."""
    files = [("Top level", root / "conf" / "config.yaml")]
    for group_dir in sorted(p for p in (root / "conf").iterdir() if p.is_dir()):
        if group_dir.name != "study":
            files += [(f"{group_dir.name}: {f.stem}", f) for f in sorted(group_dir.glob("*.yaml"))]
    return files


def _assert_reference_covers(root: Path) -> dict[str, dict[str, str]]:
    sections = _sections(docgen.config_reference(root))
    for heading, path in _config_files(root):
        group = "" if heading == "Top level" else heading.split(":")[0] + "."
        # OmegaConf reads the file, not the generator's parser: two readers must agree.
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        expected = {f"{group}{k}": v for k, v in _leaves(loaded).items()}
        shown = sections.get(heading)
        assert shown is not None, f"no section '{heading}' for {path}"
        assert set(shown) == set(expected), f"{path}: keys differ"
        for key, value in expected.items():
            assert yaml.safe_load(shown[key]) == value, f"{path}: {key} shows {shown[key]!r}"
    return sections


def test_reference_lists_every_key_of_conf_with_its_default() -> None:
    _assert_reference_covers(ROOT)


def test_reference_covers_the_composed_default_config() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config")
    composed = _leaves(OmegaConf.to_container(cfg, resolve=False))
    sections = _sections(docgen.config_reference(ROOT))
    defaults = dict(docgen.config_groups(ROOT))
    for key, value in composed.items():
        group = key.split(".")[0]
        heading = f"{group}: {defaults[group]}" if group in defaults else "Top level"
        assert key in sections[heading], f"{key} is not in '{heading}'"
        assert yaml.safe_load(sections[heading][key]) == value


def test_a_key_added_to_the_yaml_appears_without_editing_the_docs(tmp_path: Path) -> None:
    shutil.copytree(CONF, tmp_path / "conf")
    with (tmp_path / "conf" / "train" / "default.yaml").open("a", encoding="utf-8") as f:
        f.write("warmup_lr: [0.1, 0.01]   # a key the docs have never heard of\n")
    sections = _assert_reference_covers(tmp_path)
    assert sections["train: default"]["train.warmup_lr"] == "[0.1, 0.01]"
    assert "a key the docs have never heard of" in docgen.config_reference(tmp_path)


def test_meaning_comes_from_the_comment_on_or_above_a_key() -> None:
    keys = {k.path: k.meaning for k in docgen.read_config_file(CONF / "config.yaml").keys}
    assert keys["report.margin"].startswith("equivalence band +/- margin")  # the comment on it
    assert keys["seed"].startswith("Base seed.")  # the comment block above it
    sweep = {k.path: k.meaning for k in docgen.read_config_file(CONF / "sweep" / "default.yaml",
                                                                 prefix="sweep.").keys}  # fmt: skip
    # A comment continued on an aligned line below the key is one meaning.
    assert sweep["sweep.sampler_seed"].endswith("sequence of sampled parameters exactly")


def _results() -> list[str]:
    return sorted(p.stem for p in RESULTS.glob("*.json"))


def _pages_showing(name: str) -> list[Path]:
    def shows(text: str) -> bool:
        each = re.findall(r"\{\{ bench-each (\S+) \}\}", text)
        return f"{{{{ bench-table {name} }}}}" in text or any(name.startswith(p) for p in each)

    return [p for p in BENCH_PAGES.glob("*.md") if shows(p.read_text())]


@pytest.mark.parametrize("name", _results())
def test_benchmark_pages_show_the_committed_numbers(name: str) -> None:
    pages = _pages_showing(name)
    assert pages, f"no benchmark page shows benchmarks/results/{name}.json"
    result = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    text = "\n".join(docgen.expand(p.read_text(encoding="utf-8"), ROOT) for p in pages)
    text = re.sub(r"\\([*_{}\[\]|])", r"\1", text)  # Markdown escapes, as the page shows them
    for row in result["table"]:
        for cell in row:
            assert str(cell) in text, f"{name}: table cell {cell!r} is not on the page"
    for key, value in (result.get("ratios") or {}).items():
        if key in (result.get("targets") or {}):
            assert f"{value:.3f}" in text, f"{name}: target {key} = {value:.3f} is not shown"
    assert result["finished"][:10] in text


def test_inline_figures_are_read_from_the_json() -> None:
    page = docgen.expand((BENCH_PAGES / "overhead.md").read_text(encoding="utf-8"), ROOT)
    ratios = json.loads((RESULTS / "overhead.json").read_text(encoding="utf-8"))["ratios"]
    assert f"{ratios['sweeps_over_bare']:.3f}x the wall" in page
    answer = json.loads((RESULTS / "answer.json").read_text(encoding="utf-8"))
    fast = next(r for r in answer["repeats"] if r.get("way") == "fast")
    assert docgen.bench_value(ROOT, "answer", "repeats[kind=way,way=fast].trials") == str(
        fast["trials"]
    )
    assert docgen.format_value(-0.01566, "+.1f%pt") == "−1.6"


def test_every_page_expands() -> None:
    for page in sorted((ROOT / "docs").rglob("*.md")):
        docgen.expand(page.read_text(encoding="utf-8"), ROOT)  # raises on a broken directive


def test_a_broken_directive_fails_the_build() -> None:
    with pytest.raises(docgen.DocgenError, match="unknown directive"):
        docgen.expand("{{ no-such-thing }}")
    with pytest.raises(docgen.DocgenError, match="no 'nope'"):
        docgen.expand("{{ bench overhead ratios.nope }}")


def test_studies_show_the_numbers_their_files_publish() -> None:
    for path in sorted((CONF / "study").glob("*.yaml")):
        ablation = yaml.safe_load(path.read_text(encoding="utf-8")).get("ablation") or {}
        table = docgen.published(ROOT, path.stem)
        for row in [ablation.get("baseline") or {}, *(ablation.get("variants") or [])]:
            for value in (row.get("published") or {}).values():
                assert f"{value:g}" in table, f"{path.stem}: {value} is not shown"


def test_every_plot_renders() -> None:
    plots = docgen.sibling("plots")
    for name in plots.PLOTS:
        png = plots.render(name, docgen.load_result(name, ROOT))
        assert png.startswith(b"\x89PNG"), name


def test_get_started_runs_the_readme_commands() -> None:
    get_started = _load("get_started")
    blocks = get_started.blocks()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = blocks[0]
    assert setup.how == "run" and setup.code in readme
    assert setup.code.startswith("python3.11 -m venv .venv")
    tests = [b for b in blocks if b.code == "python -m pytest"]
    assert tests and tests[0].how.startswith("skip:") and "python -m pytest" in readme
    script = get_started.script(blocks)
    assert setup.code in script and "set -eo pipefail" in script


def test_own_study_walkthrough_keeps_the_shape_its_end_to_end_test_reads() -> None:
    # tests/test_own_study.py runs this walkthrough through the real CLI, read by these parsers.
    from test_own_study import readme_commands, readme_files, readme_section

    page = (ROOT / "docs" / "how-to" / "own-data.md").read_text(encoding="utf-8")
    section = readme_section(page)
    files = readme_files(section)
    assert set(files) == {"conf/study/shapes.yaml", "mymodels.py"}
    assert [" ".join(c[3:]) for c in readme_commands(section)] == [
        "studies",
        "run +study=shapes",
        "run +study=shapes sweep.mode=ablation",
        "report +study=shapes",
    ]
    # The model page shows the same builder, so the two cannot drift apart.
    model_page = (ROOT / "docs" / "how-to" / "own-model.md").read_text(encoding="utf-8")
    shown = re.search(r"```python\n(.*?)```", model_page, re.S)
    assert shown is not None and shown.group(1) == files["mymodels.py"]


def test_readme_verdict_figures_are_those_of_the_committed_benchmark() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = json.loads((RESULTS / "verdicts.json").read_text(encoding="utf-8"))["medians"]
    for spread, label in (("0.005", "0.5 point"), ("0.01", "1 point"), ("0.02", "2 points")):
        row = next(line for line in readme.splitlines() if line.startswith(f"| {label} |"))
        fwer, se = m[f"null10_s{spread}_fwer"], m[f"null10_s{spread}_fwer_se"]
        assert f"{fwer:.3f} ± {se:.3f}" in row, row
        assert f"{m[f'null10_s{spread}_null_repeats']:.1f} of 10" in row, row
        assert f"{m[f'one_at_delta_s{spread}_power']:.3f}" in row, row


def test_readme_pooler_figures_are_those_of_the_committed_benchmark() -> None:
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    m = json.loads((RESULTS / "pooler.json").read_text(encoding="utf-8"))["medians"]
    tx, direct = "pgbouncer_transaction", "direct"
    assert f"transaction mode {m[f'{tx}_trials_per_minute']:.0f} trials a minute on " \
           f"{m[f'{tx}_max_server_connections']:.0f} server connections" in readme  # fmt: skip
    assert f"straight to PostgreSQL {m[f'{direct}_trials_per_minute']:.0f} a minute with all " \
           f"{m[f'{direct}_max_server_connections']:.0f} connections taken and " \
           f"{m[f'{direct}_retries']:.0f} calls" in readme  # fmt: skip


def test_readme_says_which_gpus_were_measured() -> None:
    """The README's GPU section follows the committed gpu-<card>.json files."""
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    cards = [json.loads(p.read_text(encoding="utf-8"))["workload"]["card"]["name"]
             for p in sorted(RESULTS.glob("gpu-*.json"))]  # fmt: skip
    assert ("No GPU has been measured yet" in readme) is (not cards)
    for card in cards:
        assert card in readme, f"README's GPU section does not name the measured {card}"


def test_each_card_measured_gets_its_section_and_none_says_so(tmp_path: Path) -> None:
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    assert "Nothing measured yet" in docgen.bench_each(tmp_path, "gpu-")
    # A card's result: the shape gpu writes (its table, targets and notes), another card's name.
    record = json.loads((RESULTS / "backends.json").read_text(encoding="utf-8"))
    record["workload"]["card"] = {"name": "NVIDIA H200", "slug": "nvidia-h200"}
    record["targets"], record["target_met"] = (
        {"jax_over_tensorflow_fashion_float32": "<= 9"},
        {"jax_over_tensorflow_fashion_float32": True},
    )
    path = tmp_path / "benchmarks" / "results" / "gpu-nvidia-h200.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    text = docgen.bench_each(tmp_path, "gpu-")
    assert text.startswith("## NVIDIA H200") and "Nothing measured" not in text
    assert docgen.bench_table(tmp_path, "gpu-nvidia-h200") in text
    assert "**met**" in text and "gpu-nvidia-h200.json" in text
    (tmp_path / "docs" / "benchmarks").mkdir(parents=True)
    (tmp_path / "docs" / "benchmarks" / "gpu.md").write_text("{{ bench-each gpu- }}")
    assert "[gpu-nvidia-h200](gpu.md)" in docgen.bench_summary(tmp_path)
