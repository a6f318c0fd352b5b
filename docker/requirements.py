"""The worker image's requirements for a Keras backend: pyproject.toml's, less TensorFlow
where the backend is not TensorFlow (a JAX or PyTorch worker never imports it).

    python docker/requirements.py pyproject.toml jax > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, backend: str) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    if backend == "tensorflow":
        return list(deps)
    return [d for d in deps if not d.lower().replace("_", "-").startswith("tensorflow")]


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2])))
