"""Training cost of ``autoregressive`` per step on lattice (discrete) data, where each lattice
column's term is the exact mass of its cell.

    python benchmarks/autoregressive_step.py [--data synthetic,InternetAds] [--steps 20]
                                             [--epochs 1] [--repeats 3]

``synthetic``: 2,000 rows × 200 dependent 0/1 columns (each a noisy threshold of one of 10
Gaussian factors). A dev dataset name (e.g. ``InternetAds``) takes its seed-0 training split of
``benchmarks/quality.py``. Per dataset one model is fitted (``--epochs``, so that the mixtures
are trained ones, some of them sharp), then ``--steps`` training steps (loss, backward, AdamW
step; batch size 256) are timed ``--repeats`` times; the table gives the CPU seconds (one
thread) of a step, the best repeat's mean and the median over repeats. Run it on two trees
(``PYTHONPATH``) to compare two versions of the model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from anomaly import models
from anomaly.models import lattice_layout


def synthetic(rows: int = 2_000, columns: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((rows, 10))
    which = rng.integers(0, 10, columns)
    noisy = factors[:, which] + rng.normal(0, 0.7, (rows, columns))
    return (noisy > rng.normal(0.5, 0.5, columns)).astype(float)


def training_rows(name: str) -> np.ndarray:
    if name == "synthetic":
        return synthetic()
    from quality import data_dir, split

    (path,) = [p for p in sorted(data_dir().glob("*.npz")) if p.stem.endswith(f"_{name}")]
    with np.load(path) as npz:
        return split(np.asarray(npz["X"], float), np.asarray(npz["y"]).astype(int), 0)["train"]


def step_seconds(model: models.DensityModel, X: np.ndarray, steps: int) -> float:
    """Mean CPU seconds of a training step of the fitted ``model`` on rows of X."""
    module = model.module_
    Z = torch.from_numpy((X - model.mean_) / model.scale_).float()
    optimiser = torch.optim.AdamW(module.parameters(), lr=model.learning_rate)
    generator = torch.Generator().manual_seed(1)
    module.train()
    start = time.process_time()
    for _ in range(steps):
        batch = Z[torch.randint(0, len(Z), (model.batch_size,), generator=generator)]
        loss = model._loss(module, batch, None)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return (time.process_time() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="synthetic,InternetAds")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| data | rows | lattice columns | best CPU s / step | median CPU s / step |")
    print("|---|---:|---:|---:|---:|")
    for name in args.data.split(","):
        X = training_rows(name)
        layout = lattice_layout(X)
        model = models.create(
            "autoregressive", seed=0, max_epochs=args.epochs, progress=False, n_threads=1
        ).fit(X, layout=layout)
        times = [step_seconds(model, X, args.steps) for _ in range(args.repeats)]
        lattice = sum(b.step > 0 for b in layout)
        best, median = min(times), statistics.median(times)
        print(f"| {name} | {len(X)} | {lattice} | {best:.3f} | {median:.3f} |", flush=True)


if __name__ == "__main__":
    main()
