#!/bin/sh
# Entrypoint of the anomaly image: runs the container's command, after writing MLflow's
# basic-auth config from the environment when MLFLOW_AUTH_DATABASE_URI is set (the mlflow
# service). The file never holds the admin password: MLflow reads MLFLOW_AUTH_ADMIN_USERNAME
# and MLFLOW_AUTH_ADMIN_PASSWORD itself.
set -eu

if [ -n "${MLFLOW_AUTH_DATABASE_URI:-}" ]; then
    : "${MLFLOW_AUTH_CONFIG_PATH:?set MLFLOW_AUTH_CONFIG_PATH: where to write the auth config}"
    # configparser reads "%" as interpolation: double it (URL-encoded passwords contain "%")
    uri=$(printf '%s' "$MLFLOW_AUTH_DATABASE_URI" | sed 's/%/%%/g')
    (umask 077 && cat > "$MLFLOW_AUTH_CONFIG_PATH") <<CONFIG
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-NO_PERMISSIONS}
database_uri = ${uri}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
CONFIG
fi

exec "$@"
