"""The store's batch write alone (issue 18, item 5): CPU seconds per flagged row of
``anomaly.store.write_batch`` into SQLite.

    python benchmarks/store_write.py [--rows 118384] [--repeat 2] [--url URL]

The flagged rows are shaped like ``benchmarks/speed.py``'s: an integer id and 20 float
features (a few missing), the scores in file order (not sorted), contributions for the worst
1,000 (five features each) and none for the rest; 50 quarantined rows. Each repeat stores a
new batch into the same store (the first into an empty one), timed by process CPU time.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np
import pandas as pd


def flagged(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` flagged rows as ``score_file`` gives them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": np.arange(n, dtype=np.int64) + 10**12})
    for j in range(20):
        x = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4)
        x[j::97] = np.nan if j == 3 else x[j::97]
        frame[f"f{j}"] = x
    frame["log_likelihood"] = rng.normal(-40, 5, n)
    frame["p_value"] = rng.uniform(0, 0.01, n)
    frame["reason"] = ["" if i % 500 else "f3 is missing" for i in range(n)]
    contributions: list[list[dict[str, object]]] = [[] for _ in range(n)]
    for i in np.argsort(frame["log_likelihood"].to_numpy())[:1_000].tolist():
        contributions[i] = [
            {"feature": f"f{k}", "contribution": float(c), "value": float(v), "typical": 0.0}
            for k, c, v in zip(range(5), rng.normal(size=5), rng.normal(size=5), strict=True)
        ]
    frame["contributions"] = contributions
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=118_384)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--url", help="a store URL (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    from anomaly.scoring import BatchSummary
    from anomaly.store import connect, write_batch

    rows = flagged(args.rows)
    quarantined = pd.DataFrame({"id": [str(i) for i in range(50)], "f0": "x", "reason": "bad"})
    engine = connect(args.url or f"sqlite:///{tempfile.mkdtemp()}/review.db")
    summary = BatchSummary(
        "b", "/data/b.parquet", "scored", rows_in=100 * args.rows, rows_scored=100 * args.rows,
        rows_flagged=args.rows, model_version="1", content_hash="0" * 64,
    )  # fmt: skip
    print(f"{args.rows:,} flagged rows a batch")
    for k in range(args.repeat):
        batch = dataclasses.replace(summary, batch_id=f"batch-{k}.parquet")
        cpu = time.process_time()
        write_batch(engine, batch, "m", rows, quarantined, "id")
        cpu = time.process_time() - cpu
        print(f"batch {k}: {cpu:.2f} CPU s, {cpu / args.rows * 1e6:.1f} µs a flagged row")
    engine.dispose()


if __name__ == "__main__":
    main()
