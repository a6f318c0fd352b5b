"""Run every shell command of the Get started page, as a new user would, so it cannot rot.

The page's ``bash`` blocks run in order, in one shell, in a fresh copy of the repository
(the files git tracks or would track: what a clone of this tree holds) and with no virtual
environment active, so the page's own ``python3.11 -m venv`` makes a fresh one. pip's cache
is the user's, so packages are not downloaded again. An HTML comment right above a block
says how to run it:

- none: run it; a failing command fails the check.
- ``<!-- ci: background URL -->``: a server; start it, wait until URL answers 200, stop it.
- ``<!-- ci: skip: REASON -->``: not run here (e.g. the test suite, which CI runs itself).

    python docs/scripts/get_started.py            # run the page
    python docs/scripts/get_started.py --print    # only show the script it would run
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "get-started.md"
BLOCK = re.compile(r"(?:<!--\s*ci:\s*(?P<how>.*?)\s*-->\s*\n)?```bash\n(?P<code>.*?)```", re.S)
WAIT_SECONDS = 120


@dataclass(frozen=True)
class Block:
    code: str
    how: str  # "run", "background URL" or "skip: REASON"


def blocks(page: Path = PAGE) -> list[Block]:
    """The page's bash blocks with how each runs; a directive that is not understood fails."""
    found = []
    for match in BLOCK.finditer(page.read_text(encoding="utf-8")):
        how = (match.group("how") or "run").strip()
        if not (how == "run" or re.fullmatch(r"background \S+", how) or re.match(r"skip: \S", how)):
            raise ValueError(f"{page.name}: unknown directive 'ci: {how}'")
        found.append(Block(match.group("code").strip(), how))
    if not found:
        raise ValueError(f"{page.name} has no bash blocks")
    return found


def script(page_blocks: list[Block]) -> str:
    """One bash script running the blocks in order; it stops at the first failure."""
    lines = [
        # As a user's shell runs them, but stopping at the first failure. Not `-u`: the page
        # is for interactive shells, where unset variables are empty.
        "set -eo pipefail",
        # Stop any server a block left behind, whatever happens.
        "servers=()",
        'trap \'for g in "${servers[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done\' EXIT',
    ]
    for i, block in enumerate(page_blocks, 1):
        shown = block.code.replace("\n", "\n#   ")
        lines.append(f"echo {shlex.quote(f'--- block {i} ({block.how}): {shown}')}")
        lines.append("SECONDS=0")
        if block.how.startswith("skip:"):
            continue
        if block.how == "run":
            # `set -e` does not stop inside `a && b && c`: the list's status is checked here.
            failed = f'{{ echo "block {i} failed"; exit "$status"; }}'
            lines += [block.code, f'status=$?; [ "$status" -eq 0 ] || {failed}']
        else:
            url = block.how.split()[1]
            lines += [
                f"cat > block-{i}.sh <<'BLOCK'\n{block.code}\nBLOCK",
                # Its own session, so that stopping it stops every process it started.
                f"setsid bash block-{i}.sh > block-{i}.log 2>&1 &",
                "servers+=($!)",
                f"python - {shlex.quote(url)} {WAIT_SECONDS} <<'PY' || "
                f"{{ cat block-{i}.log; exit 1; }}",
                WAIT_FOR_URL,
                "PY",
                'kill -TERM -- "-${servers[-1]}"',
                f"echo {shlex.quote(f'{url} answered')}",
            ]
        lines.append(f'echo "--- block {i} took ${{SECONDS}} s"')
    return "\n".join(lines) + "\n"


WAIT_FOR_URL = """\
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(1)
sys.exit(f"{url} did not answer within {sys.argv[2]} s")"""


def fresh_copy(dest: Path) -> None:
    """The files a clone of this tree would hold: tracked ones and untracked, unignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def clean_env() -> dict[str, str]:
    """This environment without an active virtualenv or import path of its own."""
    env = dict(os.environ)
    venv = env.pop("VIRTUAL_ENV", None)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV_PROMPT"):
        env.pop(name, None)
    if venv:
        bin_dir = str(Path(venv) / "bin")
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != bin_dir)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the script, run nothing")
    parser.add_argument("--keep", action="store_true", help="keep the copy, print its path")
    args = parser.parse_args()
    text = script(blocks())
    if args.print:
        print(text, end="")
        return 0
    work = Path(tempfile.mkdtemp(prefix="sweeps-get-started-"))
    started = time.monotonic()
    try:
        fresh_copy(work)
        (work / ".get-started.sh").write_text(text, encoding="utf-8")
        done = subprocess.run(["bash", ".get-started.sh"], cwd=work, env=clean_env(), check=False)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    verdict = "passed" if done.returncode == 0 else "FAILED"
    print(f"get-started page: {verdict} in {minutes:.1f} min")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
