"""Reviewed records for export: the table (:func:`reviewed_records`) and its CSV with formula
cells neutralised (:func:`csv_text`), or Parquet (:func:`write_export`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    Engine,
)
from sqlalchemy.orm import Session

from anomaly.io import SUFFIXES, write_table
from anomaly.store.reviews import latest_reviews
from anomaly.store.tables import (
    Flagged,
    Review,
)

EXPORT_COLUMNS = [
    "batch_id", "record_id", "label", "note", "reviewer", "reviewed_at", "model_name",
    "model_version", "log_likelihood", "p_value", "reason", "scored_at",
]  # fmt: skip


def reviewed_records(engine: Engine) -> pd.DataFrame:
    """Every reviewed record with its current label (latest review), its scores and its values
    as columns (prefixed ``value.``), for export."""
    query = latest_reviews(Review, Flagged).order_by(Review.id)
    with Session(engine) as session:
        pairs = session.execute(query).all()
    rows = [
        {
            "batch_id": r.batch_id,
            "record_id": r.record_id,
            "label": r.label,
            "note": r.note,
            "reviewer": r.reviewer,
            "reviewed_at": r.created_at,
            "model_name": f.model_name,
            "model_version": f.model_version,
            "log_likelihood": f.log_likelihood,
            "p_value": f.p_value,
            "reason": f.reason,
            "scored_at": f.scored_at,
            **{f"value.{k}": v for k, v in f.values.items()},
        }
        for r, f in pairs
    ]
    return pd.DataFrame(rows, columns=None if rows else EXPORT_COLUMNS)


#: a spreadsheet reads a cell starting with one of these as a formula (OWASP CSV injection)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells (and column names) that a spreadsheet would run as
    a formula start with ``'``: ``=HYPERLINK(...)`` is exported as ``'=HYPERLINK(...)``.
    Numbers are left alone (``-1.5`` stays a number)."""

    def cell(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(FORMULA_STARTS):
            return "'" + value
        return value

    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(cell)
    return safe.rename(columns=cell)


def csv_text(frame: pd.DataFrame) -> str:
    """An export frame as CSV with formula cells neutralised (:func:`csv_safe`) and CRLF line
    ends (RFC 4180), so that a CR or LF inside a cell is quoted and cannot start a new row."""
    return csv_safe(frame).to_csv(index=False, lineterminator="\r\n")


def write_export(frame: pd.DataFrame, path: Path) -> Path:
    """Write an export frame as CSV (:func:`csv_text`) or Parquet, chosen by the file's
    suffix (:func:`anomaly.io.write_table`)."""
    if path.suffix.lower() not in SUFFIXES:
        msg = f"export file must end in .csv or .parquet, got {path.name!r}"
        raise ValueError(msg)
    return write_table(frame, path, csv_text)
