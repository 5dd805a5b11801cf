"""The record schema is declared once (anomaly/schema.py) and every copy follows it."""

from __future__ import annotations

import dataclasses
import types

import pandas as pd
import pytest

from anomaly import schema
from anomaly.config import Features
from anomaly.dashboard.api import BatchOut
from anomaly.preprocessing import Preprocessor, SchemaError
from anomaly.scoring import BatchSummary
from anomaly.store import Batch

SPEC = Features(id="id", numeric=["x", "y"], categorical=["c"], context=["k"], timestamp="t")


def test_record_columns_name_every_column_of_the_spec_once():
    assert schema.record_columns(SPEC) == ["id", "x", "y", "c", "k", "t"]
    assert schema.record_columns(Features(id="id", numeric=["x"])) == ["id", "x"]
    with pytest.raises(ValueError, match=r"columns listed twice: \['k'\]"):
        Features(id="id", numeric=["x"], categorical=["k"], context=["k"])


def test_the_preprocessor_requires_every_record_column():
    pre = Preprocessor(SPEC)
    for missing in schema.record_columns(SPEC):
        columns = [c for c in schema.record_columns(SPEC) if c != missing]
        with pytest.raises(SchemaError, match=f"missing required column.*'{missing}'"):
            pre.check_schema(columns)


def test_the_input_example_has_the_record_columns_and_text_timestamps():
    data = pd.DataFrame(
        {
            "extra": [1, 2],
            "t": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True),
            "k": ["a", "b"],
            "c": ["u", "v"],
            "y": [1.0, 2.0],
            "x": [3.0, 4.0],
            "id": ["r1", "r2"],
        }
    )
    example = schema.input_example(SPEC, data)
    assert list(example.columns) == schema.record_columns(SPEC)
    assert example["t"].tolist() == ["2024-01-01 00:00:00+00:00", "2024-01-02 00:00:00+00:00"]


def _optional(kind: object) -> bool:
    return isinstance(kind, types.UnionType) and type(None) in kind.__args__


def test_store_table_api_model_and_batch_summary_follow_the_batch_record():
    record = schema.BATCH_RECORD
    columns = {c.name: c for c in Batch.__table__.columns}
    assert list(columns) == list(record)
    for name, kind in record.items():
        assert columns[name].nullable == _optional(kind), name
    assert list(BatchOut.model_fields) == list(record)
    summary_fields = {f.name for f in dataclasses.fields(BatchSummary)}
    assert set(record) - summary_fields == set(schema.STORE_ADDED)


def test_batch_values_never_drop_a_field():
    summary = BatchSummary("b", "b.csv", "scored", rows_in=3, rows_scored=3, output="o.parquet")
    values = schema.batch_values(summary)
    assert set(values) == set(schema.BATCH_RECORD) - set(schema.STORE_ADDED)
    assert values["output"] == "o.parquet"
