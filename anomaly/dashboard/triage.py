"""Finding and triaging records: the queue page with search, sorting and pages both ways;
bulk labelling and assignment; comment threads; the overview over days; and their JSON API."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from anomaly import store
from anomaly.dashboard import search, timecharts
from anomaly.dashboard.api import COUNT_LIMIT, FlaggedOut
from anomaly.dashboard.extras import record_url
from anomaly.dashboard.pages import Reader, Searched, render
from anomaly.dashboard.security import api_reader, api_writer, csrf_ok, session_user

router = APIRouter(include_in_schema=False)
api_router = APIRouter(prefix="/api", tags=["api"])
PAGE_ROWS = 50
FAVICON = Path(__file__).parent / "static" / "favicon.ico"
#: the overview's range choices, in days back from the latest scored day
RANGES = (7, 30, 90, 365)
#: counts of searches with value filters stop here: each match is read from the JSON values
VALUE_COUNT_LIMIT = 1_000


def count_limit(s: store.Search) -> int:
    """Where a search's counts stop (“1,000+”)."""
    return VALUE_COUNT_LIMIT if s.features else COUNT_LIMIT


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    """The site icon (browsers ask for it at this path)."""
    return FileResponse(FAVICON, media_type="image/x-icon")


# ---------------------------------------------------------------------------- queue and search


def _n_cal(request: Request, versions: set[str]) -> dict[str, int]:
    """Calibration records per model version (for p-values at their floor)."""
    out = {}
    for version in versions:
        detector, _ = request.app.state.detectors.get(version)
        if detector is not None:
            out[version] = int(detector.calibrator.n_cal_)
    return out


def _position(page: store.Page, shown: int, limit: int) -> str:
    """``101–150 of 3,412`` (``10,000+`` when the count stopped at its limit)."""
    if not shown:
        return "no records"
    total = f"{page.total:,}" + ("+" if page.total >= limit else "")
    first = f"{page.offset + 1:,}" + ("+" if page.offset >= limit else "")
    last = f"{page.offset + shown:,}" + ("+" if page.offset >= limit else "")
    return f"{first}–{last} of {total}"


@router.get("/search")
def search_box(
    request: Request, _user: Reader, q: Annotated[str, Query(max_length=300)] = ""
) -> RedirectResponse:
    """The search box: a record id opens that record; anything else lists the records whose
    id starts with it."""
    q = q.strip()
    if q:
        exact = store.search(
            request.app.state.engine, store.Search(record_id=q, exact=True), limit=2, counted=False
        ).rows
        if len(exact) == 1:
            return RedirectResponse(record_url(exact[0]), status.HTTP_303_SEE_OTHER)
    target = "/queue" + (f"?{urlencode({'q': q})}" if q else "")
    return RedirectResponse(target, status.HTTP_303_SEE_OTHER)


@router.get("/queue", response_class=HTMLResponse)
def queue_page(
    request: Request,
    _user: Reader,
    s: Searched,
    after: Annotated[str | None, Query(max_length=2000)] = None,
    before: Annotated[str | None, Query(max_length=2000)] = None,
    cursor: Annotated[str | None, Query(max_length=2000, description="alias of after")] = None,
) -> Any:
    """Flagged records in the chosen order, with search, filters and pages both ways."""
    engine = request.app.state.engine
    page = store.search(
        engine, s, PAGE_ROWS, after=search.decode(after or cursor, s),
        before=search.decode(before, s), count_limit=count_limit(s),
    )  # fmt: skip
    query = search.kept_query(request)

    def link(**cursor_param: str) -> str:
        return "/queue?" + "&".join(filter(None, [query, urlencode(cursor_param)]))

    return render(
        request,
        "queue.html",
        rows=[(r, record_url(r, query)) for r in page.rows],
        keys=[_key_value(r) for r in page.rows],
        position=_position(page, len(page.rows), count_limit(s)),
        choices=store.filter_choices(engine),
        assignees=sorted({*request.app.state.accounts.users, *store.reviewers_assigned(engine)}),
        params=request.query_params,
        values_filter=", ".join(request.query_params.getlist("f")),
        labels=store.LABELS,
        n_cal=_n_cal(request, {r.model_version for r in page.rows}),
        first_url="/queue" + (f"?{query}" if query else ""),
        next_url=link(after=store.encode_key(page.last)) if page.has_next else None,
        prev_url=link(before=store.encode_key(page.first)) if page.has_previous else None,
        back=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
        done=request.query_params.get("done"),
        sorts={"score_desc": "most anomalous first", "score_asc": "least anomalous first",
               "time_desc": "newest first", "time_asc": "oldest first", "batch": "by batch"},
    )  # fmt: skip


def _key_value(record: store.Flagged) -> str:
    """A record's key as one form value (both parts URL-quoted, joined by ``/``)."""
    return record_url(record).removeprefix("/records/")


def _parse_keys(values: list[str]) -> list[tuple[str, str]]:
    keys = []
    for value in values:
        batch_id, sep, record_id = value.partition("/")
        if not sep or not batch_id or not record_id:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "malformed record key")
        keys.append((unquote(batch_id), unquote(record_id)))
    return keys


def _safe_back(target: str) -> str:
    return target if target.startswith("/") and not target.startswith("//") else "/queue"


def _with(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


def _form_writer(request: Request, csrf: str) -> str | Response:
    """The session's reviewer, or the error page a form write gets."""
    reviewer = session_user(request)
    if reviewer is None:
        return render(request, "error.html", 403, message="Log in to change records.")
    if not csrf_ok(request, csrf):
        return render(request, "error.html", 403, message="The form expired: reload the page.")
    return reviewer


def _assignee(request: Request, choice: str, reviewer: str) -> str | None:
    """``me`` → the reviewer, ``unassigned``/empty → None, else a known reviewer's name."""
    if choice in ("", search.UNASSIGNED):
        return None
    name = reviewer if choice == search.ME else choice
    if name not in request.app.state.accounts.users:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"no reviewer {name[:60]!r}")
    return name


@router.post("/queue/bulk")
def bulk_form(
    request: Request,
    key: Annotated[list[str], Form()],
    action: Annotated[str, Form()] = "label",
    csrf: Annotated[str, Form()] = "",
    label: Annotated[str, Form()] = "",
    assignee: Annotated[str, Form(max_length=200)] = "",
    note: Annotated[str, Form(max_length=4000)] = "",
    back: Annotated[str, Form(max_length=4000)] = "/queue",
) -> Response:
    """Label or assign the selected records in one transaction."""
    reviewer = _form_writer(request, csrf)
    if isinstance(reviewer, Response):
        return reviewer
    keys = _parse_keys(key)
    engine = request.app.state.engine
    try:
        if action == "label":
            n = store.add_reviews(engine, keys, label, reviewer, note.strip())
            done = f"{n} labelled {label.replace('_', ' ')}"
        elif action == "assign":
            target = _assignee(request, assignee, reviewer)
            n = store.assign(engine, keys, target, reviewer)
            done = f"{n} assigned to {target}" if target else f"{n} unassigned"
        else:
            return render(request, "error.html", 422, message="action must be label or assign")
    except ValueError as exc:
        return render(request, "error.html", 422, message=str(exc))
    except LookupError as exc:
        return render(request, "error.html", 404, message=str(exc))
    return RedirectResponse(_with(_safe_back(back), done=done), status.HTTP_303_SEE_OTHER)


@router.post("/records/{batch_id}/{record_id:path}/comments")
def comment_form(
    request: Request,
    batch_id: str,
    record_id: str,
    body: Annotated[str, Form(max_length=4000)],
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Append a comment to the record's thread as the session's reviewer."""
    author = _form_writer(request, csrf)
    if isinstance(author, Response):
        return author
    try:
        store.add_comment(request.app.state.engine, batch_id, record_id, author, body)
    except ValueError as exc:
        return render(request, "error.html", 422, message=str(exc))
    except LookupError:
        return render(request, "error.html", 404, message="No such flagged record.")
    url = f"{request.url.path.removesuffix('/comments')}"
    query = search.kept_query(request)
    return RedirectResponse(url + (f"?{query}" if query else "") + "#comments", 303)


@router.post("/records/{batch_id}/{record_id:path}/assign")
def assign_form(
    request: Request,
    batch_id: str,
    record_id: str,
    assignee: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Assign the record to a reviewer (``me``, a name, or ``unassigned``)."""
    reviewer = _form_writer(request, csrf)
    if isinstance(reviewer, Response):
        return reviewer
    target = _assignee(request, assignee, reviewer)
    try:
        store.assign(request.app.state.engine, [(batch_id, record_id)], target, reviewer)
    except LookupError:
        return render(request, "error.html", 404, message="No such flagged record.")
    url = f"{request.url.path.removesuffix('/assign')}"
    query = search.kept_query(request)
    return RedirectResponse(url + (f"?{query}" if query else ""), 303)


# ---------------------------------------------------------------------------- overview


def _range(
    request: Request, days: int | None, since: date | None, until: date | None
) -> tuple[date | None, date | None, int | None]:
    """The overview's days: explicit dates, else the last ``days`` (default 30) up to the
    latest scored day."""
    if since or until:
        return since, until, None
    days = days or 30
    latest = store.batches(request.app.state.engine)
    if not latest:
        return None, None, days
    end = latest[-1].scored_at
    end = (end if end.tzinfo is None else end.astimezone(UTC)).date()
    return end - timedelta(days=days - 1), end, days


def _versions_in_force(days: list[store.Day | None]) -> list[tuple[str, ...]]:
    """The model versions of each day; a day nothing was scored keeps the day before's."""
    known = [d.versions for d in days if d is not None]
    out, current = [], known[0] if known else ()
    for d in days:
        current = d.versions if d is not None else current
        out.append(current)
    return out


@router.get("/overview", response_class=HTMLResponse)
def overview_page(
    request: Request,
    _user: Reader,
    days: Annotated[int | None, Query(ge=1, le=3660)] = None,
    since: date | None = None,
    until: date | None = None,
) -> Any:
    """Flag rate, shift alarms, rows scored and the review backlog per day, with the model
    version in force as bands."""
    first, last, days = _range(request, days, since, until)
    rows = store.overview(request.app.state.engine, first, last)
    by_day = {d.day: d for d in rows}
    if rows:  # every day of the range on the axis, scored or not
        start, end = first or rows[0].day, last or rows[-1].day
        dates = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    else:
        dates = []
    days_ = [by_day.get(d) for d in dates]
    versions = _versions_in_force(days_)

    def tip(d: store.Day | None, what: str) -> str:
        if d is None:
            return ""
        return f"{d.day}: {what} — {d.batches} batch(es), model " + ", ".join(
            f"v{v}" for v in d.versions
        )

    def each(value: Any) -> list[Any]:
        return [None if d is None else value(d) for d in days_]

    charts = [
        timecharts.Series(
            "flag rate (dashed: expected α)",
            each(lambda d: d.flag_rate),
            [
                tip(
                    d,
                    f"flag rate {d.flag_rate:.4f} ({d.rows_flagged:,} of "
                    f"{d.rows_scored:,}), α {d.expected_rate:.4f}",
                )
                if d
                else ""
                for d in days_
            ],
            fmt=lambda v: f"{v:.3g}",
            counts=False,
            reference=each(lambda d: d.expected_rate),
            alarms=each(lambda d: d.alarms > 0),
        ),
        timecharts.Series(
            "shift alarms",
            each(lambda d: d.alarms),
            [tip(d, f"{d.alarms} shift alarm(s)") if d else "" for d in days_],
            kind="bar",
            alarms=each(lambda d: d.alarms > 0),
        ),
        timecharts.Series(
            "rows scored",
            each(lambda d: d.rows_scored),
            [
                tip(d, f"{d.rows_scored:,} rows scored, {d.rows_flagged:,} flagged") if d else ""
                for d in days_
            ],
            kind="bar",
        ),
        timecharts.Series(
            "review backlog (flagged, not yet reviewed, at the end of each scoring day)",
            each(lambda d: d.backlog),
            [tip(d, f"backlog {d.backlog:,}") if d else "" for d in days_],
        ),
    ]
    return render(
        request,
        "overview.html",
        charts=[timecharts.day_chart(dates, c, versions) for c in charts],
        rows=list(reversed(rows)),
        ranges=RANGES,
        days=days,
        since=first,
        until=last,
    )


# ---------------------------------------------------------------------------- API

ApiReader = Annotated[str | None, Depends(api_reader)]
ApiWriter = Annotated[str, Depends(api_writer)]


class SearchPageOut(BaseModel):
    """One page of search results; pass ``next`` as ``after`` (or ``previous`` as ``before``)."""

    items: list[FlaggedOut]
    next: str | None
    previous: str | None
    offset: int = Field(
        description=f"records before this page, counted up to {COUNT_LIMIT} "
        f"({VALUE_COUNT_LIMIT} with value filters)"
    )
    total: int = Field(
        description=f"matching records, counted up to {COUNT_LIMIT} "
        f"({VALUE_COUNT_LIMIT} with value filters)"
    )
    total_capped: bool


@api_router.get("/search", response_model=SearchPageOut)
def api_search(
    request: Request,
    _user: ApiReader,
    s: Searched,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[str | None, Query(max_length=2000)] = None,
    before: Annotated[str | None, Query(max_length=2000)] = None,
) -> SearchPageOut:
    """Search flagged records: id (``q``, prefix; ``exact``), batch, model version, label,
    assignee (``me``, ``unassigned``, a name), score range, dates, value filters (``f``,
    repeatable: ``amount>=100``, ``channel=online``), in the order ``sort``; keyset pages."""
    page = store.search(
        request.app.state.engine, s, limit, after=search.decode(after, s),
        before=search.decode(before, s), count_limit=count_limit(s),
    )  # fmt: skip
    return SearchPageOut(
        items=[FlaggedOut.of(r) for r in page.rows],
        next=store.encode_key(page.last) if page.has_next and page.last else None,
        previous=store.encode_key(page.first) if page.has_previous and page.first else None,
        offset=page.offset,
        total=page.total,
        total_capped=page.total >= count_limit(s),
    )


class RecordKey(BaseModel):
    """A flagged record's key."""

    model_config = ConfigDict(extra="forbid")
    batch_id: str = Field(max_length=300)
    record_id: str = Field(max_length=300)


class BulkReviewIn(BaseModel):
    """A label for many records at once (one transaction, one log entry per record)."""

    model_config = ConfigDict(extra="forbid")
    records: list[RecordKey] = Field(min_length=1, max_length=store.BULK_LIMIT)
    label: store.Label
    note: str = Field("", max_length=4000)


class AssignIn(BaseModel):
    """Records to assign to a reviewer (null: unassign)."""

    model_config = ConfigDict(extra="forbid")
    records: list[RecordKey] = Field(min_length=1, max_length=store.BULK_LIMIT)
    assignee: str | None = Field(max_length=200)


class Done(BaseModel):
    """How many records a bulk action changed."""

    records: int


class CommentIn(BaseModel):
    """A comment to append to a record's thread."""

    model_config = ConfigDict(extra="forbid")
    batch_id: str = Field(max_length=300)
    record_id: str = Field(max_length=300)
    body: str = Field(min_length=1, max_length=4000)


class CommentOut(BaseModel):
    """One comment of a record's thread."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    batch_id: str
    record_id: str
    author: str
    body: str
    created_at: datetime


class DayOut(BaseModel):
    """One UTC day of the overview."""

    model_config = ConfigDict(from_attributes=True)
    day: date
    batches: int
    rows_scored: int
    rows_flagged: int
    flag_rate: float
    expected_rate: float
    alarms: int
    versions: list[str]
    backlog: int


def _api_call(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


@api_router.post("/reviews/bulk", response_model=Done)
def api_bulk_review(request: Request, body: BulkReviewIn, reviewer: ApiWriter) -> Done:
    """Label many records in one transaction (all or nothing)."""
    keys = [(r.batch_id, r.record_id) for r in body.records]
    engine = request.app.state.engine
    return Done(records=_api_call(store.add_reviews, engine, keys, body.label, reviewer, body.note))


@api_router.post("/assignments", response_model=Done)
def api_assign(request: Request, body: AssignIn, reviewer: ApiWriter) -> Done:
    """Assign records to a reviewer (or unassign them), logged per record."""
    if body.assignee is not None and body.assignee not in request.app.state.accounts.users:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "no such reviewer")
    keys = [(r.batch_id, r.record_id) for r in body.records]
    engine = request.app.state.engine
    return Done(records=_api_call(store.assign, engine, keys, body.assignee, reviewer))


@api_router.get("/comments", response_model=list[CommentOut])
def api_comments(
    request: Request,
    _user: ApiReader,
    batch_id: Annotated[str, Query(max_length=300)],
    record_id: Annotated[str, Query(max_length=300)],
) -> list[CommentOut]:
    """A record's comment thread, oldest first."""
    rows = store.comments_of(request.app.state.engine, batch_id, record_id)
    return [CommentOut.model_validate(c) for c in rows]


@api_router.post("/comments", response_model=CommentOut, status_code=status.HTTP_201_CREATED)
def api_add_comment(request: Request, body: CommentIn, author: ApiWriter) -> CommentOut:
    """Append a comment (comments are never edited or deleted)."""
    engine = request.app.state.engine
    comment = _api_call(store.add_comment, engine, body.batch_id, body.record_id, author, body.body)
    return CommentOut.model_validate(comment)


@api_router.get("/overview", response_model=list[DayOut])
def api_overview(
    request: Request, _user: ApiReader, since: date | None = None, until: date | None = None
) -> list[DayOut]:
    """Per UTC day: batches, rows scored and flagged, flag rate, α, shift alarms, model
    versions and the review backlog at the day's end."""
    rows = store.overview(request.app.state.engine, since, until)
    return [
        DayOut(**{**d.__dict__, "versions": list(d.versions)}, flag_rate=d.flag_rate) for d in rows
    ]
