"""A per-feature profile of the training rows: what a normal value looks like, for people.

Stored in a detector's metadata (``detector.json``) at training time; the dashboard shows each
flagged value beside it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from anomaly.config import Features

#: the numeric quantiles kept, in percent
QUANTILES: tuple[int, ...] = (1, 5, 50, 95, 99)
#: the most frequent categories kept per categorical feature
TOP_CATEGORIES = 20


def feature_profile(df: pd.DataFrame, features: Features) -> dict[str, Any]:
    """Quantiles of every numeric feature (and whether it holds whole numbers only) and category
    frequencies of every categorical one.

    >>> from anomaly.config import Features
    >>> df = pd.DataFrame({"id": range(5), "x": [1.0, 2, 3, 4, 5], "c": list("aabbb")})
    >>> p = feature_profile(df, Features(id="id", numeric=["x"], categorical=["c"]))
    >>> p["numeric"]["x"]["q50"], p["categorical"]["c"]["frequencies"]
    (3.0, {'b': 0.6, 'a': 0.4})
    """
    numeric: dict[str, dict[str, float]] = {}
    for col in features.numeric:
        x = pd.to_numeric(df[col], errors="coerce").dropna()
        if len(x):
            q = x.quantile([p / 100 for p in QUANTILES]).to_numpy()
            numeric[col] = {f"q{p:02d}": float(v) for p, v in zip(QUANTILES, q, strict=True)}
            numeric[col]["integer"] = bool((x % 1 == 0).all())  # counts: shown as whole numbers
    categorical: dict[str, dict[str, Any]] = {}
    for col in features.categorical:
        freq = df[col].dropna().astype(str).value_counts(normalize=True)
        top = freq.head(TOP_CATEGORIES)
        categorical[col] = {
            "n_categories": len(freq),
            "frequencies": {str(k): round(float(v), 6) for k, v in top.items()},
        }
    return {"rows": len(df), "numeric": numeric, "categorical": categorical}
