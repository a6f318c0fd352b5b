"""MkDocs hook: the generated parts of the site (see `docgen`), and the API's source tree.

- Pages: every ``{{ directive }}`` is expanded from ``conf/``, ``benchmarks/results/`` and the
  CLI before Markdown sees the page.
- Figures: ``benchmarks/NAME.png`` is drawn from ``benchmarks/results/NAME.json``.
- API: the package installs ``src/models`` and ``src/data`` as ``sweeps.models`` and
  ``sweeps.data`` (``[tool.setuptools.package-dir]``), a layout griffe cannot see from the
  checkout. A temporary tree of links mirrors the installed layout for mkdocstrings, so the
  API pages are read from this checkout's sources, statically, without importing anything.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import tomllib
from pathlib import Path

import docgen
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = docgen.ROOT


@event_priority(100)  # before mkdocstrings' on_config, which creates its Python handler
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    plugin = config.plugins.get("mkdocstrings")
    if plugin is not None:
        python = plugin.config.handlers.setdefault("python", {})
        python["paths"] = [str(installed_layout(ROOT))]
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    plots = docgen.sibling("plots")
    for name in plots.PLOTS:
        src_uri = f"benchmarks/{docgen.plot_file(name)}"
        png = plots.render(name, docgen.load_result(name, ROOT))
        files.append(File.generated(config, src_uri, content=png))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    try:
        return docgen.expand(markdown, ROOT)
    except docgen.DocgenError as exc:
        raise PluginError(f"{page.file.src_uri}: {exc}") from None


def installed_layout(root: Path) -> Path:
    """A temporary folder whose packages sit as `pip install` puts them, linked to `root`."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    package_dir: dict[str, str] = setuptools["tool"]["setuptools"]["package-dir"]
    # One folder per checkout, remade on every build: `mkdocs serve` rebuilds often and is
    # usually stopped by a signal, which skips atexit, so fresh names would pile up.
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    tree = Path(tempfile.gettempdir()) / f"sweeps-docs-api-{digest}"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    for name in sorted(package_dir, key=lambda n: n.count(".")):
        source = root / package_dir[name]
        dest = tree.joinpath(*name.split("."))
        children = {n.rsplit(".", 1)[1] for n in package_dir if n.startswith(f"{name}.")}
        if not children:
            dest.symlink_to(source, target_is_directory=True)
            continue
        # A package with mapped subpackages: its own files linked one by one, the
        # subpackages' places left for their own links.
        dest.mkdir(parents=True)
        for entry in source.iterdir():
            if entry.name not in children and entry.name != "__pycache__":
                (dest / entry.name).symlink_to(entry)
    return tree
