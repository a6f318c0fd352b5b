"""Scale-out for real: PostgreSQL, an MLflow server and worker processes, wired as in compose.

This machine has no Docker engine, so docker-compose.yml is parsed and its services'
commands and environments are run natively: the PostgreSQL healthcheck and init script
against a throwaway cluster (tests/pg.py), the ``mlflow`` service's command as the tracking
server of every test here, the ``worker`` and ``optuna-dashboard`` commands against both.
The service names the containers use (``postgres:5432``, ``mlflow:5000``) become the local
addresses; everything else is taken from the file and from ``.env.example``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from conftest import free_port, wait_http

if TYPE_CHECKING:
    from pg import PostgresCluster

pytest_plugins = ["pg"]  # the `postgres` fixture: a throwaway PostgreSQL cluster

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SERVICES = {
    "postgres",
    "minio",
    "minio-bucket",
    "mlflow",
    "optuna-dashboard",
    "pgbouncer",
    "worker",
}
CREDENTIALS = ("POSTGRES_USER", "POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY")
SECRETS = ("POSTGRES_PASSWORD", "S3_SECRET_KEY")  # never on a command line
DASHBOARD = Path(sys.executable).parent / "optuna-dashboard"

# -- reading the compose file the way docker compose does -----------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``$$``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``."""

    def value(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name, op, arg = m["name"], m["op"] or "", m["arg"] or ""
        current = env.get(name)
        unset = current is None or (op.startswith(":") and current == "")
        if op.endswith("?") and unset:
            raise KeyError(f"compose would stop: {name} {arg}")
        return arg if op.endswith("-") and unset else (current or "")

    return _VARIABLE.sub(value, text)


def resolve(node: Any, env: dict[str, str]) -> Any:
    """Interpolates every string value of a parsed compose file, as compose does."""
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of an env file, comments and blank lines skipped."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))  # fmt: skip
    return {key.strip(): value.strip() for key, value in pairs}


def services(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file's services, interpolated with ``env`` (raw when None)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return resolve(raw, env)["services"] if env is not None else raw["services"]


def command(service: dict[str, Any]) -> list[str]:
    """A service's command as the argv compose gives the container."""
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


# -- the file itself (no servers) ------------------------------------------------------------


def test_compose_declares_the_services_and_their_wiring():
    svc = services(read_env_file(ENV_EXAMPLE))
    assert set(svc) == SERVICES

    pg = svc["postgres"]
    assert re.fullmatch(r"postgres:15\.\d+", pg["image"])
    assert "ports" not in pg, "the database must not be published"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    data_volume = next(v for v in pg["volumes"] if v.endswith(":/var/lib/postgresql/data"))
    assert data_volume.split(":")[0] in yaml.safe_load(COMPOSE_FILE.read_text())["volumes"]

    mlflow = command(svc["mlflow"])
    assert mlflow[:2] == ["mlflow", "server"]
    assert "--backend-store-uri" not in mlflow  # MLFLOW_BACKEND_STORE_URI: not in argv
    assert svc["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--artifacts-destination") + 1] == "s3://sweeps-artifacts/mlflow"
    assert "volumes" not in svc["mlflow"], "artifacts live in the bucket, not on a volume"
    assert "mlflow:5000" in mlflow[mlflow.index("--allowed-hosts") + 1].split(",")
    assert [p.split(":")[-1] for p in svc["mlflow"]["ports"]] == ["5000"]
    assert svc["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in svc["mlflow"]

    worker = svc["worker"]
    assert worker["build"] == "."
    (gpu,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert "sweep.workers=auto" in command(worker)  # one worker process per card
    # Scalable with --scale worker=N: nothing that two containers cannot share.
    assert "container_name" not in worker and "ports" not in worker
    assert command(worker)[:5] == ["python", "-m", "sweeps", "run", "+study=quickstart"]
    assert {"storage=postgres", "tracking=server"} <= set(command(worker))
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert any(v.split(":")[1] == "/data" for v in worker["volumes"])
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["mlflow"]["condition"] == "service_healthy"

    dashboard = svc["optuna-dashboard"]
    assert command(dashboard)[:2] == ["python", "-c"] and "OPTUNA_STORAGE" in command(dashboard)[2]
    assert "@postgres:5432/" in dashboard["environment"]["OPTUNA_STORAGE"]
    assert [p.rsplit(":", 1)[0] for p in dashboard["ports"]] == ["127.0.0.1:8080"]  # loopback


def test_compose_keeps_artifacts_in_minio_and_gives_pre_emption_its_grace():
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    svc = services(read_env_file(ENV_EXAMPLE))
    # Every image pinned to a release; the two built here have no image line.
    for name, service in raw["services"].items():
        if "image" in service:
            repo, _, tag = service["image"].rpartition(":")
            assert repo and tag and tag != "latest" and not tag.isdigit(), f"{name}: {tag}"
    assert svc["minio"]["image"].startswith("minio/minio:RELEASE.")
    assert "minio-data:/data" in svc["minio"]["volumes"] and "ports" not in svc["minio"]
    bucket = svc["minio-bucket"]
    assert bucket["image"].startswith("minio/mc:RELEASE.") and bucket["restart"] == "no"
    assert "mc mb --ignore-existing" in " ".join(command(bucket))
    assert bucket["environment"]["MC_HOST_minio"].endswith("@minio:9000")
    mlflow = svc["mlflow"]
    assert mlflow["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(mlflow["environment"])
    worker = svc["worker"]
    assert not [k for k in worker["environment"] if k.startswith(("AWS_", "S3_"))]
    # SIGTERM: the worker exits 75 within seconds; the rest is for queued MLflow writes.
    assert worker["init"] is True and worker["stop_grace_period"] == "90s"
    assert "worker-store:/home/sweeps/sweeps-store" in worker["volumes"]
    assert {"pgdata", "minio-data", "worker-store"} == set(raw["volumes"])
    # PgBouncer only with --profile pooler; the workers reach it through SWEEPS_DB_HOST.
    bouncer = svc["pgbouncer"]
    assert bouncer["profiles"] == ["pooler"]
    assert bouncer["environment"]["POOL_MODE"] == "transaction"  # session mode starves workers
    assert worker["depends_on"]["pgbouncer"]["required"] is False
    pooled = services({**read_env_file(ENV_EXAMPLE), "SWEEPS_DB_HOST": "pgbouncer"})
    assert pooled["worker"]["environment"]["POSTGRES_HOST"] == "pgbouncer"


def test_credentials_come_from_env_only():
    raw = COMPOSE_FILE.read_text()
    example = read_env_file(ENV_EXAMPLE)
    for name, service in services().items():
        for key in CREDENTIALS:
            value = (service.get("environment") or {}).get(key)
            assert value is None or value.startswith(f"${{{key}"), f"{name}: {key}={value}"
    urls = re.findall(r"postgresql://\S+", raw)
    assert urls and all(u.startswith("postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@")
                        for u in urls)  # fmt: skip
    assert example["POSTGRES_PASSWORD"] not in raw and example["S3_SECRET_KEY"] not in raw
    # No secret on any command line: each as a token, wherever it lands.
    tokens = {**example, **{key: f"<{key}>" for key in SECRETS}}
    for name, service in services(tokens).items():
        for part in ("command", "entrypoint", "healthcheck"):
            text = json.dumps(service.get(part, ""))
            assert not [k for k in SECRETS if f"<{k}>" in text], f"{name}: {part}"
    # Every variable compose insists on is documented in .env.example.
    required = set(re.findall(r"\$\{(\w+):?\?", raw))
    assert required and required <= set(example)
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_worker_image_is_gpu_tensorflow_non_root_with_memory_growth():
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    base = next(ln for ln in lines if ln.startswith("ARG BASE_IMAGE="))
    assert re.fullmatch(r"ARG BASE_IMAGE=tensorflow/tensorflow:2\.21\.\d+-gpu", base)
    run = " ".join(ln for ln in lines if not ln.startswith("#")).replace("\\ ", "")
    assert 'requirements.py /tmp/sweeps/pyproject.toml "$KERAS_BACKEND"' in run
    assert "pip install -r /tmp/sweeps/requirements.txt" in run
    assert "pip install --no-deps /tmp/sweeps" in run
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in " ".join(lines)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".git"} <= set(ignored)


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_worker_image_installs_tensorflow_only_on_the_tensorflow_backend(backend):
    import tomllib

    out = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements.py"),
                          str(ROOT / "pyproject.toml"), backend],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    tensorflow = [d for d in wanted if d.startswith("tensorflow")]
    assert tensorflow and set(out) == set(wanted) - (set() if backend == "tensorflow"
                                                     else set(tensorflow))  # fmt: skip


# -- the services, run natively --------------------------------------------------------------


@dataclass
class Stack:
    """The compose services' counterparts on this machine."""

    pg: PostgresCluster
    env: dict[str, str]  # .env as a user would write it, with the test cluster's credentials
    mlflow_uri: str
    artifacts: Path

    def database(self) -> tuple[str, str]:
        """A fresh database for one test: its name and its URL."""
        name = f"sweeps_{uuid.uuid4().hex[:8]}"
        return name, self.pg.create_database(name)


def local_argv(argv: list[str], replace: dict[str, str]) -> list[str]:
    """A container's argv for this machine: ``python``/``mlflow`` from this venv, and every
    ``old`` substring of ``replace`` (service addresses, container paths) swapped in."""
    head = {"python": [sys.executable], "mlflow": [sys.executable, "-m", "mlflow"],
            "optuna-dashboard": [str(DASHBOARD)]}  # fmt: skip
    out = list(head.get(argv[0], argv[:1]))
    for arg in argv[1:]:
        for old, new in replace.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


def option(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with the value after ``flag`` set to ``value``."""
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def start(argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, **kwargs)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def stack(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL set up by compose's init script, and the ``mlflow`` service's command."""
    root = tmp_path_factory.mktemp("stack")
    env = {**read_env_file(ENV_EXAMPLE), "POSTGRES_USER": postgres.user,
           "POSTGRES_PASSWORD": postgres.password, "MLFLOW_DB": "mlflow_compose"}  # fmt: skip
    svc = services(env)
    init = next(v.split(":")[0] for v in svc["postgres"]["volumes"] if "initdb.d" in v)
    subprocess.run(["sh", str(ROOT / init)], env={**postgres.client_env(), **env,
                   "POSTGRES_DB": "postgres"}, check=True, capture_output=True)  # fmt: skip
    port = free_port()
    argv = local_argv(command(svc["mlflow"]), {})
    argv = option(argv, "--artifacts-destination", str(root / "mlartifacts"))  # the bucket, here
    argv = option(option(argv, "--host", "127.0.0.1"), "--port", str(port))
    backend = svc["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    here = {"MLFLOW_BACKEND_STORE_URI": backend.replace(
        "@postgres:5432/", f"@{postgres.host}:{postgres.port}/")}  # fmt: skip
    server = start(argv, root / "mlflow.log", env={**os.environ, **here})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=180)
        yield Stack(postgres, env, f"http://127.0.0.1:{port}", root / "mlartifacts")
    finally:
        stop(server)


def mlflow_client(stack: Stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_uri)


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_healthcheck_passes_and_mlflow_keeps_its_runs_there(stack: Stack):
    test = services(stack.env)["postgres"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    env = {**stack.pg.client_env(), "POSTGRES_USER": stack.pg.user, "POSTGRES_DB": "postgres"}
    assert subprocess.run(["sh", "-c", test[1]], env=env, capture_output=True).returncode == 0

    import psycopg

    name = f"exp-{uuid.uuid4().hex[:6]}"
    mlflow_client(stack).create_experiment(name)
    with psycopg.connect(stack.pg.url(stack.env["MLFLOW_DB"])) as conn:
        rows = conn.execute("SELECT name FROM experiments WHERE name = %s", (name,)).fetchall()
    assert rows == [(name,)]


def status_for_host(uri: str, host: str) -> int:
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Host": host})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
@pytest.mark.postgres
def test_mlflow_answers_the_compose_network_name_only_among_strangers(stack: Stack):
    assert status_for_host(stack.mlflow_uri, "mlflow:5000") == 200  # what the workers send
    assert status_for_host(stack.mlflow_uri, "localhost:5000") == 200  # the published port
    assert status_for_host(stack.mlflow_uri, "attacker.example:5000") == 403


def worker_env(stack: Stack, env: dict[str, str]) -> dict[str, str]:
    """The worker service's environment, its service addresses pointed at this machine."""
    compose_env = dict(services(env)["worker"]["environment"])
    assert (compose_env["POSTGRES_HOST"], compose_env["POSTGRES_PORT"]) == ("postgres", "5432")
    assert compose_env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    compose_env.update(POSTGRES_HOST=stack.pg.host, POSTGRES_PORT=str(stack.pg.port),
                       MLFLOW_TRACKING_URI=stack.mlflow_uri)  # fmt: skip
    keep = {k: v for k, v in os.environ.items() if not k.startswith("POSTGRES_")}
    return {**keep, **compose_env}


@pytest.mark.slow
@pytest.mark.postgres
def test_worker_service_command_runs_a_study_against_postgres_and_mlflow(stack, tmp_path):
    import optuna

    db, url = stack.database()
    sweep_args = "sweep.n_trials=2 train.epochs=2 train.verbose=0 train.threads=1"
    env = {**stack.env, "POSTGRES_DB": db, "STUDY": "quickstart", "SWEEP_ARGS": sweep_args}
    argv = local_argv(command(services(env)["worker"]), {})
    assert "train.subprocess=true" in argv  # each trial in its own process, as on the GPUs

    done = subprocess.run(argv, env=worker_env(stack, env), cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    trials = optuna.load_study(study_name="quickstart", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    client = mlflow_client(stack)
    for t in trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server
        assert "checkpoint" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert list(stack.artifacts.rglob("best.keras"))  # on the server's artifact volume
    assert stack.pg.password not in done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.postgres
def test_dashboard_service_command_shows_the_study(stack, tmp_path):
    import optuna

    if not DASHBOARD.exists():
        pytest.skip("optuna-dashboard is not installed (pip install -e .[dashboard])")
    db, url = stack.database()
    optuna.create_study(study_name="seen-by-dashboard", storage=url)
    env = {**stack.env, "POSTGRES_DB": db}
    port = free_port()
    dashboard = services(env)["optuna-dashboard"]
    here = {'host="0.0.0.0", port=8080': f'host="127.0.0.1", port={port}'}
    argv = local_argv(command(dashboard), here)
    storage = dashboard["environment"]["OPTUNA_STORAGE"].replace(
        "@postgres:5432/", f"@{stack.pg.host}:{stack.pg.port}/")  # fmt: skip
    server = start(argv, tmp_path / "dashboard.log", env={**os.environ, "OPTUNA_STORAGE": storage})
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as resp:
            body = resp.read().decode()
    finally:
        stop(server)
    assert "seen-by-dashboard" in body


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_starting_together_on_an_empty_database_all_get_the_study(stack):
    _, url = stack.database()
    at = time.time() + 8  # after every process has imported optuna: they race for the schema
    code = (
        "import sys, time; from pathlib import Path; import optuna\n"
        "from sweeps.config import StorageConfig; from sweeps.storage import open_storage\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "s = open_storage(StorageConfig(url=sys.argv[1]), Path('.'), lambda s, t: None)\n"
        "optuna.create_study(storage=s, study_name='together', load_if_exists=True)\n"
    )
    argv = [sys.executable, "-c", code, url, str(at)]
    procs = [subprocess.Popen(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]  # fmt: skip
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0, 0], [err[-500:] for _, err in results]


# -- a worker killed mid-trial ---------------------------------------------------------------

N_TRIALS = 6


def victim_trial(study: Any, pids: set[int]) -> tuple[int, Any] | None:
    """A trial that one of ``pids`` is training right now (an epoch in, MLflow run open)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = int(str(t.user_attrs.get("sweeps.worker", ":0")).rpartition(":")[2] or 0)
        if pid in pids and t.intermediate_values and t.user_attrs.get("mlflow_run_id"):
            return pid, t
    return None


def wait_for_victim(url: str, name: str, workers: list[subprocess.Popen]) -> tuple[int, Any]:
    import optuna

    pids = {w.pid for w in workers}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert all(w.poll() is None for w in workers), "a worker exited before any was killed"
        try:
            found = victim_trial(optuna.load_study(study_name=name, storage=url), pids)
        except KeyError:  # the study is not created yet
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("no worker was seen inside a trial")


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_killed_mid_trial_is_failed_and_retried_by_the_others(stack, tmp_path):
    import optuna
    from optuna.trial import TrialState

    _, url = stack.database()
    name = f"sigkill-{uuid.uuid4().hex[:6]}"
    overrides = [f"storage.url={url}", f"tracking.uri={stack.mlflow_uri}",
                 "storage.heartbeat_interval=1", "storage.grace_period=4",
                 f"sweep.name={name}", f"sweep.n_trials={N_TRIALS}", "sweep.pruner=none",
                 "train.epochs=8", "train.verbose=0", "train.threads=1"]  # fmt: skip
    workers = []
    for i in range(3):
        argv = [sys.executable, "-m", "sweeps", "run", "+study=quickstart", *overrides,
                f"store_dir={tmp_path / f'w{i}'}"]  # fmt: skip
        workers.append(start(argv, tmp_path / f"w{i}.log", cwd=tmp_path))
    try:
        pid, killed = wait_for_victim(url, name, workers)
        next(w for w in workers if w.pid == pid).send_signal(signal.SIGKILL)
        codes = {w.pid: w.wait(timeout=240) for w in workers}
    finally:
        for w in workers:
            stop(w)
    logs = "\n".join((tmp_path / f"w{i}.log").read_text()[-1500:] for i in range(3))
    assert codes[pid] == -signal.SIGKILL
    assert sorted(c for p, c in codes.items() if p != pid) == [0, 0], logs

    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    states = {t.number: t.state for t in trials}
    assert TrialState.RUNNING not in states.values() and TrialState.WAITING not in states.values()
    assert states[killed.number] == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE, logs
    assert retry.params == killed.params
    # Every requested trial exactly once: the replaced FAIL does not count, nor a surplus trial
    # a racing worker asked for (marked and failed at once), and nothing else failed.
    surplus = {t.number for t in trials if t.user_attrs.get("sweeps.spurious")}
    counted = [t for t in trials if t.number not in surplus | {killed.number}]
    assert len(counted) == N_TRIALS and all(t.state == TrialState.COMPLETE for t in counted)

    client = mlflow_client(stack)
    killed_id = killed.user_attrs["mlflow_run_id"]
    retry_run = client.get_run(retry.user_attrs["mlflow_run_id"])
    assert retry_run.info.status == "FINISHED"
    if "sweeps.resumed_at_epoch" in retry.user_attrs:
        # Killed after an epoch's state was saved: the retry went on in the killed run.
        assert retry_run.info.run_id == killed_id
        assert retry_run.data.tags["sweeps.resumed_at_epoch"] == str(
            retry.user_attrs["sweeps.resumed_at_epoch"]
        )
        expected = ["FINISHED"] * N_TRIALS
    else:  # killed before its first epoch ended: a fresh run, the killed one FAILED
        killed_run = client.get_run(killed_id)
        assert killed_run.info.status == "FAILED"
        assert killed_run.data.tags["sweeps.state"] == "FAIL"
        assert retry_run.data.tags["sweeps.retry_of_run"] == killed_id
        expected = ["FAILED"] + ["FINISHED"] * N_TRIALS
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "tags.`sweeps.role` = 'trial'")
    assert sorted(r.info.status for r in runs) == expected
