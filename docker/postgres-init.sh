#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d/):
# one role and one database per service, each with its own password from the environment.
#   mlflow  → databases mlflow (tracking + registry) and mlflow_auth (MLflow's users)
#   prefect → database prefect
#   review  → database review (the review store)
set -eu

create() {  # role, password, database...
    role=$1 password=$2
    shift 2
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v role="$role" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
SQL
    for database in "$@"; do
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
            -v role="$role" -v database="$database" <<'SQL'
CREATE DATABASE :"database" OWNER :"role";
SQL
    done
}

create mlflow "$MLFLOW_DB_PASSWORD" mlflow mlflow_auth
create prefect "$PREFECT_DB_PASSWORD" prefect
create review "$REVIEW_DB_PASSWORD" review
