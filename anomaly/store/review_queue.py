"""The review queue and the search over flagged records: filters, orders and keyset pages (every
page is an index range scan, however deep), and the one cursor codec of their links.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    Engine,
    Select,
    func,
    literal,
    select,
    tuple_,
)
from sqlalchemy.orm import Session

from anomaly.store.tables import (
    LABELS,
    UNREVIEWED,
    Batch,
    Flagged,
)

Order = Literal["score_desc", "score_asc"]


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
    """An opaque, URL-safe cursor for the queue position ``key`` (:func:`encode_key`)."""
    return encode_key(key)


def decode_cursor(cursor: str) -> Key:
    """The queue position a cursor from :func:`encode_cursor` stands for (:func:`decode_key` in
    score order, with the queue API's wording of a bad cursor)."""
    try:
        return decode_key(cursor, "score_desc")
    except ValueError as exc:
        msg = f"invalid queue cursor {cursor!r}: use the `next` value of a previous page"
        raise ValueError(msg) from exc.__cause__


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

    A :func:`search` page in the order ``where.order``, uncounted: keyset pagination over
    (log-likelihood, batch id, record id), every page the same index range scan, however deep.
    """
    s = Search(where=where, sort=where.order)
    page = search(engine, s, limit, after=after, counted=False)
    return page.rows, page.last if page.has_next else None


def queue_count(engine: Engine, where: QueueFilter, limit: int | None = None) -> int:
    """How many flagged records match ``where``, counting at most ``limit`` (a count stops
    costing more once it is "many")."""
    return search_count(engine, Search(where=where), limit)


def get_record(engine: Engine, batch_id: str, record_id: str) -> Flagged | None:
    """A flagged record, or None."""
    with Session(engine) as session:
        return session.get(Flagged, (batch_id, record_id))


def filter_choices(engine: Engine) -> dict[str, list[str]]:
    """The batch ids and model versions present, for the queue's filter menus."""
    with Session(engine) as session:
        batches = session.scalars(select(Batch.batch_id).order_by(Batch.scored_at.desc()))
        versions = session.scalars(select(Batch.model_version).distinct())
        return {
            "batches": list(batches),
            "versions": sorted({v for v in versions if v}, key=lambda v: (len(v), v)),
        }


#: the orders search results come in: score (most anomalous first or last), time, batch
Sort = Literal["score_desc", "score_asc", "time_desc", "time_asc", "batch"]
SORTS: tuple[str, ...] = ("score_desc", "score_asc", "time_desc", "time_asc", "batch")


def _sort_key(sort: str) -> tuple[tuple[Any, ...], bool]:
    """The key columns of an order (each backed by an index) and whether it ascends."""
    if sort == "batch":
        return (Flagged.batch_id, Flagged.log_likelihood, Flagged.record_id), True
    if sort in ("time_desc", "time_asc"):
        return (Flagged.scored_at, Flagged.batch_id, Flagged.record_id), sort == "time_asc"
    return (Flagged.log_likelihood, Flagged.batch_id, Flagged.record_id), sort == "score_desc"


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
