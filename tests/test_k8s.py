"""deploy/k8s: every manifest is a valid Kubernetes object, and its commands run a study.

There is no cluster here: each manifest is read into the typed models of the ``kubernetes``
Python client (and written back, so a misspelt field, which the client would drop, shows);
the wiring (Secret keys, Service names, GPUs, the Indexed Job) is checked from the objects;
then the PostgreSQL init script, the MLflow Deployment's command and the worker Job's
command run natively, as the kubelet would run them, against a throwaway PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, wait_http

pytest_plugins = ["pg"]

kubernetes = pytest.importorskip("kubernetes", reason="pip install -e .[dev] (kubernetes)")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
SECRET = "sweeps-db"
KINDS = {"v1": "V1", "apps/v1": "V1", "batch/v1": "V1"}


class _Response:
    """What ``ApiClient.deserialize`` reads: an HTTP body."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body)


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def manifests() -> list[str]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [*kustomization["resources"], "secret.example.yaml"]


def typed(doc: dict[str, Any]) -> Any:
    """The manifest as the client's model (V1Deployment, V1Job, ...)."""
    client = kubernetes.client.ApiClient()
    return client.deserialize(_Response(doc), KINDS[doc["apiVersion"]] + doc["kind"])


def objects() -> dict[tuple[str, str], Any]:
    return {(d["kind"], d["metadata"]["name"]): typed(d) for n in manifests() for d in documents(n)}


def _plain(node: Any) -> Any:
    """Scalars as text: the client reads quantities such as ``nvidia.com/gpu: 1`` as strings."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return str(node)


def test_every_manifest_deserializes_into_the_client_models_without_losing_a_field():
    client = kubernetes.client.ApiClient()
    seen = set()
    for name in manifests():
        for doc in documents(name):
            obj = typed(doc)
            assert type(obj).__name__ == KINDS[doc["apiVersion"]] + doc["kind"], name
            # The client drops fields it does not know: written back, nothing may be missing.
            back = client.sanitize_for_serialization(obj)
            assert _plain(back) == _plain(doc), f"{name}: {doc['kind']}"
            seen.add(doc["kind"])
    assert {"Secret", "ConfigMap", "Service", "StatefulSet", "Deployment", "Job"} <= seen
    assert "secret.example.yaml" not in manifests()[:-1], "the Secret stays out of kustomize"


def test_workers_are_an_indexed_job_with_one_gpu_each_and_credentials_from_the_secret():
    objs = objects()
    job = objs[("Job", "sweeps-workers")]
    assert job.spec.completion_mode == "Indexed"
    assert job.spec.parallelism >= 2 and job.spec.completions == job.spec.parallelism
    (worker,) = job.spec.template.spec.containers
    assert worker.resources.limits == {"nvidia.com/gpu": "1"}
    env = {e.name: e for e in worker.env}
    assert env["SWEEPS_PARALLEL"].value == str(job.spec.parallelism)  # constant liar on
    assert env["MLFLOW_TRACKING_URI"].value == "http://mlflow:5000"
    script = worker.command[-1]
    assert "sweep.workers=auto" in script and "storage=postgres tracking=server" in script

    secret = objs[("Secret", SECRET)]
    for kind, name in (("Job", "sweeps-workers"), ("Deployment", "mlflow"),
                       ("StatefulSet", "postgres")):  # fmt: skip
        for c in objs[(kind, name)].spec.template.spec.containers:
            for e in c.env:
                if "PASSWORD" in e.name or "USER" in e.name:
                    assert e.value is None, f"{name}: {e.name} must come from the Secret"
                    ref = e.value_from.secret_key_ref
                    assert ref.name == SECRET and ref.key in secret.string_data
    services = {name for kind, name in objs if kind == "Service"}
    assert {"postgres", "mlflow"} <= services
    assert secret.string_data["POSTGRES_HOST"] in services
    assert objs[("Deployment", "mlflow")].spec.template.spec.containers[0].readiness_probe
    # No credential outside the example Secret.
    password = secret.string_data["POSTGRES_PASSWORD"]
    for name in manifests()[:-1]:
        assert password not in (K8S / name).read_text(), name


def test_postgres_init_script_is_the_compose_one():
    init = objects()[("ConfigMap", "postgres-init")].data["10-mlflow-db.sh"]
    compose_script = (ROOT / "docker" / "postgres-init.sh").read_text()

    def commands(text: str) -> list[str]:
        return [ln for ln in text.replace("\\\n", " ").splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]  # fmt: skip

    assert [" ".join(c.split()) for c in commands(init)] == [
        " ".join(c.split()) for c in commands(compose_script)
    ]


# -- the containers' commands, run natively --------------------------------------------------


def container_env(container: Any, values: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment, its Secret and ConfigMap references resolved."""
    out = {}
    for e in container.env:
        if e.value is not None:
            out[e.name] = e.value
        elif e.value_from.secret_key_ref is not None:
            ref = e.value_from.secret_key_ref
            out[e.name] = values[ref.name][ref.key]
        elif e.value_from.config_map_key_ref is not None:
            ref = e.value_from.config_map_key_ref
            out[e.name] = values[ref.name][ref.key]
        else:  # fieldRef: the pod's namespace
            out[e.name] = "sweeps"
    return out


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion of command arguments."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), arg)


@pytest.mark.slow
@pytest.mark.postgres
def test_mlflow_deployment_and_worker_job_commands_run_a_study(postgres, tmp_path):
    import optuna
    from mlflow import MlflowClient

    objs = objects()
    db = f"sweeps_{uuid.uuid4().hex[:8]}"
    postgres.create_database(db)
    values = {
        SECRET: {"POSTGRES_USER": postgres.user, "POSTGRES_PASSWORD": postgres.password,
                 "POSTGRES_DB": db, "MLFLOW_DB": f"mlflow_{db}", "POSTGRES_HOST": postgres.host,
                 "POSTGRES_PORT": str(postgres.port)},
        "sweeps-study": {"STUDY": "quickstart", "SWEEP_ARGS": "sweep.n_trials=2 "
                         "train.epochs=1 train.verbose=0 train.threads=1"},
    }  # fmt: skip
    # The init script of the postgres StatefulSet creates MLflow's database.
    init = objs[("ConfigMap", "postgres-init")].data["10-mlflow-db.sh"]
    pg_env = {**postgres.client_env(), **values[SECRET], "POSTGRES_DB": "postgres"}
    subprocess.run(["sh", "-c", init], env=pg_env, check=True, capture_output=True)

    (server,) = objs[("Deployment", "mlflow")].spec.template.spec.containers
    env = container_env(server, values)
    argv = [expand(a, env) for a in server.command]
    assert argv[:2] == ["mlflow", "server"]
    port = str(free_port())
    argv[argv.index("--artifacts-destination") + 1] = str(tmp_path / "mlartifacts")
    argv[argv.index("--host") + 1], argv[argv.index("--port") + 1] = "127.0.0.1", port
    log = (tmp_path / "mlflow.log").open("w")
    mlflow = subprocess.Popen([sys.executable, "-m", *argv], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=180)
        (worker,) = objs[("Job", "sweeps-workers")].spec.template.spec.containers
        env = {
            **os.environ,
            **container_env(worker, values),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        }  # the Service, here
        env.pop("CUDA_VISIBLE_DEVICES", None)
        assert worker.command[:2] == ["sh", "-c"]
        script = worker.command[2].replace("exec python ", f"exec {shlex.quote(sys.executable)} ")
        done = subprocess.run(["sh", "-c", script], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert postgres.password not in done.stdout + done.stderr
        trials = optuna.load_study(study_name="quickstart", storage=postgres.url(db)).get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        for t in trials:
            run = client.get_run(t.user_attrs["mlflow_run_id"])
            assert run.info.status == "FINISHED"
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server
            assert run.data.tags["sweeps.device"] == "cpu" and run.data.tags["sweeps.host"]
    finally:
        mlflow.terminate()
        mlflow.wait(timeout=30)
