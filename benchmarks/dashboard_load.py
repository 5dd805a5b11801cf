"""Dashboard response times with many flagged records in the SQLite review store.

    python benchmarks/dashboard_load.py [--records 100000] [--repeat 20]

Builds a store of ``--records`` flagged records (20 batches written through
``anomaly.store.write_batch``, 2 % of them reviewed) next to a real registered model (Gaussian,
MLflow on SQLite), serves the dashboard with uvicorn on 127.0.0.1 and times each request over
HTTP as a logged-in reviewer. Prints a markdown table (median and 95th percentile, ms).
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
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from sqlalchemy import select
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dashboard_site import PASSWORD, write_config
from store_data import ID, flagged_frame, quarantined_frame, summary

from anomaly import store
from anomaly.config import load_config
from anomaly.dashboard import create_app
from anomaly.demo_data import generate_normal
from anomaly.pipeline import store_engine, train_and_store

BATCHES = 20
DATES = "since=2000-01-01&until=2100-01-01"


def build(folder: Path, records: int) -> tuple[object, float]:
    """A trained model and a store of ``records`` flagged records; returns (config, seconds)."""
    path = write_config(folder)
    generate_normal(3000, seed=0).to_parquet(folder / "train.parquet")
    config = load_config(path)
    train_and_store(config)
    engine = store_engine(config)
    per_batch = records // BATCHES
    start = time.perf_counter()
    for b in tqdm(range(BATCHES), desc="writing batches"):
        s = summary(b, per_batch, alarm=b == BATCHES - 1)
        store.write_batch(
            engine, s, "tx-dash", flagged_frame(b, per_batch), quarantined_frame(b), ID
        )
    rng = np.random.default_rng(0)
    for i in tqdm(rng.choice(records, records // 50, replace=False), desc="reviewing"):
        b, r = divmod(int(i), per_batch)
        label = store.LABELS[int(i) % 3]
        store.add_review(engine, f"batch-{b:03d}.parquet", f"b{b}-r{r:06d}", label, "bench")
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
    client.get(url).raise_for_status()  # warm: the detector of the record's version loads once
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config, seconds = build(Path(tmp), args.records)
        engine = store_engine(config)
        total = store.queue_count(engine, store.QueueFilter())
        deep = store.encode_cursor(_key_at(engine, total - 51))  # the cursor of the last page
        middle = store.get_record(engine, *_key_at(engine, total // 2)[1:])
        server, base = serve(config)
        client = httpx.Client(base_url=base, timeout=60)
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
        client.post("/login", data={"username": "ann", "password": PASSWORD, "csrf": token})
        record = f"/records/{middle.batch_id}/{middle.record_id}"
        cases = [
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
        print(f"\n{total} flagged records in SQLite ({BATCHES} batches, "
              f"{total // 50} reviewed); store built in {seconds:.0f} s; "
              f"{args.repeat} requests each over HTTP (uvicorn, 1 process)\n")  # fmt: skip
        print("| request | median ms | p95 ms | bytes |")
        print("|---|---:|---:|---:|")
        for name, url in cases:
            median, p95, size = timed(client, url, args.repeat)
            print(f"| {name} | {median:.1f} | {p95:.1f} | {size} |")
        server.should_exit = True


if __name__ == "__main__":
    main()
