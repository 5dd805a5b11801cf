"""Review-store contents for tests and benchmarks: real BatchSummary objects and flagged frames
written through ``anomaly.store.write_batch`` (what the scoring pipeline does)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from anomaly.scoring import BatchSummary
from anomaly.store import write_batch

ID = "transaction_id"
CATEGORIES = ("grocery", "fuel", "travel", "online")


def flagged_frame(batch: int, n: int, seed: int = 0, contributions: bool = True) -> pd.DataFrame:
    """``n`` flagged rows of batch ``batch``: raw values, scores and contributions."""
    rng = np.random.default_rng(seed + batch)
    ll = np.sort(rng.normal(-25, 4, n))
    frame = pd.DataFrame(
        {
            ID: [f"b{batch}-r{i:06d}" for i in range(n)],
            "amount": np.round(rng.lognormal(4, 1.5, n), 2),
            "hour": rng.integers(0, 24, n),
            "merchant_category": rng.choice(CATEGORIES, n),
            "log_likelihood": ll,
            "p_value": np.clip(np.exp(ll / 10), 1e-4, 0.01),
            "reason": ["" if i % 7 else "unseen category" for i in range(n)],
        }
    )
    if contributions:
        frame["contributions"] = [_contributions(row) for row in frame.itertuples()]
    return frame


def _contributions(row: Any) -> list[dict[str, Any]]:
    return [
        {"feature": "amount", "contribution": 4.2, "value": row.amount, "typical": 55.0},
        {"feature": "hour", "contribution": 1.1, "value": int(row.hour), "typical": 14},
        {"feature": "merchant_category", "contribution": -0.3,
         "value": row.merchant_category, "typical": "grocery"},
    ]  # fmt: skip


def summary(batch: int, flagged: int, version: str = "1", alarm: bool = False) -> BatchSummary:
    """The summary of a scored batch with ``flagged`` flagged rows out of 100 per flag."""
    rows_in = flagged * 100 + 3
    return BatchSummary(
        batch_id=f"batch-{batch:03d}.parquet",
        source=f"/data/inbox/batch-{batch:03d}.parquet",
        status="scored",
        rows_in=rows_in,
        rows_scored=rows_in - 3,
        rows_quarantined=3,
        rows_flagged=flagged,
        model_version=version,
        flag_rate=flagged / (rows_in - 3),
        expected_rate=0.01,
        shift_p_value=1e-5 if alarm else 0.4,
        shift_alarm=alarm,
        mean_log_likelihood=-12.5,
    )


def quarantined_frame(batch: int) -> pd.DataFrame:
    """Three unscoreable rows with their reasons."""
    return pd.DataFrame(
        {
            ID: [f"b{batch}-q0", None, f"b{batch}-q2"],
            "amount": [np.nan, 10.0, np.inf],
            "hour": [3, 4, 5],
            "merchant_category": ["fuel", "fuel", "online"],
            "reason": ["missing value in amount", "missing id", "amount is ±inf"],
        }
    )


def fill(
    engine: Engine, batches: int, per_batch: int, version: str = "1", seed: int = 0
) -> list[BatchSummary]:
    """Write ``batches`` batches of ``per_batch`` flagged rows; the last one has a shift alarm."""
    written = []
    for b in range(batches):
        s = summary(b, per_batch, version, alarm=b == batches - 1)
        write_batch(engine, s, "demo", flagged_frame(b, per_batch, seed), quarantined_frame(b), ID)
        written.append(s)
    return written
