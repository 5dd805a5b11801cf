"""The record schema, declared once: which columns a record has, and what a stored batch holds.

A *record* is one row of a batch. The feature spec (``features`` in the config) names its
columns: the id, the numeric, categorical and context columns, and the optional timestamp.
Every place that lists a record's columns reads them from :func:`record_columns`: the
config's duplicate check, the preprocessor's required columns, the pyfunc model's signature
and input example (:func:`input_example`), and the rows a reviewed record contributes back to
training. A *batch record* (one scored batch file, as the store keeps it and the API serves it)
is :data:`BATCH_RECORD`.

No heavy imports here: the dashboard and the config read this module without torch or MLflow.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from anomaly.config import Features

#: the per-row columns a detector adds to a scored record
SCORE_COLUMNS: tuple[str, ...] = ("log_likelihood", "p_value", "is_anomaly", "reason")

#: a stored batch: field → type. Every field but ``model_name`` and ``scored_at`` (which the
#: store adds) is a field of :class:`anomaly.scoring.BatchSummary`; the store's ``batches`` table
#: and the API's ``BatchOut`` have exactly these fields (tests/test_schema.py checks both).
BATCH_RECORD: dict[str, Any] = {
    "batch_id": str,
    "source": str,
    "status": str,
    "model_name": str,
    "model_version": str,
    "rows_in": int,
    "rows_scored": int,
    "rows_quarantined": int,
    "rows_flagged": int,
    "flag_rate": float,
    "expected_rate": float,
    "shift_p_value": float,
    "shift_alarm": bool,
    "mean_log_likelihood": float | None,
    "output": str | None,
    "error": str | None,
    "scored_at": datetime,
    "content_hash": str | None,
}
#: the batch record's fields the store adds (not in a BatchSummary)
STORE_ADDED = ("model_name", "scored_at")


def record_columns(features: Features) -> list[str]:
    """The columns every record must have, in order: id, numeric, categorical, context, then
    the timestamp (if any).

    >>> from anomaly.config import Features
    >>> f = Features(id="id", numeric=["x"], categorical=["c"], context=["k"], timestamp="t")
    >>> record_columns(f)
    ['id', 'x', 'c', 'k', 't']
    """
    return column_list(
        features.id, features.numeric, features.categorical, features.context, features.timestamp
    )


def column_list(
    id_column: str,
    numeric: list[str],
    categorical: list[str],
    context: list[str],
    timestamp: str | None,
) -> list[str]:
    """:func:`record_columns` of the parts of a feature spec (for the spec's own validation)."""
    return [id_column, *numeric, *categorical, *context] + ([timestamp] if timestamp else [])


def input_example(features: Features, data: pd.DataFrame, rows: int = 5) -> pd.DataFrame:
    """The first ``rows`` records of ``data`` with exactly the record's columns, timestamps as
    text (JSON-friendly; the detector parses them itself): the pyfunc model's input example."""
    example = data[record_columns(features)].head(rows).reset_index(drop=True)
    if features.timestamp:
        example[features.timestamp] = example[features.timestamp].astype(str)
    return example


def batch_values(summary: Any) -> dict[str, Any]:
    """The batch record's fields of a :class:`~anomaly.scoring.BatchSummary` (all but
    :data:`STORE_ADDED`); a field missing from the summary is an error, never skipped."""
    return {name: getattr(summary, name) for name in BATCH_RECORD if name not in STORE_ADDED}
