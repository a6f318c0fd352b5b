# The MLflow tracking server and optuna-dashboard of docker-compose.yml: Python, the two
# servers and the PostgreSQL driver, without TensorFlow or CUDA, so the host that keeps the
# database and the tracking server needs no GPU and no multi-GB image.
# The version ranges are pyproject.toml's; `docker compose build` builds this image and the
# workers' together, so the server is never older than the clients that write to it.
FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# SQLAlchemy 2.1 maps postgresql:// to psycopg 3. [auth]: the basic-auth app (Flask-WTF).
# boto3: the server's artifacts go to an S3 bucket (--artifacts-destination s3://...).
RUN pip install "mlflow[auth]>=3,<4" "optuna>=5,<6" optuna-dashboard "psycopg[binary]>=3.1" "boto3>=1.34"

RUN useradd --create-home --uid 1000 sweeps
USER sweeps
WORKDIR /home/sweeps
