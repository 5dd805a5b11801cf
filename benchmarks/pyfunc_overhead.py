"""Load time and predict throughput of the MLflow pyfunc against the raw detector and model.

    python benchmarks/pyfunc_overhead.py [--kind gmm] [--rows 50000]

Trains the demo config's detector (state in a temporary ANOMALY_HOME), registers it, then
measures in this process: `mlflow.pyfunc.load_model("models:/NAME@champion")` (a fresh process
adds its imports: 4–6 s to load there, torch ~2.7 s of it, measured with MLflow 3.17.2),
`pyfunc.predict(df)`, `Detector.predict(df)` and the raw `model.log_prob(X)` on the same rows.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import mlflow

from anomaly import registry
from anomaly.config import load_config
from anomaly.demo import write_demo_config
from anomaly.demo_data import generate_normal, write_demo
from anomaly.pipeline import train_and_store
from anomaly.tracking import tracking_uri


def timed(call, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="gmm")
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    home = Path(tempfile.mkdtemp())
    config = load_config(write_demo_config(home, args.kind))
    write_demo(home / "demo")
    train_and_store(config)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(config)
    load_s, model = timed(lambda: mlflow.pyfunc.load_model(f"models:/{config.name}@champion"))
    detector, _ = registry.load_detector(config)
    df = generate_normal(args.rows, seed=7)
    X = detector.preprocessor.transform(df).X
    rows = [
        ("pyfunc predict (DataFrame)", timed(lambda: model.predict(df))[0]),
        ("Detector.predict (DataFrame)", timed(lambda: detector.predict(df))[0]),
        ("raw model.log_prob (matrix)", timed(lambda: detector.model.log_prob(X))[0]),
    ]
    print(f"kind {args.kind}, {args.rows} rows; pyfunc load_model: {load_s:.3f} s\n")
    print("| path | seconds | rows/s | vs raw |")
    print("|---|---:|---:|---:|")
    raw = rows[-1][1]
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {args.rows / seconds:,.0f} | {seconds / raw:.1f}× |")


if __name__ == "__main__":
    main()
