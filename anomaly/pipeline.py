"""The library-level jobs the flows call, and tests and benchmarks call too: train and
register (:func:`train_and_store`), score and store (:func:`score_batches`,
:func:`process_batch`), mark done, sample. The promotion gate is
:func:`anomaly.promotion.run_gate`."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from anomaly import registry
from anomaly.config import Config
from anomaly.detector import Detector
from anomaly.io import SUFFIXES, read_table, shown
from anomaly.processes import alive
from anomaly.promotion import REVIEW_LABELS, decide, evaluation_data
from anomaly.scoring import BatchSummary, MapParts, batch_id_for, score_file
from anomaly.store import (
    connect,
    current_labels,
    default_url,
    reserve_batch,
    with_hash,
    write_batch,
)
from anomaly.tracking import log_batch, log_training
from anomaly.training import TrainResult, train


@dataclass(frozen=True)
class Trained:
    """A training run's result, its MLflow run and the registered version."""

    result: TrainResult
    version: str
    run_id: str


def reviews(config: Config) -> pd.DataFrame:
    """The latest label of every reviewed record in the config's store (maybe no rows)."""
    return current_labels(store_engine(config))


def training_data(config: Config, reviewed: pd.DataFrame | None) -> pd.DataFrame:
    """``data.train``, plus rows reviewed as false positives when the config says so (their
    stored values, in the training data's columns)."""
    data = read_table(config.data.train)
    if reviewed is None or not config.training.include_false_positives:
        return data
    false_positives = reviewed[reviewed["label"] == "false_positive"]
    if not len(false_positives):
        return data
    # a value missing from a stored record (an older feature spec) quarantines that row
    extra = pd.DataFrame(list(false_positives["values"])).reindex(columns=data.columns)
    return pd.concat([data, extra], ignore_index=True)


def labelled_data(config: Config, reviewed: pd.DataFrame | None) -> pd.DataFrame | None:
    """Labelled rows to evaluate on: ``data.evaluation`` plus reviewed records (confirmed
    anomalies and false positives); None when there are none."""
    has_labels = reviewed is not None and reviewed["label"].isin(REVIEW_LABELS).any()
    if not config.data.evaluation and not has_labels:
        return None
    return evaluation_data(config, reviewed)


def train_and_store(config: Config, reviewed: pd.DataFrame | None = None) -> Trained:
    """The train job, as every door runs it: ``data.train`` plus reviewed false positives
    (:func:`training_data`), fitted and evaluated on :func:`labelled_data`, logged to MLflow
    and registered (:func:`register_result`).

    ``reviewed``: the store's current labels (:func:`reviews`), read from the store if None.
    """
    reviewed = reviews(config) if reviewed is None else reviewed
    data = training_data(config, reviewed)
    return register_result(config, train(config, data, labelled_data(config, reviewed)), data)


def register_result(config: Config, result: TrainResult, data: pd.DataFrame) -> Trained:
    """Log a training result to MLflow and register it as ``challenger``; the first version of
    a model becomes ``champion`` directly (there is nothing to compare it with)."""
    run_id, model_id = log_training(config, result, data, source=config.data.train)
    version = registry.register(config, model_id, run_id)
    if registry.alias_version(config, registry.CHAMPION) is None:  # the gate's first-model rule
        registry.promote(config, version, decide(config, result.metrics, None).summary())
    return Trained(result, version, run_id)


def scored_dir(config: Config) -> Path:
    """Where scored batch outputs of this config go."""
    return config.home / "scored" / config.name


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


# ---------------------------------------------------------------------------- claims
# Two runs started at once on the same inbox must not both process a batch. A run claims a
# batch by renaming it into its own folder ``inbox/.claimed/<owner>/`` (a rename is atomic:
# exactly one run wins, the others find the file gone and skip it). The owner is
# ``host@pid@process-start-time``; a claim whose owner died (same host, process gone) is put
# back into the inbox by the next run, and one whose owner cannot be checked (another host)
# after STALE_CLAIM_SECONDS. Outputs and the store are idempotent per batch, so a batch put
# back and processed again ends exactly as if it had been processed once.

CLAIMS = ".claimed"
#: a claim by another host is taken back after this long (longer than any batch takes)
STALE_CLAIM_SECONDS = 6 * 3600


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("0" where /proc is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def claim_owner() -> str:
    """This process's claim folder name: ``host@pid@start-time`` (pid reuse tells apart)."""
    pid = os.getpid()
    return f"{socket.gethostname()}@{pid}@{_start_time(pid)}"


def _owner_alive(owner: str) -> bool | None:
    """Whether a claim's owner still runs; None when it cannot be told (another host)."""
    host, _, rest = owner.partition("@")
    pid_text, _, start = rest.partition("@")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if start != "0":
        return _start_time(pid) == start
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
        alive = _owner_alive(folder.name)
        if alive or folder.name == claim_owner():
            continue
        for claimed in folder.iterdir():
            if alive is None and time.time() - claimed.lstat().st_mtime < stale_seconds:
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


def _in_inbox(config: Config, path: Path) -> Path | None:
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
    inbox = _in_inbox(config, path)
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


def store_engine(config: Config) -> Engine:
    """The review store of ``config`` (one engine per URL and process)."""
    return _engine(config.store.url or default_url(config.home))


@functools.cache
def _engine(url: str) -> Engine:
    return connect(url)


def process_batch(
    config: Config,
    detector: Detector,
    version: str,
    path: Path,
    engine: Engine,
    map_parts: MapParts | None = None,
) -> BatchSummary | None:
    """Score one batch, store it (one transaction), log its numbers to MLflow, then mark it
    done — in that order, so a crash at any point leaves the file in the inbox (or in a claim
    that the next run puts back) and a re-run redoes it: the store replaces the batch's rows
    and the outputs are rewritten atomically.

    The batch's id is its file name, reserved in the store with the file's content hash; a
    file with other content under a used name gets ``name@<hash>`` (see
    :func:`anomaly.store.reserve_batch`), so it never replaces a stored batch or its outputs.

    An inbox batch is claimed first (see :func:`claim`); None means another run claimed it.

    With ``map_parts`` (e.g. the Dask workers' map), a Parquet file of more than
    ``scoring.split_rows`` rows is scored in parts that it runs, merged into one batch here
    (see :func:`anomaly.scoring.score_file`); without, a file is scored whole.
    """
    inbox = _in_inbox(config, path)
    if inbox is None:
        if not path.is_file():
            msg = f"batch file {path} is gone (moved by another run?)"
            raise FileNotFoundError(msg)
        work: Path | None = path
    else:
        work = claim(inbox, path)
        if work is None:
            return None
    try:
        digest = content_hash(work)
        batch_id = reserve_batch(
            engine, batch_id_for(work), digest, work.suffix, shown(path, full=True), config.name
        )
        summary = _score(config, detector, version, work, batch_id, map_parts)
        summary = dataclasses.replace(summary, source=shown(path, full=True), content_hash=digest)
        empty = pd.DataFrame()
        flagged = summary.flagged if summary.flagged is not None else empty
        quarantined = summary.quarantined if summary.quarantined is not None else empty
        write_batch(
            engine, summary, config.name, flagged, quarantined, detector.preprocessor.features.id
        )
        log_batch(config, summary)
        mark_done(config, work, summary)
    except BaseException:
        if inbox is not None:
            release(inbox, work)
        raise
    return summary


def _score(
    config: Config,
    detector: Detector,
    version: str,
    path: Path,
    batch_id: str,
    map_parts: MapParts | None,
) -> BatchSummary:
    """Score a batch file; a symbolic link is rejected (it could point outside the inbox)."""
    if path.is_symlink():
        msg = f"{shown(path)} is a symbolic link; put the batch file itself in the inbox"
        return BatchSummary(batch_id, str(path), "rejected", error=msg)
    return score_file(
        detector,
        path,
        scored_dir(config),
        config.scoring.chunk_rows,
        version,
        explain_rows=config.scoring.explain_rows,
        batch_id=batch_id,
        passthrough=config.scoring.passthrough,
        split_rows=None if map_parts is None else config.scoring.split_rows,
        map_parts=map_parts or map,
    )


def score_batches(
    config: Config,
    batches: list[Path],
    version: str | None = None,
    map_parts: MapParts | None = None,
) -> list[BatchSummary]:
    """Score, store and mark done each batch with the champion (or the given version); batches
    claimed by another run are left to it. ``map_parts``: see :func:`process_batch`."""
    detector, version = registry.load_detector(config, version)
    engine = store_engine(config)
    summaries = (
        process_batch(config, detector, version, path, engine, map_parts) for path in batches
    )
    return [s for s in summaries if s is not None]


def sample(
    config: Config,
    n: int,
    seed: int = 0,
    version: str | None = None,
    context: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """``n`` synthetic records in raw feature space from the champion (or ``version``),
    given the ``context`` column values when the feature spec has context columns."""
    detector, _ = registry.load_detector(config, version)
    return detector.sample(n, seed=seed, context=context)
