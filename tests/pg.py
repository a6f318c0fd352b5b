"""A throwaway PostgreSQL cluster for tests: the installed binaries on a free loopback port.

Used as a pytest plugin (``pytest_plugins = ["pg"]``). ``initdb`` refuses to run as root, so
as root the server runs as the ``postgres`` user, in a temporary folder that user owns. The
cluster takes TCP connections on 127.0.0.1 only, with a random password, and is deleted at
the end of the session.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port


def _bin_dir() -> Path:
    """``SWEEPS_PG_BIN``, else the newest of Debian's /usr/lib/postgresql/VERSION/bin."""
    if os.environ.get("SWEEPS_PG_BIN"):
        return Path(os.environ["SWEEPS_PG_BIN"])
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name), default=Path("/usr/lib/postgresql/15/bin"))


PG_BIN = _bin_dir()
SERVER_USER = "postgres"  # who runs the server when the tests run as root


class PostgresCluster:
    """One PostgreSQL server: ``initdb``, ``pg_ctl start``, databases on demand, ``stop``.

    Args:
        root: An empty folder for the data directory, the socket and the log.
        user: The superuser created by initdb; clients log in as this user over TCP.
    """

    def __init__(self, root: Path, user: str = "sweeps", max_connections: int = 200) -> None:
        self.root = root
        self.max_connections = max_connections
        self.user = user
        self.password = secrets.token_hex(12)  # hex: safe inside a URL without quoting
        self.host = "127.0.0.1"
        self.port = free_port()
        self.data = root / "data"
        self.log = root / "server.log"

    def _as_server_user(self, *cmd: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", SERVER_USER, "--", *cmd]
        return list(cmd)

    def _run(self, *cmd: str) -> None:
        out = subprocess.run(self._as_server_user(*cmd), cwd=self.root, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        if out.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{cmd[0]} failed: {out.stderr.strip()}\n{log[-2000:]}")

    def start(self) -> PostgresCluster:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SERVER_USER)
            for path in (self.root, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", self.user,
                  f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                  "-E", "UTF8", "--locale=C")  # fmt: skip
        pwfile.unlink()
        # Durability settings off: the cluster lives for one test session.
        self.options = (f"-p {self.port} -k {self.root} -c listen_addresses={self.host} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   f"-c max_connections={self.max_connections}")  # fmt: skip
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "60", "-o", self.options, "start")  # fmt: skip
        return self

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stops the server (closing every connection), waits, starts it again: a failover."""
        self.stop()
        time.sleep(down_seconds)
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "60", "-o", self.options, "start")  # fmt: skip

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str, driver: str = "postgresql") -> str:
        """A SQLAlchemy URL with the password in it, as a user would write ``storage.url``."""
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def client_env(self) -> dict[str, str]:
        """Environment for libpq clients (psql, pg_isready) to reach this server."""
        return {**os.environ, "PGHOST": self.host, "PGPORT": str(self.port),
                "PGUSER": self.user, "PGPASSWORD": self.password,
                "PATH": f"{PG_BIN}:{os.environ.get('PATH', '')}"}  # fmt: skip

    def create_database(self, name: str) -> str:
        """Creates an empty database and returns its URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL server for the session; skipped when the binaries are not installed."""
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.skip(f"running as root needs a '{SERVER_USER}' user to run initdb")
    # Under /tmp, not pytest's folders: the server user must be able to reach its data.
    root = Path(tempfile.mkdtemp(prefix="sweeps-pg-", dir="/tmp"))
    cluster = PostgresCluster(root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
