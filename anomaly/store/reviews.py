"""The review log and what hangs off a record: reviews (append-only; a record's current label
is its latest review, copied into ``flagged.label`` in the review's own transaction so the
queue filters and pages by label through an index), bulk labels, assignments and comments.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import (
    Engine,
    Select,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from anomaly.store.engine import store_engine
from anomaly.store.tables import (
    LABELS,
    Assignment,
    Base,
    Comment,
    Flagged,
    Review,
)

if TYPE_CHECKING:
    from anomaly.config import Config


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


def current_labels(engine: Engine, model_name: str | None = None) -> pd.DataFrame:
    """The latest review of every reviewed record, with its stored values; with
    ``model_name``, only of the records that model flagged (a model learns from its own
    reviews, not from those of another model sharing the store)."""
    query = latest_reviews(
        Review.batch_id, Review.record_id, Review.label, Review.note, Review.reviewer,
        Review.created_at, Flagged.values,
    )  # fmt: skip
    if model_name is not None:
        query = query.where(Flagged.model_name == model_name)
    with Session(engine) as session:
        rows = session.execute(query).all()
    return pd.DataFrame(
        rows,
        columns=["batch_id", "record_id", "label", "note", "reviewer", "created_at", "values"],
    )


def model_labels(config: Config) -> pd.DataFrame:
    """:func:`current_labels` of the records the config's model flagged, from its store
    (maybe no rows): what training and the promotion gate learn from."""
    return current_labels(store_engine(config), config.name)


def reviews_of(engine: Engine, batch_id: str, record_id: str) -> list[Review]:
    """A record's review log, newest first."""
    query = (
        select(Review)
        .where(Review.batch_id == batch_id, Review.record_id == record_id)
        .order_by(Review.id.desc())
    )
    with Session(engine) as session:
        return list(session.scalars(query))


def latest_reviews(*columns: Any) -> Select[Any]:
    """``columns`` of every reviewed record's latest review joined to its flagged row (the one
    query of "the current review" that :func:`current_labels` and the export read)."""
    latest = (
        select(func.max(Review.id).label("id"))
        .group_by(Review.batch_id, Review.record_id)
        .subquery()
    )
    return (
        select(*columns)
        .join(latest, Review.id == latest.c.id)
        .join(Flagged, (Flagged.batch_id == Review.batch_id)
              & (Flagged.record_id == Review.record_id))
    )  # fmt: skip


def logged(log: Any, *columns: Any) -> Select[Any]:
    """Correlated select of ``columns`` of a flagged record's entries in ``log`` (the
    :class:`Review` or the :class:`Assignment` log)."""
    return select(*columns).where(
        log.batch_id == Flagged.batch_id, log.record_id == Flagged.record_id
    )


def latest_entry(log: Any, column: Any) -> Any:
    """Correlated subquery: ``column`` of a flagged record's latest entry in ``log``."""
    return logged(log, column).order_by(log.id.desc()).limit(1).scalar_subquery()


#: records per bulk action (one transaction)
BULK_LIMIT = 1_000


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


def restore_assignees(session: Session, batch_id: str) -> None:
    """After a batch is re-stored: each record's assignee from the assignment log."""
    session.execute(
        update(Flagged)
        .where(Flagged.batch_id == batch_id, logged(Assignment, Assignment.id).exists())
        .values(assignee=latest_entry(Assignment, Assignment.assignee))
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
