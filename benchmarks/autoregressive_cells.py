"""Scoring cost of ``autoregressive`` on lattice-heavy dev datasets: exact cell masses (issue 16,
item 2) against the dequantised 16-point cell average of the models saved before.

    python benchmarks/autoregressive_cells.py [--datasets Cardiotocography,InternetAds]
                                              [--epochs 1] [--rows 500]

Per dataset (seed 0 split of ``benchmarks/quality.py``, its lattice layout): one model is
fitted (``--epochs``: scoring cost does not depend on training), saved, and loaded twice: as
saved (exact masses) and with ``cell_masses`` removed from its ``config.json`` (how a model
saved before loads: the base class's dequantisation, 16 network passes per row over the same
weights). Prints CPU seconds (one thread) to score ``--rows`` test rows each way.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from quality import data_dir, dataset_name, split

from anomaly import models
from anomaly.models import lattice_layout


def cpu_seconds(model: models.DensityModel, X: np.ndarray) -> float:
    start = time.process_time()
    model.log_prob(X)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="Cardiotocography,InternetAds")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| dataset | columns | lattice columns | rows scored | dequantised CPU s | exact CPU s "
        "| speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.datasets.split(","):
        (path,) = [p for p in sorted(data_dir().glob("*.npz")) if name in p.stem]
        with np.load(path) as npz:
            parts = split(np.asarray(npz["X"], float), np.asarray(npz["y"]).astype(int), 0)
        train, test = parts["train"], parts["test"][: args.rows]
        layout = lattice_layout(train)
        model = models.create(
            "autoregressive", seed=0, max_epochs=args.epochs, progress=False, n_threads=1
        ).fit(train, layout=layout)
        with tempfile.TemporaryDirectory() as tmp:
            directory = model.save(Path(tmp) / "model")
            exact = models.load(directory)
            config = json.loads((directory / "config.json").read_text())
            del config["fitted"]["cell_masses"]
            (directory / "config.json").write_text(json.dumps(config))
            dequantised = models.load(directory)
        before, after = cpu_seconds(dequantised, test), cpu_seconds(exact, test)
        lattice = sum(b.step > 0 for b in layout)
        print(
            f"| {dataset_name(path)} | {train.shape[1]} | {lattice} | {len(test)} | "
            f"{before:.2f} | {after:.2f} | {before / after:.1f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
