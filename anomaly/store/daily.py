"""The overview per UTC day: what was scored and flagged, and the review backlog."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date
from typing import Any

from sqlalchemy import (
    Engine,
    func,
    select,
)
from sqlalchemy.orm import Session

from anomaly.store.tables import (
    Batch,
    Review,
)


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
