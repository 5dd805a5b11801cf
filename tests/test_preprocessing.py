"""Tests for anomaly.preprocessing: quarantine, schema checks, transforms, Jacobian, storage."""

import copy
import functools
import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from anomaly import models
from anomaly.config import Features
from anomaly.preprocessing import CLIP, Preprocessor, SchemaError

ID, AMOUNT, TEMP, CHANNEL, TS = "rec_id", "amount", "temp", "channel", "ts"
NUMERIC = [AMOUNT, TEMP]
CHANNELS = ["chip", "contactless", "online"]
SPEC = Features(id=ID, numeric=NUMERIC, categorical=[CHANNEL], timestamp=TS)
SPEC_COLUMNS = [ID, *NUMERIC, CHANNEL, TS]


def training_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Clean rows: a skewed positive column, a symmetric one, a category and a timestamp."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            ID: [f"t{seed}-{i}" for i in range(n)],
            AMOUNT: np.round(rng.lognormal(3.5, 0.9, n), 2),
            TEMP: rng.normal(15.0, 6.0, n),
            CHANNEL: rng.choice(CHANNELS, n),
            TS: pd.Timestamp("2024-03-04", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min"),
        }
    )


@functools.cache
def fitted() -> Preprocessor:
    """One Preprocessor fitted on clean rows (module-wide; never mutated by the tests)."""
    return Preprocessor(SPEC).fit(training_frame())


# ------------------------------------------------------------------- quarantine property
# Each strategy yields (value, valid): valid means the cell alone must not quarantine the row.
NUMERIC_CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: (v, math.isfinite(v))),
    st.integers(-(10**6), 10**6).map(lambda v: (v, True)),
    st.sampled_from(
        [
            (None, False),
            ("N/A", False),
            ("", False),
            ("abc", False),
            ("nan", False),
            ("1e309", False),
            ("-inf", False),
            ("12", True),
            ("-4.5e2", True),
            (1e308, True),
            (-1e308, True),
            (5e-324, True),
            (0.0, True),
        ]
    ),
)
ID_CELLS = st.one_of(
    st.sampled_from(["r1", "r2", "r3"]),
    st.text(alphabet="abc", min_size=1, max_size=3),
    st.integers(0, 3),
    st.sampled_from([None, "", "   "]),
)
CATEGORY_CELLS = st.sampled_from(
    [
        ("chip", True),
        ("online", True),
        ("contactless", True),
        ("unseen", True),
        ("CHIP", True),
        ("", True),
        (1, True),
        (None, False),
        (float("nan"), False),
    ]
)
TS_CELLS = st.sampled_from(
    [
        ("2024-03-04T10:00:00Z", True),
        ("2024-03-05 11:30", True),
        ("not a date", False),
        ("", False),
        (None, False),
    ]
)
ROWS = st.lists(
    st.tuples(ID_CELLS, NUMERIC_CELLS, NUMERIC_CELLS, CATEGORY_CELLS, TS_CELLS), max_size=30
)


def _is_missing_id(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def expected_quarantine(rows: list) -> list[bool]:
    """Oracle: which rows must be quarantined (bad cell, missing id, repeated id)."""
    seen: set[str] = set()
    out = []
    for ident, (_, a_ok), (_, t_ok), (_, c_ok), (_, ts_ok) in rows:
        bad_id = _is_missing_id(ident)
        duplicate = ident is not None and str(ident) in seen
        if ident is not None:
            seen.add(str(ident))
        out.append(bad_id or duplicate or not (a_ok and t_ok and c_ok and ts_ok))
    return out


def frame_from_rows(rows: list) -> pd.DataFrame:
    columns = {
        ID: [r[0] for r in rows],
        AMOUNT: [r[1][0] for r in rows],
        TEMP: [r[2][0] for r in rows],
        CHANNEL: [r[3][0] for r in rows],
        TS: [r[4][0] for r in rows],
        "extra": ["ignored"] * len(rows),
    }
    # An empty float column is a known crash (see test_empty_frame_with_float_columns).
    dtype = object if not rows else None
    # labels unlike positions: results are indexed by position in the frame
    index = pd.Index([f"row{len(rows) - i}" for i in range(len(rows))], dtype=object)
    return pd.DataFrame({k: pd.Series(v, dtype=dtype, index=index) for k, v in columns.items()})


NAMED_COLUMN = re.compile(rf"\b({'|'.join(SPEC_COLUMNS)})\b")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS)
def test_every_row_is_scored_or_quarantined(rows):
    pre = fitted()
    df = frame_from_rows(rows)
    prepared = pre.transform(df)
    scored, quarantined = prepared.scored, prepared.quarantined

    assert len(scored) + len(quarantined) == len(df)
    # positions partition the input, in order
    assert sorted([*scored.index, *quarantined.index]) == list(range(len(df)))
    assert list(quarantined.index) == sorted(quarantined.index)
    should = expected_quarantine(rows)
    assert [i for i, q in enumerate(should) if q] == list(quarantined.index)

    assert prepared.X.shape == (len(scored), len(pre.feature_names_))
    assert np.isfinite(prepared.X).all()
    assert np.abs(prepared.X).max(initial=0.0) <= CLIP
    assert prepared.log_det.shape == (len(scored),)
    assert np.isfinite(prepared.log_det).all()

    # scored ids are present and unique
    assert scored[ID].notna().all()
    assert not scored[ID].duplicated().any()

    # quarantined rows are the raw rows, each with a reason naming what is wrong
    raw = df.iloc[list(quarantined.index)].set_axis(quarantined.index)
    pd.testing.assert_frame_equal(quarantined.drop(columns="reason"), raw)
    for reason in quarantined["reason"]:
        assert reason
        for part in reason.split("; "):
            assert NAMED_COLUMN.search(part) or part.startswith("duplicate id"), part

    # scored rows: a reason only for an unseen category, naming column and value
    for pos, reason in zip(scored.index, scored["reason"], strict=True):
        value = str(df[CHANNEL].iloc[pos])
        if value in CHANNELS:
            assert reason == ""
        else:
            assert reason == f"unseen category in {CHANNEL}: {value!r}"


def test_empty_frame_with_float_columns():
    # pd.DataFrame({...: []}) and an empty Parquet batch give float64 columns
    df = pd.DataFrame({c: [] for c in SPEC_COLUMNS})
    prepared = fitted().transform(df)
    assert len(prepared.scored) == len(prepared.quarantined) == 0


def test_empty_object_frame():
    df = pd.DataFrame({c: pd.Series([], dtype=object) for c in SPEC_COLUMNS})
    prepared = fitted().transform(df)
    assert prepared.X.shape == (0, len(fitted().feature_names_))
    assert prepared.log_det.shape == (0,)
    assert len(prepared.scored) == len(prepared.quarantined) == 0


# ------------------------------------------------------------------- schema
def test_missing_column_is_named_with_close_match_hint():
    df = training_frame(5).rename(columns={AMOUNT: "amuont"})
    with pytest.raises(
        SchemaError, match=r"missing required column\(s\) 'amount' \(found 'amuont'\?\)"
    ):
        fitted().transform(df)


def test_missing_column_without_close_match():
    df = training_frame(5).drop(columns=[CHANNEL])
    with pytest.raises(SchemaError, match="'channel'") as info:
        fitted().transform(df)
    assert "found" not in str(info.value)


def test_every_missing_column_is_named():
    df = training_frame(5).drop(columns=[TEMP, TS])
    with pytest.raises(SchemaError, match=r"'temp'.*'ts'"):
        fitted().transform(df)


def test_duplicated_column_names():
    df = training_frame(5)
    df = pd.concat([df, df[[AMOUNT]]], axis=1)
    assert list(df.columns).count(AMOUNT) == 2
    with pytest.raises(SchemaError, match=r"duplicated column names: \['amount'\]"):
        fitted().transform(df)


def test_schema_is_checked_by_fit_too():
    with pytest.raises(SchemaError, match="'temp'"):
        Preprocessor(SPEC).fit(training_frame(20).drop(columns=[TEMP]))


def test_extra_columns_are_ignored():
    df = training_frame(50, seed=3)
    extra = df.assign(note="x", other=np.arange(50))[["other", *df.columns, "note"]]
    a, b = fitted().transform(df), fitted().transform(extra)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.log_det, b.log_det)
    pd.testing.assert_frame_equal(a.scored, b.scored)


def test_transform_rejects_non_frames():
    with pytest.raises(TypeError, match="expected a pandas DataFrame, got ndarray"):
        fitted().transform(np.zeros((3, 5)))


def test_not_fitted():
    with pytest.raises(NotFittedError, match="not fitted"):
        Preprocessor(SPEC).transform(training_frame(3))


def test_fit_with_no_valid_rows():
    df = training_frame(10).assign(**{AMOUNT: np.nan})
    with pytest.raises(ValueError, match="no valid training rows"):
        Preprocessor(SPEC).fit(df)


def test_fit_with_one_valid_row_says_why():
    """Was: fitted, and the model then failed with "knn: need at least 2 rows to fit, got 1"."""
    df = training_frame(10).assign(**{AMOUNT: np.nan})
    df.loc[0, AMOUNT] = 12.5
    match = r"9 of 10 were quarantined, leaving 1 .*missing value in amount \(9 rows\)"
    with pytest.raises(ValueError, match=match):
        Preprocessor(SPEC).fit(df)


# ------------------------------------------------------------------- unseen categories
def test_unseen_category_is_scored_with_a_reason():
    df = training_frame(4, seed=9)
    df.loc[2, CHANNEL] = "carrier pigeon"
    prepared = fitted().transform(df)
    assert prepared.quarantined.empty
    assert len(prepared.scored) == 4
    reasons = prepared.scored["reason"].tolist()
    assert reasons[2] == "unseen category in channel: 'carrier pigeon'"
    assert [r for i, r in enumerate(reasons) if i != 2] == ["", "", ""]
    onehot = [j for j, name in enumerate(fitted().feature_names_) if name.startswith("channel=")]
    assert len(onehot) == len(CHANNELS)
    np.testing.assert_array_equal(prepared.X[2, onehot], 0.0)
    np.testing.assert_array_equal(prepared.X[[0, 1, 3]][:, onehot].sum(axis=1), 1.0)


# ------------------------------------------------------------------- Jacobian
def test_auto_transform_choice():
    pre = fitted()
    assert pre.transforms_ == {AMOUNT: "signed_log", TEMP: "none"}


def _single_column_transform(pre: Preprocessor, column: str, x: np.ndarray) -> np.ndarray:
    """The model-matrix column of ``column`` for raw values ``x`` (other columns fixed)."""
    df = training_frame(len(x), seed=5)
    df[column] = x
    prepared = pre.transform(df)
    assert prepared.quarantined.empty
    return prepared.X[:, NUMERIC.index(column)]


def test_log_det_is_log_derivative_by_finite_differences():
    pre = fitted()
    points = {
        AMOUNT: np.array([-5.0, 0.5, 3.0, 40.0, 800.0, 25_000.0]),
        TEMP: np.array([-30.0, -2.0, 0.1, 15.0, 22.0, 60.0]),
    }
    expected = np.zeros(6)
    for col, x in points.items():
        h = 1e-5 * np.maximum(1.0, np.abs(x))
        slope = (
            _single_column_transform(pre, col, x + h) - _single_column_transform(pre, col, x - h)
        ) / (2 * h)
        assert (slope > 0).all()
        expected += np.log(slope)
    df = training_frame(6, seed=5).assign(**points)
    prepared = pre.transform(df)
    np.testing.assert_allclose(prepared.log_det, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("kind", "numeric_transform"), [("gaussian", "auto"), ("gaussian", "none"), ("kde", "auto")]
)
def test_raw_space_density_integrates_to_one(kind, numeric_transform):
    rng = np.random.default_rng(1)
    n = 600
    train = pd.DataFrame({ID: [f"r{i}" for i in range(n)], AMOUNT: rng.lognormal(3.0, 0.8, n)})
    spec = Features(id=ID, numeric=[AMOUNT], numeric_transform=numeric_transform)
    pre = Preprocessor(spec).fit(train)
    assert pre.transforms_[AMOUNT] == ("signed_log" if numeric_transform == "auto" else "none")
    model = models.create(kind, seed=0).fit(pre.transform(train).X)

    # a raw grid dense near the data and wide enough to hold (almost) all mass
    u = np.linspace(-4.0, 13.0, 12_001)
    x = np.unique(np.concatenate([np.sign(u) * np.expm1(np.abs(u)), np.linspace(-300, 600, 8_001)]))
    grid = pd.DataFrame({ID: [f"g{i}" for i in range(len(x))], AMOUNT: x})
    prepared = pre.transform(grid)
    assert len(prepared.scored) == len(x)
    log_prob = model.log_prob(prepared.X)
    raw_density = np.exp(log_prob + prepared.log_det)
    assert np.trapezoid(raw_density, x) == pytest.approx(1.0, abs=0.01)
    # without the Jacobian the model-space density is not a density over raw values
    assert abs(np.trapezoid(np.exp(log_prob), x) - 1.0) > 0.5


# ------------------------------------------------------------------- inverse, fit, storage
def test_inverse_transform_round_trip():
    pre = fitted()
    df = training_frame(200, seed=11)
    df.loc[0, AMOUNT] = 0.0
    df.loc[1, TEMP] = -40.0
    prepared = pre.transform(df)
    back = pre.inverse_transform(prepared.X)
    assert list(back.columns) == [*NUMERIC, CHANNEL]
    for col in NUMERIC:
        np.testing.assert_allclose(back[col], df[col], rtol=1e-9, atol=1e-9)
    assert back[CHANNEL].tolist() == df[CHANNEL].tolist()


def test_stats_are_learned_from_valid_training_rows_only():
    clean = training_frame(300, seed=2)
    bad = pd.DataFrame(
        {
            ID: [None, "dup", "dup", "x1", "x2"],
            AMOUNT: [1e9, 5.0, 1e9, "N/A", 7.0],
            TEMP: [1e6, 10.0, -1e6, 1e6, float("inf")],
            CHANNEL: ["fax", "chip", "fax", "fax", "fax"],
            TS: ["2024-03-04"] * 5,
        }
    )
    dirty = pd.concat([clean, bad], ignore_index=True)
    dirty[TS] = pd.to_datetime(dirty[TS], utc=True)
    from_dirty = Preprocessor(SPEC).fit(dirty)
    from_clean = Preprocessor(SPEC).fit(pd.concat([clean, bad.iloc[[1]]], ignore_index=True))
    # "dup" appears first with valid values, so it is the one training row kept from `bad`
    assert from_dirty.to_dict() == from_clean.to_dict()
    assert "fax" not in from_dirty.categories_[CHANNEL]
    assert from_dirty.means_[TEMP] == pytest.approx(np.mean([*clean[TEMP], 10.0]), rel=1e-12)
    assert from_dirty.scales_[TEMP] == pytest.approx(np.std([*clean[TEMP], 10.0]), rel=1e-12)


def test_transforming_other_data_does_not_refit():
    pre = Preprocessor(SPEC).fit(training_frame(300, seed=4))
    before = copy.deepcopy(pre.to_dict())
    probe = training_frame(20, seed=6)
    probe_before = pre.transform(probe)
    other = training_frame(500, seed=7)
    other[AMOUNT] = other[AMOUNT] * 1000 + 5
    other[TEMP] = other[TEMP] - 100
    other[CHANNEL] = "teleport"
    pre.transform(other)
    assert pre.to_dict() == before
    probe_after = pre.transform(probe)
    np.testing.assert_array_equal(probe_before.X, probe_after.X)
    np.testing.assert_array_equal(probe_before.log_det, probe_after.log_det)
    # the standardised training column has mean 0 and sd 1 (population sd)
    train_temp = pre.transform(training_frame(300, seed=4)).X[:, NUMERIC.index(TEMP)]
    assert train_temp.mean() == pytest.approx(0.0, abs=1e-9)
    assert train_temp.std() == pytest.approx(1.0, rel=1e-9)


def test_save_load_round_trip(tmp_path):
    pre = fitted()
    pre.save(tmp_path)
    loaded = Preprocessor.load(tmp_path)
    assert loaded.to_dict() == pre.to_dict()
    assert loaded.feature_names_ == pre.feature_names_
    df = training_frame(100, seed=12)
    df.loc[3, CHANNEL] = "unseen"
    df[AMOUNT] = df[AMOUNT].astype(object)
    df.loc[5, AMOUNT] = "N/A"
    a, b = pre.transform(df), loaded.transform(df)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.log_det, b.log_det)
    pd.testing.assert_frame_equal(a.scored, b.scored)
    pd.testing.assert_frame_equal(a.quarantined, b.quarantined)
    assert len(a.quarantined) == 1


def test_control_characters_in_any_column_quarantine_the_row():
    df = training_frame(6)
    for col in (CHANNEL, TS):
        df[col] = df[col].astype(object)
    df.loc[1, CHANNEL] = "web\x00"
    df.loc[2, TS] = "2024-03-05T1\x000:00:00Z"  # a NUL once cut this date short silently
    df.loc[3, CHANNEL] = "line\nbreak"
    df.loc[4, CHANNEL] = "tab\tis fine"
    df["comment"] = ["", "", "", "", "", "\x1b[31m"]  # not a feature column: still checked
    prepared = fitted().transform(df)
    assert dict(prepared.quarantined["reason"]) == {
        1: f"control character U+0000 in {CHANNEL}",
        2: f"control character U+0000 in {TS}",
        3: f"control character U+000A in {CHANNEL}",
        5: "control character U+001B in comment",
    }
    assert list(prepared.scored.index) == [0, 4]


def test_ids_the_store_cannot_hold_are_quarantined_with_a_reason():
    df = training_frame(4)
    df[ID] = df[ID].astype(object)
    df.loc[1, ID] = "x" * 257
    df.loc[2, ID] = "bad\x00id"
    prepared = fitted().transform(df)
    assert list(prepared.quarantined.index) == [1, 2]
    assert list(prepared.quarantined["reason"]) == [
        f"id longer than 256 characters ({ID})",
        f"control character U+0000 in {ID}",
    ]
    assert list(prepared.scored[ID]) == [df.loc[0, ID], df.loc[3, ID]]
