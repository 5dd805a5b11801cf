"""Dashboard response times with many flagged records in the SQLite review store.

    python benchmarks/dashboard_load.py [--records 100000] [--repeat 20]

Builds a store of ``--records`` flagged records (one batch a day for ``--days`` days, written
through ``anomaly.store.write_batch`` and dated back; 2 % of them reviewed) next to a real
registered model (Gaussian, MLflow on SQLite), serves the dashboard with uvicorn on 127.0.0.1 and
times each request over HTTP as a logged-in reviewer: pages, searches, the overview, and
bulk-labelling 500 records through the API. Prints a markdown table (median and 95th
percentile, ms).
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from sqlalchemy import select, text, update
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dashboard_site import PASSWORD, TOKEN, write_config
from store_data import ID, flagged_frame, quarantined_frame, summary

from anomaly import store
from anomaly.config import load_config
from anomaly.dashboard import create_app
from anomaly.demo_data import generate_normal
from anomaly.pipeline import train_and_store
from anomaly.store import store_engine

#: the bulk action timed: this many records labelled in one request
BULK = 500


def build(folder: Path, records: int, days: int) -> tuple[object, float]:
    """A trained model and a store of ``records`` flagged records, one batch a day for
    ``days`` days up to today; returns (config, seconds)."""
    path = write_config(folder)
    generate_normal(3000, seed=0).to_parquet(folder / "train.parquet")
    config = load_config(path)
    train_and_store(config)
    engine = store_engine(config)
    per_batch = records // days
    start = time.perf_counter()
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    for b in tqdm(range(days), desc="writing batches"):
        s = summary(b, per_batch, alarm=b % 30 == 29)
        store.write_batch(
            engine, s, "tx-dash", flagged_frame(b, per_batch), quarantined_frame(b), ID
        )
        at = today - timedelta(days=days - 1 - b)
        with engine.begin() as conn:  # as if scored on its own day
            for table in (store.Batch, store.Flagged):
                conn.execute(update(table).where(table.batch_id == s.batch_id).values(scored_at=at))
    rng = np.random.default_rng(0)
    for i in tqdm(rng.choice(records, records // 50, replace=False), desc="reviewing"):
        b, r = divmod(int(i), per_batch)
        label = store.LABELS[int(i) % 3]
        store.add_review(engine, f"batch-{b:03d}.parquet", f"b{b}-r{r:06d}", label, "bench")
    with engine.begin() as conn:  # each reviewed on the day it was scored
        conn.execute(
            text(
                "UPDATE reviews SET created_at = (SELECT f.scored_at FROM flagged f"
                " WHERE f.batch_id = reviews.batch_id AND f.record_id = reviews.record_id)"
            )
        )
    return config, time.perf_counter() - start


def _key_at(engine: object, position: int) -> store.Key:
    """The queue key at a position (found once with OFFSET; not timed)."""
    query = (
        select(store.Flagged.log_likelihood, store.Flagged.batch_id, store.Flagged.record_id)
        .order_by(store.Flagged.log_likelihood, store.Flagged.batch_id, store.Flagged.record_id)
        .offset(position)
        .limit(1)
    )
    with engine.connect() as conn:
        return tuple(conn.execute(query).one())


def serve(config: object) -> tuple[uvicorn.Server, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def timed(client: httpx.Client, url: str, repeat: int) -> tuple[float, float, int]:
    client.get(url)  # warm: the detector of the record's version loads once
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        if response.status_code >= 400:  # the search box answers with a redirect (303)
            response.raise_for_status()
    return (*_stats(times), len(response.content))


def _stats(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def timed_bulk(client: httpx.Client, engine: object, repeat: int) -> tuple[float, float, int]:
    """Label ``BULK`` unreviewed records in one API request, ``repeat`` times (new ones each)."""
    rows, times = [], []
    page = store.search(engine, store.Search(where=store.QueueFilter(label="unreviewed")),
                        limit=BULK * repeat, counted=False)  # fmt: skip
    rows = [{"batch_id": r.batch_id, "record_id": r.record_id} for r in page.rows]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for i in range(repeat):
        body = {"records": rows[i * BULK : (i + 1) * BULK], "label": "false_positive"}
        start = time.perf_counter()
        response = client.post("/api/reviews/bulk", json=body, headers=auth)
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
        assert response.json()["records"] == BULK
    return (*_stats(times), len(response.content))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config, seconds = build(Path(tmp), args.records, args.days)
        engine = store_engine(config)
        total = store.queue_count(engine, store.QueueFilter())
        deep = store.encode_cursor(_key_at(engine, total - 51))  # the cursor of the last page
        middle = store.get_record(engine, *_key_at(engine, total // 2)[1:])
        server, base = serve(config)
        client = httpx.Client(base_url=base, timeout=60)
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
        client.post("/login", data={"username": "ann", "password": PASSWORD, "csrf": token})
        record = f"/records/{middle.batch_id}/{middle.record_id}"
        rid = middle.record_id
        cases = [
            ("search box: an exact id (redirect to the record)", f"/search?q={rid}"),
            ("API search: id exact", f"/api/search?q={rid}&exact=true"),
            ("API search: id prefix", f"/api/search?q={rid[:-2]}"),
            ("queue: id prefix", f"/queue?q={rid[:-3]}"),
            ("queue: unassigned, not reviewed", "/queue?assignee=unassigned&label=unreviewed"),
            ("queue: one batch, newest first", "/queue?batch_id=batch-045.parquet&sort=time_desc"),
            ("queue: sort by time", "/queue?sort=time_desc"),
            ("queue: sort by batch", "/queue?sort=batch"),
            ("queue: score range", "/queue?min_score=20&max_score=30"),
            ("queue: value filter amount>=500", "/queue?f=amount%3E%3D500"),
            ("queue: value filter category", "/queue?f=merchant_category%3Dfuel&label=unreviewed"),
            ("queue: previous page (deep)", f"/queue?before={deep}"),
            ("overview, last 30 days", "/overview?days=30"),
            ("overview, 90 days", "/overview?days=90"),
            ("queue, first page", "/queue"),
            ("queue, last page (keyset cursor)", f"/queue?cursor={deep}"),
            ("queue, one batch", "/queue?batch_id=batch-007.parquet"),
            ("queue, label = confirmed", "/queue?label=confirmed"),
            ("queue, not reviewed", "/queue?label=unreviewed"),
            (
                "queue, model version + dates",
                "/queue?model_version=1&since=2000-01-01&until=2100-01-01",
            ),
            ("record page", record),
            ("record page, filtered queue context", record + "?label=unreviewed"),
            ("batches page", "/batches"),
            ("API list, first 50", "/api/flagged?limit=50"),
            ("API list, last page", f"/api/flagged?limit=50&cursor={deep}"),
            ("API list, label = unsure", "/api/flagged?limit=50&label=unsure"),
            ("API record", f"/api/flagged/{middle.batch_id}/{middle.record_id}"),
        ]
        print(f"\n{total} flagged records in SQLite ({args.days} batches over {args.days} days, "
              f"{total // 50} reviewed); store built in {seconds:.0f} s; "
              f"{args.repeat} requests each over HTTP (uvicorn, 1 process)\n")  # fmt: skip
        print("| request | median ms | p95 ms | bytes |")
        print("|---|---:|---:|---:|")
        for name, url in cases:
            median, p95, size = timed(client, url, args.repeat)
            print(f"| {name} | {median:.1f} | {p95:.1f} | {size} |", flush=True)
        median, p95, size = timed_bulk(client, engine, max(args.repeat // 2, 3))
        print(f"| bulk-label {BULK} records (API, one transaction) | {median:.1f} | {p95:.1f} "
              f"| {size} |")  # fmt: skip
        server.should_exit = True


if __name__ == "__main__":
    main()
