"""Reading a saved model back: :func:`load`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from anomaly.models.base import FORMAT_VERSION, Block, DensityModel
from anomaly.models.kinds import create


def load(directory: str | Path) -> DensityModel:
    """Load a model written by ``DensityModel.save`` (JSON + numpy arrays, never pickle)."""
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        msg = f"no saved model in {directory}: {path.name} is missing"
        raise FileNotFoundError(msg)
    config = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        msg = (
            f"model in {directory} has format version {config.get('format_version')}, "
            f"this anomaly release reads version {FORMAT_VERSION}"
        )
        raise ValueError(msg)
    params = dict(config["params"])
    model = create(config["kind"], **params)
    model.n_features_in_ = config["n_features_in"]
    model.layout_ = [Block(**block) for block in config["layout"]]
    model.n_context_ = config["n_context"]
    # models saved before discrete columns were dequantised: every column continuous
    cells = config.get("cells") or {}
    zeros = [0.0] * model.n_features_in_
    model.cell_widths_ = np.asarray(cells.get("widths", zeros), dtype=np.float64)
    model.cell_origins_ = np.asarray(cells.get("origins", zeros), dtype=np.float64)
    model._load_weights(directory, config["fitted"])
    return model
