"""Multivariate Gaussian with full covariance, fitted by maximum likelihood with shrinkage."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import solve_triangular
from sklearn.covariance import ledoit_wolf

from anomaly.models.base import DensityModel

LOG_2PI = float(np.log(2 * np.pi))


def gaussian_log_pdf(X: np.ndarray, mean: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """log N(x; mean, L Lᵀ) per row, with ``chol`` the lower Cholesky factor L."""
    z = solve_triangular(chol, (X - mean).T, lower=True)
    half_log_det = np.log(np.diag(chol)).sum()
    return -0.5 * (z * z).sum(axis=0) - half_log_det - 0.5 * X.shape[1] * LOG_2PI


def sample_gaussian(
    n: int, mean: np.ndarray, chol: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``n`` rows from N(mean, L Lᵀ)."""
    return mean + rng.standard_normal((n, mean.shape[0])) @ chol.T


class Gaussian(DensityModel):
    """N(μ, Σ) with Σ the Ledoit–Wolf shrunk covariance (``shrinkage=None``) or a fixed one.

    ``min_variance`` floors each variance so constant columns cannot make Σ singular.
    """

    kind = "gaussian"

    def __init__(
        self, seed: int = 0, shrinkage: float | None = None, min_variance: float = 1e-6
    ) -> None:
        super().__init__(seed)
        self.shrinkage = shrinkage
        self.min_variance = min_variance

    def _fit(self, X: np.ndarray) -> None:
        self.mean_ = X.mean(axis=0)
        if self.shrinkage is None:
            cov, self.shrinkage_ = ledoit_wolf(X)
        else:
            if not 0 <= self.shrinkage <= 1:
                msg = f"gaussian: shrinkage must be in [0, 1] or None, got {self.shrinkage}"
                raise ValueError(msg)
            emp = np.cov(X, rowvar=False, bias=True).reshape(X.shape[1], X.shape[1])
            mu = np.trace(emp) / X.shape[1]
            cov = (1 - self.shrinkage) * emp + self.shrinkage * mu * np.eye(X.shape[1])
            self.shrinkage_ = float(self.shrinkage)
        cov = np.atleast_2d(cov) + self.min_variance * np.eye(X.shape[1])
        self.covariance_ = cov
        self.chol_ = np.linalg.cholesky(cov)

    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        return gaussian_log_pdf(X, self.mean_, self.chol_)

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return sample_gaussian(n, self.mean_, self.chol_, rng)

    def _state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "covariance": self.covariance_}

    def _fitted_json(self) -> dict[str, Any]:
        return {"shrinkage": float(self.shrinkage_)}

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        self.mean_ = state["mean"]
        self.covariance_ = state["covariance"]
        self.chol_ = np.linalg.cholesky(self.covariance_)
        self.shrinkage_ = fitted["shrinkage"]
