# A sweep worker: `python -m sweeps run +study=NAME storage=postgres tracking=server`.
#   docker compose build && docker compose up -d   (a worker per GPU; README.md, "Scale out")
# TensorFlow's CUDA image brings Python 3.11, TensorFlow and the CUDA and cuDNN libraries;
# the host needs only the NVIDIA driver and the NVIDIA Container Toolkit. Another Keras
# backend's CUDA image works too, with KERAS_BACKEND set to match (README, "Keras backends"):
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime \
#                --build-arg KERAS_BACKEND=torch -t sweeps-worker .
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}
# train.backend's default in every worker and trial process of the image.
ARG KERAS_BACKEND=tensorflow

# Memory growth: TensorFlow (and JAX: no preallocation) takes GPU memory as it needs it instead
# of the whole card at start, so several workers (and trial processes) can share one GPU.
ENV KERAS_BACKEND=${KERAS_BACKEND} \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    XLA_PYTHON_CLIENT_PREALLOCATE=false \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLBACKEND=Agg \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Installed as the README says (pip install .); on TensorFlow's image its TensorFlow satisfies
# the pin. On a JAX or PyTorch image TensorFlow is left out (trials there never import it):
# every other dependency, then the project itself without dependencies.
COPY pyproject.toml README.md /tmp/sweeps/
COPY conf /tmp/sweeps/conf
COPY src /tmp/sweeps/src
COPY docker/requirements.py /tmp/sweeps/
RUN python /tmp/sweeps/requirements.py /tmp/sweeps/pyproject.toml "$KERAS_BACKEND" \
        > /tmp/sweeps/requirements.txt \
    && pip install -r /tmp/sweeps/requirements.txt \
    && pip install --no-deps /tmp/sweeps \
    && rm -rf /tmp/sweeps

# Runs are tagged with the commit they ran (the image holds no .git):
#   docker compose build --build-arg GIT_COMMIT=$(git rev-parse HEAD)
ARG GIT_COMMIT=""
ENV SWEEPS_GIT_COMMIT=${GIT_COMMIT}

# The store (Hydra logs, decoded-image caches, the MLflow spool) is /home/sweeps/sweeps-store;
# made here so that a volume mounted on it (compose's worker-store, the Kubernetes Job's
# store) belongs to the image's user.
RUN useradd --create-home --uid 1000 sweeps \
    && mkdir /home/sweeps/sweeps-store \
    && chown sweeps:sweeps /home/sweeps/sweeps-store
USER sweeps
WORKDIR /home/sweeps

CMD ["python", "-m", "sweeps", "--help"]
