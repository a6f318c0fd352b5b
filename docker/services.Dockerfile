# The MLflow tracking server and optuna-dashboard of docker-compose.yml: Python, the two
# servers and the PostgreSQL driver, without TensorFlow or CUDA, so the host that keeps the
# database and the tracking server needs no GPU and no multi-GB image.
# The version ranges are pyproject.toml's; `docker compose build` builds this image and the
# workers' together, so the server is never older than the clients that write to it.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# SQLAlchemy 2.1 maps postgresql:// to psycopg 3.
RUN pip install "mlflow>=3,<4" "optuna>=5,<6" optuna-dashboard "psycopg[binary]>=3.1"

# A new named volume takes the owner of the folder it is mounted on: the server can write
# the artifacts it serves.
RUN useradd --create-home --uid 1000 sweeps \
    && mkdir /mlartifacts \
    && chown sweeps /mlartifacts
USER sweeps
WORKDIR /home/sweeps
