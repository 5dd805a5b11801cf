"""Scored batches: the id a batch file gets (:func:`reserve_batch`), its rows written in one
transaction (:func:`write_batch`), and the stored batches read back.

A batch is identified by its file name and its content: a different file under a used name
gets an id of its own, so it never replaces a stored batch. Writing one batch is one
transaction keyed by the batch id: a re-run replaces the rows an earlier run of the same
content stored, so it never duplicates or loses records, and a reviewed record is kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    Column,
    Connection,
    Dialect,
    Engine,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from anomaly.schema import SCORE_COLUMNS, batch_values
from anomaly.store.bulk import insert_rows, json_objects
from anomaly.store.reviews import latest_entry, logged, restore_assignees
from anomaly.store.tables import (
    Batch,
    Flagged,
    Quarantined,
    Review,
)

if TYPE_CHECKING:  # the scoring stack (torch) loads only where batches are scored
    from anomaly.scoring import BatchSummary


class BatchConflictError(RuntimeError):
    """A batch written over a stored batch of the same id but other content."""


#: rows per INSERT statement when storing a batch
INSERT_ROWS = 5_000
#: what an SQLite connection's page cache may hold while a batch is stored (KiB): the queue's
#: indexes take the rows in score order, and with the default 2 MB each insert re-read pages
_SQLITE_CACHE_KIB = 65_536

_FLAGGED_COLUMNS = (
    "batch_id", "record_id", "model_name", "model_version", "log_likelihood", "p_value",
    "reason", "values", "contributions", "scored_at",
)  # fmt: skip
_QUARANTINED_COLUMNS = ("batch_id", "row", "record_id", "reason", "values")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _contributions_text(value: Any) -> str:
    """The stored JSON of a row's contributions (missing: JSON ``null``, as the JSON column
    stores None)."""
    if type(value) is list and not value:
        return "[]"
    return json.dumps(None if _missing(value) else value)


def _flagged_rows(
    flagged: pd.DataFrame, summary: BatchSummary, model_name: str, id_column: str, scored_at: Any
) -> list[tuple[Any, ...]]:
    """The ``flagged`` table's rows (:data:`_FLAGGED_COLUMNS`) of a slice of flagged rows."""
    score_cols = {*SCORE_COLUMNS, "contributions"}
    value_cols = [c for c in flagged.columns if c not in score_cols]
    n = len(flagged)
    contributions = flagged["contributions"].tolist() if "contributions" in flagged else [None] * n
    constant = (summary.batch_id, model_name, summary.model_version)
    return [
        (constant[0], str(record), *constant[1:], float(ll), float(p), str(reason), values,
         _contributions_text(contrib), scored_at)
        for record, ll, p, reason, values, contrib in zip(
            flagged[id_column].tolist(),
            flagged["log_likelihood"].tolist(),
            flagged["p_value"].tolist(),
            flagged["reason"].tolist(),
            json_objects(flagged, value_cols),
            contributions,
            strict=True,
        )
    ]  # fmt: skip


def _quarantined_rows(
    quarantined: pd.DataFrame, summary: BatchSummary, id_column: str, first_row: int
) -> list[tuple[Any, ...]]:
    """The ``quarantined`` table's rows (:data:`_QUARANTINED_COLUMNS`) of a slice."""
    ids = quarantined[id_column].tolist() if id_column in quarantined else [None] * len(quarantined)
    return [
        (
            summary.batch_id,
            first_row + i,
            None if pd.isna(record) else str(record)[:300].replace("\x00", "?"),  # 300 wide
            str(reason),
            values,
        )
        for i, (record, reason, values) in enumerate(
            zip(
                ids,
                quarantined["reason"].tolist(),
                json_objects(quarantined, [c for c in quarantined.columns if c != "reason"]),
                strict=True,
            )
        )
    ]


def _bound(column: Column[Any], value: Any, dialect: Dialect) -> Any:
    """``value`` as ``dialect``'s driver takes it for ``column`` (SQLite: a datetime as text)."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return value if process is None else process(value)


@contextmanager
def _page_cache(connection: Connection) -> Iterator[None]:
    """On SQLite, a page cache of :data:`_SQLITE_CACHE_KIB` for the block, then the one the
    connection had (a connection setting: durability is unchanged)."""
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = connection.connection.driver_connection
    before = raw.execute("PRAGMA cache_size").fetchone()[0]
    raw.execute(f"PRAGMA cache_size = -{_SQLITE_CACHE_KIB}")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA cache_size = {int(before)}")


#: how many hex digits of the content hash an id of a re-used name carries
SHORT_HASH = 12
#: the status of a batch whose id is reserved and whose scoring has not been stored yet
SCORING = "scoring"


def with_hash(batch_id: str, content_hash: str, suffix: str) -> str:
    """The id of a batch whose name is used by another: ``name@<hash>`` + the file suffix,
    e.g. ``batch_001@3f9a0c1b2d4e.parquet``."""
    short = content_hash[:SHORT_HASH]
    if suffix and batch_id.endswith(suffix):
        return f"{batch_id[: -len(suffix)]}@{short}{suffix}"
    return f"{batch_id}@{short}"


def reserve_batch(
    engine: Engine, batch_id: str, content_hash: str, suffix: str, source: str, model_name: str
) -> str:
    """The id a batch file gets, reserved in the store before it is scored.

    ``batch_id`` (from the file name) when it is free or holds this same content (a re-run);
    else :func:`with_hash` — a different file under a used name is a batch of its own and
    never replaces the stored one (nor its outputs, which are named by the id). A free id is
    reserved by inserting its batch row with status :data:`SCORING` (the final row replaces
    it), so two runs with two different files of one name cannot both take it.
    """
    candidates = (batch_id, with_hash(batch_id, content_hash, suffix))
    for _ in range(5):  # a concurrent reservation of the same id: look again
        try:
            with Session(engine) as session, session.begin():
                for candidate in candidates:
                    row = session.get(Batch, candidate)
                    if row is not None and row.content_hash == content_hash:
                        return candidate
                    if row is None:
                        session.add(_reservation(candidate, content_hash, source, model_name))
                        return candidate
        except IntegrityError:
            continue
        break
    msg = f"no free id for batch {batch_id!r} (content {content_hash[:SHORT_HASH]})"
    raise BatchConflictError(msg)


def _reservation(batch_id: str, content_hash: str, source: str, model_name: str) -> Batch:
    return Batch(
        batch_id=batch_id,
        source=source,
        status=SCORING,
        model_name=model_name,
        model_version="",
        rows_in=0,
        rows_scored=0,
        rows_quarantined=0,
        rows_flagged=0,
        flag_rate=0.0,
        expected_rate=0.0,
        shift_p_value=1.0,
        shift_alarm=False,
        content_hash=content_hash,
        scored_at=datetime.now(UTC),
    )


def write_batch(
    engine: Engine,
    summary: BatchSummary,
    model_name: str,
    flagged: pd.DataFrame,
    quarantined: pd.DataFrame,
    id_column: str,
) -> None:
    """Store one batch in one transaction, replacing what an earlier run of it stored.

    ``flagged`` holds the raw values plus ``log_likelihood``, ``p_value``, ``reason`` (and
    optionally ``contributions``); ``quarantined`` the raw values plus ``reason``. Reviewed
    records are kept as they are (with their label), whether flagged again or not. A stored
    batch of this id with another content hash is refused (:class:`BatchConflictError`).
    """
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        stored = session.get(Batch, summary.batch_id, with_for_update=True)
        if stored is not None and stored.content_hash != summary.content_hash:
            msg = (
                f"batch {summary.batch_id!r} is stored with other content "
                f"({stored.content_hash}, not {summary.content_hash}); it is not replaced"
            )
            raise BatchConflictError(msg)
        # `label IS NULL`: on PostgreSQL a review committed while this waits on the row's lock
        # sets the label, and the row is re-checked before it is deleted
        session.execute(
            delete(Flagged).where(Flagged.batch_id == summary.batch_id, Flagged.label.is_(None))
        )
        session.execute(delete(Quarantined).where(Quarantined.batch_id == summary.batch_id))
        kept = set(
            session.scalars(select(Flagged.record_id).where(Flagged.batch_id == summary.batch_id))
        )
        session.merge(Batch(**batch_values(summary), model_name=model_name, scored_at=now))
        # in slices of consecutive rows, so memory holds one slice (``flagged`` may be a
        # scoring.FlaggedRows spill, read a slice at a time); each slice is one INSERT of
        # prepared tuples on the transaction's own DBAPI connection (bulk.insert_rows), its rows
        # in score order, so that the queue's indexes (by score) take them in runs
        connection = session.connection()
        scored_at = _bound(Flagged.__table__.c.scored_at, now, connection.dialect)
        with _page_cache(connection):
            for start in range(0, len(flagged), INSERT_ROWS):
                part = flagged.iloc[start : start + INSERT_ROWS]
                part = part.iloc[np.argsort(part["log_likelihood"].to_numpy(), kind="stable")]
                rows = _flagged_rows(part, summary, model_name, id_column, scored_at)
                rows = [r for r in rows if r[1] not in kept] if kept else rows
                insert_rows(connection, Flagged.__table__, _FLAGGED_COLUMNS, rows)
            for start in range(0, len(quarantined), INSERT_ROWS):
                part = quarantined.iloc[start : start + INSERT_ROWS]
                rows = _quarantined_rows(part, summary, id_column, start)
                insert_rows(connection, Quarantined.__table__, _QUARANTINED_COLUMNS, rows)
        # rows inserted here whose record has reviews (a reviewed record is kept, so only data
        # from before migration 0003 has any); kept rows are not touched: on PostgreSQL this
        # statement would wait on a review's lock and then copy a label older than that review
        reviewed = logged(Review, Review.id).exists()
        session.execute(
            update(Flagged)
            .where(Flagged.batch_id == summary.batch_id, Flagged.label.is_(None), reviewed)
            .values(label=latest_entry(Review, Review.label))
        )
        restore_assignees(session, summary.batch_id)


def batch_counts(engine: Engine, batch_id: str) -> tuple[int, int]:
    """(flagged rows, quarantined rows) stored for a batch."""
    with Session(engine) as session:
        flagged = session.scalar(
            select(func.count()).select_from(Flagged).where(Flagged.batch_id == batch_id)
        )
        quarantined = session.scalar(
            select(func.count()).select_from(Quarantined).where(Quarantined.batch_id == batch_id)
        )
    return int(flagged or 0), int(quarantined or 0)


def batches(engine: Engine) -> list[Batch]:
    """Every stored batch, oldest first."""
    with Session(engine) as session:
        return list(session.scalars(select(Batch).order_by(Batch.scored_at, Batch.batch_id)))


def get_batch(engine: Engine, batch_id: str) -> Batch | None:
    """One batch, or None."""
    with Session(engine) as session:
        return session.get(Batch, batch_id)


def quarantined_rows(
    engine: Engine, batch_id: str, limit: int = 200, offset: int = 0
) -> list[Quarantined]:
    """A batch's quarantined rows in file order."""
    query = (
        select(Quarantined)
        .where(Quarantined.batch_id == batch_id)
        .order_by(Quarantined.row)
        .limit(limit)
        .offset(offset)
    )
    with Session(engine) as session:
        return list(session.scalars(query))
