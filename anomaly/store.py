"""The review store: scored batches, flagged and quarantined records, and an append-only review
log. SQLAlchemy 2; SQLite (WAL, busy timeout) under ANOMALY_HOME by default, any URL otherwise.

Writing one batch is one transaction keyed by the batch id: its earlier rows are replaced, so a
re-run never duplicates or loses records. Reviews are never updated or deleted; a record's
current label is its latest review.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from anomaly.scoring import BatchSummary

Label = Literal["confirmed", "false_positive", "unsure"]
LABELS: tuple[str, ...] = ("confirmed", "false_positive", "unsure")


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


class Flagged(Base):
    """A flagged record: its values, scores and the model that flagged it."""

    __tablename__ = "flagged"
    batch_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(50), index=True)
    log_likelihood: Mapped[float] = mapped_column(Float, index=True)
    p_value: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, default="")
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    contributions: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


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


def default_url(home: Path) -> str:
    """SQLite file under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'review.db'}"


def connect(url: str) -> Engine:
    """An engine with the schema in place; SQLite gets WAL and a 30 s busy timeout."""
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {})
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA busy_timeout=30000")

    Base.metadata.create_all(engine)
    return engine


def _json_row(row: pd.Series) -> dict[str, Any]:
    """A record's values as JSON-safe scalars (NaN/inf become strings)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        elif isinstance(value, pd.Timestamp):
            value = value.isoformat()
        elif hasattr(value, "item"):
            value = value.item()
        out[str(key)] = value if isinstance(value, str | int | float | bool | None) else str(value)
    return out


def write_batch(
    engine: Engine,
    summary: BatchSummary,
    model_name: str,
    flagged: pd.DataFrame,
    quarantined: pd.DataFrame,
    id_column: str,
) -> None:
    """Store one batch in one transaction, replacing whatever an earlier run stored for it.

    ``flagged`` holds the raw values plus ``log_likelihood``, ``p_value``, ``reason`` (and
    optionally ``contributions``); ``quarantined`` the raw values plus ``reason``.
    """
    now = datetime.now(UTC)
    score_cols = {"log_likelihood", "p_value", "reason", "is_anomaly", "contributions"}
    with Session(engine) as session, session.begin():
        for table in (Flagged, Quarantined):
            session.execute(delete(table).where(table.batch_id == summary.batch_id))
        session.merge(
            Batch(
                **{k: v for k, v in summary.to_dict().items() if k in Batch.__table__.c},
                model_name=model_name,
                scored_at=now,
            )
        )
        session.add_all(
            Flagged(
                batch_id=summary.batch_id,
                record_id=str(row[id_column]),
                model_name=model_name,
                model_version=summary.model_version,
                log_likelihood=float(row["log_likelihood"]),
                p_value=float(row["p_value"]),
                reason=str(row["reason"]),
                values=_json_row(row.drop(labels=list(score_cols & set(row.index)))),
                contributions=row.get("contributions"),
                scored_at=now,
            )
            for _, row in flagged.iterrows()
        )
        session.add_all(
            Quarantined(
                batch_id=summary.batch_id,
                row=i,
                record_id=None if pd.isna(row.get(id_column)) else str(row.get(id_column)),
                reason=str(row["reason"]),
                values=_json_row(row.drop(labels=["reason"])),
            )
            for i, (_, row) in enumerate(quarantined.iterrows())
        )


def add_review(
    engine: Engine, batch_id: str, record_id: str, label: str, reviewer: str, note: str = ""
) -> Review:
    """Append a review of a flagged record."""
    if label not in LABELS:
        msg = f"label must be one of {LABELS}, got {label!r}"
        raise ValueError(msg)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        if session.get(Flagged, (batch_id, record_id)) is None:
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
