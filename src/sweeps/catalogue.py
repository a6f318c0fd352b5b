"""The study catalogue: where configs are found, and which studies there are.

The installed tree (``sweeps.conf``) with the user's own folder searched in front of it
(``--config-dir DIR``, ``SWEEPS_CONFIG_DIR`` or ``./conf``), the list of studies with the first
sentence of each file's header, and the Hydra search-path plugin that puts the user's folder
first. Nothing here imports TensorFlow, MLflow or Optuna: ``sweeps studies`` answers at once.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

CONFIG_DIR_ENV = "SWEEPS_CONFIG_DIR"
_OLD_CONFIG_DIR_ENV = "SWEEPS_CONF_DIR"  # deprecated: it used to replace the installed tree


def conf_dir() -> Path:
    """The config tree installed with sweeps (``sweeps.conf``)."""
    import importlib.resources

    return Path(str(importlib.resources.files("sweeps.conf")))


def user_conf_dir() -> Path | None:
    """The user's config folder, searched in front of the installed tree, or None.

    ``--config-dir DIR`` (which sets ``SWEEPS_CONFIG_DIR``), else ``SWEEPS_CONFIG_DIR``, else
    ``conf/`` in the working directory when it holds a ``study/`` folder. The installed tree
    itself (``conf/`` of a checkout) is not searched twice.
    """
    given = os.environ.get(CONFIG_DIR_ENV) or os.environ.get(_OLD_CONFIG_DIR_ENV)
    if given:
        path = Path(given).expanduser().resolve()
        if not path.is_dir():
            fail(f"config folder {given} does not exist: give --config-dir DIR (or "
                 f"{CONFIG_DIR_ENV}) a folder holding study/NAME.yaml")  # fmt: skip
    else:
        path = (Path.cwd() / "conf").resolve()
        if not (path / "study").is_dir():
            return None
    return None if path == conf_dir().resolve() else path


def studies() -> dict[str, Path]:
    """Every study file by name, sorted; a user's file wins over an installed one."""
    found = {p.stem: p for p in (conf_dir() / "study").glob("*.yaml")}
    user = user_conf_dir()
    if user is not None:
        found.update({p.stem: p for p in (user / "study").glob("*.yaml")})
    return dict(sorted(found.items()))


def study_names() -> list[str]:
    return list(studies())


def describe_study(path: Path) -> str:
    """The first sentence of a study file's header comment, without a leading ``name:``."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        # Commands (indented), the source line and blank lines end the first paragraph.
        if text.startswith("@package"):
            continue
        if not text or line.startswith("#  ") or text.startswith("Source:"):
            if words:
                break
            continue
        words.append(text)
    sentence = " ".join(words)
    end = re.search(r"\.(\s|$)", sentence)
    sentence = sentence[: end.start()] if end else sentence
    prefix = f"{path.stem}:"
    if sentence.lower().startswith(prefix.lower()):
        sentence = sentence[len(prefix) :].strip()
    return sentence if len(sentence) <= 100 else sentence[:97].rsplit(" ", 1)[0] + " ..."


def study_lines() -> list[str]:
    """``name  where  description`` for every study, the columns aligned."""
    installed = (conf_dir() / "study").resolve()
    rows = []
    for name, path in studies().items():
        if path.parent.resolve() == installed:
            where = "package"
        else:
            where = _shown_path(path)
            if (installed / path.name).is_file():
                where += " (in front of the package's)"
        rows.append((name, where, describe_study(path)))
    width = max((len(r[0]) for r in rows), default=0)
    where_width = max((len(r[1]) for r in rows), default=0)
    return [f"{n:<{width}}  {w:<{where_width}}  {d}".rstrip() for n, w, d in rows]


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def take_config_dir(args: list[str]) -> list[str]:
    """Removes ``--config-dir DIR`` (or ``=DIR``) from ``args`` and exports it for the
    commands (and trial processes) to find; Hydra never sees the flag."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--config-dir":
            if i + 1 >= len(args):
                fail("--config-dir needs a folder: --config-dir DIR")
            os.environ[CONFIG_DIR_ENV] = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config-dir="):
            os.environ[CONFIG_DIR_ENV] = arg.split("=", 1)[1]
        else:
            out.append(arg)
        i += 1
    if os.environ.get(_OLD_CONFIG_DIR_ENV):
        print(f"sweeps: {_OLD_CONFIG_DIR_ENV} is deprecated: use {CONFIG_DIR_ENV} (searched in "
              "front of the installed configs, which stay available)", file=sys.stderr)  # fmt: skip
    return out


def config_path() -> Path:
    """The installed tree, Hydra's primary config folder, with the user's folder put in front.

    ``hydra.searchpath`` and Hydra's own ``--config-dir`` add folders *behind* the primary one,
    and the primary config must be found in it; a SearchPathPlugin registered in this process
    puts the user's folder before it instead, so the user's files win and everything else
    (``config.yaml``, the groups, the other studies) comes from the package.
    """
    from hydra.core.plugins import Plugins

    Plugins.instance().register(_user_search_path_plugin())
    return conf_dir()


_PLUGIN: list[type] = []


def _user_search_path_plugin() -> type:
    """The plugin class, made once (Hydra registers classes by name, and imports lazily here)."""
    if _PLUGIN:
        return _PLUGIN[0]
    from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class UserConfigSearchPath(SearchPathPlugin):
        """Puts the user's config folder before sweeps' installed tree (and nothing else's)."""

        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            installed = conf_dir().resolve()
            mains = [e for e in search_path.get_path() if e.provider == "main"]
            if not mains or Path(mains[0].path.removeprefix("file://")).resolve() != installed:
                return  # another Hydra app in this process, or a compose of another folder
            user = user_conf_dir()
            if user is not None:
                search_path.prepend(
                    "sweeps-user", f"file://{user}", anchor=SearchPathQuery(provider="main")
                )

    _PLUGIN.append(UserConfigSearchPath)
    return UserConfigSearchPath


def fail(message: str, code: int = 2) -> None:
    """Prints one line to stderr and exits."""
    print(f"sweeps: error: {message}", file=sys.stderr)
    raise SystemExit(code)
