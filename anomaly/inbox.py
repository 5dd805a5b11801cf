"""The inbox: which batch files wait in it (:func:`pending_batches`), the cross-process claim
that lets one run take a batch (:func:`claim`, :func:`release`, :func:`recover_claims`), and
moving a stored batch to ``processed/`` or ``rejected/`` (:func:`mark_done`).

Two runs started at once on the same inbox must not both process a batch. A run claims a
batch by renaming it into its own folder ``inbox/.claimed/<owner>/`` (a rename is atomic:
exactly one run wins, the others find the file gone and skip it). The owner is
``host@pid@process-start-time``; a claim whose owner died (same host, process gone) is put
back into the inbox by the next run, and one whose owner cannot be checked (another host)
after STALE_CLAIM_SECONDS. Outputs and the store are idempotent per batch, so a batch put
back and processed again ends exactly as if it had been processed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from pathlib import Path

from anomaly.config import Config
from anomaly.io import SUFFIXES
from anomaly.processes import alive, start_time
from anomaly.scoring import BatchSummary, batch_id_for
from anomaly.store import with_hash


def pending_batches(config: Config) -> list[Path]:
    """Batch files waiting in the inbox (a batch leaves it for ``processed/`` once stored).

    Only ``*.parquet``/``*.pq``/``*.csv`` files count: hidden files and names ending in
    ``.tmp`` or ``.part`` (writes in progress) are skipped. Claims left by runs that died are
    put back first (see :func:`recover_claims`).
    """
    if not config.data.inbox:
        msg = f"config {config.name!r} names no data.inbox; pass --batch PATH instead"
        raise ValueError(msg)
    inbox = Path(config.data.inbox)
    if not inbox.is_dir():
        msg = f"inbox folder {inbox} does not exist"
        raise FileNotFoundError(msg)
    recover_claims(inbox)
    return [
        p
        for p in sorted(inbox.iterdir())
        if (p.is_file() or p.is_symlink())
        and not p.name.startswith(".")
        and p.suffix.lower() in SUFFIXES
    ]


CLAIMS = ".claimed"
#: a claim by another host is taken back after this long (longer than any batch takes)
STALE_CLAIM_SECONDS = 6 * 3600


def claim_owner() -> str:
    """This process's claim folder name: ``host@pid@start-time`` (pid reuse tells apart)."""
    pid = os.getpid()
    return f"{socket.gethostname()}@{pid}@{start_time(pid)}"


def _owner_alive(owner: str) -> bool | None:
    """Whether a claim's owner still runs; None when it cannot be told (another host)."""
    host, _, rest = owner.partition("@")
    pid_text, _, start = rest.partition("@")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if start != "0":
        return start_time(pid) == start
    return alive(pid)


def claim(inbox: Path, path: Path) -> Path | None:
    """Move an inbox batch into this process's claim folder; None if another run has it."""
    folder = inbox / CLAIMS / claim_owner()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    with contextlib.suppress(OSError):  # the claim's time, for the stale-claim timeout
        os.utime(target, follow_symlinks=False)
    return target


def release(inbox: Path, claimed: Path) -> None:
    """Put a claimed batch back into the inbox (after an error, so a re-run retries it)."""
    with contextlib.suppress(FileNotFoundError):
        os.rename(claimed, inbox / claimed.name)


def recover_claims(inbox: Path, stale_seconds: float = STALE_CLAIM_SECONDS) -> list[Path]:
    """Put back into the inbox the batches claimed by runs that died; the files put back."""
    root = inbox / CLAIMS
    if not root.is_dir():
        return []
    recovered = []
    for folder in root.iterdir():
        owner_alive = _owner_alive(folder.name)
        if owner_alive or folder.name == claim_owner():
            continue
        for claimed in folder.iterdir():
            if owner_alive is None and time.time() - claimed.lstat().st_mtime < stale_seconds:
                continue
            target = inbox / claimed.name
            if target.exists() or target.is_symlink():  # a new file of that name arrived
                continue
            with contextlib.suppress(FileNotFoundError):  # another run recovered it first
                os.rename(claimed, target)
                recovered.append(target)
        with contextlib.suppress(OSError):
            folder.rmdir()
    return recovered


def in_inbox(config: Config, path: Path) -> Path | None:
    """The inbox if ``path`` is a file in it (or claimed from it), else None."""
    if not config.data.inbox:
        return None
    inbox = Path(config.data.inbox).resolve()
    parent = path.parent.resolve()
    return inbox if parent == inbox or parent.parent == inbox / CLAIMS else None


def mark_done(config: Config, path: Path, summary: BatchSummary) -> Path | None:
    """Move a stored inbox batch (or its claim) to ``processed/`` (rejected ones to
    ``rejected/``, with the reason beside it); files from elsewhere stay where they are.

    The file keeps its name unless its batch id carries a content hash (a re-used name) or a
    file of that name with other content is there already: then it is named like
    :func:`anomaly.store.with_hash`, so no processed file is ever replaced by another."""
    inbox = in_inbox(config, path)
    if inbox is None:
        return None
    folder = inbox / ("processed" if summary.status == "scored" else "rejected")
    folder.mkdir(exist_ok=True)
    if summary.error:
        (folder / f"{summary.batch_id}.reason.txt").write_text(summary.error + "\n")
    target = folder / path.name
    renamed = summary.batch_id != batch_id_for(path)
    if summary.content_hash and (
        renamed or (target.is_file() and content_hash(target) != summary.content_hash)
    ):
        name = with_hash(batch_id_for(path), summary.content_hash, path.suffix)
        target = folder / (name if name.endswith(path.suffix) else name + path.suffix)
    os.replace(path, target)
    return target


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks; of a symbolic link, of where it points
    (the target is never read)."""
    if path.is_symlink():
        return hashlib.sha256(b"symlink:" + os.fsencode(os.readlink(path))).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
