"""``python -m benchmarks NAME [--quick] [--dry-run] [--repeats N] [--out DIR]``, from the
repository root."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, render, write

NAMES = ("overhead", "pruning", "workers", "startup", "liar", "answer", "packing", "backends",
         "spread", "verdicts", "pooler", "gpu")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--quick", action="store_true", help="tiny workload, for CI smoke tests")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the whole path on the CPU, tiny (benchmarks that have one: gpu)",
    )
    parser.add_argument("--repeats", type=int, help="override the benchmark's repeat count")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    load_before, started = os.getloadavg(), time.monotonic()
    module = importlib.import_module(f"benchmarks.{args.name}")
    if args.dry_run and "dry_run" not in inspect.signature(module.run).parameters:
        parser.error(f"{args.name} has no --dry-run")
    extra = {"dry_run": True} if args.dry_run else {}
    result = module.run(quick=args.quick, repeats=args.repeats, **extra)
    path = write(args.name, args.quick, result, args.out, started, load_before)
    if hasattr(module, "after_write"):  # a benchmark that names its file itself (gpu-<card>)
        path = module.after_write(path, quick=args.quick, dry_run=args.dry_run)
    print(render(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
