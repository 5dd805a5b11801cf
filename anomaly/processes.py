"""Child processes that die with their parent, and the small file helpers around them
(nothing here knows Prefect)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the kernel sends the child SIGKILL when the
    thread that started it ends, also when the parent is killed with ``kill -9`` (Linux)."""
    parent = os.getpid()

    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def die_with_parent_now() -> None:
    """Let the kernel send this process SIGKILL when its parent (the thread that started it)
    ends; exits at once if the parent is already gone."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie we cannot see as such)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie still answers signal 0
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return True


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot, from ``/proc/<pid>/stat`` ("0"
    where /proc is missing); with the pid it tells a process apart from a later one that
    reuses the id."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing), held while the block runs; the
    kernel releases it when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on 127.0.0.1, else a free port chosen by the kernel."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")  # unreachable: port 0 always binds
