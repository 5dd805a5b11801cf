"""Seeded demo data: a realistic mixed-type table of card transactions with planted anomalies.

``generate_normal`` draws normal transactions whose features really depend on each other
(amount, hour, distance and channel all depend on the merchant category; the contactless share
drops for large amounts; ``tx_last_24h`` grows with the hour and the account's age), so values that
are unusual *for their context* exist. ``plant_anomalies`` replaces a share of rows with three
kinds of anomaly and returns the ground truth separately. ``write_demo`` lays out a training file,
an inbox of batches and, apart from the inbox, their labels.

For normal rows ``hour`` equals the time of day of ``timestamp`` (UTC is taken as local time).
Planted rows keep their id and timestamp; an anomaly changes feature values only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly.io import write_parquet_atomic

NUMERIC: list[str] = ["amount", "hour", "distance_km", "tx_last_24h", "account_age_days"]
CATEGORICAL: list[str] = ["merchant_category", "channel"]
ID = "transaction_id"
TIMESTAMP = "timestamp"

#: Column order of every generated frame.
COLUMNS: list[str] = [
    ID,
    TIMESTAMP,
    "amount",
    "hour",
    "merchant_category",
    "channel",
    "distance_km",
    "tx_last_24h",
    "account_age_days",
]
CATEGORIES: tuple[str, ...] = ("grocery", "restaurant", "online", "fuel", "travel", "electronics")
CHANNELS: tuple[str, ...] = ("chip", "contactless", "online")
ANOMALY_KINDS: tuple[str, ...] = ("global", "contextual", "broken_dependency")

# Per-category profile, indexed like CATEGORIES.
_SHARE = np.array([0.30, 0.22, 0.22, 0.12, 0.08, 0.06])
_AMOUNT_MEDIAN = np.array([40.0, 35.0, 80.0, 60.0, 450.0, 300.0])
_AMOUNT_SIGMA = np.array([0.50, 0.45, 0.80, 0.30, 0.60, 0.70])
_DISTANCE_MEDIAN = np.array([2.0, 4.0, 5.0, 12.0, 400.0, 8.0])
_DISTANCE_SIGMA = np.array([0.70, 0.90, 1.00, 0.90, 0.80, 0.80])
_TX_BASE = np.array([2.0, 2.5, 3.5, 1.5, 3.0, 1.5])
# Hour of day: mixture components (weight, mean, sd) and an opening window [lo, hi) or None
# (None: the hour wraps around midnight, purchases possible at any time).
_HOUR_MIX: tuple[tuple[tuple[float, float, float], ...], ...] = (
    ((0.6, 11.5, 2.5), (0.4, 18.0, 1.8)),  # grocery: daytime
    ((0.1, 8.5, 1.0), (0.4, 12.75, 1.0), (0.5, 19.5, 1.5)),  # restaurant: lunch and evening
    ((0.3, 10.0, 3.5), (0.62, 20.5, 2.5), (0.08, 1.5, 1.5)),  # online: all day, evening peak
    ((0.5, 8.0, 2.0), (0.5, 17.5, 2.5)),  # fuel: commutes
    ((1.0, 13.0, 4.5),),  # travel: broad
    ((1.0, 15.0, 3.0),),  # electronics: shop hours
)
_HOUR_WINDOW: tuple[tuple[float, float] | None, ...] = (
    (7.0, 22.0),
    (7.0, 24.0),
    None,
    (5.5, 23.5),
    None,
    (9.0, 21.5),
)
_CAT_INDEX = {c: i for i, c in enumerate(CATEGORIES)}
_GROCERY = _CAT_INDEX["grocery"]
_RESTAURANT = _CAT_INDEX["restaurant"]
_ONLINE = _CAT_INDEX["online"]
_FUEL = _CAT_INDEX["fuel"]
_TRAVEL = _CAT_INDEX["travel"]
_STORE_CATS = np.array([_GROCERY, _RESTAURANT, _FUEL])  # "cheap" card-present categories
_NIGHT = (1.0, 5.0)  # grocery and fuel are closed in these hours

_START = pd.Timestamp("2024-03-04", tz="UTC")
_ROWS_PER_DAY = 5_000
EVALUATION_ROWS = 4_000
EVALUATION_SEED_OFFSET = 1_000  # ids tx-<seed+1000>-… never collide with batches
_DAY_NS = 86_400 * 10**9
_HOUR_NS = 3_600 * 10**9
_PLANT_SALT = 0x5EED_A11  # decorrelates plant_anomalies' stream from generate_normal's


@dataclass(frozen=True)
class DemoFiles:
    """Paths written by :func:`write_demo`."""

    train: Path
    batches: list[Path]
    labels: list[Path]
    evaluation: Path


# ---------------------------------------------------------------------------- public API
def generate_normal(n: int, seed: int) -> pd.DataFrame:
    """Return ``n`` normal transactions (columns :data:`COLUMNS`), deterministic for ``seed``."""
    _check_count(n, "n")
    _check_seed(seed)
    return _generate(n, seed, day_offset=0)


def plant_anomalies(df: pd.DataFrame, rate: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Replace ``round(rate * len(df))`` rows with anomalies.

    Returns ``(frame, labels)``: ``frame`` is a copy of ``df`` (same ids, timestamps, order) with
    the anomalous rows' feature values replaced; ``labels`` has one row per row of ``df`` with
    columns ``transaction_id``, ``is_anomaly`` (bool) and ``kind`` (one of :data:`ANOMALY_KINDS`,
    ``""`` for normal rows). Kinds come in shares that differ by at most one row.
    """
    frame, labels, _ = _plant(df, rate, seed)
    return frame, labels


def write_demo(
    directory: Path,
    seed: int = 0,
    n_train: int = 20_000,
    n_batches: int = 3,
    batch_rows: int = 5_000,
    rate: float = 0.02,
) -> DemoFiles:
    """Write ``train.parquet``, ``evaluation.parquet``, ``inbox/batch_NNN.parquet`` and
    ``labels/batch_NNN.parquet``.

    ``evaluation.parquet`` holds labelled rows (features plus ``is_anomaly`` and ``kind``).

    Training rows are normal; each batch is generated with its own seed (``seed + i``), its
    timestamps follow the previous file's, and it carries planted anomalies whose labels go to
    ``labels/`` (never the inbox). Labels are written before their batch appears in the inbox.
    Every file is written atomically (temporary name in the same folder, then ``os.replace``).
    """
    _check_seed(seed)
    _check_count(n_train, "n_train", minimum=1)
    _check_count(n_batches, "n_batches")
    _check_count(batch_rows, "batch_rows", minimum=1)
    _check_rate(rate)
    if isinstance(directory, str | os.PathLike):
        directory = Path(directory)
    else:
        msg = f"directory must be a path, got {type(directory).__name__}"
        raise ValueError(msg)

    inbox, labels_dir = directory / "inbox", directory / "labels"
    for folder in (directory, inbox, labels_dir):
        folder.mkdir(parents=True, exist_ok=True)

    train_path = directory / "train.parquet"
    write_parquet_atomic(_generate(n_train, seed, day_offset=0), train_path)
    day = _n_days(n_train)
    # a labelled evaluation set (features + truth together), as analysts' reviews give
    evaluation, truth = plant_anomalies(
        _generate(EVALUATION_ROWS, seed + EVALUATION_SEED_OFFSET, day_offset=0), 0.05, seed
    )
    evaluation_path = directory / "evaluation.parquet"
    write_parquet_atomic(evaluation.merge(truth, on=ID), evaluation_path)

    batches: list[Path] = []
    labels: list[Path] = []
    for i in range(1, n_batches + 1):
        normal = _generate(batch_rows, seed + i, day_offset=day)
        day += _n_days(batch_rows)
        frame, truth = plant_anomalies(normal, rate, seed + i)
        name = f"batch_{i:03d}.parquet"
        write_parquet_atomic(truth, labels_dir / name)
        write_parquet_atomic(frame, inbox / name)
        labels.append(labels_dir / name)
        batches.append(inbox / name)
    return DemoFiles(train=train_path, batches=batches, labels=labels, evaluation=evaluation_path)


# ---------------------------------------------------------------------------- generation
def _n_days(n: int) -> int:
    """Number of calendar days ``n`` rows are spread over."""
    return max(1, math.ceil(n / _ROWS_PER_DAY))


def _generate(n: int, seed: int, day_offset: int) -> pd.DataFrame:
    """Normal rows whose timestamps start ``day_offset`` days after the demo's start date."""
    rng = np.random.default_rng(seed)
    cat = rng.choice(len(CATEGORIES), size=n, p=_SHARE)
    amount = _sample_amount(rng, cat)
    hour = _sample_hour(rng, cat)
    channel = _sample_channel(rng, cat, amount)
    distance = _sample_distance(rng, cat)
    # Broad account ages; young accounts are a few percent of rows.
    age = np.round(30.0 + 3620.0 * rng.beta(0.9, 2.2, size=n))
    # Activity: category base rate, more later in the day, less for young accounts,
    # and a per-cardholder gamma factor (over-dispersed, negative-binomial-like counts).
    lam = (
        _TX_BASE[cat]
        * (0.6 + 0.8 * hour / 24.0)
        * np.minimum(1.0, 0.3 + age / 365.0)
        * rng.gamma(3.0, 1.0 / 3.0, size=n)
    )
    tx = np.minimum(rng.poisson(lam), 20).astype(np.float64)

    day = rng.integers(0, _n_days(n), size=n)
    in_day = np.minimum(np.round(hour * _HOUR_NS).astype(np.int64), _DAY_NS - 1)
    ns = _START.value + (day_offset + day).astype(np.int64) * _DAY_NS + in_day
    order = np.argsort(ns, kind="stable")

    width = max(7, len(str(max(n - 1, 0))))
    ids = [f"tx-{seed}-{i:0{width}d}" for i in range(n)]
    frame = pd.DataFrame(
        {
            ID: ids,
            TIMESTAMP: pd.to_datetime(ns[order], unit="ns", utc=True),
            "amount": amount[order],
            "hour": hour[order],
            "merchant_category": np.asarray(CATEGORIES, dtype=object)[cat[order]],
            "channel": channel[order],
            "distance_km": distance[order],
            "tx_last_24h": tx[order],
            "account_age_days": age[order],
        }
    )
    frame[TIMESTAMP] = frame[TIMESTAMP].astype("datetime64[ns, UTC]")
    return frame


def _sample_amount(rng: np.random.Generator, cat: np.ndarray) -> np.ndarray:
    """Log-normal amounts (rounded to cents) whose location and spread depend on category."""
    raw = np.exp(np.log(_AMOUNT_MEDIAN[cat]) + _AMOUNT_SIGMA[cat] * rng.standard_normal(cat.size))
    return np.maximum(np.round(raw, 2), 0.01)


def _sample_distance(rng: np.random.Generator, cat: np.ndarray) -> np.ndarray:
    """Log-normal distance from home in km, by category."""
    raw = np.exp(
        np.log(_DISTANCE_MEDIAN[cat]) + _DISTANCE_SIGMA[cat] * rng.standard_normal(cat.size)
    )
    return np.round(raw, 3)


def _sample_hour(rng: np.random.Generator, cat: np.ndarray) -> np.ndarray:
    """Fractional hour in [0, 24) from a per-category mixture, inside opening hours."""
    hour = np.empty(cat.size)
    for c, (components, window) in enumerate(zip(_HOUR_MIX, _HOUR_WINDOW, strict=True)):
        idx = np.flatnonzero(cat == c)
        if idx.size == 0:
            continue
        weights = np.array([w for w, _, _ in components])
        means = np.array([m for _, m, _ in components])
        sds = np.array([s for _, _, s in components])
        comp = rng.choice(len(components), size=idx.size, p=weights / weights.sum())
        x = means[comp] + sds[comp] * rng.standard_normal(idx.size)
        if window is None:
            x = np.mod(x, 24.0)
        else:
            lo, hi = window
            for _ in range(50):  # rejection: redraw values outside opening hours
                bad = np.flatnonzero((x < lo) | (x >= hi))
                if bad.size == 0:
                    break
                x[bad] = means[comp[bad]] + sds[comp[bad]] * rng.standard_normal(bad.size)
            x = np.clip(x, lo, np.nextafter(hi, lo))
        hour[idx] = x
    # np.mod can return exactly 24.0 for tiny negative inputs.
    return np.where(hour >= 24.0, 0.0, hour)


def _sample_channel(rng: np.random.Generator, cat: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Online merchants are (almost) always "online"; shops chip/contactless, by amount."""
    u = rng.random(cat.size)
    p_contactless = np.where(amount < 100.0, 0.7, 0.15)
    shop = np.where(u < p_contactless, "contactless", "chip")
    # A rare card-present purchase at an online merchant (click & collect).
    online = np.where(u < 0.996, "online", np.where(u < 0.998, "contactless", "chip"))
    return np.where(cat == _ONLINE, online, shop).astype(object)


# ---------------------------------------------------------------------------- anomalies
def _plant(
    df: pd.DataFrame, rate: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """:func:`plant_anomalies` plus each row's sub-kind (e.g. ``"contextual/amount"``)."""
    _check_frame(df)
    _check_rate(rate)
    _check_seed(seed)
    n = len(df)
    k = round(rate * n)
    rng = np.random.default_rng([_PLANT_SALT, seed])

    cat = df["merchant_category"].map(_CAT_INDEX).to_numpy(dtype=np.int64).copy()
    chan = df["channel"].to_numpy(dtype=object).copy()
    amount = df["amount"].to_numpy(dtype=np.float64).copy()
    hour = df["hour"].to_numpy(dtype=np.float64).copy()
    dist = df["distance_km"].to_numpy(dtype=np.float64).copy()
    tx = df["tx_last_24h"].to_numpy(dtype=np.float64).copy()
    age = df["account_age_days"].to_numpy(dtype=np.float64).copy()

    # Kinds in equal shares (±1), each split evenly into its sub-kinds.
    kinds = rng.permutation(np.asarray(ANOMALY_KINDS, dtype=object)[np.arange(k) % 3])
    subkinds = {
        "global": ("amount", "distance"),
        "contextual": ("hour", "distance", "amount"),
        "broken_dependency": ("channel", "account"),
    }
    need: dict[str, int] = {}
    for kind, subs in subkinds.items():
        count = int(np.sum(kinds == kind))
        for j, sub in enumerate(subs):
            need[f"{kind}/{sub}"] = len(range(j, count, len(subs)))

    is_store = np.isin(cat, _STORE_CATS)
    is_night = (hour >= _NIGHT[0]) & (hour < _NIGHT[1])
    # Most restrictive pools first, so they get the rows they need.
    pools = {
        "contextual/hour": is_night & (cat != _GROCERY) & (cat != _FUEL),
        "contextual/distance": cat == _TRAVEL,
        "contextual/amount": is_store,
        "broken_dependency/channel": is_store | (cat == _ONLINE),
        "broken_dependency/account": np.ones(n, dtype=bool),
        "global/amount": np.ones(n, dtype=bool),
        "global/distance": np.ones(n, dtype=bool),
    }
    perm = rng.permutation(n)
    used = np.zeros(n, dtype=bool)
    detail = np.full(n, "", dtype=object)

    def pick(name: str) -> tuple[np.ndarray, np.ndarray]:
        """Rows for one sub-kind: from its pool if possible, else any free row (``spare``)."""
        count = need[name]
        order = perm[~used[perm]]
        rows = order[pools[name][order]][:count]
        spare = order[~np.isin(order, rows)][: count - rows.size]
        chosen = np.concatenate([rows, spare])
        used[chosen] = True
        detail[chosen] = name
        return rows, spare

    def redraw(rows: np.ndarray, choices: np.ndarray) -> None:
        """Turn ``rows`` into ordinary purchases of a category drawn from ``choices``."""
        cat[rows] = rng.choice(choices, size=rows.size)
        amount[rows] = _sample_amount(rng, cat[rows])
        dist[rows] = _sample_distance(rng, cat[rows])
        chan[rows] = _sample_channel(rng, cat[rows], amount[rows])

    # contextual: globally ordinary values in the wrong context.
    rows, spare = pick("contextual/hour")  # a night-time purchase becomes grocery/fuel
    redraw(np.concatenate([rows, spare]), np.array([_GROCERY, _FUEL]))
    hour[spare] = rng.uniform(1.5, 4.5, size=spare.size)  # fallback: timestamp then disagrees
    rows, spare = pick("contextual/distance")  # a travel purchase next to home
    redraw(spare, np.array([_TRAVEL]))
    chosen = np.concatenate([rows, spare])
    dist[chosen] = np.round(rng.uniform(0.5, 2.5, size=chosen.size), 3)
    rows, spare = pick("contextual/amount")  # a travel/electronics-sized amount at a shop
    redraw(spare, _STORE_CATS)
    chosen = np.concatenate([rows, spare])
    amount[chosen] = np.round(_log_uniform(rng, 200.0, 700.0, chosen.size), 2)

    # broken dependencies: values that never co-occur.
    rows, spare = pick("broken_dependency/channel")
    redraw(spare, _STORE_CATS)
    chosen = np.concatenate([rows, spare])
    online_merchant = chosen[cat[chosen] == _ONLINE]
    chan[chosen] = "online"
    chan[online_merchant] = rng.choice(
        np.array(["chip", "contactless"], dtype=object), size=online_merchant.size
    )
    chosen = np.concatenate(pick("broken_dependency/account"))  # busy brand-new account
    age[chosen] = rng.integers(35, 60, size=chosen.size).astype(np.float64)
    tx[chosen] = rng.integers(8, 13, size=chosen.size).astype(np.float64)

    # global: extreme values.
    chosen = np.concatenate(pick("global/amount"))
    amount[chosen] = np.round(
        _AMOUNT_MEDIAN[cat[chosen]] * _log_uniform(rng, 20.0, 100.0, chosen.size), 2
    )
    chosen = np.concatenate(pick("global/distance"))
    dist[chosen] = np.round(_log_uniform(rng, 6_000.0, 18_000.0, chosen.size), 3)

    frame = df.copy()
    frame["amount"] = amount
    frame["hour"] = hour
    frame["merchant_category"] = np.asarray(CATEGORIES, dtype=object)[cat]
    frame["channel"] = chan
    frame["distance_km"] = dist
    frame["tx_last_24h"] = tx
    frame["account_age_days"] = age

    kind = np.array([d.split("/", 1)[0] for d in detail], dtype=object)
    labels = pd.DataFrame(
        {
            ID: df[ID].astype(str).to_numpy(dtype=object),
            "is_anomaly": detail != "",
            "kind": kind,
        }
    )
    return frame, labels, detail.astype(str)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=size))


# ---------------------------------------------------------------------------- validation & IO
def _check_count(value: object, name: str, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        msg = f"{name} must be an integer >= {minimum}, got {value!r}"
        raise ValueError(msg)


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        msg = f"seed must be a non-negative integer, got {seed!r}"
        raise ValueError(msg)


def _check_rate(rate: object) -> None:
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float | np.integer | np.floating)
        or not 0.0 <= float(rate) <= 1.0
    ):
        msg = f"rate must be a number in [0, 1], got {rate!r}"
        raise ValueError(msg)


def _check_frame(df: object) -> None:
    if not isinstance(df, pd.DataFrame):
        msg = f"df must be a pandas DataFrame, got {type(df).__name__}"
        raise ValueError(msg)
    missing = [c for c in [ID, *NUMERIC, *CATEGORICAL] if c not in df.columns]
    if missing:
        msg = f"df is missing columns {missing}"
        raise ValueError(msg)
    if df[ID].duplicated().any():
        msg = f"df has duplicate values in {ID!r}"
        raise ValueError(msg)
    for col in NUMERIC:
        if not pd.api.types.is_numeric_dtype(df[col]) or df[col].isna().any():
            msg = f"column {col!r} must be numeric without missing values"
            raise ValueError(msg)
    for col, allowed in (("merchant_category", CATEGORIES), ("channel", CHANNELS)):
        unknown = sorted(set(map(str, df[col].unique())) - set(allowed))
        if unknown:
            msg = f"column {col!r} has unknown values {unknown[:5]}; expected {list(allowed)}"
            raise ValueError(msg)
