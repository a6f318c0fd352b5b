"""deploy/k8s and deploy/k8s-pooler: valid objects, rendered as kustomize renders them, that an
operator can run: pre-emption is not a failure, every container sized, images pinned, no
credential outside the Secrets, and the containers' commands run a study.

There is no cluster here. Each manifest is read into the typed models of the ``kubernetes``
Python client (and written back, so a misspelt field, which the client would drop, shows).
The folders are rendered by ``kubectl kustomize`` (or ``kustomize build``) when one is
installed, else by ``render_fallback`` (resources, labels, images and patches, the parts these
folders use), which is checked against kubectl where both exist. Then the PostgreSQL init
script, the bucket Job, the MLflow Deployment (basic-auth), the dashboard and the worker Job
run natively, as the kubelet would run them, against a throwaway PostgreSQL.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, wait_http

pytest_plugins = ["pg"]

kubernetes = pytest.importorskip("kubernetes", reason="pip install -e .[dev] (kubernetes)")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
POOLER = ROOT / "deploy" / "k8s-pooler"
SECRET = "sweeps-db"
KINDS = {"v1": "V1", "apps/v1": "V1", "batch/v1": "V1"}
PREEMPTED = 75  # the worker's exit code after SIGTERM: its trial is kept for resumption
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY(?!_ID)")
URL_CREDENTIALS = re.compile(r"://([^/@\s]*):([^/@\s]*)@")
# MLflow's basic-auth app needs Flask-WTF (`pip install mlflow[auth]`, as the services image).
BASIC_AUTH = importlib.util.find_spec("flask_wtf") is not None
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


class _Response:
    """What ``ApiClient.deserialize`` reads: an HTTP body."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body)


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def manifest_files() -> list[Path]:
    """Every manifest of both folders, and the example Secret (applied on its own)."""
    files = [K8S / n for n in kustomization(K8S)["resources"]]
    files += [POOLER / n for n in kustomization(POOLER)["resources"] if (POOLER / n).is_file()]
    return [*files, K8S / "secret.example.yaml"]


def typed(doc: dict[str, Any]) -> Any:
    """The manifest as the client's model (V1Deployment, V1Job, ...)."""
    client = kubernetes.client.ApiClient()
    return client.deserialize(_Response(doc), KINDS[doc["apiVersion"]] + doc["kind"])


def _plain(node: Any) -> Any:
    """Scalars as text: the client reads quantities such as ``nvidia.com/gpu: 1`` as strings."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return str(node)


# -- rendering ---------------------------------------------------------------------------------


def _merge(base: Any, patch: Any) -> Any:
    """A strategic merge patch as these folders use it: maps merge, ``null`` deletes a key,
    lists of named items (containers, env) merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merge(base.get(key), value)
        return out
    named = (isinstance(base, list) and isinstance(patch, list)
             and all(isinstance(i, dict) and "name" in i for i in base + patch))  # fmt: skip
    if named:
        by_name = {i["name"]: i for i in base}
        merged = [_merge(by_name[i["name"]], i) if i["name"] in by_name else i for i in patch]
        patched = {i["name"] for i in patch}
        return merged + [i for i in base if i["name"] not in patched]
    return patch


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec") or {}
    return [spec["template"]["spec"]] if "template" in spec else []


def render_fallback(folder: Path) -> list[dict[str, Any]]:
    """``kustomize build`` of the fields these folders use, for machines without it."""
    k = kustomization(folder)
    docs: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = (folder / entry).resolve()
        docs += render_fallback(path) if path.is_dir() else load(path)
    for entry in k.get("patches", []):
        (patch,) = load(folder / entry["path"])
        key = (patch["kind"], patch["metadata"]["name"])
        docs = [_merge(d, patch) if (d["kind"], d["metadata"]["name"]) == key else d
                for d in docs]  # fmt: skip
    for entry in k.get("labels", []):
        for d in docs:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    images = {i["name"]: i for i in k.get("images", [])}
    for d in docs:
        for pod in _pod_specs(d):
            for c in pod.get("initContainers", []) + pod["containers"]:
                name = c["image"].rsplit(":", 1)[0] if ":" in c["image"] else c["image"]
                if name in images:
                    new = images[name]
                    c["image"] = f"{new.get('newName', name)}:{new['newTag']}"
    return docs


def _renderer() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(folder: Path) -> list[dict[str, Any]]:
    """The folder as ``kubectl apply -k`` would send it."""
    tool = _renderer()
    if tool is None:
        return render_fallback(folder)
    out = subprocess.run([*tool, str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def rendered(folder: Path = K8S) -> dict[tuple[str, str], Any]:
    return {(d["kind"], d["metadata"]["name"]): typed(d) for d in render(folder)}


def secrets() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["stringData"] for d in load(K8S / "secret.example.yaml")}


def containers(obj: Any) -> list[Any]:
    pod = obj.spec.template.spec
    return [*(pod.init_containers or []), *pod.containers]


def workloads(objs: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    return {k: o for k, o in objs.items() if k[0] in ("Deployment", "StatefulSet", "Job")}


def _canonical(node: Any) -> Any:
    """Order-free form: lists of named items sorted by name (kustomize puts patched ones first)."""
    if isinstance(node, dict):
        return {k: _canonical(v) for k, v in node.items()}
    if isinstance(node, list):
        items = [_canonical(v) for v in node]
        if all(isinstance(i, dict) and "name" in i for i in items):
            return sorted(items, key=lambda i: i["name"])
        return items
    return str(node)


# -- the files ---------------------------------------------------------------------------------


def test_every_manifest_deserializes_into_the_client_models_without_losing_a_field():
    client = kubernetes.client.ApiClient()
    seen = set()
    for path in manifest_files():
        for doc in load(path):
            obj = typed(doc)
            assert type(obj).__name__ == KINDS[doc["apiVersion"]] + doc["kind"], path
            # The client drops fields it does not know: written back, nothing may be missing.
            back = client.sanitize_for_serialization(obj)
            assert _plain(back) == _plain(doc), f"{path.name}: {doc['kind']}"
            seen.add(doc["kind"])
    assert {"Secret", "ConfigMap", "Service", "StatefulSet", "Deployment", "Job",
            "PersistentVolumeClaim"} <= seen  # fmt: skip
    assert "secret.example.yaml" not in kustomization(K8S)["resources"], "Secrets stay out"


@pytest.mark.parametrize("folder", [K8S, POOLER], ids=["k8s", "k8s-pooler"])
def test_the_folders_render_and_the_fallback_renders_as_kubectl_does(folder):
    docs = render(folder)
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sweeps" for d in docs)
    if _renderer() is None:
        pytest.skip("neither kubectl nor kustomize is installed: rendered by the fallback only")
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, render_fallback(folder))) == sorted(map(key, docs))
    fallback = {key(d): _canonical(d) for d in render_fallback(folder)}
    for d in docs:
        assert fallback[key(d)] == _canonical(d), key(d)


def test_pre_emption_does_not_count_against_the_jobs_backoff_limit():
    job = rendered()[("Job", "sweeps-workers")]
    pod = job.spec.template.spec
    assert pod.restart_policy == "Never"  # podFailurePolicy requires it
    rules = job.spec.pod_failure_policy.rules
    on_condition = [r for r in rules if r.on_pod_conditions]
    on_exit = [r for r in rules if r.on_exit_codes]
    assert [(r.action, [c.type for c in r.on_pod_conditions]) for r in on_condition] == [
        ("Ignore", ["DisruptionTarget"])
    ]
    (rule,) = on_exit
    assert rule.action == "Ignore" and rule.on_exit_codes.operator == "In"
    assert rule.on_exit_codes.values == [PREEMPTED]
    assert rule.on_exit_codes.container_name == "worker"
    assert {c.name for c in pod.containers} == {"worker"}
    assert not [r for r in rules if r.action == "FailJob"], "real crashes: backoffLimit"
    assert job.spec.backoff_limit >= 1
    # Seconds to exit after SIGTERM, then ~30 s of queued MLflow writes.
    assert 60 <= pod.termination_grace_period_seconds <= 300
    # exec: the worker's own exit code is the container's.
    assert containers(job)[0].command[-1].startswith("exec python -m sweeps run")


def test_every_container_has_requests_and_limits_and_gpu_pods_are_guaranteed():
    for folder in (K8S, POOLER):
        for (_, name), obj in workloads(rendered(folder)).items():
            for c in containers(obj):
                res = c.resources
                assert res and res.requests and res.limits, f"{name}/{c.name}"
                for what in ("cpu", "memory"):
                    assert what in res.requests and what in res.limits, f"{name}/{c.name} {what}"
                if "nvidia.com/gpu" in (res.limits or {}):
                    assert res.requests == res.limits, f"{name}/{c.name}: Guaranteed QoS"


def test_images_are_pinned_and_both_sweeps_images_carry_the_release():
    tags = {}
    for folder in (K8S, POOLER):
        for (_, name), obj in workloads(rendered(folder)).items():
            for c in containers(obj):
                repo, sep, tag = c.image.rpartition(":")
                assert sep and "/" not in tag and tag, f"{name}/{c.name}: {c.image} has no tag"
                assert tag != "latest" and not re.fullmatch(r"\d+", tag), f"{c.image} floats"
                tags[repo] = tag
    assert tags["sweeps-worker"] == tags["sweeps-services"] == VERSION
    for path in manifest_files() + [K8S / "kustomization.yaml"]:
        assert not re.search(r"\blatest\b", path.read_text().replace("(latest)", "")), path


def _sentinels(objs: dict[tuple[str, str], Any]) -> dict[str, dict[str, str]]:
    """Every Secret value as a token that shows wherever it lands; the ConfigMaps as rendered."""
    values = {name: {k: f"<{name}.{k}>" for k in data} for name, data in secrets().items()}
    values.update({n: o.data for (kind, n), o in objs.items() if kind == "ConfigMap"})
    return values


def _leaked(text: str) -> list[str]:
    return [m for m in re.findall(r"<[\w-]+\.(\w+)>", text) if SECRET_NAME.search(m)]


def _exec_argv(argv: list[str], env: dict[str, str]) -> str:
    """What the container's processes see in their argv: the kubelet's ``$(VAR)`` expanded,
    and for ``sh -c`` the shell's ``$VAR`` of the command it execs (builtins such as printf
    before it start no process)."""
    argv = [expand(a, env) for a in argv]
    if argv[:2] != ["sh", "-c"]:
        return " ".join(argv)
    script = argv[2]
    tail = script[script.rindex("exec ") :] if "exec " in script else script
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), tail)


def test_no_credential_in_any_command_args_or_literal_env_value():
    for folder in (K8S, POOLER):
        objs = rendered(folder)
        values = _sentinels(objs)
        for (_, name), obj in workloads(objs).items():
            for c in containers(obj):
                where = f"{folder.name}: {name}/{c.name}"
                env = container_env(c, values)
                argv = _exec_argv((c.command or []) + (c.args or []), env)
                assert not _leaked(argv), f"{where}: {_leaked(argv)} on a command line"
                assert not URL_CREDENTIALS.search(" ".join((c.command or []) + (c.args or [])))
                probe = c.readiness_probe and c.readiness_probe._exec
                if probe:
                    assert not _leaked(_exec_argv(probe.command, env)), where
                for e in c.env or []:
                    if SECRET_NAME.search(e.name):  # from a Secret, never a literal
                        assert e.value is None and e.value_from.secret_key_ref, f"{where}: {e.name}"
                    for _, password in URL_CREDENTIALS.findall(e.value or ""):
                        assert re.fullmatch(r"\$\(\w+\)", password), f"{where}: {e.name}"
    # The check sees a credential where there is one.
    leaky = {"command": ["sh", "-c", 'exec mlflow server --backend-store-uri "$URI"']}
    env = {"URI": "postgresql://u:<sweeps-db.POSTGRES_PASSWORD>@h/db"}
    assert _leaked(_exec_argv(leaky["command"], env)) == ["POSTGRES_PASSWORD"]


def test_secret_example_holds_placeholders_and_every_reference_resolves():
    example = secrets()
    assert set(example) == {"sweeps-db", "sweeps-s3", "sweeps-mlflow"}
    for name, data in example.items():
        for key, value in data.items():
            if SECRET_NAME.search(key):
                assert value == "changeme", f"{name}.{key}: a placeholder only"
    for folder in (K8S, POOLER):
        objs = rendered(folder)
        assert not [k for k in objs if k[0] == "Secret"], "Secrets are applied on their own"
        maps = {n: o.data for (kind, n), o in objs.items() if kind == "ConfigMap"}
        for (_, name), obj in workloads(objs).items():
            for c in containers(obj):
                for e in c.env or []:
                    ref = e.value_from and e.value_from.secret_key_ref
                    if ref:
                        assert ref.key in example[ref.name], f"{name}: {ref.name}.{ref.key}"
                    ref = e.value_from and e.value_from.config_map_key_ref
                    if ref:
                        assert ref.key in maps[ref.name], f"{name}: {ref.name}.{ref.key}"
                for source in c.env_from or []:
                    assert source.config_map_ref.name in maps, name
    password = example[SECRET]["POSTGRES_PASSWORD"]
    for path in manifest_files()[:-1]:
        assert password not in path.read_text(), path


def test_workers_are_an_indexed_job_with_one_gpu_each_wired_to_the_services():
    objs = rendered()
    job = objs[("Job", "sweeps-workers")]
    assert job.spec.completion_mode == "Indexed"
    assert job.spec.parallelism >= 2 and job.spec.completions == job.spec.parallelism
    (worker,) = job.spec.template.spec.containers
    assert worker.resources.limits["nvidia.com/gpu"] == "1"
    env = {e.name: e for e in worker.env}
    assert env["SWEEPS_PARALLEL"].value == str(job.spec.parallelism)  # constant liar on
    assert env["MLFLOW_TRACKING_URI"].value == "http://mlflow:5000"
    assert env["MLFLOW_TRACKING_PASSWORD"].value_from.secret_key_ref.name == "sweeps-mlflow"
    assert not [n for n in env if n.startswith("AWS_")], "only the MLflow server holds S3 keys"
    script = worker.command[-1]
    assert "sweep.workers=auto" in script and "storage=postgres tracking=server" in script
    services = {name for kind, name in objs if kind == "Service"}
    assert {"postgres", "mlflow", "minio"} <= services
    assert secrets()[SECRET]["POSTGRES_HOST"] in services
    assert objs[("Deployment", "mlflow")].spec.template.spec.containers[0].readiness_probe


def test_artifacts_go_to_the_bucket_through_mlflows_own_options():
    objs = rendered()
    (server,) = objs[("Deployment", "mlflow")].spec.template.spec.containers
    env = {e.name: e for e in server.env}
    assert "mlflow server --app-name basic-auth" in server.command[-1]
    assert "--backend-store-uri" not in server.command[-1]  # MLFLOW_BACKEND_STORE_URI instead
    assert env["MLFLOW_BACKEND_STORE_URI"].value.startswith("postgresql://$(POSTGRES_USER):")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name].value_from.secret_key_ref.name == "sweeps-s3"
    assert [s.config_map_ref.name for s in server.env_from] == ["sweeps-artifacts"]
    artifacts = objs[("ConfigMap", "sweeps-artifacts")].data
    assert artifacts["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert artifacts["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    # Nothing of the server's on a volume: it can move to any node.
    pod = objs[("Deployment", "mlflow")].spec.template.spec
    assert all(v.empty_dir and v.empty_dir.medium == "Memory" for v in pod.volumes)
    assert not [k for k in objs if k == ("PersistentVolumeClaim", "mlartifacts")]
    minio = objs[("Deployment", "minio")].spec.template.spec
    assert minio.volumes[0].persistent_volume_claim.claim_name == "minio-data"


def test_bucket_job_creates_the_destinations_bucket_with_keys_from_the_environment(tmp_path):
    objs = rendered()
    (mc,) = objs[("Job", "minio-bucket")].spec.template.spec.containers
    assert mc.command[:2] == ["sh", "-c"]
    artifacts = objs[("ConfigMap", "sweeps-artifacts")].data
    env = container_env(mc, {"sweeps-s3": secrets()["sweeps-s3"], "sweeps-artifacts": artifacts})
    assert env["MC_HOST_minio"] == "http://sweeps:changeme@minio:9000"
    fake = tmp_path / "mc"  # records its arguments; succeeds the second time, as MinIO comes up
    fake.write_text('#!/bin/sh\necho "$@" >> "$0.log"\n'
                    '[ -e "$0.up" ] || { touch "$0.up"; exit 1; }\n')  # fmt: skip
    fake.chmod(0o755)
    script = mc.command[2].replace("sleep 3", "sleep 0")
    done = subprocess.run(["sh", "-c", script], env={**env, "PATH": f"{tmp_path}:/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mc.log").read_text().splitlines() == [
        "mb --ignore-existing minio/sweeps-artifacts"] * 2  # fmt: skip


def test_dashboard_listens_on_loopback_only_and_has_no_service():
    objs = rendered()
    dash = objs[("Deployment", "optuna-dashboard")]
    (c,) = dash.spec.template.spec.containers
    assert 'host="127.0.0.1"' in c.command[-1]
    labels = dash.spec.template.metadata.labels
    for (kind, name), obj in objs.items():
        if kind == "Service":
            assert not set(obj.spec.selector.items()) <= set(labels.items()), name


def test_data_is_a_shared_read_only_volume_and_each_index_keeps_its_store():
    objs = rendered()
    pod = objs[("Job", "sweeps-workers")].spec.template.spec
    volumes = {v.name: v for v in pod.volumes}
    assert not [v for v in pod.volumes if v.empty_dir], "nothing on the pod's own disk"
    data = volumes["data"].persistent_volume_claim
    claim = objs[("PersistentVolumeClaim", data.claim_name)]
    assert data.read_only and claim.spec.access_modes == ["ReadOnlyMany"]
    store = volumes["store"].persistent_volume_claim.claim_name
    assert objs[("PersistentVolumeClaim", store)].spec.access_modes == ["ReadWriteMany"]
    (worker,) = pod.containers
    mount = next(m for m in worker.volume_mounts if m.name == "store")
    assert mount.mount_path == "/home/sweeps/sweeps-store"  # the image's store_dir
    index = next(e for e in worker.env if e.name == "WORKER_INDEX").value_from.field_ref
    assert "job-completion-index" in index.field_path
    assert mount.sub_path_expr == "worker-$(WORKER_INDEX)"


def test_pooler_folder_puts_pgbouncer_between_the_workers_and_postgres():
    objs = rendered(POOLER)
    assert set(rendered(K8S)) < set(objs)
    (worker,) = objs[("Job", "sweeps-workers")].spec.template.spec.containers
    env = {e.name: e for e in worker.env}
    assert (env["POSTGRES_HOST"].value, env["POSTGRES_PORT"].value) == ("pgbouncer", "5432")
    assert env["POSTGRES_HOST"].value_from is None
    assert ("Service", "pgbouncer") in objs
    (bouncer,) = objs[("Deployment", "pgbouncer")].spec.template.spec.containers
    benv = {e.name: e for e in bouncer.env}
    assert benv["POOL_MODE"].value == "transaction"  # session mode starves pooled workers
    assert benv["DB_HOST"].value_from.secret_key_ref.key == "POSTGRES_HOST"  # the real database
    assert int(benv["DEFAULT_POOL_SIZE"].value) < max_connections(objs)
    # The MLflow server still talks to PostgreSQL itself.
    (server,) = objs[("Deployment", "mlflow")].spec.template.spec.containers
    assert {e.name: e for e in server.env}["POSTGRES_HOST"].value_from.secret_key_ref


def max_connections(objs: dict[tuple[str, str], Any]) -> int:
    args = objs[("StatefulSet", "postgres")].spec.template.spec.containers[0].args
    return int(next(a.split("=")[1] for a in args if a.startswith("max_connections=")))


def test_postgres_init_script_is_the_compose_one():
    init = rendered()[("ConfigMap", "postgres-init")].data["10-mlflow-db.sh"]
    compose_script = (ROOT / "docker" / "postgres-init.sh").read_text()

    def commands(text: str) -> list[str]:
        return [ln for ln in text.replace("\\\n", " ").splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]  # fmt: skip

    assert [" ".join(c.split()) for c in commands(init)] == [
        " ".join(c.split()) for c in commands(compose_script)
    ]


# -- the containers' commands, run natively --------------------------------------------------


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion of command arguments and env values."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), arg)


def container_env(container: Any, values: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: ConfigMaps of ``envFrom``, then
    ``env`` in order, references resolved and ``$(VAR)`` of earlier variables expanded."""
    out: dict[str, str] = {}
    for source in container.env_from or []:
        out.update(values[source.config_map_ref.name])
    for e in container.env or []:
        if e.value is not None:
            out[e.name] = expand(e.value, out)
        elif e.value_from.secret_key_ref is not None:
            ref = e.value_from.secret_key_ref
            out[e.name] = values[ref.name][ref.key]
        elif e.value_from.config_map_key_ref is not None:
            ref = e.value_from.config_map_key_ref
            out[e.name] = values[ref.name][ref.key]
        elif "namespace" in e.value_from.field_ref.field_path:
            out[e.name] = "sweeps"
        else:  # the completion index
            out[e.name] = "0"
    return out


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += parents.get(pid, [])
    return out


def argvs(root: int) -> str:
    text = []
    for pid in process_tree(root):
        try:
            text.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return "\n".join(text)


def wait_server(proc: subprocess.Popen, url: str, log: Path, timeout: float = 240) -> None:
    """Until ``url`` answers; fails at once, with the log, if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
        try:
            wait_http(url, timeout=2)
            return
        except RuntimeError:
            continue
    raise AssertionError(f"{url} did not answer within {timeout}s: {log.read_text()[-3000:]}")


def status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _values(postgres: Any, db: str, objs: dict[tuple[str, str], Any]) -> dict[str, dict]:
    return {
        SECRET: {"POSTGRES_USER": postgres.user, "POSTGRES_PASSWORD": postgres.password,
                 "POSTGRES_DB": db, "MLFLOW_DB": f"mlflow_{db}", "POSTGRES_HOST": postgres.host,
                 "POSTGRES_PORT": str(postgres.port)},
        "sweeps-mlflow": {"MLFLOW_TRACKING_USERNAME": "admin",
                          "MLFLOW_TRACKING_PASSWORD": f"pw{uuid.uuid4().hex}",
                          "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex},
        "sweeps-s3": {"AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex},
        "sweeps-artifacts": objs[("ConfigMap", "sweeps-artifacts")].data,
        "sweeps-study": {"STUDY": "quickstart", "SWEEP_ARGS": "sweep.n_trials=2 "
                         "train.epochs=1 train.verbose=0 train.threads=1"},
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.postgres
def test_mlflow_deployment_with_basic_auth_and_worker_job_run_a_study(
    postgres, tmp_path, monkeypatch
):
    import optuna
    from mlflow import MlflowClient

    objs = rendered()
    db = f"sweeps_{uuid.uuid4().hex[:8]}"
    postgres.create_database(db)
    values = _values(postgres, db, objs)
    # The init script of the postgres StatefulSet creates MLflow's database.
    init = objs[("ConfigMap", "postgres-init")].data["10-mlflow-db.sh"]
    pg_env = {**postgres.client_env(), **values[SECRET], "POSTGRES_DB": "postgres"}
    subprocess.run(["sh", "-c", init], env=pg_env, check=True, capture_output=True)

    (server,) = objs[("Deployment", "mlflow")].spec.template.spec.containers
    port = free_port()
    # This machine's counterparts: a local folder for the bucket (the S3 path is tested with
    # a real S3 server elsewhere), a free port, a private folder for the auth config.
    env = {**container_env(server, values), "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port),
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "bucket"),
           "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path),
           **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}  # fmt: skip
    assert server.command[:2] == ["sh", "-c"]
    command = list(server.command)
    if not BASIC_AUTH:
        warnings.warn("Flask-WTF is not installed (pip install mlflow[auth]): the MLflow server "
                      "runs without its basic-auth app here", stacklevel=1)  # fmt: skip
        command[2] = command[2].replace(" --app-name basic-auth", "")
    log_path = tmp_path / "mlflow.log"
    with log_path.open("w") as log:  # the server keeps its own descriptor
        mlflow = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    admin = values["sweeps-mlflow"]
    try:
        wait_server(mlflow, f"{uri}/health", log_path)  # the readiness probe needs no login
        assert postgres.password not in argvs(mlflow.pid)
        assert admin["MLFLOW_TRACKING_PASSWORD"] not in argvs(mlflow.pid)
        search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        creds = (admin["MLFLOW_TRACKING_USERNAME"], admin["MLFLOW_TRACKING_PASSWORD"])
        if BASIC_AUTH:
            assert status(search) == 401
            assert status(search, (creds[0], "wrong-password")) == 401
        assert status(search, creds) == 200

        (worker,) = objs[("Job", "sweeps-workers")].spec.template.spec.containers
        worker_env = {**os.environ, **container_env(worker, values),
                      "MLFLOW_TRACKING_URI": uri}  # the Service, here  # fmt: skip
        worker_env.pop("CUDA_VISIBLE_DEVICES", None)
        assert worker.command[:2] == ["sh", "-c"]
        script = worker.command[2].replace("exec python ", f"exec {shlex.quote(sys.executable)} ")
        done = subprocess.run(["sh", "-c", script], env=worker_env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert postgres.password not in done.stdout + done.stderr
        trials = optuna.load_study(study_name="quickstart", storage=postgres.url(db)).get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", creds[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", creds[1])
        client = MlflowClient(tracking_uri=uri)
        for t in trials:
            run = client.get_run(t.user_attrs["mlflow_run_id"])
            assert run.info.status == "FINISHED"
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server
            assert run.data.tags["sweeps.device"] == "cpu" and run.data.tags["sweeps.host"]
        assert list((tmp_path / "bucket").rglob("*.keras"))
    finally:
        mlflow.terminate()
        mlflow.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.postgres
def test_dashboard_deployment_serves_the_study_on_loopback(postgres, tmp_path):
    import optuna

    objs = rendered()
    db = f"sweeps_{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name="seen-by-dashboard", storage=postgres.create_database(db))
    (dash,) = objs[("Deployment", "optuna-dashboard")].spec.template.spec.containers
    port = free_port()
    code = dash.command[-1].replace("port=8080", f"port={port}")
    env = {**os.environ, **container_env(dash, _values(postgres, db, objs))}
    proc = subprocess.Popen([sys.executable, *dash.command[1:-1], code], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as resp:
            assert "seen-by-dashboard" in resp.read().decode()
        assert postgres.password not in argvs(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
