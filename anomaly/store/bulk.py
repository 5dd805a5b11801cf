"""Writing a batch's rows in bulk: their JSON text built a column at a time (:func:`json_objects`)
and a plain INSERT run over prepared tuples on the DBAPI cursor of the transaction's own
connection (:func:`insert_rows`).

Issue 18, item 5: the ORM and SQLAlchemy's per-row parameter processing cost as much again as
the database's own work, and ``json.dumps`` of one record at a time most of the rest. The text
stored is the same, byte for byte: ``json.dumps`` of :func:`json_value` of each value, with
``json.dumps``'s separators, keys in the frame's column order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii  # json.dumps's own text encoder (C)
from typing import Any

import numpy as np
import pandas as pd
from pandas.core.dtypes.cast import maybe_box_native
from sqlalchemy import Connection, Table

#: value types stored as they are (exact types: subclasses such as numpy's take the long way)
_PLAIN = frozenset({str, int, bool, type(None)})


def json_value(value: Any) -> Any:
    """A value as a JSON-safe scalar (NaN/inf and anything unknown become text)."""
    kind = type(value)
    if kind in _PLAIN or (kind is float and math.isfinite(value)):  # most values: as they are
        return value
    if isinstance(value, float) and not math.isfinite(value):
        value = str(value)
    elif isinstance(value, pd.Timestamp):
        value = value.isoformat()
    elif hasattr(value, "item") and getattr(value, "size", 1) == 1:  # arrays: as text
        value = value.item()
    return value if isinstance(value, str | int | float | bool | None) else str(value)


def json_texts(values: pd.Series) -> list[str]:
    """``json.dumps(json_value(v))`` of every value ``v`` of a column as ``to_dict("records")``
    gives it: numbers, flags and plain text without a per-value call beyond a number's
    ``repr``."""
    kind = values.dtype.kind if isinstance(values.dtype, np.dtype) else ""
    items = values.tolist()
    if kind == "f":
        texts = list(map(float.__repr__, items))
        for i in np.flatnonzero(~np.isfinite(values.to_numpy())).tolist():
            texts[i] = f'"{texts[i]}"'  # NaN/inf are stored as text: "nan", "inf", "-inf"
        return texts
    if kind and kind in "iu":
        return list(map(int.__repr__, items))
    if kind == "b":
        return ["true" if item else "false" for item in items]
    # objects and extension types: each value as a frame's records give it (``to_dict`` boxes
    # them with pandas' maybe_box_native: numpy scalars as Python ones, pd.NA as None)
    return [
        encode_basestring_ascii(item)
        if type(item) is str
        else json.dumps(json_value(maybe_box_native(item)))
        for item in items
    ]


def json_objects(frame: pd.DataFrame, columns: Sequence[Any]) -> list[str]:
    """Per row of ``frame``, ``json.dumps`` of ``{str(c): json_value(row[c]) for c in columns}``."""
    if not len(columns):
        return ["{}"] * len(frame)
    parts = []
    for column in columns:
        key = encode_basestring_ascii(str(column)) + ": "
        parts.append([key + text for text in json_texts(frame[column])])
    return ["{" + ", ".join(row) + "}" for row in zip(*parts, strict=True)]


def insert_rows(
    connection: Connection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """INSERT ``rows`` (tuples of ``columns``' values as the driver takes them: JSON as text)
    into ``table`` in ``connection``'s transaction, on its DBAPI cursor."""
    if not rows:
        return
    dialect = connection.dialect
    quote = dialect.identifier_preparer.quote
    into = f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) VALUES "
    cursor = connection.connection.cursor()
    try:
        if dialect.driver == "psycopg2":  # one statement of many rows a page, not one a row
            from psycopg2.extras import execute_values

            execute_values(cursor, into + "%s", rows, page_size=1_000)
            return
        marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}
        if dialect.paramstyle not in marks:
            msg = f"the store cannot write batches through {dialect.driver} ({dialect.paramstyle})"
            raise NotImplementedError(msg)
        cursor.executemany(
            into + f"({', '.join([marks[dialect.paramstyle]] * len(columns))})", rows
        )
    finally:
        cursor.close()
