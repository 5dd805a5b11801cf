"""What the record page adds to a record: its neighbours in the search order, assignment,
comment thread and the nearest normal training rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pandas as pd
from fastapi import Request
from sqlalchemy import Engine

from anomaly import store
from anomaly.dashboard import search
from anomaly.preprocessing import SchemaError

if TYPE_CHECKING:
    from anomaly.detector import Detector


def record_url(record: store.Flagged, query: str = "") -> str:
    """A record page's URL, keeping the search ``query``."""
    path = f"/records/{quote(record.batch_id, safe='')}/{quote(record.record_id, safe='')}"
    return path + (f"?{query}" if query else "")


def following(engine: Engine, s: store.Search, record: store.Flagged) -> store.Flagged | None:
    """The record after ``record`` in the order and filters of ``s`` (None: the last)."""
    page = store.search(engine, s, limit=1, after=store.search_key(record, s), counted=False)
    return page.rows[0] if page.rows else None


def preceding(engine: Engine, s: store.Search, record: store.Flagged) -> store.Flagged | None:
    """The record before ``record`` in the order and filters of ``s`` (None: the first)."""
    page = store.search(engine, s, limit=1, before=store.search_key(record, s), counted=False)
    return page.rows[0] if page.rows else None


def record_extras(
    request: Request, record: store.Flagged, detector: Detector | None, s: store.Search
) -> dict[str, Any]:
    """The record page's context beyond the record itself."""
    engine = request.app.state.engine
    query = search.kept_query(request)
    after, before = following(engine, s, record), preceding(engine, s, record)
    path = record_url(record)
    return {
        "next_url": record_url(after, query) if after else None,
        "prev_url": record_url(before, query) if before else None,
        "comments": store.comments_of(engine, record.batch_id, record.record_id),
        "comment_action": path + "/comments" + (f"?{query}" if query else ""),
        "assign_action": path + "/assign" + (f"?{query}" if query else ""),
        "reviewers": sorted(request.app.state.accounts.users),
        "nearest": nearest_normal(detector, record) if detector is not None else None,
    }


#: nearest normal records shown beside a flagged one
NEAREST = 5
#: a numeric value "differs" when it is this far away in model space (training SDs)
DIFFERS_SD = 0.5


def nearest_normal(detector: Detector, record: store.Flagged) -> dict[str, Any] | None:
    """The training rows nearest to the record in model space, with the values that differ
    marked: categories that are not the same, numbers more than :data:`DIFFERS_SD` apart in
    model space (None: the model kept no training rows, or the record cannot be placed)."""
    index = detector.neighbours
    if index is None:
        return None
    pre = detector.preprocessor
    try:
        prepared = pre.transform(pd.DataFrame([record.values]))
    except SchemaError:  # stored without a column the model reads
        return None
    if len(prepared.X) == 0:  # a value the model cannot place (quarantined)
        return None
    x = prepared.X[0]
    idx, distances = index.nearest(x, NEAREST)
    blocks = {b.name: b for b in pre.layout_}
    rows = []
    for i, row, distance in zip(idx, index.rows(idx), distances, strict=True):
        differs = {}
        for feature, block in blocks.items():
            if block.categorical:
                differs[feature] = str(record.values.get(feature)) != str(row.get(feature))
            else:
                gap = abs(float(index.points[i, block.start]) - float(x[block.start]))
                differs[feature] = gap > DIFFERS_SD
        rows.append({"values": row, "distance": distance, "differs": differs})
    return {"features": list(index.values), "record": record.values, "rows": rows}
