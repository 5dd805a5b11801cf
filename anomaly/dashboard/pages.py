"""The server-rendered pages: queue, record, batches, model, login."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Annotated, Any
from urllib.parse import urlencode

import numpy as np
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from anomaly import store
from anomaly.dashboard import charts, display, extras, search
from anomaly.dashboard.api import MAX_OFFSET, export_response
from anomaly.dashboard.auth import SESSION_COOKIE
from anomaly.dashboard.registry_view import model_overview
from anomaly.dashboard.security import (
    accounts,
    csrf_ok,
    page_reader,
    secure_cookies,
    session_user,
    sessions,
)

logger = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
Reader = Annotated[str | None, Depends(page_reader)]
Searched = Annotated[store.Search, Depends(search.search_params)]
QUARANTINE_ROWS = 200


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A template with the reviewer, CSRF token and settings every page needs."""
    return request.app.state.templates.TemplateResponse(
        request,
        name,
        {
            "user": session_user(request),
            "csrf": request.state.csrf,
            "open_reads": request.app.state.config.dashboard.open_reads,
            "name": request.app.state.config.name,
            **context,
        },
        status_code=status_code,
    )


@router.get("/")
def home() -> RedirectResponse:
    """The queue is the start page."""
    return RedirectResponse("/queue", status.HTTP_303_SEE_OTHER)


def _feature_rows(
    record: store.Flagged, profile: dict[str, Any] | None, timestamp: str | None, zone: str
) -> list[dict[str, Any]]:
    """Each value beside its training profile (numeric quantiles or category frequency); the
    timestamp column in ISO-8601 in the time zone ``zone``."""
    numeric = (profile or {}).get("numeric", {})
    categorical = (profile or {}).get("categorical", {})
    rows = []
    for feature, value in record.values.items():
        row: dict[str, Any] = {"feature": feature, "value": value, "kind": "other"}
        if feature == timestamp:
            row["value"] = display.when(value, zone)
        if feature in numeric:
            q = numeric[feature]
            row.update(kind="numeric", q=q, bar=charts.range_bar(value, q))
            try:
                v = float(value)
                row["outside"] = v < q["q01"] or v > q["q99"]
            except (TypeError, ValueError):
                row["outside"] = True
        elif feature in categorical:
            freq = categorical[feature]["frequencies"]
            share = freq.get(str(value))
            common = ", ".join(f"{k} {v:.0%}" for k, v in list(freq.items())[:4])
            row.update(kind="categorical", share=share, common=common, outside=share is None)
        rows.append(row)
    return rows


@router.get("/records/{batch_id}/{record_id:path}", response_class=HTMLResponse)
def record_page(
    request: Request, _user: Reader, search_of: Searched, batch_id: str, record_id: str
) -> Any:
    """A flagged record: values against the training range, contributions, calibration."""
    engine = request.app.state.engine
    record = store.get_record(engine, batch_id, record_id)
    if record is None:
        return render(request, "error.html", 404, message="No such flagged record.")
    query = search.kept_query(request)
    detector, model_error = request.app.state.detectors.get(record.model_version)
    histogram, profile, calibration = None, None, {}
    if detector is not None:
        cal = detector.calibrator
        score = -record.log_likelihood
        histogram = charts.score_histogram(cal.scores_, score, float(cal.threshold_))
        calibration = {
            "score": score,
            "threshold": float(cal.threshold_),
            "n_cal": int(cal.n_cal_),
            "share_above": float(np.mean(cal.scores_ >= score)),
        }
        profile = detector.metadata.get("profile")
    contributions = [
        {**c, "typical": display.typical(str(c.get("feature")), c.get("typical"), profile)}
        for c in record.contributions or []
    ]
    config = request.app.state.config
    return render(
        request,
        "record.html",
        record=record,
        features=_feature_rows(
            record, profile, config.features.timestamp, config.schedule.timezone
        ),
        has_profile=profile is not None,
        contribution_chart=charts.contribution_bars(contributions),
        contributions=contributions,
        histogram=histogram,
        calibration=calibration,
        model_error=model_error,
        reviews=store.reviews_of(engine, batch_id, record_id),
        labels=store.LABELS,
        query=query,
        action=extras.record_url(record, "") + "/review" + (f"?{query}" if query else ""),
        queue_url="/queue" + (f"?{query}" if query else ""),
        saved=request.query_params.get("saved"),
        **extras.record_extras(request, record, detector, search_of),
    )


@router.post("/records/{batch_id}/{record_id:path}/review")
def review_form(
    request: Request,
    search_of: Searched,
    batch_id: str,
    record_id: str,
    label: Annotated[str, Form()],
    csrf: Annotated[str, Form()] = "",
    note: Annotated[str, Form(max_length=4000)] = "",
    then: Annotated[str, Form()] = "stay",
) -> Response:
    """Append a review from the record page; the reviewer is the session's, never the form's."""
    reviewer = session_user(request)
    if reviewer is None:
        return render(request, "error.html", 403, message="Log in to review records.")
    if not csrf_ok(request, csrf):
        return render(request, "error.html", 403, message="The form expired: reload the page.")
    engine = request.app.state.engine
    try:
        store.add_review(engine, batch_id, record_id, label, reviewer, note.strip())
    except ValueError as exc:
        return render(request, "error.html", 422, message=str(exc))
    except LookupError:
        return render(request, "error.html", 404, message="No such flagged record.")
    record = store.get_record(engine, batch_id, record_id)
    query = search.kept_query(request)
    target = extras.following(engine, search_of, record) if then == "next" else None
    url = extras.record_url(target or record, query)
    url += ("&" if "?" in url else "?") + "saved=" + label
    return RedirectResponse(url, status.HTTP_303_SEE_OTHER)


@router.get("/batches", response_class=HTMLResponse)
def batches_page(request: Request, _user: Reader) -> Any:
    """Flag rate per batch against α, shift alarms, quarantine counts."""
    rows = store.batches(request.app.state.engine)
    points = [(b.batch_id, b.flag_rate, b.expected_rate, b.shift_alarm) for b in rows]
    return render(
        request,
        "batches.html",
        batches=list(reversed(rows)),
        chart=charts.flag_rate_chart(points),
    )


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
def batch_page(
    request: Request,
    _user: Reader,
    batch_id: str,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Any:
    """One batch: its numbers and its quarantined rows with reasons."""
    engine = request.app.state.engine
    batch = store.get_batch(engine, batch_id)
    if batch is None:
        return render(request, "error.html", 404, message=f"No batch {batch_id!r}.")
    rows = store.quarantined_rows(engine, batch_id, QUARANTINE_ROWS, offset)
    return render(
        request,
        "batch.html",
        batch=batch,
        rows=rows,
        offset=offset,
        page_rows=QUARANTINE_ROWS,
        queue_url="/queue?" + urlencode({"batch_id": batch_id}),
    )


@router.get("/model", response_class=HTMLResponse)
def model_page(request: Request, _user: Reader) -> Any:
    """Champion/challenger, their metrics and the alias history, with a link to MLflow."""
    config = request.app.state.config
    return render(
        request,
        "model.html",
        overview=model_overview(config),
        mlflow_url=config.dashboard.mlflow_url,
    )


@router.get("/export.{fmt}")
def export_page(request: Request, _user: Reader, fmt: str) -> Response:
    """Reviewed records as CSV or Parquet."""
    if fmt not in ("csv", "parquet"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "export as .csv or .parquet")
    return export_response(request, fmt)


def _safe_next(target: str) -> str:
    """Only paths of this site (no ``//host`` or scheme): no open redirect."""
    return target if target.startswith("/") and not target.startswith("//") else "/queue"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: Annotated[str, Query(max_length=2000)] = "/queue") -> Any:
    """The login form."""
    return render(request, "login.html", next=_safe_next(next), failed=False)


@router.post("/login")
async def login(
    request: Request,
    username: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1000)],
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/queue",
) -> Response:
    """Check the password (throttled, off the event loop), then start a session.

    Too many failures for the account or from the client address lock it out for a while
    (:mod:`anomaly.dashboard.throttle`): answered 429 with ``Retry-After``, no password
    checked. The check runs on the app's small password-check pool, so a flood of logins
    waits there and never takes the threads other requests need.
    """
    await run_in_threadpool(session_user, request)  # looked up once, off the event loop
    if not csrf_ok(request, csrf):
        return render(request, "error.html", 403, message="The form expired: reload the page.")
    address = request.client.host if request.client else "unknown"
    throttle = request.app.state.throttle
    wait = throttle.attempt(username, address)
    if wait:
        response = render(
            request, "login.html", 429, next=_safe_next(next), failed=False,
            locked=math.ceil(wait),
        )  # fmt: skip
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    loop = asyncio.get_running_loop()
    checked = loop.run_in_executor(
        request.app.state.hasher, accounts(request).login, username, password
    )
    if not await checked:
        logger.info("failed login for %r from %s", username, address)
        return render(request, "login.html", 401, next=_safe_next(next), failed=True)
    throttle.succeeded(username, address)
    cookie = await run_in_threadpool(sessions(request).start, username)
    response = RedirectResponse(_safe_next(next), status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(accounts(request).session_seconds),
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
    )
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    """End the session: its cookie no longer works anywhere, even if copied."""
    if not csrf_ok(request, csrf):
        return render(request, "error.html", 403, message="The form expired: reload the page.")
    sessions(request).end(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> Any:
    """The OpenAPI description rendered on the server (Swagger UI would need a CDN)."""
    spec = request.app.openapi()
    operations = [
        {"method": method.upper(), "path": path, **op}
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]
    return render(request, "docs.html", spec=spec, operations=operations)
