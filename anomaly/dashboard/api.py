"""The JSON API under ``/api``: the queue, records, reviews, batches, the model and exports.

Reads follow the ``open_reads`` switch; every write needs a reviewer (bearer token, or a
session plus the ``X-CSRF-Token`` header). OpenAPI at ``/openapi.json``, rendered at ``/docs``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, create_model

from anomaly import store
from anomaly.dashboard.registry_view import model_overview
from anomaly.dashboard.security import api_reader, api_writer
from anomaly.io import table_bytes
from anomaly.schema import BATCH_RECORD

router = APIRouter(prefix="/api", tags=["api"])

#: queue counts stop here: counting every match of a broad filter costs more than a page
COUNT_LIMIT = 10_000
#: longest cursor :func:`anomaly.store.encode_cursor` makes (two 300-character ids, escaped)
MAX_CURSOR = 8_000
#: deepest row offset a page accepts (the databases' integers end at 2**63)
MAX_OFFSET = 1_000_000_000
LabelFilter = Literal["confirmed", "false_positive", "unsure", "unreviewed"]


class FlaggedOut(BaseModel):
    """A flagged record. ``score`` = −log-likelihood (higher = more anomalous)."""

    model_config = ConfigDict(from_attributes=True)
    batch_id: str
    record_id: str
    model_name: str
    model_version: str
    log_likelihood: float
    score: float
    p_value: float
    reason: str
    label: str | None = Field(description="current label (latest review); null: not reviewed")
    scored_at: datetime
    values: dict[str, Any]
    contributions: list[dict[str, Any]] | None = Field(
        description="top features: feature, contribution (nats), value, typical"
    )

    @classmethod
    def of(cls, record: store.Flagged) -> FlaggedOut:
        """From a stored record."""
        return cls.model_validate(
            {**{c: getattr(record, c) for c in _FLAGGED}, "score": -record.log_likelihood}
        )


_FLAGGED = [c.name for c in store.Flagged.__table__.columns]


class QueuePage(BaseModel):
    """One page of the queue; pass ``next`` as ``cursor`` for the following page."""

    items: list[FlaggedOut]
    next: str | None
    total: int = Field(description=f"matching records, counted up to {COUNT_LIMIT}")
    total_capped: bool = Field(description=f"true: at least {COUNT_LIMIT} match")


class ReviewIn(BaseModel):
    """A review to append; the reviewer is whoever is authenticated."""

    model_config = ConfigDict(extra="forbid")
    batch_id: str
    record_id: str
    label: Literal["confirmed", "false_positive", "unsure"]
    note: str = Field("", max_length=4000)


class ReviewOut(BaseModel):
    """One entry of the review log."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    batch_id: str
    record_id: str
    label: str
    note: str
    reviewer: str
    created_at: datetime


class RecordOut(BaseModel):
    """A record and its review log (newest first)."""

    record: FlaggedOut
    reviews: list[ReviewOut]


#: a stored batch: the fields of :data:`anomaly.schema.BATCH_RECORD`
BatchOut = create_model(
    "BatchOut",
    __config__=ConfigDict(from_attributes=True),
    __doc__="A stored batch.",
    **{name: (kind, ...) for name, kind in BATCH_RECORD.items()},
)


class QuarantinedOut(BaseModel):
    """A row that could not be scored, with the reason."""

    model_config = ConfigDict(from_attributes=True)
    batch_id: str
    row: int
    record_id: str | None
    reason: str
    values: dict[str, Any]


class VersionOut(BaseModel):
    """A registered model version with an alias."""

    version: str
    aliases: list[str]
    run_id: str | None
    created: str
    metrics: dict[str, float]
    auto_chosen: str | None = Field(None, description="kind `auto`: the kind it chose")
    auto_candidates: dict[str, float] = Field(
        default_factory=dict, description="kind `auto`: each candidate's held-out log-likelihood"
    )


class AliasEventOut(BaseModel):
    """One alias change."""

    alias: str
    version: str
    replaced: str | None
    by: str
    at: str
    reason: str


class ModelOut(BaseModel):
    """The registry's view: versions with aliases, alias history; ``error`` if unreachable."""

    name: str
    tracking_uri: str
    versions: list[VersionOut]
    history: list[AliasEventOut]
    error: str | None


class Health(BaseModel):
    """Liveness and the store's schema revision."""

    status: str
    schema_revision: str | None


def queue_filter(
    batch_id: str | None = None,
    model_version: str | None = None,
    label: LabelFilter | None = None,
    since: date | None = None,
    until: date | None = None,
    order: Literal["score_desc", "score_asc"] = "score_desc",
) -> store.QueueFilter:
    """The queue filter from query parameters (``until`` includes its whole day, UTC)."""
    if until is not None and until >= date.max:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"until={until} is out of range: the latest day is {date.max - timedelta(days=1)}",
        )
    return store.QueueFilter(
        batch_id=batch_id or None,
        model_version=model_version or None,
        label=label or None,
        since=datetime.combine(since, time(), UTC) if since else None,
        until=datetime.combine(until + timedelta(days=1), time(), UTC) if until else None,
        order=order,
    )


def _engine(request: Request) -> Any:
    return request.app.state.engine


Reader = Annotated[str | None, Depends(api_reader)]


@router.get("/health", response_model=Health)
def health(request: Request) -> Health:
    """Liveness (no login needed)."""
    from anomaly.migrations import current

    return Health(status="ok", schema_revision=current(_engine(request)))


@router.get("/flagged", response_model=QueuePage)
def list_flagged(
    request: Request,
    _user: Reader,
    where: Annotated[store.QueueFilter, Depends(queue_filter)],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=MAX_CURSOR, description="`next` of the previous page")
    ] = None,
) -> QueuePage:
    """The review queue: most anomalous first (``order=score_desc``), keyset-paginated."""
    try:
        after = store.decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    rows, last = store.queue(_engine(request), where, limit=limit, after=after)
    total = store.queue_count(_engine(request), where, COUNT_LIMIT)
    return QueuePage(
        items=[FlaggedOut.of(r) for r in rows],
        next=store.encode_cursor(last) if last else None,
        total=total,
        total_capped=total >= COUNT_LIMIT,
    )


@router.get("/flagged/{batch_id}/{record_id:path}", response_model=RecordOut)
def get_flagged(request: Request, _user: Reader, batch_id: str, record_id: str) -> RecordOut:
    """One flagged record with its review log."""
    record = store.get_record(_engine(request), batch_id, record_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such flagged record")
    reviews = store.reviews_of(_engine(request), batch_id, record_id)
    return RecordOut(
        record=FlaggedOut.of(record), reviews=[ReviewOut.model_validate(r) for r in reviews]
    )


@router.post("/reviews", response_model=ReviewOut, status_code=status.HTTP_201_CREATED)
def post_review(
    request: Request, review: ReviewIn, reviewer: Annotated[str, Depends(api_writer)]
) -> ReviewOut:
    """Append a review; the record's current label becomes this one."""
    try:
        saved = store.add_review(
            _engine(request), review.batch_id, review.record_id, review.label, reviewer,
            review.note,
        )  # fmt: skip
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return ReviewOut.model_validate(saved)


@router.get("/batches", response_model=list[BatchOut])
def list_batches(request: Request, _user: Reader) -> list[BatchOut]:
    """Every batch, oldest first: counts, flag rate against α, shift alarm."""
    return [BatchOut.model_validate(b) for b in store.batches(_engine(request))]


@router.get("/batches/{batch_id}/quarantined", response_model=list[QuarantinedOut])
def list_quarantined(
    request: Request,
    _user: Reader,
    batch_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[QuarantinedOut]:
    """A batch's quarantined rows with their reasons, in file order."""
    if store.get_batch(_engine(request), batch_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no batch {batch_id!r}")
    rows = store.quarantined_rows(_engine(request), batch_id, limit, offset)
    return [QuarantinedOut.model_validate(r) for r in rows]


@router.get("/model", response_model=ModelOut)
def get_model(request: Request, _user: Reader) -> ModelOut:
    """Champion/challenger/previous versions, their metrics and the alias history."""
    overview = model_overview(request.app.state.config)
    return ModelOut(
        name=overview.name,
        tracking_uri=overview.tracking_uri,
        versions=[VersionOut(**v.__dict__) for v in overview.versions],
        history=[AliasEventOut(**e.__dict__) for e in overview.history],
        error=overview.error,
    )


EXPORT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


def export_response(request: Request, fmt: str) -> Response:
    """Every reviewed record with its current label, as a CSV or Parquet download."""
    frame = store.reviewed_records(_engine(request))
    name = f"{request.app.state.config.name}-reviews.{fmt}"
    return Response(
        table_bytes(frame, f".{fmt}", store.csv_text),
        media_type=EXPORT_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/export",
    responses={200: {"content": {t: {} for t in EXPORT_TYPES.values()}}},
    response_class=Response,
)
def export(request: Request, _user: Reader, format: Literal["csv", "parquet"] = "csv") -> Response:
    """Download every reviewed record (label, note, reviewer, scores, values)."""
    return export_response(request, format)
