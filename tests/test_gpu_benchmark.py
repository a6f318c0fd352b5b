"""``python -m benchmarks gpu``: its models, statistics and placement, its dry run on the CPU,
and the project carried as a wheel to a host without TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from scipy import stats

from benchmarks import gpu
from benchmarks.__main__ import main

REPO = Path(__file__).resolve().parents[1]
# What a JAX/PyTorch GPU host lacks: the product's heavy dependencies. ``None`` in sys.modules
# makes ``import X`` fail and ``importlib.util.find_spec(X)`` answer None.
HIDDEN = ("tensorflow", "optuna", "mlflow", "hydra", "omegaconf", "sqlalchemy", "pandas",
          "matplotlib", "sklearn", "psycopg", "cmaes")  # fmt: skip


@pytest.mark.parametrize("name", list(gpu.MODELS))
def test_models_are_their_studies_models(name):
    from benchmarks.common import compose
    from sweeps.trial import make_spec

    model = gpu.MODELS[name]
    cfg = compose(model.study, "data.root=/unused")
    spec = make_spec(cfg, cfg.raw, 0, 0, {}, Path("/nonexistent"))
    assert spec.model_name == "cnn"
    assert model.kwargs == spec.model_kwargs
    assert (model.batch, model.optimizer, model.learning_rate) == (
        cfg.train.batch_size, cfg.train.optimizer, cfg.train.learning_rate)  # fmt: skip
    assert spec.input_size in (None, (model.size, model.size))
    assert cfg.train.jit_compile == gpu.JIT_COMPILE


def test_paired_difference_interval_and_equivalence():
    acc, base = [0.90, 0.92, 0.91, 0.93], [0.905, 0.915, 0.915, 0.925]
    got = gpu.paired(acc, base)
    diffs = [a - b for a, b in zip(acc, base, strict=True)]
    low, high = stats.t.interval(0.95, 3, loc=sum(diffs) / 4, scale=stats.sem(diffs))
    assert got["mean_diff"] == pytest.approx(0.0, abs=1e-12)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert got["p_value"] == pytest.approx(stats.ttest_rel(acc, base).pvalue)
    assert got["equivalent_within_1_point"] is True
    assert gpu.paired([0.9, 0.8, 0.95], [0.7, 0.9, 0.6])["equivalent_within_1_point"] is False
    one = gpu.paired([0.9], [0.9])
    assert one["ci_low"] is None and one["equivalent_within_1_point"] is False


def test_workers_get_the_launchers_placement():
    from sweeps.launcher import SHARE_HEADROOM

    alone, shared = gpu.worker_envs(1, "3", "jax"), gpu.worker_envs(2, "3", "jax")
    assert alone[0]["CUDA_VISIBLE_DEVICES"] == "3" and "SWEEPS_GPU_SHARE" not in alone[0]
    assert alone[0]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    share = f"{SHARE_HEADROOM / 2:g}"
    assert [e["SWEEPS_GPU_SHARE"] for e in shared] == [share, share]
    assert all(e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == share for e in shared)
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in gpu.worker_envs(2, "3", "torch")[0]
    dry = gpu.worker_envs(2, None, "tensorflow")
    assert all(e["CUDA_VISIBLE_DEVICES"] == "" and e["SWEEPS_GPU_SHARE"] == share for e in dry)


def test_images_are_labelled_and_in_range():
    spec = gpu.MODELS["fashion"]
    x, y = gpu.images(spec, 40, 0)
    assert x.shape == (40, 28, 28, 1) and x.dtype == "float32"
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(y) <= set(range(10)) and len(set(y)) > 5
    assert (gpu.images(spec, 40, 0)[0] == x).all()


def test_dry_run_is_refused_where_a_benchmark_has_none(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["packing", "--dry-run"])
    assert exit_.value.code == 2 and "packing has no --dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_measures_every_backend_precision_and_sharing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "gpu", "--dry-run", "--out", str(tmp_path)],
        cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / "gpu-cpu-dry-run.json"
    assert f"wrote {path}" in proc.stdout
    record = json.loads(path.read_text())
    assert record["benchmark"] == "gpu"
    assert record["command"] == "python -m benchmarks gpu --dry-run"
    work = record["workload"]
    assert work["dry_run"] is True and work["card"]["slug"] == "cpu-dry-run"
    assert work["backends"] == gpu.installed()
    assert work["precisions"] == ["float32", "mixed_bfloat16"] and work["trials_per_gpu"] == [1, 2]
    for backend in work["backends"]:
        for precision in work["precisions"]:
            for k in (1, 2):
                rows = [r for r in record["repeats"] if (r["backend"], r["precision"],
                        r["trials_per_gpu"]) == (backend, precision, k)]  # fmt: skip
                assert sorted(r["seed"] for r in rows) == list(range(k))
                for r in rows:
                    assert "peak_mb" in r  # None on the CPU
                    assert 0.0 <= r["test_acc"] <= 1.0 and r["epoch_s"] > 0
                    assert r["gpu_share"] == (0.45 if k == 2 else None)
                    if backend == "jax" and k == 2:
                        assert r["jax_env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.45"
                    if backend != "tensorflow":
                        assert r["tensorflow_imported"] is False
                (cell,) = [c for c in record["cells"] if (c["backend"], c["precision"],
                           c["trials_per_gpu"]) == (backend, precision, k)]  # fmt: skip
                assert cell["trials_per_hour"] > 0 and "util_mean_pct" in cell
        (acc,) = [a for a in record["accuracy"] if a["backend"] == backend]
        assert acc["precision"] == "mixed_bfloat16" and acc["seeds"] == [0, 1]
        assert acc["ci_low"] <= acc["mean_diff"] <= acc["ci_high"]
        assert "p_value" in acc and isinstance(acc["equivalent_within_1_point"], bool)
    for key in ("trials_per_hour_2_over_1", "bf16_over_fp32_acc", "bf16_over_fp32_epoch_s"):
        assert math.isfinite(record["ratios"][key]) and record["ratios"][key] > 0
    assert "bf16_minus_fp32_acc" in record["medians"]
    assert set(record["target_met"]) == set(record["targets"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs jax")
def test_carried_as_a_wheel_to_a_host_without_tensorflow(tmp_path):
    """docs/how-to/gpu-benchmark.md's procedure, on the CPU: the project's wheel installed
    with --no-deps into a folder, the benchmarks folder beside it, TensorFlow and the
    product's other heavy dependencies absent; one JAX worker trains and reports."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels, target, run_dir = tmp_path / "wheelhouse", tmp_path / "target", tmp_path / "run"
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, timeout=300, cwd=tmp_path)  # fmt: skip
    subprocess.run([*pip, "install", "--no-index", "--find-links", str(wheels), "--no-deps",
                    "--target", str(target), "sweeps"], check=True, timeout=300)  # fmt: skip
    shutil.copytree(REPO / "benchmarks", run_dir / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__", "results"))  # fmt: skip
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(f"import sys\nfor n in {HIDDEN!r}:\n"
                                           "    sys.modules[n] = None\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{hide}", "TF_CPP_MIN_LOG_LEVEL": "2",
           "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    check = ("import sweeps, benchmarks.gpu as g; print(sweeps.__file__); print(g.installed()); "
             "print(g.worker_envs(2, None, 'jax')[0]['SWEEPS_GPU_SHARE'])")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", check], cwd=run_dir, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()  # fmt: skip
    assert out[0].startswith(str(target)) and "'tensorflow'" not in out[1] and out[2] == "0.45"
    spec = replace(gpu.DRY_RUN.models["age_gap"], train=16, test=16)
    worker = [sys.executable, "-m", "benchmarks.gpu", "age_gap", "float32", "1",
              json.dumps(vars(spec)), json.dumps("auto"), "0"]  # fmt: skip
    proc = subprocess.run(worker, cwd=run_dir, env=env, input="go\n", capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "ready"
    got = json.loads(lines[-1])
    assert got["tensorflow_imported"] is False and 0.0 <= got["test_acc"] <= 1.0
    assert got["backend_version"] and got["peak_mb"] is None
