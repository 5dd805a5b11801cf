"""The density-model contract shared by every kind.

Every model estimates a probability density p(x) on real-valued rows by maximum likelihood.
``log_prob(X)`` returns the natural-log density per row (higher = more normal), float64, finite.
The base class owns validation, seeding, threads and save/load; subclasses fill small hooks:
``_fit``, ``_log_prob``, ``_sample`` and ``_state``/``_load_state``.

Saved form (no pickle anywhere): ``config.json`` (kind, constructor arguments, fitted shape) plus
``weights.npz`` (numpy arrays, loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from sklearn.exceptions import NotFittedError

FORMAT_VERSION = 1
#: log_prob never goes below this (a row astronomically far from the data stays finite).
MIN_LOG_PROB = -1e12


@dataclass(frozen=True)
class Block:
    """One raw feature's columns in the model matrix: a numeric column or a one-hot block."""

    name: str
    start: int
    stop: int
    categorical: bool = False


def default_layout(n_columns: int) -> list[Block]:
    """Every column its own numeric feature, named ``x0``, ``x1``, …"""
    return [Block(f"x{j}", j, j + 1) for j in range(n_columns)]


class DensityModel:
    """Base class: a density on R^d fitted by maximum likelihood."""

    kind: ClassVar[str] = ""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    # ------------------------------------------------------------------ public contract
    def fit(self, X: np.ndarray) -> Self:
        """Fit on normal rows (n_samples × n_features) and return ``self``."""
        X = _as_matrix(X, "fit")
        if X.shape[0] < 2:
            msg = f"{self.kind}: need at least 2 rows to fit, got {X.shape[0]}"
            raise ValueError(msg)
        self.n_features_in_ = X.shape[1]
        with _threads(getattr(self, "n_threads", None)):
            self._fit(X)
        return self

    def log_prob(self, X: np.ndarray) -> np.ndarray:
        """Natural-log density of each row, float64, finite."""
        X = self._check_input(X)
        if X.shape[0] == 0:
            return np.zeros(0)
        with _threads(getattr(self, "n_threads", None)):
            lp = np.asarray(self._log_prob(X), dtype=np.float64)
        return np.nan_to_num(lp, nan=MIN_LOG_PROB, neginf=MIN_LOG_PROB).clip(MIN_LOG_PROB)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's name for :meth:`log_prob`."""
        return self.log_prob(X)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Draw ``n`` synthetic rows from the fitted density."""
        self._check_fitted()
        if n < 0:
            msg = f"n must be ≥ 0, got {n}"
            raise ValueError(msg)
        rng = np.random.default_rng(seed)
        with _threads(getattr(self, "n_threads", None)):
            return np.asarray(self._sample(n, rng), dtype=np.float64).reshape(
                n, self.n_features_in_
            )

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (of this class and its bases), as stored by ``__init__``."""
        params: dict[str, Any] = {}
        for cls in type(self).__mro__:
            if "__init__" not in vars(cls) or cls is object:
                continue
            for name, p in inspect.signature(cls.__init__).parameters.items():
                if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD:
                    params.setdefault(name, getattr(self, name))
        return params

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and the weights to ``directory`` (created if needed)."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "fitted": self._fitted_json(),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        self._save_weights(directory)
        return directory

    # ------------------------------------------------------------------ hooks
    def _fit(self, X: np.ndarray) -> None:
        raise NotImplementedError

    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        """Fitted arrays to save."""
        raise NotImplementedError

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        """Restore fitted attributes from :meth:`_state` arrays and :meth:`_fitted_json`."""
        raise NotImplementedError

    def _fitted_json(self) -> dict[str, Any]:
        """Small fitted values (chosen hyper-parameters) stored in ``config.json``."""
        return {}

    def _save_weights(self, directory: Path) -> None:
        np.savez(directory / "weights.npz", **self._state())

    def _load_weights(self, directory: Path, fitted: dict[str, Any]) -> None:
        with np.load(directory / "weights.npz", allow_pickle=False) as data:
            state = {key: data[key] for key in data.files}
        self._load_state(state, fitted)

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            msg = f"this {self.kind} model is not fitted yet: call fit(X) first"
            raise NotFittedError(msg)

    def _check_input(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = _as_matrix(X, "log_prob")
        if X.shape[1] != self.n_features_in_:
            msg = (
                f"X has {X.shape[1]} features, but this {self.kind} model was fitted "
                f"on {self.n_features_in_}"
            )
            raise ValueError(msg)
        return X


def _as_matrix(X: np.ndarray, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        msg = f"{what} expects a 2-D array (rows × features), got shape {X.shape}"
        raise ValueError(msg)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        msg = f"{what}: {bad} rows contain NaN or inf; quarantine or clean them first"
        raise ValueError(msg)
    return X


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run torch with ``n`` threads (default: all cores), restoring the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_positive(name: str, value: float, kind: str) -> None:
    """Raise a clear error unless ``value`` > 0."""
    if not value > 0:
        msg = f"{kind}: {name} must be > 0, got {value!r}"
        raise ValueError(msg)
