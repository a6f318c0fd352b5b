"""Shared fixtures: the real composed config, a real MLflow server, a scripted trainer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from sweeps.catalogue import conf_dir  # noqa: E402
from sweeps.config import RunConfig, load  # noqa: E402


def compose_raw(study: str, *overrides: str) -> dict:
    """The study's config exactly as `python -m sweeps run +study=...` composes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+study={study}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def compose(study: str, *overrides: str, store: Path | None = None) -> RunConfig:
    """Composes and validates a study; ``store`` keeps everything in a temporary folder."""
    extra = [f"store_dir={store}"] if store is not None else []
    return load(compose_raw(study, *extra, *overrides), study=study)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A fresh embedded store folder for one test."""
    return tmp_path / "store"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class MlflowServer:
    """A real `mlflow server` subprocess on loopback with served artifacts."""

    def __init__(self, root: Path, backend_uri: str | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_uri = backend_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"{self.uri}/health")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real MLflow tracking server for the whole session (slow tests only)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()
