"""Load test of the review dashboard: concurrent clients reading and posting reviews.

    python benchmarks/load.py [--clients 20] [--seconds 30] [--write-share 0.2]

Builds a real project in a temporary folder (a Gaussian detector registered in MLflow, three
demo batches scored through the pipeline into the SQLite review store), starts
``anomaly dashboard`` (uvicorn, one process) on 127.0.0.1, then runs ``--clients`` threads for
``--seconds``: each request is a read of the review queue, of one flagged record or of the batch
list, or (``--write-share`` of them) a review posted with a bearer token. Prints a markdown table
of latencies (p50/p95/max, ms) and errors per request kind, then checks that every accepted
review is in the store.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from anomaly.config import Config, load_config
from anomaly.dashboard.auth import hash_token
from anomaly.demo_data import generate_normal, plant_anomalies
from anomaly.inbox import pending_batches
from anomaly.pipeline import score_batches, train_and_store
from anomaly.store import Flagged, Review, store_engine

TOKEN = "load-test-token-not-a-secret"
FEATURES = {
    "id": "transaction_id",
    "timestamp": "timestamp",
    "numeric": ["amount", "hour", "distance_km", "tx_last_24h", "account_age_days"],
    "categorical": ["merchant_category", "channel"],
}


@dataclass
class Stats:
    """Latencies (s) and errors per request kind, and the reviews the server accepted."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    accepted_reviews: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds)
            self.errors.setdefault(kind, [])
            if error:
                self.errors[kind].append(error)
            elif kind == "post review":
                self.accepted_reviews += 1

    @property
    def n_errors(self) -> int:
        return sum(len(e) for e in self.errors.values())


def build(folder: Path) -> Config:
    """A trained, registered detector and three scored demo batches in the review store."""
    folder.mkdir(parents=True, exist_ok=True)
    generate_normal(3000, seed=0).to_parquet(folder / "train.parquet")
    inbox = folder / "inbox"
    inbox.mkdir()
    for seed in (1, 2, 3):
        frame, _ = plant_anomalies(generate_normal(2000, seed=seed), 0.05, seed)
        frame.to_parquet(inbox / f"batch_{seed}.parquet")
    settings = {
        "name": "load-test",
        "features": FEATURES,
        "data": {"train": str(folder / "train.parquet"), "inbox": str(inbox)},
        "model": {"kind": "gaussian"},
        "home": str(folder / "home"),
        "dashboard": {"tokens": {"loadtest": hash_token(TOKEN)}},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = load_config(path)
    train_and_store(config)
    score_batches(config, pending_batches(config))
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_dashboard(config_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``anomaly dashboard`` on a free port of 127.0.0.1, once it answers; (process, url)."""
    port = free_port()
    env = {**os.environ, "ANOMALY_DASHBOARD_SECRET": "load-test-session-key"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "dashboard", "--config", str(config_path),
         "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"the dashboard exited: {process.stderr.read().decode()[-2000:]}"
            raise RuntimeError(msg)
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.terminate()
    msg = "the dashboard did not answer within 120 s"
    raise RuntimeError(msg)


def run_load(
    url: str, records: list[tuple[str, str]], clients: int, seconds: float, write_share: float
) -> Stats:
    """``clients`` threads sending requests for ``seconds``; each thread has its own seed."""
    stats = Stats()
    stop = time.monotonic() + seconds
    labels = ("confirmed", "false_positive", "unsure")

    def client(worker: int) -> None:
        rng = random.Random(worker)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            while time.monotonic() < stop:
                batch_id, record_id = rng.choice(records)
                draw = rng.random()
                if draw < write_share:
                    kind, body = "post review", {
                        "batch_id": batch_id, "record_id": record_id,
                        "label": rng.choice(labels), "note": f"load test client {worker}",
                    }  # fmt: skip
                    call = lambda: http.post("/api/reviews", json=body)  # noqa: B023, E731
                    expected = 201
                elif draw < write_share + (1 - write_share) / 2:
                    kind, expected = "read queue", 200
                    call = lambda: http.get("/api/flagged", params={"limit": 50})  # noqa: E731
                elif draw < write_share + 3 * (1 - write_share) / 4:
                    kind, expected = "read record", 200
                    path = f"/api/flagged/{batch_id}/{record_id}"
                    call = lambda: http.get(path)  # noqa: B023, E731
                else:
                    kind, expected = "read batches", 200
                    call = lambda: http.get("/api/batches")  # noqa: E731
                start = time.perf_counter()
                try:
                    response = call()
                    error = None if response.status_code == expected else (
                        f"HTTP {response.status_code}: {response.text[:200]}"
                    )  # fmt: skip
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                stats.add(kind, time.perf_counter() - start, error)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else (
        values[0] if values else float("nan")
    )  # fmt: skip


def table(stats: Stats, seconds: float, clients: int) -> str:
    """A markdown table of the run."""
    lines = [
        f"{clients} clients, {seconds:.0f} s, 127.0.0.1, one uvicorn process, SQLite (WAL)",
        "",
        "| request | n | per s | p50 ms | p95 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    everything: list[float] = []
    for kind in sorted(stats.latencies):
        lat = stats.latencies[kind]
        everything += lat
        lines.append(
            f"| {kind} | {len(lat)} | {len(lat) / seconds:.1f} | {percentile(lat, 50) * 1e3:.1f} "
            f"| {percentile(lat, 95) * 1e3:.1f} | {max(lat) * 1e3:.1f} "
            f"| {len(stats.errors[kind])} |"
        )
    lines.append(
        f"| all | {len(everything)} | {len(everything) / seconds:.1f} "
        f"| {percentile(everything, 50) * 1e3:.1f} | {percentile(everything, 95) * 1e3:.1f} "
        f"| {max(everything) * 1e3:.1f} | {stats.n_errors} |"
    )
    return "\n".join(lines)


def stored_reviews(config: Config) -> int:
    with Session(store_engine(config)) as session:
        return int(session.scalar(select(func.count()).select_from(Review)) or 0)


def flagged_records(config: Config) -> list[tuple[str, str]]:
    with Session(store_engine(config)) as session:
        return [tuple(r) for r in session.execute(select(Flagged.batch_id, Flagged.record_id))]


def benchmark(folder: Path, clients: int, seconds: float, write_share: float) -> tuple[Stats, int]:
    """Build, serve, load; (stats, reviews stored during the run)."""
    config = build(folder)
    records = flagged_records(config)
    before = stored_reviews(config)
    process, url = start_dashboard(folder / "config.yaml")
    try:
        stats = run_load(url, records, clients, seconds, write_share)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return stats, stored_reviews(config) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--write-share", type=float, default=0.2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stats, stored = benchmark(Path(tmp), args.clients, args.seconds, args.write_share)
    print(table(stats, args.seconds, args.clients))
    print(f"\nreviews accepted {stats.accepted_reviews}, stored {stored}")
    for kind, errors in stats.errors.items():
        for error in errors[:3]:
            print(f"{kind}: {error}")
    if stats.n_errors or stored != stats.accepted_reviews:
        sys.exit(1)


if __name__ == "__main__":
    main()
