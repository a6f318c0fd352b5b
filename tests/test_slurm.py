"""deploy/slurm/sweeps.sbatch on a real one-node Slurm cluster, started inside the test.

Debian's ``slurm-wlm`` and ``munge`` (``apt-get install slurm-wlm munge``): munged with a key
of its own, slurmctld and slurmd on 127.0.0.1, everything in a temporary folder; the node has
2 CPUs and no GPU, so the job is submitted with ``--gres=none``. The job array runs the
quickstart against a real PostgreSQL (tests/pg.py) and a real ``mlflow server``; a task
signalled mid-trial requeues itself and its next run resumes the trial in the same MLflow run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

pytest_plugins = ["pg"]

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "deploy" / "slurm" / "sweeps.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")

SLURM_CONF = """\
ClusterName=sweepstest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.sock
CredType=cred/munge
SlurmUser={user}
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """munged, slurmctld and slurmd of one node, configured under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> SlurmCluster:
        munge = self.root / "munge"
        for d in (munge, self.root / "state", self.root / "spool"):
            d.mkdir(mode=0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._daemon("munged", f"--key-file={key}", f"--socket={munge}/munge.sock",
                     f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                     f"--seed-file={munge}/munged.seed", "--force")  # fmt: skip
        ctld_port = free_port()
        self.conf.write_text(SLURM_CONF.format(root=self.root, ctld_port=ctld_port,
                                               d_port=free_port(), user="root"))  # fmt: skip
        self._daemon("slurmctld", "-i")
        self._daemon("slurmd", "-N", "localhost")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True,
                                 text=True, timeout=20)  # fmt: skip
            if out.stdout.strip() in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the node did not come up: {self.logs()}")

    def _daemon(self, name: str, *args: str) -> None:
        done = subprocess.run([shutil.which(name) or name, *args], env=self.env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"{name} did not start: {done.stderr.strip()} {self.logs()}")

    def logs(self) -> str:
        tails = []
        for log in ("slurmctld.log", "slurmd.log", "munge/munged.log"):
            path = self.root / log
            if path.exists():
                tails.append(f"{log}: {path.read_text()[-800:]}")
        return "\n".join(tails)

    def stop(self) -> None:
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.root / pid_file
            try:
                os.kill(int(path.read_text().strip()), 15)
            except (OSError, ValueError):
                continue  # never started, or gone already


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs slurmd as root (it starts jobs as their users)")
    root = Path(tempfile.mkdtemp(prefix="sweeps-slurm-", dir="/tmp"))
    cluster = SlurmCluster(root)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        cluster.stop()
        pytest.skip(f"Slurm could not start here: {str(exc)[:400]}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_sbatch_file_asks_for_one_gpu_per_array_task_and_runs_auto_workers():
    text = SBATCH.read_text()
    directives = [ln.split(None, 1)[1] for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert "--gres=gpu:1" in directives and any(d.startswith("--array=") for d in directives)
    assert "sweep.workers=auto" in text and "storage=postgres tracking=server" in text
    assert "SLURM_ARRAY_TASK_COUNT" in text  # the constant liar knows the array's size
    assert "PASSWORD=" not in text.replace("POSTGRES_PASSWORD=...", "")


def directives() -> list[str]:
    return [ln.split(None, 1)[1] for ln in SBATCH.read_text().splitlines()
            if ln.startswith("#SBATCH")]  # fmt: skip


def test_sbatch_file_requeues_a_pre_empted_task():
    opts = directives()
    assert "--requeue" in opts  # Slurm may requeue it, and so may the script
    assert "--open-mode=append" in opts  # a requeued run appends to the task's log
    (signal,) = [d for d in opts if d.startswith("--signal=")]
    # B: the batch shell gets SIGTERM (the worker is no job step), early enough to save.
    when = re.fullmatch(r"--signal=B:TERM@(\d+)", signal)
    assert when and int(when[1]) >= 60
    text = SBATCH.read_text()
    body = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert not [ln for ln in body if ln.startswith("exec ")], "the shell stays to requeue"
    assert 'trap \'kill -TERM "$worker"' in text  # SIGTERM forwarded to the worker
    assert "PREEMPTED=75" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# A stand-in for the worker's interpreter: the first run waits for SIGTERM and exits 75 (a
# pre-empted worker); a requeued run finds its marker and exits 0.
FAKE_WORKER = """#!/bin/bash
echo "run ${SLURM_RESTART_COUNT:-0}: $*" >> "$MARKS/runs"
if [ -e "$MARKS/ran-$SLURM_ARRAY_JOB_ID" ]; then exit 0; fi
touch "$MARKS/ran-$SLURM_ARRAY_JOB_ID"
trap 'echo term >> "$MARKS/runs"; exit 75' TERM
touch "$MARKS/started-$SLURM_ARRAY_JOB_ID"
while :; do sleep 0.2; done
"""


def job_state(slurm: SlurmCluster, job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], env=slurm.env, capture_output=True,
                         text=True, timeout=20)  # fmt: skip
    found = re.search(r"JobState=(\w+)", out.stdout)
    return found[1] if found else "GONE"


def job_env(slurm: SlurmCluster, postgres: Any, db: str, mlflow_server: Any,
            tmp_path: Path) -> dict[str, str]:  # fmt: skip
    """What sbatch passes on to a real worker: the database, the tracking server, no GPU."""
    env = {**slurm.env, "POSTGRES_HOST": postgres.host, "POSTGRES_PORT": str(postgres.port),
           "POSTGRES_USER": postgres.user, "POSTGRES_PASSWORD": postgres.password,
           "POSTGRES_DB": db, "MLFLOW_TRACKING_URI": mlflow_server.uri,
           "SWEEPS_PYTHON": sys.executable,
           "SWEEPS_STORE_DIR": str(tmp_path / "store")}  # fmt: skip
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out: {what}")


@pytest.mark.slow
def test_a_cancelled_task_saves_but_is_not_requeued(slurm, tmp_path):
    """scancel signals the worker too: it saves and exits 75 all the same, and the task stays
    cancelled (the requeue after the time limit's warning: the resume test below)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_WORKER)
    fake.chmod(0o755)
    env = {**slurm.env, "POSTGRES_HOST": "unused", "MLFLOW_TRACKING_URI": "http://unused",
           "SWEEPS_PYTHON": str(fake), "MARKS": str(marks)}  # fmt: skip
    done = subprocess.run(["sbatch", "--parsable", "--array=0", "--gres=none",
                           "--cpus-per-task=1", f"--output={tmp_path}/job-%j.out",
                           f"--chdir={tmp_path}", str(SBATCH), "+study=quickstart"],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    wait_for(lambda: (marks / f"started-{job}").exists(), 90, f"job {job} starts")
    subprocess.run(["scancel", job], env=env, check=True, timeout=30)
    wait_for(lambda: job_state(slurm, job) in ("CANCELLED", "GONE"), 120, f"job {job} ends")
    time.sleep(3)
    assert job_state(slurm, job) in ("CANCELLED", "GONE")
    runs = (marks / "runs").read_text().splitlines()
    assert runs[0].startswith("run 0: -m sweeps run") and "term" in runs, runs
    assert not [r for r in runs[1:] if r.startswith("run")], runs  # never started again
    assert "requeueing" not in (tmp_path / f"job-{job}.out").read_text()


@pytest.mark.slow
@pytest.mark.postgres
def test_job_array_runs_the_quickstart_against_postgres_and_mlflow(
    slurm, postgres, mlflow_server, tmp_path
):
    import optuna
    from mlflow import MlflowClient

    db = f"sweeps_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(db)
    name = f"slurm-{uuid.uuid4().hex[:6]}"
    env = job_env(slurm, postgres, db, mlflow_server, tmp_path)
    n_trials = 3
    argv = ["sbatch", "--wait", "--array=0-1", "--gres=none", "--cpus-per-task=1",
            f"--output={tmp_path}/task-%a.out", f"--chdir={tmp_path}", str(SBATCH),
            "+study=quickstart", f"sweep.name={name}", f"sweep.n_trials={n_trials}",
            "train.epochs=1", "train.verbose=0", "train.threads=1",
            "train.subprocess=false"]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=420)
    outs = "\n".join(p.read_text()[-1500:] for p in sorted(tmp_path.glob("task-*.out")))
    assert done.returncode == 0, f"{done.stderr}\n{outs}\n{slurm.logs()}"
    assert len(list(tmp_path.glob("task-*.out"))) == 2

    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    surplus = [t for t in trials if t.user_attrs.get("sweeps.spurious")]
    counted = [t for t in trials if t not in surplus]
    assert [t.state.name for t in counted] == ["COMPLETE"] * n_trials, outs
    assert all(t.state.name == "FAIL" for t in surplus)
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    for t in counted:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweeps.device"] == "cpu"
    assert postgres.password not in outs


@pytest.mark.slow
@pytest.mark.postgres
def test_a_requeued_task_resumes_its_trial_in_the_same_run(
    slurm, postgres, mlflow_server, tmp_path
):
    """The time limit's warning mid-trial: the worker saves and exits 75, the task requeues
    itself, and its next run goes on from the saved epoch, in the same MLflow run."""
    import optuna
    from mlflow import MlflowClient
    from test_preempt import _saved_epoch

    from sweeps.recovery import RETRIES_ATTR

    epochs = 12
    db = f"sweeps_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(db)
    name = f"slurm-resume-{uuid.uuid4().hex[:6]}"
    env = job_env(slurm, postgres, db, mlflow_server, tmp_path)
    argv = ["sbatch", "--parsable", "--array=0", "--gres=none", "--cpus-per-task=1",
            f"--output={tmp_path}/task-%A.out", f"--chdir={tmp_path}", str(SBATCH),
            "+study=quickstart", f"sweep.name={name}", "sweep.n_trials=1",
            f"train.epochs={epochs}", "sweep.pruner=none", "train.verbose=0",
            "train.threads=1", "train.subprocess=false"]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]

    def out() -> str:
        logs = sorted(tmp_path.glob("task-*.out"))
        return "\n".join(p.read_text()[-3000:] for p in logs) + slurm.logs()

    deadline = time.monotonic() + 300
    while _saved_epoch(mlflow_server.s3, tmp_path, mlflow_server.uri, name) < 2:
        assert time.monotonic() < deadline, f"no epoch saved: {out()}"
        assert job_state(slurm, job) in ("PENDING", "RUNNING", "CONFIGURING"), out()
        time.sleep(0.5)
    assert job_state(slurm, job) == "RUNNING", out()
    # --signal=B:TERM@120's warning: the batch shell only, which hands it to the worker.
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], env=env, check=True, timeout=30)
    # Slurm holds a requeued job until a BeginTime some two minutes on; release it, as an
    # operator may with the same command, so the test does not wait out the hold.
    ended = ("PENDING", "COMPLETED", "GONE", "FAILED")  # not RUNNING, COMPLETING, REQUEUED
    wait_for(lambda: job_state(slurm, job) in ended, 120, f"job {job} stopped: {out()}")
    if job_state(slurm, job) == "PENDING":
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env,
                       check=True, timeout=30)  # fmt: skip
    wait_for(lambda: job_state(slurm, job) in ("COMPLETED", "GONE", "FAILED"), 420,
             f"job {job} requeued and finished: {out()}")  # fmt: skip
    log = out()
    assert log.count("requeueing task") == 1, log

    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"], log
    stopped, resumed = trials
    assert stopped.user_attrs["sweeps.reason"] == "interrupted"
    assert resumed.params == stopped.params
    assert resumed.system_attrs.get(RETRIES_ATTR, 0) == 0  # a pre-emption spends no retry
    at = resumed.user_attrs["sweeps.resumed_at_epoch"]
    assert 2 <= at < epochs
    assert sorted(resumed.intermediate_values) == list(range(1, epochs + 1))
    run_id = resumed.user_attrs["mlflow_run_id"]
    assert stopped.user_attrs["mlflow_run_id"] == run_id  # one MLflow run throughout
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sweeps.resumed_at_epoch"] == str(at)
    steps = [m.step for m in client.get_metric_history(run_id, "val_acc")]
    assert sorted(steps) == list(range(1, epochs + 1)), steps  # each epoch once
