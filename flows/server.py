"""The local Prefect server: the one ``anomaly serve`` runs (scheduler included, UI on
127.0.0.1, database under ``ANOMALY_HOME/prefect``), found by the one-shot commands through a
small state file, or a temporary one a command starts for itself when none is up.

Every server here is a child started with :func:`anomaly.processes.die_with_parent`, so it
dies with the command that started it, also after ``kill -9``. Nothing in this module imports
Prefect: the commands set ``PREFECT_API_URL`` first, so Prefect never starts its own temporary
server (which outlives a killed parent).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from anomaly.processes import alive, die_with_parent, file_lock, free_port

#: the port Prefect's own server uses; taken when free, so the UI has its usual address
DEFAULT_PORT = 4200
LEASES = "prefect.server.concurrency.lease_storage"
#: seconds a fresh database may take to migrate before the server answers (12 s measured)
STARTUP_TIMEOUT = 180


class ServerError(RuntimeError):
    """The local Prefect server did not come up."""


@dataclass(frozen=True)
class Server:
    """A running Prefect server: its API URL and the process that serves it."""

    api_url: str
    pid: int

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def prefect_home(home: Path) -> Path:
    return home / "prefect"


def _state_file(home: Path) -> Path:
    return prefect_home(home) / "server.json"


def _lock_file(home: Path) -> Path:
    return prefect_home(home) / "server.lock"


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether the API answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def running(home: Path) -> Server | None:
    """The local server ``anomaly serve`` runs for this ANOMALY_HOME, when it is up."""
    try:
        state = json.loads(_state_file(home).read_text())
        server = Server(api_url=str(state["api_url"]), pid=int(state["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # a busy server may answer slowly; a dead one refuses at once
    return server if alive(server.pid) and healthy(server.api_url, timeout=10.0) else None


def _start(home: Path, *, temporary: bool, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server child on 127.0.0.1 and wait until it answers. The temporary one runs
    only the services Prefect's own temporary server runs (no scheduler, no UI)."""
    port = free_port(None if temporary else DEFAULT_PORT)
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home(home)),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false" if temporary else "true",
        "PREFECT_UI_API_URL": api_url,
        "PREFECT__SERVER_FINAL": "1",
        # deployment concurrency leases in files under PREFECT_HOME, not in the server's
        # memory: shared by the servers of one database, and a run of a killed serve gives its
        # slot back when its lease expires (in memory, the slot stayed taken for good)
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": f"{LEASES}.filesystem",
    }
    env.pop("PREFECT_API_URL", None)
    if temporary:
        env["PREFECT__SERVER_EPHEMERAL"] = "1"
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:  # a session of its own: Ctrl-C reaches the command, which
        process = subprocess.Popen(  # stops its flows and runner before the server
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not healthy(api_url, timeout=1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            msg = f"the Prefect server did not start (log {log}): {tail[0]}"
            raise ServerError(msg)
        time.sleep(0.1)
    return process, api_url


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def configured_api() -> str | None:
    """The Prefect API the user chose: ``PREFECT_API_URL``, or Prefect's settings when Prefect
    is already imported (a test harness, a profile)."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    if "prefect" in sys.modules:
        from prefect.settings import get_current_settings

        return get_current_settings().api.url
    return None


@contextlib.contextmanager
def local_server(home: Path) -> Iterator[tuple[Server, bool]]:
    """The local server for ``anomaly serve``: the one already up for this ANOMALY_HOME
    (reused; ``False``), else one started here and stopped on exit (``True``)."""
    with file_lock(_lock_file(home)):
        if found := running(home):
            process = None
        else:
            process, api_url = _start(home, temporary=False, log=prefect_home(home) / "server.log")
            found = Server(api_url=api_url, pid=process.pid)
            _state_file(home).write_text(json.dumps({"api_url": api_url, "pid": process.pid}))
    try:
        yield found, process is not None
    finally:
        if process is not None:
            with file_lock(_lock_file(home)):
                _state_file(home).unlink(missing_ok=True)
                _stop(process)


@contextlib.contextmanager
def api_for_command(home: Path) -> Iterator[str]:
    """The Prefect API a one-shot command uses: ``PREFECT_API_URL`` when set, else the local
    server when ``anomaly serve`` runs one, else a temporary server of the command's own.
    Temporary servers share the SQLite database; the lock lets one start (migrations, block
    registration) at a time, and makes a command wait for a ``serve`` that is starting."""
    if url := configured_api():
        yield url
        return
    with file_lock(_lock_file(home)):
        if found := running(home):
            process, api_url = None, found.api_url
        else:
            log = prefect_home(home) / "temporary-server.log"
            process, api_url = _start(home, temporary=True, log=log)
    os.environ["PREFECT_API_URL"] = api_url
    try:
        yield api_url
    finally:
        del os.environ["PREFECT_API_URL"]
        if process is not None:
            if "prefect" in sys.modules:  # send buffered logs and events while it answers
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=5)
            _stop(process)
