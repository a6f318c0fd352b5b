# A sweep worker: `python -m sweeps run +study=NAME storage=postgres tracking=server`.
#   docker compose build && docker compose up -d --scale worker=2   (see README.md, "Scale out")
# TensorFlow's CUDA image brings Python 3.11, TensorFlow and the CUDA and cuDNN libraries;
# the host needs only the NVIDIA driver and the NVIDIA Container Toolkit.
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

# Memory growth: TensorFlow takes GPU memory as it needs it instead of the whole card at
# start, so several workers (and trial processes) can share one GPU.
ENV TF_FORCE_GPU_ALLOW_GROWTH=true \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLBACKEND=Agg \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Installed as the README says (pip install .); the image's TensorFlow satisfies the pin.
COPY pyproject.toml README.md /tmp/sweeps/
COPY conf /tmp/sweeps/conf
COPY src /tmp/sweeps/src
RUN pip install /tmp/sweeps && rm -rf /tmp/sweeps

# Runs are tagged with the commit they ran (the image holds no .git):
#   docker compose build --build-arg GIT_COMMIT=$(git rev-parse HEAD)
ARG GIT_COMMIT=""
ENV SWEEPS_GIT_COMMIT=${GIT_COMMIT}

RUN useradd --create-home --uid 1000 sweeps
USER sweeps
# The embedded store (Hydra logs, decoded-image caches, MLflow spool) lands here.
WORKDIR /home/sweeps

CMD ["python", "-m", "sweeps", "--help"]
