"""The search and filter parameters shared by the queue page, the record page and the search
API: record id (exact or prefix), batch, model version, label, assignee, score range, dates,
value filters (``amount>=100``, ``channel=online``) and the sort order."""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Query, Request, status

from anomaly import store
from anomaly.dashboard.api import queue_filter
from anomaly.dashboard.security import api_user

#: the query parameters a search is made of (kept by links between pages)
PARAMS = (
    "q", "exact", "batch_id", "model_version", "label", "assignee", "min_score", "max_score",
    "since", "until", "order", "sort", "f",
)  # fmt: skip
SortParam = Literal["score_desc", "score_asc", "time_desc", "time_asc", "batch"]
_VALUE_FILTER = re.compile(r"^\s*([^<>=]{1,100}?)\s*(>=|<=|=)\s*(.{1,200}?)\s*$")
#: the assignee filter: records assigned to the reviewer asking, or to nobody
ME, UNASSIGNED = "me", "unassigned"


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def value_filters(request: Request, raw: list[str]) -> tuple[store.FeatureFilter, ...]:
    """``feature>=x`` / ``feature<=x`` (numeric range) and ``feature=text`` (category) filters,
    on columns of the config's feature spec only."""
    features = request.app.state.config.features
    numeric = {*features.numeric, *features.context}
    known = numeric | {*features.categorical, *features.context}
    out = []
    for text in raw:
        for part in filter(None, (p.strip() for p in text.split(","))):
            match = _VALUE_FILTER.match(part)
            if match is None:
                msg = f"value filter {part[:60]!r}: write feature>=number, <=number or =category"
                raise _unprocessable(msg)
            feature, op, value = match.groups()
            if feature not in known:
                msg = f"value filter on {feature[:60]!r}: not a feature; use one of {sorted(known)}"
                raise _unprocessable(msg)
            if op == "=" and feature not in numeric:
                out.append(store.FeatureFilter(feature, equals=value))
                continue
            try:
                number = float(value)
            except ValueError:
                msg = f"value filter {part[:60]!r}: {value[:40]!r} is not a number"
                raise _unprocessable(msg) from None
            low = number if op in (">=", "=") else None
            high = number if op in ("<=", "=") else None
            out.append(store.FeatureFilter(feature, low=low, high=high))
    return tuple(out)


def search_params(
    request: Request,
    where: Annotated[store.QueueFilter, Depends(queue_filter)],
    q: Annotated[str | None, Query(max_length=300, description="record id or its start")] = None,
    exact: Annotated[bool, Query(description="only the record id `q` itself")] = False,
    assignee: Annotated[
        str | None, Query(max_length=200, description="a reviewer, `me` or `unassigned`")
    ] = None,
    min_score: Annotated[str | None, Query(max_length=40, description="a number")] = None,
    max_score: Annotated[str | None, Query(max_length=40, description="a number")] = None,
    f: Annotated[
        list[str] | None,
        Query(max_length=400, description="value filters: amount>=100, channel=online"),
    ] = None,
    sort: SortParam | None = None,
) -> store.Search:
    """The search the query parameters ask for (``sort`` defaults to the queue's ``order``)."""
    mine = None
    if assignee == ME:
        mine = api_user(request) or "\x00nobody"  # not logged in: nothing is "mine"
    return store.Search(
        where=where,
        record_id=(q or "").strip() or None,
        exact=exact,
        assignee=mine or (assignee if assignee not in (None, "", UNASSIGNED) else None),
        unassigned=assignee == UNASSIGNED,
        min_score=_number("min_score", min_score),
        max_score=_number("max_score", max_score),
        features=value_filters(request, f or []),
        sort=sort or where.order,
    )


def _number(name: str, text: str | None) -> float | None:
    """A finite number from a query parameter (empty: none), or 422."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        msg = f"{name} must be a number, got {text[:40]!r}"
        raise _unprocessable(msg)
    return value


def kept_query(request: Request) -> str:
    """The search parameters of this request, for links that keep them."""
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k in PARAMS and v]
    return urlencode(pairs)


def decode(cursor: str | None, s: store.Search) -> tuple | None:
    """A page cursor of this search's order, or 422."""
    if not cursor:
        return None
    try:
        return store.decode_key(cursor, s.sort)
    except ValueError as exc:
        raise _unprocessable(str(exc)) from exc
