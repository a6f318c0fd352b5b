"""``train.precision``: which Keras dtype policy a trial trains under, and why.

``auto`` picks, on an NVIDIA GPU, mixed bfloat16 at compute capability 8.0 or more (Ampere and
later: bfloat16 tensor cores, and float32's range, so no loss scaling), mixed float16 at 7.x
(Volta and Turing: float16 tensor cores; Keras compiles such a model with a
``LossScaleOptimizer``, so small gradients do not vanish in float16), float32 below; without
a GPU, mixed bfloat16 on CPUs with bfloat16 instructions (AVX512_BF16 or AMX: oneDNN then runs
convolutions and matrix products in bfloat16 at about half the CPU time), float32 elsewhere.
The host facts come from :mod:`sweeps.host`, without importing TensorFlow, so the
`run` command can print and log the choice before any trial; setting the policy goes through
``keras.mixed_precision``, the same call on every Keras backend.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator

from sweeps import host

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_FP16_CAPABILITY = 7.0  # Volta: the first GPUs with float16 tensor cores
MIN_BF16_CAPABILITY = 8.0  # Ampere: the first with bfloat16 tensor cores


def resolve(requested: str, *, cpu_flags: Iterable[str], gpu_capability: float | None) -> str:
    """The policy ``requested`` means on a host with these facts.

    Args:
        requested: One of PRECISIONS.
        cpu_flags: The CPU's feature flags, as in ``/proc/cpuinfo``.
        gpu_capability: The visible GPU's compute capability, or None without one.
    """
    if requested != "auto":
        return requested
    if gpu_capability is not None:
        # A GPU trains the model: the CPU's flags do not matter then.
        if gpu_capability >= MIN_BF16_CAPABILITY:
            return "mixed_bfloat16"
        return "mixed_float16" if gpu_capability >= MIN_FP16_CAPABILITY else "float32"
    flags = set(cpu_flags)
    return "mixed_bfloat16" if any(f in flags for f in BF16_CPU_FLAGS) else "float32"


def reason(requested: str, resolved: str, *, cpu_flags: Iterable[str],
           gpu_capability: float | None) -> str:  # fmt: skip
    """One line saying what was chosen and why, as printed at the start of a run."""
    if requested != "auto":
        return f"precision: {resolved} (train.precision={requested})"
    if gpu_capability is not None:
        return f"precision: {resolved} (auto: GPU of compute capability {gpu_capability:g})"
    has = [f for f in BF16_CPU_FLAGS if f in set(cpu_flags)]
    why = f"CPU has {', '.join(has)}" if has else "no GPU, no bfloat16 instructions on the CPU"
    return f"precision: {resolved} (auto: {why})"


@functools.cache
def describe(requested: str) -> tuple[str, str]:
    """``(resolved policy, one-line reason)`` on this host; the host is probed once."""
    flags, cap = host.cpu_flags(), host.gpu_capability()
    resolved = resolve(requested, cpu_flags=flags, gpu_capability=cap)
    return resolved, reason(requested, resolved, cpu_flags=flags, gpu_capability=cap)


def choose(requested: str) -> str:
    """The policy ``requested`` resolves to on this host."""
    return describe(requested)[0]


def apply(requested: str) -> str:
    """Sets Keras's global dtype policy for the models built from now on; returns its name."""
    import keras

    resolved = choose(requested)
    if keras.mixed_precision.global_policy().name != resolved:
        keras.mixed_precision.set_global_policy(resolved)
    return resolved


@contextlib.contextmanager
def policy(requested: str) -> Iterator[str]:
    """The resolved policy for the models built (and compiled) inside; the previous one after.

    Layers keep the policy they were built under, so restoring it leaves the trial's model as
    it is while the rest of the process (the next trial, a notebook, a test) is unaffected.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    resolved = apply(requested)
    try:
        yield resolved
    finally:
        keras.mixed_precision.set_global_policy(previous)
