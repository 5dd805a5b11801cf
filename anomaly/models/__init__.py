"""Density models behind one contract: ``create(kind)``, ``fit``, ``log_prob``, ``sample``,
``save`` and :func:`load`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.models.auto import Auto
from anomaly.models.autoregressive import Autoregressive
from anomaly.models.base import (
    FORMAT_VERSION,
    Block,
    DensityModel,
    default_layout,
    lattice_layout,
    lattice_step,
)
from anomaly.models.flow import Flow
from anomaly.models.gaussian import Gaussian
from anomaly.models.gmm import GMM
from anomaly.models.independent import Independent
from anomaly.models.kernel import KDE, KNN
from anomaly.models.vae import VAE

__all__ = [
    "KINDS",
    "Block",
    "DensityModel",
    "context_kinds",
    "create",
    "lattice_layout",
    "lattice_step",
    "load",
]

KINDS: dict[str, type[DensityModel]] = {
    cls.kind: cls for cls in (Gaussian, GMM, KDE, KNN, Flow, VAE, Auto, Independent, Autoregressive)
}


def context_kinds() -> list[str]:
    """The kinds that can model a density conditional on context columns."""
    return [kind for kind, cls in KINDS.items() if cls.supports_context]


def create(kind: str, seed: int = 0, **params: Any) -> DensityModel:
    """An unfitted model of ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        msg = f"unknown model kind {kind!r}; choose one of: {', '.join(KINDS)}"
        raise ValueError(msg)
    try:
        return KINDS[kind](seed=seed, **params)
    except TypeError as exc:
        msg = f"bad parameters for model kind {kind!r}: {exc}"
        raise ValueError(msg) from exc


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
    # models saved before layouts and contexts existed: every column numeric, no context
    layout = config.get("layout")
    model.layout_ = (
        [Block(**block) for block in layout] if layout else default_layout(model.n_features_in_)
    )
    model.n_context_ = config.get("n_context", 0)
    # models saved before discrete columns were dequantised: every column continuous
    cells = config.get("cells") or {}
    zeros = [0.0] * model.n_features_in_
    model.cell_widths_ = np.asarray(cells.get("widths", zeros), dtype=np.float64)
    model.cell_origins_ = np.asarray(cells.get("origins", zeros), dtype=np.float64)
    model._load_weights(directory, config["fitted"])
    return model
