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
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
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
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

if TYPE_CHECKING:  # the scoring stack (torch) loads only where batches are scored
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
    """One scored (or rejected) batch file."""

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

    # the queue's orders: by score, optionally within one batch / model version / label
    __table_args__ = (
        Index("ix_flagged_queue", "log_likelihood", "batch_id", "record_id"),
        Index("ix_flagged_batch_queue", "batch_id", "log_likelihood", "record_id"),
        Index(
            "ix_flagged_version_queue", "model_version", "log_likelihood", "batch_id", "record_id"
        ),
        Index("ix_flagged_label_queue", "label", "log_likelihood", "batch_id", "record_id"),
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
    score_cols = {"log_likelihood", "p_value", "reason", "is_anomaly", "contributions"}
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
        session.merge(
            Batch(
                **{k: v for k, v in summary.to_dict().items() if k in Batch.__table__.c},
                model_name=model_name,
                scored_at=now,
            )
        )
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


def add_review(
    engine: Engine, batch_id: str, record_id: str, label: str, reviewer: str, note: str = ""
) -> Review:
    """Append a review of a flagged record and make its label the record's current one."""
    if label not in LABELS:
        msg = f"label must be one of {LABELS}, got {label!r}"
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
        return float(ll), str(batch_id), str(record_id)
    except (ValueError, TypeError) as exc:
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


def neighbour(engine: Engine, where: QueueFilter, record: Flagged) -> Flagged | None:
    """The record after ``record`` in the queue ``where`` (None: it is the last)."""
    rows, _ = queue(engine, where, limit=1, after=key_of(record))
    return rows[0] if rows else None


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


def write_export(frame: pd.DataFrame, path: Path) -> Path:
    """Write an export frame as CSV or Parquet, chosen by the file's suffix."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    else:
        msg = f"export file must end in .csv or .parquet, got {path.name!r}"
        raise ValueError(msg)
    return path
