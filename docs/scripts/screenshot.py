"""Regenerate the MLflow UI screenshot of the Get started pages.

Runs the quickstart into a temporary folder, serves its store with ``mlflow ui`` on 127.0.0.1,
opens the study's runs table in headless Chromium with the study's run expanded, and saves a
PNG::

    python docs/scripts/screenshot.py                 # the full quickstart, ~1.5 min on 2 cores
    python docs/scripts/screenshot.py --quick         # 4 trials of 3 epochs
    python docs/scripts/screenshot.py --store DIR     # an existing working folder, no training

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``), so the
script needs only the standard library, Chromium and the environment that has sweeps installed.
It waits for the table's rows to appear rather than for a fixed time: MLflow's UI is a
JavaScript application that renders well after the page has loaded.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "assets" / "mlflow-ui.png"
QUICK = ["sweep.n_trials=4", "train.epochs=3"]
WIDTH, HEIGHT = 1600, 900
# No telemetry from the quickstart, the server or the UI: the screenshot is made offline.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--quick", action="store_true", help=f"run the quickstart with {QUICK}")
    parser.add_argument("--store", type=Path, help="a folder that already holds sweeps-store/")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()

    env = {**os.environ, **QUIET_ENV}
    with tempfile.TemporaryDirectory(prefix="sweeps-screenshot-") as tmp:
        work = args.store.resolve() if args.store else Path(tmp)
        if not args.store:
            run_quickstart(work, QUICK if args.quick else [], env)
        port = free_port()
        db = work / "sweeps-store" / "mlflow.db"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "ui",
                "--backend-store-uri",
                f"sqlite:///{db}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: http_ok(f"{base}/health"), 120, "mlflow ui to answer")
            png = capture(args.chromium, base, Path(tmp) / "profile")
        finally:
            server.terminate()
            server.wait(timeout=30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png):,} bytes)")
    return 0


def run_quickstart(work: Path, overrides: list[str], env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "sweeps", "run", "+study=quickstart", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=work, env=env, check=True)


def capture(chromium: str, base: str, profile: Path) -> bytes:
    """Screenshot of the quickstart's runs table, in the view sweeps saved for the study."""
    # The address the quickstart prints last: the runs table in the study's saved view.
    view = "workflowType=machine_learning&viewStateShareKey=quickstart-search"
    url = f"{base}/#/experiments/1/runs?{view}"
    with DevTools(chromium, profile) as page:
        page.navigate(base + "/")
        wait_for(lambda: page.eval("document.readyState") == "complete", 60, "MLflow's UI to load")
        # MLflow 3 opens an assistant panel on a browser's first visit; a reader's second look
        # is without it, and the table gets the width.
        page.eval(
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"
        )
        page.navigate(url)
        expander = "document.querySelector('[col-id=\"attributes.`Run Name`\"] button')"
        wait_for(lambda: page.eval(f"!!{expander}"), 60, "the study's run in the table")
        page.eval(f"{expander}.click()")  # expand the study's run: one row per trial below it
        rows = "document.querySelectorAll('.ag-center-cols-container [role=row]').length"
        wait_for(lambda: page.eval(rows) > 1, 30, "the trials' rows")
        time.sleep(1)  # let the last cells and icons paint
        return page.screenshot()


class DevTools:
    """Headless Chromium with one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, chromium: str, profile: Path) -> None:
        self._cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ]
        self._next_id = 0
        self._buffer = b""
        self._session: str | None = None

    def __enter__(self) -> DevTools:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def give_pipe_fds() -> None:
            # Chromium reads commands on fd 3 and writes replies on fd 4. Duplicating first
            # keeps a pipe end that already sits on fd 3 or 4 from being closed by dup2.
            read, write = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self._proc = subprocess.Popen(
            self._cmd,
            close_fds=False,
            preexec_fn=give_pipe_fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._out = os.fdopen(to_chrome_w, "wb", buffering=0)
        self._in = os.fdopen(from_chrome_r, "rb", buffering=0)
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]
        self.send("Page.enable")
        metrics = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics)
        return self

    def __exit__(self, *exc: object) -> None:
        self._out.close()
        self._in.close()
        self._proc.terminate()
        self._proc.wait(timeout=30)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One command; events that arrive before its reply are dropped."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self._session:
            message["sessionId"] = self._session
        self._out.write(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = self._in.read(1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium exited during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])


def wait_for(ready: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"waited {seconds:.0f} s for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
