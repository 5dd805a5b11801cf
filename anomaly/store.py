"""The review store: scored batches, flagged and quarantined records, and an append-only review
log. SQLAlchemy 2; SQLite (WAL, busy timeout) under ANOMALY_HOME by default, any URL otherwise.

A batch is identified by its file name and its content (:func:`reserve_batch`): a different
file under a used name gets an id of its own, so it never replaces a stored batch. Writing one
batch is one transaction keyed by the batch id: a re-run replaces the rows an earlier run of the
same content stored, so it never duplicates or loses records. Reviews are never updated or
deleted; a record's current label is its latest review, copied into ``flagged.label`` in the
review's own transaction so the queue filters and pages by label through an index. A reviewed
record is never deleted: re-storing its batch keeps it, and the database refuses the deletion
(a trigger, migration 0003) as the ORM does (:func:`_keep_reviewed`).

The schema is created and upgraded by the Alembic migrations in :mod:`anomaly.migrations`;
:func:`connect` runs them.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    Select,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from anomaly.schema import SCORE_COLUMNS, batch_values

if TYPE_CHECKING:  # the scoring stack (torch) loads only where batches are scored
    from anomaly.config import Config
    from anomaly.scoring import BatchSummary

Label = Literal["confirmed", "false_positive", "unsure"]
LABELS: tuple[str, ...] = ("confirmed", "false_positive", "unsure")
#: the queue's label filter also accepts this: records nobody has reviewed yet
UNREVIEWED = "unreviewed"
Order = Literal["score_desc", "score_asc"]


#: the queue's sort key, in index order
_QUEUE_KEY = ("log_likelihood", "batch_id", "record_id")


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""


class Batch(Base):
    """One scored (or rejected) batch file: the fields of :data:`anomaly.schema.BATCH_RECORD`."""

    __tablename__ = "batches"
    batch_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(50))
    rows_in: Mapped[int] = mapped_column(Integer)
    rows_scored: Mapped[int] = mapped_column(Integer)
    rows_quarantined: Mapped[int] = mapped_column(Integer)
    rows_flagged: Mapped[int] = mapped_column(Integer)
    flag_rate: Mapped[float] = mapped_column(Float)
    expected_rate: Mapped[float] = mapped_column(Float)
    shift_p_value: Mapped[float] = mapped_column(Float)
    shift_alarm: Mapped[bool] = mapped_column(Boolean)
    mean_log_likelihood: Mapped[float | None] = mapped_column(Float, nullable=True)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    #: SHA-256 of the file's bytes (None: stored before batches had one, or written directly)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Flagged(Base):
    """A flagged record: its values, scores, the model that flagged it and its current label."""

    __tablename__ = "flagged"
    batch_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(50), index=True)
    log_likelihood: Mapped[float] = mapped_column(Float)
    p_value: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, default="")
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: top features as ``{"feature", "contribution" (nats), "value", "typical"}``; None if absent
    contributions: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    #: the latest review's label (a copy kept by :func:`add_review`); None: not reviewed
    label: Mapped[str | None] = mapped_column(String(20), nullable=True)
    #: the latest assignment's reviewer (a copy kept by :func:`assign`); None: unassigned
    assignee: Mapped[str | None] = mapped_column(String(200), nullable=True)

    # the queue's orders: by score, optionally within one batch / model version / label
    __table_args__ = (
        Index("ix_flagged_queue", "log_likelihood", "batch_id", "record_id"),
        Index("ix_flagged_batch_queue", "batch_id", "log_likelihood", "record_id"),
        Index(
            "ix_flagged_version_queue", "model_version", "log_likelihood", "batch_id", "record_id"
        ),
        Index("ix_flagged_label_queue", "label", "log_likelihood", "batch_id", "record_id"),
        Index("ix_flagged_assignee_queue", "assignee", "log_likelihood", "batch_id", "record_id"),
        Index("ix_flagged_time_queue", "scored_at", "batch_id", "record_id"),
        Index("ix_flagged_record_id", "record_id"),
    )


class Quarantined(Base):
    """A row that could not be scored, with the reason."""

    __tablename__ = "quarantined"
    batch_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    row: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[str | None] = mapped_column(String(300), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)


class Review(Base):
    """One entry of the append-only review log."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(300), index=True)
    record_id: Mapped[str] = mapped_column(String(300), index=True)
    label: Mapped[str] = mapped_column(String(20))
    note: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_reviews_record_log", "batch_id", "record_id", "id"),)


class ReviewedRecordError(RuntimeError):
    """An attempt to delete a reviewed record or a review (the store never does)."""


@event.listens_for(Flagged, "before_delete")
def _keep_reviewed(_mapper: Any, _connection: Any, target: Flagged) -> None:
    """Refuse an ORM delete of a reviewed record (the database's trigger refuses any other)."""
    if target.label is not None:
        msg = f"record {target.record_id!r} of batch {target.batch_id!r} is reviewed: kept"
        raise ReviewedRecordError(msg)


@event.listens_for(Review, "before_delete")
def _keep_reviews(_mapper: Any, _connection: Any, target: Review) -> None:
    """Refuse an ORM delete of a review: the log is append-only."""
    msg = f"review {target.id} is part of the append-only review log: kept"
    raise ReviewedRecordError(msg)


class BatchConflictError(RuntimeError):
    """A batch written over a stored batch of the same id but other content."""


class LoginSession(Base):
    """A dashboard login, kept on the server so that it can end before it expires: logout,
    revocation (``anomaly sessions revoke``) or a changed password end it."""

    __tablename__ = "sessions"
    #: SHA-256 of the session id: the table never holds what the cookie carries
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(200), index=True)
    #: fingerprint of the user's password hash at login: a new password ends the session
    credential: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Assignment(Base):
    """One entry of the append-only assignment log (``assignee`` None: unassigned)."""

    __tablename__ = "assignments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(300))
    record_id: Mapped[str] = mapped_column(String(300))
    assignee: Mapped[str | None] = mapped_column(String(200), nullable=True)
    assigned_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_assignments_record_log", "batch_id", "record_id", "id"),)


class Comment(Base):
    """One comment of a record's append-only thread."""

    __tablename__ = "comments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(300))
    record_id: Mapped[str] = mapped_column(String(300))
    author: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_comments_record_log", "batch_id", "record_id", "id"),)


def default_url(home: Path) -> str:
    """SQLite file under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'review.db'}"


def connect(url: str) -> Engine:
    """An engine with the schema migrated to the latest revision; SQLite gets WAL and a 30 s
    busy timeout."""
    from anomaly.migrations import upgrade  # Alembic loads only when a store is opened

    is_sqlite = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {})
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA busy_timeout=30000")

    upgrade(engine)
    return engine


def store_engine(config: Config) -> Engine:
    """The review store of ``config`` (one engine per URL and process)."""
    return engine_for(config.store.url or default_url(config.home))


@functools.cache
def engine_for(url: str) -> Engine:
    """The engine of ``url``, connected (and migrated) once per process."""
    return connect(url)


def _json_values(values: dict[Any, Any]) -> dict[str, Any]:
    """A record's values as JSON-safe scalars (NaN/inf become strings)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        elif isinstance(value, pd.Timestamp):
            value = value.isoformat()
        elif hasattr(value, "item") and getattr(value, "size", 1) == 1:  # arrays: as text
            value = value.item()
        out[str(key)] = value if isinstance(value, str | int | float | bool | None) else str(value)
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _latest_label() -> Any:
    """Correlated subquery: the label of a flagged record's latest review."""
    return (
        select(Review.label)
        .where(Review.batch_id == Flagged.batch_id, Review.record_id == Flagged.record_id)
        .order_by(Review.id.desc())
        .limit(1)
        .scalar_subquery()
    )


#: rows per INSERT statement when storing a batch
INSERT_ROWS = 5_000


def _flagged_rows(
    flagged: pd.DataFrame, summary: BatchSummary, model_name: str, id_column: str, now: datetime
) -> list[dict[str, Any]]:
    score_cols = {*SCORE_COLUMNS, "contributions"}
    value_cols = [c for c in flagged.columns if c not in score_cols]
    n = len(flagged)
    contributions = flagged["contributions"].tolist() if "contributions" in flagged else [None] * n
    return [
        {
            "batch_id": summary.batch_id,
            "record_id": str(values[id_column]),
            "model_name": model_name,
            "model_version": summary.model_version,
            "log_likelihood": float(ll),
            "p_value": float(p),
            "reason": str(reason),
            "values": _json_values(values),
            "contributions": None if _missing(contrib) else contrib,
            "scored_at": now,
        }
        for values, ll, p, reason, contrib in zip(
            flagged[value_cols].to_dict("records"),
            flagged["log_likelihood"].tolist(),
            flagged["p_value"].tolist(),
            flagged["reason"].tolist(),
            contributions,
            strict=True,
        )
    ]


def _quarantined_rows(
    quarantined: pd.DataFrame, summary: BatchSummary, id_column: str, first_row: int
) -> list[dict[str, Any]]:
    return [
        {
            "batch_id": summary.batch_id,
            "row": first_row + i,
            "record_id": None
            if pd.isna(values.get(id_column))
            else str(values.get(id_column))[:300].replace("\x00", "?"),  # its column is 300 wide
            "reason": str(values.pop("reason")),
            "values": _json_values(values),
        }
        for i, values in enumerate(quarantined.to_dict("records"))
    ]


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
        # in slices, so memory holds one slice of row dicts, not the whole batch's
        for start in range(0, len(flagged), INSERT_ROWS):
            part = flagged.iloc[start : start + INSERT_ROWS]
            rows = _flagged_rows(part, summary, model_name, id_column, now)
            rows = [r for r in rows if r["record_id"] not in kept] if kept else rows
            if rows:
                session.execute(insert(Flagged), rows)
        for start in range(0, len(quarantined), INSERT_ROWS):
            part = quarantined.iloc[start : start + INSERT_ROWS]
            session.execute(insert(Quarantined), _quarantined_rows(part, summary, id_column, start))
        # rows inserted here whose record has reviews (a reviewed record is kept, so only data
        # from before migration 0003 has any); kept rows are not touched: on PostgreSQL this
        # statement would wait on a review's lock and then copy a label older than that review
        reviewed = select(Review.id).where(
            Review.batch_id == Flagged.batch_id, Review.record_id == Flagged.record_id
        )
        session.execute(
            update(Flagged)
            .where(Flagged.batch_id == summary.batch_id, Flagged.label.is_(None), reviewed.exists())
            .values(label=_latest_label())
        )
        _restore_assignees(session, summary.batch_id)


def add_review(
    engine: Engine, batch_id: str, record_id: str, label: str, reviewer: str, note: str = ""
) -> Review:
    """Append a review of a flagged record and make its label the record's current one."""
    if label not in LABELS:
        msg = f"label must be one of {LABELS}, got {label!r}"
        raise ValueError(msg)
    if any("\x00" in text for text in (batch_id, record_id, reviewer, note)):
        msg = "a NUL character cannot be stored (PostgreSQL refuses it in text): remove it"
        raise ValueError(msg)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        # lock the record first: concurrent reviews of it get their ids in lock order, so the
        # copied label is always that of the review with the highest id
        record = None
        for _ in range(3):  # PostgreSQL: a re-store of the batch replaced the row waited on;
            # the next statement sees the new row (tests/test_concurrency.py)
            record = session.get(Flagged, (batch_id, record_id), with_for_update=True)
            if record is not None:
                break
        if record is None:
            msg = f"no flagged record {record_id!r} in batch {batch_id!r}"
            raise LookupError(msg)
        review = Review(
            batch_id=batch_id,
            record_id=record_id,
            label=label,
            note=note,
            reviewer=reviewer,
            created_at=datetime.now(UTC),
        )
        session.add(review)
        # an explicit UPDATE, not `record.label = label`: the ORM skips the write when the
        # label read before the lock (SQLite has no FOR UPDATE) already equals this one, and a
        # review committed meanwhile would keep its label (tests/test_concurrency.py)
        session.execute(
            update(Flagged)
            .where(Flagged.batch_id == batch_id, Flagged.record_id == record_id)
            .values(label=label)
        )
    return review


def current_labels(engine: Engine) -> pd.DataFrame:
    """The latest review of every reviewed record, with its stored values."""
    latest = (
        select(Review.batch_id, Review.record_id, func.max(Review.id).label("id"))
        .group_by(Review.batch_id, Review.record_id)
        .subquery()
    )
    query = (
        select(Review.batch_id, Review.record_id, Review.label, Review.note, Review.reviewer,
               Review.created_at, Flagged.values)
        .join(latest, Review.id == latest.c.id)
        .join(Flagged, (Flagged.batch_id == Review.batch_id)
              & (Flagged.record_id == Review.record_id))
    )  # fmt: skip
    with Session(engine) as session:
        rows = session.execute(query).all()
    return pd.DataFrame(
        rows,
        columns=["batch_id", "record_id", "label", "note", "reviewer", "created_at", "values"],
    )


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


# ---------------------------------------------------------------------------- the review queue


@dataclass(frozen=True)
class QueueFilter:
    """Which flagged records the queue shows, and in which order.

    ``label`` is one of :data:`LABELS` or :data:`UNREVIEWED`; ``since``/``until`` bound the
    time the record was scored (``until`` excluded). ``score_desc`` (the default) puts the most
    improbable record (lowest log-likelihood) first.
    """

    batch_id: str | None = None
    model_version: str | None = None
    label: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    order: Order = "score_desc"

    def __post_init__(self) -> None:
        if self.label is not None and self.label not in (*LABELS, UNREVIEWED):
            msg = f"label filter must be one of {(*LABELS, UNREVIEWED)}, got {self.label!r}"
            raise ValueError(msg)
        if self.order not in ("score_desc", "score_asc"):
            msg = f"order must be score_desc or score_asc, got {self.order!r}"
            raise ValueError(msg)


#: a record's position in the queue: (log-likelihood, batch id, record id)
Key = tuple[float, str, str]


def encode_cursor(key: Key) -> str:
    """An opaque, URL-safe cursor for the queue position ``key``."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    """The queue position a cursor from :func:`encode_cursor` stands for."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ll, batch_id, record_id = json.loads(raw)
        if not math.isfinite(float(ll)):
            raise ValueError(ll)
        return float(ll), str(batch_id), str(record_id)
    except (ValueError, TypeError, OverflowError) as exc:
        msg = f"invalid queue cursor {cursor!r}: use the `next` value of a previous page"
        raise ValueError(msg) from exc


def key_of(record: Flagged) -> Key:
    """The queue position of a record."""
    return record.log_likelihood, record.batch_id, record.record_id


def _filtered(query: Select[Any], where: QueueFilter) -> Select[Any]:
    if where.batch_id is not None:
        query = query.where(Flagged.batch_id == where.batch_id)
    if where.model_version is not None:
        query = query.where(Flagged.model_version == where.model_version)
    if where.label == UNREVIEWED:
        query = query.where(Flagged.label.is_(None))
    elif where.label is not None:
        query = query.where(Flagged.label == where.label)
    if where.since is not None:
        query = query.where(Flagged.scored_at >= where.since)
    if where.until is not None:
        query = query.where(Flagged.scored_at < where.until)
    return query


def queue(
    engine: Engine, where: QueueFilter, limit: int = 50, after: Key | None = None
) -> tuple[list[Flagged], Key | None]:
    """One page of flagged records and the key to pass as ``after`` for the next (None: last).

    Keyset pagination over (log-likelihood, batch id, record id): every page costs the same
    index range scan, however deep.
    """
    columns = (Flagged.log_likelihood, Flagged.batch_id, Flagged.record_id)
    query = _filtered(select(Flagged), where)
    if where.order == "score_desc":
        if after is not None:
            query = query.where(tuple_(*columns) > tuple_(*after))
        query = query.order_by(*columns)
    else:
        if after is not None:
            query = query.where(tuple_(*columns) < tuple_(*after))
        query = query.order_by(*(c.desc() for c in columns))
    with Session(engine) as session:
        rows = list(session.scalars(query.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, key_of(rows[-1]) if more else None


def queue_count(engine: Engine, where: QueueFilter, limit: int | None = None) -> int:
    """How many flagged records match ``where``, counting at most ``limit`` (a count stops
    costing more once it is "many")."""
    matching = _filtered(select(Flagged.batch_id), where)
    if limit is not None:
        matching = matching.limit(limit)
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(matching.subquery())))


def get_record(engine: Engine, batch_id: str, record_id: str) -> Flagged | None:
    """A flagged record, or None."""
    with Session(engine) as session:
        return session.get(Flagged, (batch_id, record_id))


def reviews_of(engine: Engine, batch_id: str, record_id: str) -> list[Review]:
    """A record's review log, newest first."""
    query = (
        select(Review)
        .where(Review.batch_id == batch_id, Review.record_id == record_id)
        .order_by(Review.id.desc())
    )
    with Session(engine) as session:
        return list(session.scalars(query))


def filter_choices(engine: Engine) -> dict[str, list[str]]:
    """The batch ids and model versions present, for the queue's filter menus."""
    with Session(engine) as session:
        batches = session.scalars(select(Batch.batch_id).order_by(Batch.scored_at.desc()))
        versions = session.scalars(select(Batch.model_version).distinct())
        return {
            "batches": list(batches),
            "versions": sorted({v for v in versions if v}, key=lambda v: (len(v), v)),
        }


# ---------------------------------------------------------------------------- batches


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


# ---------------------------------------------------------------------------- export

EXPORT_COLUMNS = [
    "batch_id", "record_id", "label", "note", "reviewer", "reviewed_at", "model_name",
    "model_version", "log_likelihood", "p_value", "reason", "scored_at",
]  # fmt: skip


def reviewed_records(engine: Engine) -> pd.DataFrame:
    """Every reviewed record with its current label (latest review), its scores and its values
    as columns (prefixed ``value.``), for export."""
    latest = (
        select(func.max(Review.id).label("id"))
        .group_by(Review.batch_id, Review.record_id)
        .subquery()
    )
    query = (
        select(Review, Flagged)
        .join(latest, Review.id == latest.c.id)
        .join(Flagged, (Flagged.batch_id == Review.batch_id)
              & (Flagged.record_id == Review.record_id))
        .order_by(Review.id)
    )  # fmt: skip
    with Session(engine) as session:
        pairs = session.execute(query).all()
    rows = [
        {
            "batch_id": r.batch_id,
            "record_id": r.record_id,
            "label": r.label,
            "note": r.note,
            "reviewer": r.reviewer,
            "reviewed_at": r.created_at,
            "model_name": f.model_name,
            "model_version": f.model_version,
            "log_likelihood": f.log_likelihood,
            "p_value": f.p_value,
            "reason": f.reason,
            "scored_at": f.scored_at,
            **{f"value.{k}": v for k, v in f.values.items()},
        }
        for r, f in pairs
    ]
    return pd.DataFrame(rows, columns=None if rows else EXPORT_COLUMNS)


#: a spreadsheet reads a cell starting with one of these as a formula (OWASP CSV injection)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells (and column names) that a spreadsheet would run as
    a formula start with ``'``: ``=HYPERLINK(...)`` is exported as ``'=HYPERLINK(...)``.
    Numbers are left alone (``-1.5`` stays a number)."""

    def cell(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(FORMULA_STARTS):
            return "'" + value
        return value

    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(cell)
    return safe.rename(columns=cell)


def csv_text(frame: pd.DataFrame) -> str:
    """An export frame as CSV with formula cells neutralised (:func:`csv_safe`) and CRLF line
    ends (RFC 4180), so that a CR or LF inside a cell is quoted and cannot start a new row."""
    return csv_safe(frame).to_csv(index=False, lineterminator="\r\n")


def write_export(frame: pd.DataFrame, path: Path) -> Path:
    """Write an export frame as CSV (:func:`csv_text`) or Parquet, chosen by the file's
    suffix."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        path.write_bytes(csv_text(frame).encode())
    elif suffix in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    else:
        msg = f"export file must end in .csv or .parquet, got {path.name!r}"
        raise ValueError(msg)
    return path


# ---------------------------------------------------------------------------- dashboard sessions


def start_session(
    engine: Engine, id_hash: str, user: str, credential: str, expires_at: datetime
) -> None:
    """Record a new login (and forget logins that have expired)."""
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        session.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
        session.add(
            LoginSession(
                id_hash=id_hash,
                user=user,
                credential=credential,
                created_at=now,
                expires_at=expires_at,
            )
        )


def live_session(engine: Engine, id_hash: str) -> LoginSession | None:
    """The login with this id hash if it has not ended or expired, else None."""
    query = select(LoginSession).where(
        LoginSession.id_hash == id_hash, LoginSession.expires_at > datetime.now(UTC)
    )
    with Session(engine) as session:
        return session.scalars(query).first()


def end_session(engine: Engine, id_hash: str) -> bool:
    """End one login (logout); whether it existed."""
    with Session(engine) as session, session.begin():
        result = session.execute(delete(LoginSession).where(LoginSession.id_hash == id_hash))
    return bool(result.rowcount)


def end_sessions(engine: Engine, user: str | None = None) -> int:
    """End every login of ``user`` (None: of everyone); how many ended."""
    query = delete(LoginSession)
    if user is not None:
        query = query.where(LoginSession.user == user)
    with Session(engine) as session, session.begin():
        result = session.execute(query)
    return int(result.rowcount)


def live_sessions(engine: Engine) -> list[LoginSession]:
    """Every login that has not ended or expired, oldest first."""
    query = (
        select(LoginSession)
        .where(LoginSession.expires_at > datetime.now(UTC))
        .order_by(LoginSession.created_at)
    )
    with Session(engine) as session:
        return list(session.scalars(query))


# ---------------------------------------------------------------------------- search and triage

#: the orders search results come in: score (most anomalous first or last), time, batch
Sort = Literal["score_desc", "score_asc", "time_desc", "time_asc", "batch"]
SORTS: tuple[str, ...] = ("score_desc", "score_asc", "time_desc", "time_asc", "batch")
#: records per bulk action (one transaction)
BULK_LIMIT = 1_000


def _sort_key(sort: str) -> tuple[tuple[Any, ...], bool]:
    """The key columns of an order (each backed by an index) and whether it ascends."""
    if sort == "batch":
        return (Flagged.batch_id, Flagged.log_likelihood, Flagged.record_id), True
    if sort in ("time_desc", "time_asc"):
        return (Flagged.scored_at, Flagged.batch_id, Flagged.record_id), sort == "time_asc"
    return _score_columns(), sort == "score_desc"


def _score_columns() -> tuple[Any, ...]:
    return Flagged.log_likelihood, Flagged.batch_id, Flagged.record_id


@dataclass(frozen=True)
class FeatureFilter:
    """A condition on one stored value: a numeric range (``low``/``high``, inclusive) or a
    category (``equals``)."""

    feature: str
    low: float | None = None
    high: float | None = None
    equals: str | None = None


@dataclass(frozen=True)
class Search:
    """What the search box and the queue's filters ask for.

    ``record_id`` matches ids that start with it (``exact``: only that id); ``min_score`` /
    ``max_score`` bound the score (−log-likelihood); ``assignee`` is a reviewer, and
    ``unassigned`` asks for records assigned to nobody.
    """

    where: QueueFilter = QueueFilter()
    record_id: str | None = None
    exact: bool = False
    assignee: str | None = None
    unassigned: bool = False
    min_score: float | None = None
    max_score: float | None = None
    features: tuple[FeatureFilter, ...] = ()
    sort: str = "score_desc"

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            msg = f"sort must be one of {SORTS}, got {self.sort!r}"
            raise ValueError(msg)


def _searched(query: Select[Any], s: Search, dialect: str) -> Select[Any]:
    query = _filtered(query, s.where)
    if s.record_id:
        if s.exact:
            query = query.where(Flagged.record_id == s.record_id)
        else:  # substr, not LIKE: no wildcards to escape, and case-sensitive on every database
            prefix = func.substr(Flagged.record_id, 1, len(s.record_id))
            query = query.where(prefix == s.record_id)
            if dialect == "sqlite":  # its text order is byte order: the range is exact and
                # lets ix_flagged_record_id find the ids (other collations may not be)
                top = s.record_id + chr(0x10FFFF)
                query = query.where(Flagged.record_id >= s.record_id, Flagged.record_id < top)
    if s.unassigned:
        query = query.where(Flagged.assignee.is_(None))
    elif s.assignee is not None:
        query = query.where(Flagged.assignee == s.assignee)
    if s.min_score is not None:
        query = query.where(Flagged.log_likelihood <= -s.min_score)
    if s.max_score is not None:
        query = query.where(Flagged.log_likelihood >= -s.max_score)
    for f in s.features:
        value = Flagged.values[f.feature]  # the name is a bound JSON path, never SQL text
        if f.equals is not None:
            query = query.where(value.as_string() == f.equals)
        if f.low is not None:
            query = query.where(value.as_float() >= f.low)
        if f.high is not None:
            query = query.where(value.as_float() <= f.high)
    return query


@dataclass(frozen=True)
class Page:
    """One page of search results: ``offset`` records come before it, ``total`` match (both
    counted up to the limit given); ``first``/``last`` are the keys to page back and on from."""

    rows: list[Flagged]
    has_previous: bool
    has_next: bool
    offset: int
    total: int
    first: tuple[Any, ...] | None
    last: tuple[Any, ...] | None


def search_key(record: Flagged, s: Search) -> tuple[Any, ...]:
    """A record's position in the order of ``s``."""
    return tuple(getattr(record, c.key) for c in _sort_key(s.sort)[0])


def _beyond(columns: tuple[Any, ...], key: tuple[Any, ...], forward: bool) -> Any:
    """Rows strictly after (``forward``) or before ``key`` in the columns' ascending order."""
    values = tuple_(*(literal(v, c.type) for v, c in zip(key, columns, strict=True)))
    return tuple_(*columns) > values if forward else tuple_(*columns) < values


def search(
    engine: Engine,
    s: Search,
    limit: int = 50,
    after: tuple[Any, ...] | None = None,
    before: tuple[Any, ...] | None = None,
    count_limit: int | None = None,
    counted: bool = True,
) -> Page:
    """A keyset page of the records ``s`` matches: the one after ``after`` or the one before
    ``before`` (neither: the first). Each page is an index range scan, however deep; its
    ``offset`` and ``total`` are counted (up to ``count_limit``) only if ``counted``."""
    columns, ascending = _sort_key(s.sort)
    backwards = before is not None
    query = _searched(select(Flagged), s, engine.dialect.name)
    if backwards:
        query = query.where(_beyond(columns, before, forward=not ascending))
    elif after is not None:
        query = query.where(_beyond(columns, after, forward=ascending))
    reverse = ascending == backwards
    query = query.order_by(*(c.desc() if reverse else c for c in columns))
    with Session(engine) as session:
        rows = list(session.scalars(query.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    first = search_key(rows[0], s) if rows else None
    last = search_key(rows[-1], s) if rows else None
    offset = 0
    if counted and first is not None and (backwards or after is not None):
        offset = search_count(engine, s, count_limit, before=first)
    return Page(
        rows=rows,
        has_previous=more if backwards else after is not None and (offset > 0 or not counted),
        has_next=True if backwards else more,
        offset=offset,
        total=search_count(engine, s, count_limit) if counted else 0,
        first=first,
        last=last,
    )


def search_count(
    engine: Engine, s: Search, limit: int | None = None, before: tuple[Any, ...] | None = None
) -> int:
    """How many records ``s`` matches (only those before the key ``before``), counting at
    most ``limit``."""
    matching = _searched(select(Flagged.batch_id), s, engine.dialect.name)
    if before is not None:
        columns, ascending = _sort_key(s.sort)
        matching = matching.where(_beyond(columns, before, forward=not ascending))
    if limit is not None:
        matching = matching.limit(limit)
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(matching.subquery())))


def encode_key(key: tuple[Any, ...]) -> str:
    """An opaque, URL-safe cursor for a search position (times as ISO-8601)."""
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def decode_key(cursor: str, sort: str) -> tuple[Any, ...]:
    """The search position a cursor of :func:`encode_key` stands for, in the order ``sort``."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        a, b, c = raw
        if sort in ("time_desc", "time_asc"):
            return datetime.fromisoformat(str(a)), str(b), str(c)
        if sort == "batch":
            return str(a), float(b), str(c)
        score = float(a)
        if not math.isfinite(score):
            raise ValueError(score)
        return score, str(b), str(c)
    except (ValueError, TypeError, OverflowError) as exc:
        msg = f"invalid page cursor {cursor[:60]!r}: use a link of a previous page"
        raise ValueError(msg) from exc


def _unique(keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Distinct keys in a fixed order: every transaction locks rows in the same order."""
    keys = sorted(set(keys))
    if not keys:
        msg = "select at least one record"
        raise ValueError(msg)
    if len(keys) > BULK_LIMIT:
        msg = f"at most {BULK_LIMIT} records per action, got {len(keys)}"
        raise ValueError(msg)
    return keys


def _lock(session: Session, keys: list[tuple[str, str]]) -> None:
    """Lock the records ``keys`` (in key order); LookupError names one that does not exist."""
    pair = tuple_(Flagged.batch_id, Flagged.record_id)
    query = (
        select(Flagged.batch_id, Flagged.record_id)
        .where(pair.in_(keys))
        .order_by(Flagged.batch_id, Flagged.record_id)
    )
    found = {tuple(r) for r in session.execute(query.with_for_update())}
    missing = [k for k in keys if k not in found]
    if missing:
        batch_id, record_id = missing[0]
        msg = f"no flagged record {record_id!r} in batch {batch_id!r} ({len(missing)} missing)"
        raise LookupError(msg)


def add_reviews(
    engine: Engine, keys: list[tuple[str, str]], label: str, reviewer: str, note: str = ""
) -> int:
    """Label many records in one transaction: one review-log entry per record, and each
    record's current label becomes ``label``. All or nothing; returns the number labelled."""
    if label not in LABELS:
        msg = f"label must be one of {LABELS}, got {label!r}"
        raise ValueError(msg)
    entry = {"label": label, "note": note, "reviewer": reviewer}
    return _log_and_set(engine, keys, Review, entry, "label")


def assign(
    engine: Engine, keys: list[tuple[str, str]], assignee: str | None, assigned_by: str
) -> int:
    """Assign records to a reviewer (None: unassign) in one transaction, logging each."""
    entry = {"assignee": assignee, "assigned_by": assigned_by}
    return _log_and_set(engine, keys, Assignment, entry, "assignee")


def _log_and_set(
    engine: Engine,
    keys: list[tuple[str, str]],
    log: type[Base],
    entry: dict[str, Any],
    current: str,
) -> int:
    """One transaction over the records ``keys``: lock them, append one ``log`` entry per
    record, and copy the entry's field ``current`` onto each record (its label or assignee).
    All or nothing; returns the number of records."""
    keys = _unique(keys)
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        _lock(session, keys)
        session.execute(
            insert(log),
            [{"batch_id": b, "record_id": r, **entry, "created_at": now} for b, r in keys],
        )
        pair = tuple_(Flagged.batch_id, Flagged.record_id)
        session.execute(update(Flagged).where(pair.in_(keys)).values({current: entry[current]}))
    return len(keys)


def _restore_assignees(session: Session, batch_id: str) -> None:
    """After a batch is re-stored: each record's assignee from the assignment log."""
    logged = select(Assignment.id).where(
        Assignment.batch_id == Flagged.batch_id, Assignment.record_id == Flagged.record_id
    )
    latest = (
        select(Assignment.assignee)
        .where(Assignment.batch_id == Flagged.batch_id, Assignment.record_id == Flagged.record_id)
        .order_by(Assignment.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    session.execute(
        update(Flagged).where(Flagged.batch_id == batch_id, logged.exists()).values(assignee=latest)
    )


def reviewers_assigned(engine: Engine) -> list[str]:
    """The reviewers records are assigned to, for the assignee filter."""
    with Session(engine) as session:
        names = session.scalars(
            select(Flagged.assignee).where(Flagged.assignee.is_not(None)).distinct()
        )
        return sorted(names)


def add_comment(engine: Engine, batch_id: str, record_id: str, author: str, body: str) -> Comment:
    """Append a comment to a record's thread (comments are never edited or deleted)."""
    body = body.strip()
    if not body:
        msg = "a comment needs some text"
        raise ValueError(msg)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        if session.get(Flagged, (batch_id, record_id)) is None:
            msg = f"no flagged record {record_id!r} in batch {batch_id!r}"
            raise LookupError(msg)
        comment = Comment(
            batch_id=batch_id, record_id=record_id, author=author, body=body,
            created_at=datetime.now(UTC),
        )  # fmt: skip
        session.add(comment)
    return comment


def comments_of(engine: Engine, batch_id: str, record_id: str) -> list[Comment]:
    """A record's comment thread, oldest first."""
    query = (
        select(Comment)
        .where(Comment.batch_id == batch_id, Comment.record_id == record_id)
        .order_by(Comment.id)
    )
    with Session(engine) as session:
        return list(session.scalars(query))


# ---------------------------------------------------------------------------- overview


@dataclass(frozen=True)
class Day:
    """One UTC day of scoring: rows scored and flagged, the expected rate α, shift alarms, the
    model versions that scored, and the review backlog (flagged so far, not yet reviewed) at
    the day's end."""

    day: date
    batches: int
    rows_scored: int
    rows_flagged: int
    expected_rate: float
    alarms: int
    versions: tuple[str, ...]
    backlog: int

    @property
    def flag_rate(self) -> float:
        return self.rows_flagged / self.rows_scored if self.rows_scored else 0.0


def _utc_day(engine: Engine, column: Any) -> Any:
    """A timestamp column's UTC date as ``YYYY-MM-DD`` text."""
    if engine.dialect.name == "sqlite":  # stored as UTC text
        return func.substr(column, 1, 10)
    return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")


def overview(engine: Engine, since: date | None = None, until: date | None = None) -> list[Day]:
    """Per UTC day from ``since`` to ``until`` (inclusive; default: the stored range), what was
    scored and flagged, and the review backlog at each day's end (counting from the start)."""
    first_review = (
        select(func.min(Review.created_at).label("at"))
        .group_by(Review.batch_id, Review.record_id)
        .subquery()
    )
    day = _utc_day(engine, first_review.c.at)
    with Session(engine) as session:
        rows = session.execute(
            select(
                Batch.scored_at, Batch.rows_scored, Batch.rows_flagged, Batch.expected_rate,
                Batch.shift_alarm, Batch.model_version,
            ).where(Batch.status == "scored")
        ).all()  # fmt: skip
        reviewed = dict(session.execute(select(day, func.count()).group_by(day)).all())
    days: dict[date, dict[str, Any]] = {}
    for at, scored, flagged, alpha, alarm, version in rows:
        d = (at if at.tzinfo is None else at.astimezone(UTC)).date()
        entry = days.setdefault(d, {"batches": 0, "scored": 0, "flagged": 0, "alpha": 0.0,
                                    "alarms": 0, "versions": set()})  # fmt: skip
        entry["batches"] += 1
        entry["scored"] += scored
        entry["flagged"] += flagged
        entry["alpha"] += alpha * scored
        entry["alarms"] += int(alarm)
        entry["versions"].add(version)
    reviews_by_day = {date.fromisoformat(k): v for k, v in reviewed.items() if k}
    timeline = sorted(set(days) | set(reviews_by_day))
    out, backlog = [], 0
    for d in timeline:
        entry = days.get(d)
        backlog += (entry["flagged"] if entry else 0) - reviews_by_day.get(d, 0)
        if entry is None or (since and d < since) or (until and d > until):
            continue
        out.append(
            Day(
                day=d,
                batches=entry["batches"],
                rows_scored=entry["scored"],
                rows_flagged=entry["flagged"],
                expected_rate=entry["alpha"] / entry["scored"] if entry["scored"] else 0.0,
                alarms=entry["alarms"],
                versions=tuple(sorted(entry["versions"], key=lambda v: (len(v), v))),
                backlog=max(backlog, 0),
            )
        )
    return out
