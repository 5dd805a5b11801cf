"""Nearest normal records: a sample of the training rows kept with the model, so a reviewer can
see the normal records closest to a flagged one and what differs.

Distances are Euclidean in the model's standardised space, the preprocessor's matrix (numeric
columns transformed and z-scored, categories one-hot), where the model itself compares values.
Saved as ``neighbours.npz`` beside the detector: plain arrays (text as fixed-width unicode),
read with ``allow_pickle=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FILE = "neighbours.npz"
#: training rows kept (a seeded sample beyond this); a query costs one pass over them
MAX_ROWS = 20_000


@dataclass(frozen=True)
class NormalIndex:
    """Training rows in model space (``points``) and their raw values (``values``)."""

    points: np.ndarray
    values: dict[str, np.ndarray]

    @classmethod
    def build(
        cls, X: np.ndarray, raw: pd.DataFrame, seed: int = 0, max_rows: int = MAX_ROWS
    ) -> NormalIndex:
        """From the model matrix of training rows and the same rows' raw feature columns."""
        if len(X) != len(raw):
            msg = f"{len(X)} model rows but {len(raw)} raw rows: give the same rows"
            raise ValueError(msg)
        keep = np.arange(len(X))
        if len(X) > max_rows:
            keep = np.sort(np.random.default_rng(seed).choice(len(X), max_rows, replace=False))
        values = {}
        for col in raw.columns:
            column = raw[col].iloc[keep]
            numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(
                column
            )
            values[str(col)] = (
                column.to_numpy(np.float64) if numeric else column.astype(str).to_numpy(dtype=str)
            )
        return cls(np.ascontiguousarray(X[keep], dtype=np.float32), values)

    def nearest(self, x: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of the ``k`` nearest training rows to ``x`` (one model-space row), and
        their distances, nearest first."""
        d = np.sqrt(((self.points - np.asarray(x, dtype=np.float32)) ** 2).sum(axis=1))
        k = min(k, len(d))
        idx = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
        idx = idx[np.argsort(d[idx], kind="stable")]
        return idx, d[idx].astype(np.float64)

    def rows(self, idx: np.ndarray) -> list[dict[str, Any]]:
        """The raw values of training rows ``idx``, as plain Python scalars."""
        return [{col: v[i].item() for col, v in self.values.items()} for i in idx]

    def save(self, directory: str | Path) -> Path:
        """Write ``neighbours.npz`` into ``directory``."""
        path = Path(directory) / FILE
        arrays = {f"value:{col}": v for col, v in self.values.items()}
        np.savez_compressed(path, points=self.points, **arrays)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> NormalIndex | None:
        """Read the index saved in ``directory`` (None: the model was saved without one)."""
        path = Path(directory) / FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            values = {k.removeprefix("value:"): data[k] for k in data.files if k != "points"}
            return cls(data["points"], values)
