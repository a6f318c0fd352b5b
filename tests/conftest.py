"""Shared fixtures: the real composed config, a real MLflow server with its artifacts in a real
S3-protocol server, a scripted trainer."""

from __future__ import annotations

import os
import secrets
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


class S3Server:
    """moto's standalone S3 server, a subprocess on loopback: the S3 protocol over HTTP.

    Stands where MinIO or a cloud bucket stands in production; the keys are random per session
    (the server accepts any).
    """

    def __init__(self, root: Path, bucket: str = "sweeps-artifacts") -> None:
        self.root, self.bucket = root, bucket
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": secrets.token_hex(8),
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.url,
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> S3Server:
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "s3.log").open("ab")
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/moto-api/", timeout=60)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


class MlflowServer:
    """A real `mlflow server` subprocess on loopback with served artifacts.

    Args:
        root: Its folder (log, default backend store and artifacts).
        backend_uri: The backend store; SQLite in ``root`` when None.
        s3: Keeps the artifacts in this S3 server's bucket (``--artifacts-destination s3://``),
            as a team's server does; in ``root`` when None.
    """

    def __init__(self, root: Path, backend_uri: str | None = None,
                 s3: S3Server | None = None) -> None:  # fmt: skip
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_uri = backend_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.s3 = s3
        self.artifacts = f"s3://{s3.bucket}/artifacts" if s3 else str(root / "artifacts")
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
            self.artifacts,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log = (self.root / "server.log").open("ab")
        env = {**os.environ, **(self.s3.env if self.s3 else {})}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
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
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3-protocol server for the session, with an empty bucket."""
    pytest.importorskip("moto", reason='pip install -e ".[dev]" (moto[server])')
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[MlflowServer]:
    """One real MLflow tracking server for the whole session (slow tests only), keeping its
    artifacts in the session's S3 bucket as a team's server does."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), s3=s3_server).start()
    yield server
    server.stop()
