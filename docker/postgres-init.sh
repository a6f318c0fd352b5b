#!/bin/sh
# Creates MLflow's database beside Optuna's (POSTGRES_DB, made by the image itself): both
# keep an `alembic_version` table, so they cannot share one database.
# Run once by the postgres image, on an empty data volume, from /docker-entrypoint-initdb.d/.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"${MLFLOW_DB:-mlflow}\""
