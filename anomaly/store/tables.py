"""The store's tables (SQLAlchemy 2 ORM) and the values a label may take. A reviewed record and
the review log are never deleted: the ORM refuses (:func:`_keep_reviewed`), and so does the
database (a trigger, migration 0003).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Label = Literal["confirmed", "false_positive", "unsure"]
LABELS: tuple[str, ...] = ("confirmed", "false_positive", "unsure")
#: the queue's label filter also accepts this: records nobody has reviewed yet
UNREVIEWED = "unreviewed"


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
    model_version: Mapped[str] = mapped_column(String(50))
    log_likelihood: Mapped[float] = mapped_column(Float)
    p_value: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, default="")
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: top features as ``{"feature", "contribution" (nats), "value", "typical"}``; None if absent
    contributions: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: the latest review's label (a copy kept by :func:`add_review`); None: not reviewed
    label: Mapped[str | None] = mapped_column(String(20), nullable=True)
    #: the latest assignment's reviewer (a copy kept by :func:`assign`); None: unassigned
    assignee: Mapped[str | None] = mapped_column(String(200), nullable=True)

    # the queue's orders: by score, optionally within one batch / model version / label; a
    # lookup by model version or time uses the index that starts with it (no index of its own:
    # each is one more B-tree every stored row updates, migration 0006)
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
