"""Fit time and log_prob throughput of every model kind on the demo data.

    python benchmarks/demo_models.py [--kinds gaussian,knn] [--threads 2] [--ar-threads 1]

Data: `anomaly.demo_data` (20,000 training rows, 15,000 scoring rows, 5 numeric + 2 categorical
features → 14 model columns; the preprocessor's layout is passed to every model, so
``independent`` and ``autoregressive`` model the two categorical features natively). Prints a
markdown table; throughput is rows/s of `log_prob` on the
preprocessed float matrix, in `torch.inference_mode`, after one warm-up call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anomaly.config import Features
from anomaly.demo_data import CATEGORICAL, ID, NUMERIC, generate_normal
from anomaly.models import KINDS, create
from anomaly.preprocessing import Preprocessor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ar-threads", type=int, default=1, help="autoregressive's n_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pre = Preprocessor(Features(id=ID, numeric=NUMERIC, categorical=CATEGORICAL))
    train = generate_normal(20_000, seed=0)
    X = pre.fit(train).transform(train).X
    Q = pre.transform(generate_normal(15_000, seed=1)).X
    print(f"train {X.shape}, score {Q.shape}, torch threads {args.threads}\n")
    print("| kind | fit s | log_prob rows/s | mean held-out log p (model space) |")
    print("|---|---:|---:|---:|")
    for kind in args.kinds.split(","):
        params = {"progress": False, "n_threads": args.threads} if kind in ("flow", "vae") else {}
        if kind == "autoregressive":
            params = {"progress": False, "n_threads": args.ar_threads}
        model = create(kind, seed=0, **params)
        start = time.perf_counter()
        model.fit(X, layout=pre.layout_)
        fit = time.perf_counter() - start
        model.log_prob(Q[:100])  # warm-up
        start = time.perf_counter()
        with torch.inference_mode():
            lp = model.log_prob(Q)
        rate = len(Q) / (time.perf_counter() - start)
        print(f"| {kind} | {fit:.1f} | {rate:,.0f} | {np.mean(lp):.3f} |", flush=True)


if __name__ == "__main__":
    main()
