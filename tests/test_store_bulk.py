"""The store's bulk batch write stores the text the row-by-row write stored: ``json.dumps`` of
each record's values, byte for byte, whatever the columns' types (issue 18, item 5)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from store_data import ID, flagged_frame, quarantined_frame, summary

from anomaly import store
from anomaly.store.bulk import json_objects

_PLAIN = frozenset({str, int, bool, type(None)})


def _json_values_reference(values: dict[Any, Any]) -> dict[str, Any]:
    """The row-by-row conversion the store used before the bulk write, verbatim."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = type(value)
        if kind in _PLAIN or (kind is float and math.isfinite(value)):  # most values: as they are
            out[str(key)] = value
            continue
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        elif isinstance(value, pd.Timestamp):
            value = value.isoformat()
        elif hasattr(value, "item") and getattr(value, "size", 1) == 1:  # arrays: as text
            value = value.item()
        out[str(key)] = value if isinstance(value, str | int | float | bool | None) else str(value)
    return out


def _mixed_frame() -> pd.DataFrame:
    n = 9
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64) * 10**15,
            "x": [0.0, -0.0, 1e-5, 1e-4, 1e16, 123456789012345.6, np.nan, np.inf, -np.inf],
            "f32": np.linspace(-1, 1, n, dtype=np.float32),
            "u8": np.arange(n, dtype=np.uint8),
            "flag": [True, False] * 4 + [True],
            "text": ['a "quoted"\nline', None, "é ünï", "\x00", "", "tab\t", "ok", "\u2028", "z"],
            "mixed": [np.int64(3), np.float64(2.5), np.float64("nan"), pd.Timestamp("2026-01-02"),
                      None, np.bool_(True), np.str_("s"), [1, 2], {"k": 1}],
            "when": pd.date_range("2026-12-03", periods=n, freq="h", tz="UTC"),
            "naive": pd.date_range("2026-12-03", periods=n, freq="min"),
            "span": pd.to_timedelta(np.arange(n), unit="s"),
            "category": pd.Categorical(["a", "b", "a", None, "b", "a", "a", "b", "b"]),
            "nullable": pd.array([1, None, 3, 4, 5, 6, 7, 8, 9], dtype="Int64"),
            "string": pd.array(["p", None, "q", "r", "s", "t", "u", "v", "w"], dtype="string"),
            7: np.arange(n, dtype=np.float64) / 3,
        }
    )  # fmt: skip


def test_json_objects_equal_json_dumps_of_each_record() -> None:
    frame = _mixed_frame()
    expected = [json.dumps(_json_values_reference(r)) for r in frame.to_dict("records")]
    assert json_objects(frame, list(frame.columns)) == expected
    assert json_objects(frame, []) == ["{}"] * len(frame)


def test_stored_values_are_the_json_text_of_each_record(tmp_path: Path) -> None:
    engine = store.connect(f"sqlite:///{tmp_path / 'review.db'}")
    flagged = flagged_frame(0, 40)
    flagged.loc[3, "contributions"] = None  # missing contributions: JSON null
    flagged["amount"] = flagged["amount"].where(flagged.index != 5, np.nan)
    quarantined = quarantined_frame(0)
    store.write_batch(engine, summary(0, 40), "demo", flagged, quarantined, ID)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text('SELECT record_id, "values", contributions FROM flagged')
        ).all()
        kept = conn.execute(sa.text('SELECT row, "values" FROM quarantined ORDER BY row')).all()
    values = flagged.drop(columns=["log_likelihood", "p_value", "reason", "contributions"])
    by_id = {str(r[ID]): r for r in values.to_dict("records")}
    contributions = dict(zip(flagged[ID], flagged["contributions"], strict=True))
    assert len(stored) == 40
    for record_id, text, contribution in stored:
        assert text == json.dumps(_json_values_reference(by_id[record_id]))
        wanted = contributions[record_id]
        assert contribution == json.dumps(None if wanted is None else wanted)
    rest = quarantined.drop(columns=["reason"]).to_dict("records")
    assert [t for _, t in kept] == [json.dumps(_json_values_reference(r)) for r in rest]
    engine.dispose()
