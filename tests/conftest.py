"""Shared fixtures: one Prefect test server per session, started only if a test needs it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

PG_VERSION = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect API (its own database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster of its own on 127.0.0.1 (trust auth), dropped after the session."""
    if shutil.which("pg_createcluster") is None or not PG_BIN.is_dir():
        pytest.skip(f"PostgreSQL {PG_VERSION} cluster tools are not installed (postgresql-common)")
    name, port = f"anomaly{uuid.uuid4().hex[:8]}", free_port()
    created = subprocess.run(
        ["pg_createcluster", PG_VERSION, name, "-p", str(port), "--", "--auth=trust"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if created.returncode:
        pytest.skip(f"cannot create a PostgreSQL cluster: {created.stderr.strip()[:300]}")
    try:
        conf = Path(f"/etc/postgresql/{PG_VERSION}/{name}/postgresql.conf")
        with conf.open("a") as handle:
            handle.write("listen_addresses = '127.0.0.1'\nfsync = off\n")
        subprocess.run(["pg_ctlcluster", PG_VERSION, name, "start"], check=True, timeout=120)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, name], check=False, timeout=120)
