"""Tests for the seeded demo-data generator (anomaly.demo_data)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from anomaly import demo_data as dd
from anomaly.demo_data import (
    CATEGORICAL,
    ID,
    NUMERIC,
    TIMESTAMP,
    DemoFiles,
    generate_normal,
    plant_anomalies,
    write_demo,
)

STORES = ["grocery", "restaurant", "fuel"]


@pytest.fixture(scope="module")
def normal() -> pd.DataFrame:
    return generate_normal(20_000, 0)


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(original, planted frame, labels) for a 6000-row frame at a 6% rate."""
    original = generate_normal(6_000, 1)
    frame, labels = plant_anomalies(original, 0.06, 1)
    return original, frame, labels


def _changed(original: pd.DataFrame, frame: pd.DataFrame) -> np.ndarray:
    """Rows where any feature value differs."""
    cols = NUMERIC + CATEGORICAL
    return (original[cols].to_numpy() != frame[cols].to_numpy()).any(axis=1)


def _ecdf(reference: pd.Series, values: pd.Series) -> np.ndarray:
    """Share of ``reference`` at or below each value."""
    ref = np.sort(reference.to_numpy())
    return np.searchsorted(ref, values.to_numpy(), side="right") / ref.size


# ------------------------------------------------------------------ generate_normal
def test_constants() -> None:
    assert NUMERIC == ["amount", "hour", "distance_km", "tx_last_24h", "account_age_days"]
    assert CATEGORICAL == ["merchant_category", "channel"]
    assert (ID, TIMESTAMP) == ("transaction_id", "timestamp")


def test_generate_is_deterministic_per_seed() -> None:
    a, b = generate_normal(2_000, 7), generate_normal(2_000, 7)
    pd.testing.assert_frame_equal(a, b)
    c = generate_normal(2_000, 8)
    assert not np.allclose(a["amount"].to_numpy(), c["amount"].to_numpy())
    assert set(a[ID]).isdisjoint(c[ID])


def test_ids_unique_across_seeds() -> None:
    frames = [generate_normal(1_500, s) for s in (1, 10, 11, 110)]
    ids = pd.concat([f[ID] for f in frames])
    assert ids.is_unique
    assert frames[0][ID].iloc[0].startswith("tx-1-")


def test_columns_dtypes_and_ranges(normal: pd.DataFrame) -> None:
    assert list(normal.columns) == dd.COLUMNS
    assert len(normal) == 20_000
    assert str(normal[TIMESTAMP].dtype) == "datetime64[ns, UTC]"
    for col in [ID, *CATEGORICAL]:
        assert pd.api.types.is_string_dtype(normal[col]), col
    for col in NUMERIC:
        assert normal[col].dtype == np.float64, col
        assert np.isfinite(normal[col]).all(), col
    assert normal[ID].is_unique

    assert (normal["amount"] > 0).all()
    hour = normal["hour"]
    assert hour.between(0, 24, inclusive="left").all()
    assert (hour != np.floor(hour)).mean() > 0.99  # continuous, not whole hours
    assert (normal["distance_km"] >= 0).all()
    tx = normal["tx_last_24h"]
    assert (tx == np.round(tx)).all()
    assert tx.min() == 0
    assert 8 <= tx.max() <= 25
    assert 1 < tx.mean() < 5
    age = normal["account_age_days"]
    assert age.between(30, 3650).all()
    assert age.quantile(0.9) - age.quantile(0.1) > 1_000  # broad

    shares = normal["merchant_category"].value_counts(normalize=True)
    assert set(shares.index) == set(dd.CATEGORIES)
    assert shares.max() > 2 * shares.min()  # unequal frequencies
    assert set(normal["channel"]) == {"chip", "contactless", "online"}


def test_timestamps_increase_over_a_few_days(normal: pd.DataFrame) -> None:
    ts = normal[TIMESTAMP]
    assert ts.is_monotonic_increasing
    span = ts.max() - ts.min()
    assert pd.Timedelta(days=2) < span < pd.Timedelta(days=8)
    # For normal rows the hour column is the time of day of the timestamp.
    time_of_day = (ts - ts.dt.floor("D")) / pd.Timedelta(hours=1)
    np.testing.assert_allclose(time_of_day, normal["hour"], atol=1e-6)


def test_dependency_structure(normal: pd.DataFrame) -> None:
    by_cat = normal.groupby("merchant_category")
    med = by_cat["amount"].median()
    assert med["travel"] > 5 * med["grocery"]
    targets = {"grocery": 40, "fuel": 60, "restaurant": 35, "online": 80, "travel": 450}
    for cat, target in targets.items():
        assert 0.8 * target < med[cat] < 1.25 * target, cat
    assert med["electronics"] > 3 * med["online"]

    online_share = (normal["channel"] == "online").groupby(normal["merchant_category"]).mean()
    assert online_share["online"] > 0.95
    assert (online_share.drop("online") < 0.01).all()

    hour = normal["hour"]
    night = (hour >= 1) & (hour < 5)
    night_share = night.groupby(normal["merchant_category"]).mean()
    assert night_share["grocery"] < 0.01
    assert night_share["fuel"] < 0.01
    assert night_share["online"] > 0.02  # online spreads into the night

    rest = hour[normal["merchant_category"] == "restaurant"]
    lunch, evening = rest.between(11.5, 14).mean(), rest.between(18, 21.5).mean()
    afternoon = rest.between(15, 17).mean()
    assert lunch > 2 * afternoon
    assert evening > 2 * afternoon

    dist = by_cat["distance_km"].median()
    assert dist["travel"] > 50 * dist["grocery"]
    assert dist["fuel"] > dist["grocery"]

    shops = normal[normal["merchant_category"].isin(STORES)]
    contactless = (shops["channel"] == "contactless").groupby(shops["amount"] < 100).mean()
    assert contactless[True] > contactless[False] + 0.3

    young = normal["account_age_days"] < 60
    assert normal.loc[young, "tx_last_24h"].mean() < 0.7 * normal.loc[~young, "tx_last_24h"].mean()
    assert by_cat["tx_last_24h"].mean()["online"] > by_cat["tx_last_24h"].mean()["fuel"]


def test_generate_edge_sizes() -> None:
    empty = generate_normal(0, 0)
    assert list(empty.columns) == dd.COLUMNS
    assert len(empty) == 0
    one = generate_normal(1, 0)
    assert len(one) == 1


@pytest.mark.parametrize(
    ("n", "seed"), [(-1, 0), (1.5, 0), (True, 0), ("10", 0), (10, -1), (10, 1.0), (10, None)]
)
def test_generate_rejects_bad_arguments(n: object, seed: object) -> None:
    with pytest.raises(ValueError, match=r"must be"):
        generate_normal(n, seed)  # type: ignore[arg-type]


# ------------------------------------------------------------------ plant_anomalies
@pytest.mark.parametrize("rate", [0.0, 0.02, 0.0333, 0.1, 1.0])
def test_plant_replaces_exactly_round_rate_n(rate: float) -> None:
    original = generate_normal(1_500, 3)
    before = original.copy()
    frame, labels = plant_anomalies(original, rate, 3)
    expected = round(rate * len(original))

    pd.testing.assert_frame_equal(original, before)  # input untouched
    assert list(labels.columns) == [ID, "is_anomaly", "kind"]
    assert labels["is_anomaly"].dtype == bool
    assert len(labels) == len(frame) == len(original)
    assert (labels[ID].to_numpy() == original[ID].to_numpy()).all()
    assert int(labels["is_anomaly"].sum()) == expected
    assert (labels["is_anomaly"] == (labels["kind"] != "")).all()
    # Exactly the labelled rows were changed; ids and timestamps kept.
    np.testing.assert_array_equal(_changed(original, frame), labels["is_anomaly"].to_numpy())
    pd.testing.assert_series_equal(frame[ID], original[ID])
    pd.testing.assert_series_equal(frame[TIMESTAMP], original[TIMESTAMP])
    assert list(frame.columns) == list(original.columns)
    assert (frame.dtypes == original.dtypes).all()


def test_plant_kinds_in_equal_shares(planted: tuple) -> None:
    _, _, labels = planted
    counts = labels.loc[labels["is_anomaly"], "kind"].value_counts()
    assert set(counts.index) == set(dd.ANOMALY_KINDS)
    assert counts.max() - counts.min() <= 1
    assert set(labels.loc[~labels["is_anomaly"], "kind"]) == {""}


def test_plant_is_deterministic() -> None:
    original = generate_normal(2_000, 4)
    f1, l1 = plant_anomalies(original, 0.05, 9)
    f2, l2 = plant_anomalies(original, 0.05, 9)
    pd.testing.assert_frame_equal(f1, f2)
    pd.testing.assert_frame_equal(l1, l2)
    _, l3 = plant_anomalies(original, 0.05, 10)
    assert not (l1["is_anomaly"] == l3["is_anomaly"]).all()


def test_global_anomalies_are_extreme(planted: tuple, normal: pd.DataFrame) -> None:
    _, frame, labels = planted
    rows = frame[(labels["kind"] == "global").to_numpy()]
    p99 = normal.groupby("merchant_category")["amount"].quantile(0.99)
    huge_amount = rows["amount"] > 2 * rows["merchant_category"].map(p99).to_numpy()
    far = rows["distance_km"] > 5_000
    assert (huge_amount | far).all()
    assert huge_amount.any()
    assert far.any()


def test_contextual_anomalies_are_not_single_column_outliers(
    planted: tuple, normal: pd.DataFrame
) -> None:
    original, frame, labels = planted
    is_ctx = (labels["kind"] == "contextual").to_numpy()
    rows = frame[is_ctx]
    cat = rows["merchant_category"]

    for col in CATEGORICAL:
        assert set(rows[col]) <= set(normal[col]), col

    # ... but unusual for its context; all three flavours are present.
    odd_amount = cat.isin(STORES) & (rows["amount"] >= 200)
    night_shop = cat.isin(["grocery", "fuel"]) & rows["hour"].between(1, 5, inclusive="left")
    travel_home = (cat == "travel") & (rows["distance_km"] < 3)
    assert (odd_amount | night_shop | travel_home).all()
    assert odd_amount.sum() >= 5
    assert night_shop.sum() >= 5
    assert travel_home.sum() >= 5
    # The context-breaking value is ordinary on its own (not in the outer 0.1% of its column).
    for mask, col in ((odd_amount, "amount"), (night_shop, "hour"), (travel_home, "distance_km")):
        share = _ecdf(normal[col], rows.loc[mask, col])
        assert ((share >= 0.001) & (share <= 0.999)).all(), col

    # Amount-based ones (category kept, amount changed): inside the overall 1st–99th percentile,
    # far outside their category's normal range.
    amount_based = (original.loc[is_ctx, "merchant_category"].to_numpy() == cat.to_numpy()) & (
        original.loc[is_ctx, "amount"].to_numpy() != rows["amount"].to_numpy()
    )
    assert amount_based.sum() >= 5
    lo, hi = normal["amount"].quantile([0.01, 0.99])
    amounts = rows.loc[amount_based, "amount"]
    assert amounts.between(lo, hi).all()
    cat_p99 = normal.groupby("merchant_category")["amount"].quantile(0.995)
    assert (amounts > cat[amount_based].map(cat_p99)).all()


def test_broken_dependencies(planted: tuple, normal: pd.DataFrame) -> None:
    _, frame, labels = planted
    rows = frame[(labels["kind"] == "broken_dependency").to_numpy()]
    for col in CATEGORICAL:
        assert set(rows[col]) <= set(normal[col]), col

    cat, chan = rows["merchant_category"], rows["channel"]
    wrong_channel = (cat.isin(STORES) & (chan == "online")) | (
        (cat == "online") & (chan != "online")
    )
    busy_new = (rows["account_age_days"] < 60) & (rows["tx_last_24h"] >= 8)
    assert (wrong_channel | busy_new).all()
    assert wrong_channel.sum() >= 5
    assert busy_new.sum() >= 5
    # Each value is ordinary on its own (not in the outer 0.1% of its column).
    for col in ("account_age_days", "tx_last_24h"):
        share = _ecdf(normal[col], rows.loc[busy_new, col])
        assert ((share >= 0.001) & (share <= 0.999)).all(), col
    # These combinations (almost) never occur in normal data.
    normal_busy_new = (normal["account_age_days"] < 60) & (normal["tx_last_24h"] >= 8)
    assert normal_busy_new.mean() < 0.001
    assert not (normal["merchant_category"].isin(STORES) & (normal["channel"] == "online")).any()


def test_plant_tiny_frames() -> None:
    for n in (1, 2, 3, 7):
        original = generate_normal(n, 5)
        frame, labels = plant_anomalies(original, 1.0, 5)
        assert labels["is_anomaly"].all()
        assert _changed(original, frame).all()


@pytest.mark.parametrize("rate", [-0.01, 1.01, math.nan, math.inf, "0.1", None, True])
def test_plant_rejects_bad_rate(rate: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        plant_anomalies(generate_normal(50, 0), rate, 0)  # type: ignore[arg-type]


def test_plant_rejects_bad_frames() -> None:
    df = generate_normal(50, 0)
    with pytest.raises(ValueError, match="missing"):
        plant_anomalies(df.drop(columns="hour"), 0.1, 0)
    with pytest.raises(ValueError, match="duplicate"):
        plant_anomalies(pd.concat([df, df.head(1)]), 0.1, 0)
    bad = df.copy()
    bad.loc[0, "merchant_category"] = "casino"
    with pytest.raises(ValueError, match="unknown"):
        plant_anomalies(bad, 0.1, 0)
    with pytest.raises(ValueError, match="DataFrame"):
        plant_anomalies(df.to_dict(), 0.1, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        plant_anomalies(df, 0.1, -3)


# ------------------------------------------------------------------ write_demo
def test_write_demo(tmp_path) -> None:
    root = tmp_path / "nested" / "demo"
    files = write_demo(root, seed=2, n_train=3_000, n_batches=2, batch_rows=1_200, rate=0.05)

    assert isinstance(files, DemoFiles)
    assert files.train == root / "train.parquet"
    assert files.batches == [root / "inbox" / f"batch_00{i}.parquet" for i in (1, 2)]
    assert files.labels == [root / "labels" / f"batch_00{i}.parquet" for i in (1, 2)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        files.train = root  # type: ignore[misc]

    # Only batches in the inbox: no labels, no leftover temporary files anywhere.
    assert sorted(p.name for p in (root / "inbox").iterdir()) == [
        "batch_001.parquet",
        "batch_002.parquet",
    ]
    assert not [p for p in root.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]

    train = pd.read_parquet(files.train)
    pd.testing.assert_frame_equal(train, generate_normal(3_000, 2))  # normal rows only

    all_ids = [train[ID]]
    last = train[TIMESTAMP].max()
    for batch_path, label_path in zip(files.batches, files.labels, strict=True):
        batch, labels = pd.read_parquet(batch_path), pd.read_parquet(label_path)
        assert list(batch.columns) == dd.COLUMNS
        assert str(batch[TIMESTAMP].dtype) == "datetime64[ns, UTC]"
        assert "is_anomaly" not in batch.columns
        assert "kind" not in batch.columns
        assert list(labels.columns) == [ID, "is_anomaly", "kind"]
        assert (labels[ID].to_numpy() == batch[ID].to_numpy()).all()
        assert int(labels["is_anomaly"].sum()) == round(0.05 * 1_200)
        assert set(labels["kind"]) == {"", *dd.ANOMALY_KINDS}
        assert batch[TIMESTAMP].min() > last  # continues after the previous file
        last = batch[TIMESTAMP].max()
        all_ids.append(batch[ID])
    assert pd.concat(all_ids).is_unique

    # Deterministic, and the batches differ from each other.
    again = write_demo(
        tmp_path / "again", seed=2, n_train=3_000, n_batches=2, batch_rows=1_200, rate=0.05
    )
    for a, b in zip(files.batches + files.labels, again.batches + again.labels, strict=True):
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    b1, b2 = (pd.read_parquet(p) for p in files.batches)
    assert not np.allclose(b1["amount"].to_numpy(), b2["amount"].to_numpy())


def test_write_demo_defaults_shape(tmp_path) -> None:
    files = write_demo(tmp_path, n_batches=1)
    assert len(pd.read_parquet(files.train)) == 20_000
    assert len(pd.read_parquet(files.batches[0])) == 5_000
    assert int(pd.read_parquet(files.labels[0])["is_anomaly"].sum()) == 100


@pytest.mark.parametrize(
    "kwargs",
    [{"n_train": 0}, {"batch_rows": 0}, {"n_batches": -1}, {"rate": 2.0}, {"seed": -1}],
)
def test_write_demo_rejects_bad_arguments(tmp_path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must be"):
        write_demo(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
