"""Multivariate Gaussian with full covariance, fitted by maximum likelihood with shrinkage.

With context columns c it is the linear-conditional Gaussian: the joint Gaussian of [x, c] is
fitted (with the same shrinkage) and rows are scored by the closed-form conditional
x | c ~ N(μ_x + B (c − μ_c), Σ_x|c), B = Σ_xc Σ_cc⁻¹, Σ_x|c = Σ_xx − B Σ_cx: the mean moves
linearly with the context (per category, for one-hot context columns), the covariance does not.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, ClassVar

import numpy as np
from scipy.linalg import solve_triangular

from anomaly.models.base import LOG_2PI, Block, DensityModel
from anomaly.models.constraints import Interval, Table


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

    Parameters
    ----------
    seed : int
        See :class:`~anomaly.models.DensityModel` (the fit itself is deterministic).
    shrinkage : float in [0, 1] or None
        Σ = (1 − shrinkage) · empirical covariance + shrinkage · (mean variance) · I; None: the
        Ledoit–Wolf estimate of the best shrinkage.
    min_variance : float ≥ 0
        Added to every variance so constant columns cannot make Σ singular.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
        μ of x (marginal over the context, if any).
    covariance_ : ndarray of shape (n_features, n_features)
        Σ of x (marginal over the context); :meth:`conditional` gives the parameters of
        x | context.
    shrinkage_ : float
        The shrinkage used (the Ledoit–Wolf estimate when ``shrinkage`` is None).

    Examples
    --------
    >>> import numpy as np
    >>> from anomaly.models import create
    >>> X = np.random.default_rng(0).multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], 500)
    >>> model = create("gaussian", shrinkage=0.0).fit(X)
    >>> model.covariance_.round(1)
    array([[1. , 0.8],
           [0.8, 1. ]])
    >>> model.log_prob(np.array([[0.0, 0.0], [3.0, -3.0]])).round(1)
    array([ -1.3, -49.3])
    """

    kind = "gaussian"
    supports_context = True
    explanation = "closed_form"
    parameter_constraints: ClassVar[Table] = {
        "shrinkage": [Interval(Real, 0, 1, closed="both"), None],
        "min_variance": [Interval(Real, 0, None)],
    }

    def __init__(
        self, seed: int = 0, shrinkage: float | None = None, min_variance: float = 1e-6
    ) -> None:
        super().__init__(seed)
        self.shrinkage = shrinkage
        self.min_variance = min_variance

    def _fit(self, X: np.ndarray, context: np.ndarray | None = None) -> None:
        if context is not None:
            X = np.hstack([X, context])
        mean = X.mean(axis=0)
        if self.shrinkage is None:
            from sklearn.covariance import ledoit_wolf  # scikit-learn loads only to fit

            cov, self.shrinkage_ = ledoit_wolf(X)
        else:
            emp = np.cov(X, rowvar=False, bias=True).reshape(X.shape[1], X.shape[1])
            mu = np.trace(emp) / X.shape[1]
            cov = (1 - self.shrinkage) * emp + self.shrinkage * mu * np.eye(X.shape[1])
            self.shrinkage_ = float(self.shrinkage)
        cov = np.atleast_2d(cov) + self.min_variance * np.eye(X.shape[1])
        self._set_joint(mean, cov)

    def _set_joint(self, mean: np.ndarray, cov: np.ndarray) -> None:
        """Keep the joint parameters of [x, context] and derive those of x | context."""
        self.joint_mean_, self.joint_covariance_ = mean, cov
        d = self.n_features_in_
        self.mean_, self.covariance_ = mean[:d], cov[:d, :d]
        self.context_mean_ = mean[d:]
        cross, cov_c = cov[:d, d:], cov[d:, d:]
        self.coef_ = np.linalg.solve(cov_c, cross.T).T if self.n_context_ else np.zeros((d, 0))
        self.conditional_covariance_ = self.covariance_ - self.coef_ @ cross.T
        self.chol_ = np.linalg.cholesky(self.conditional_covariance_)

    def conditional(self, context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-row means (n × d) and the shared covariance (d × d) of x | context.

        Without context (a model fitted without one): ``mean_`` as one row and ``covariance_``.
        """
        self._check_fitted()
        C = self._check_context(context, 0 if context is None else len(context), "conditional")
        if C is None:
            return self.mean_[None], self.conditional_covariance_
        return self._means(C), self.conditional_covariance_

    def _means(self, context: np.ndarray | None) -> np.ndarray:
        if context is None:
            return self.mean_
        return self.mean_ + (context - self.context_mean_) @ self.coef_.T

    def feature_log_probs(self, X: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """Closed-form log p(x_b | x_-b, context) per layout block (n_rows × n_blocks).

        A numeric block is one column: the 1-D Gaussian conditional. A one-hot block gets the
        Gaussian density of its columns jointly given all other columns (a density on the
        block's columns, not a probability of the category).
        """
        X = self._check_input(X)
        C = self._check_context(context, X.shape[0], "feature_log_probs")
        precision = np.linalg.inv(self.conditional_covariance_)
        precision = (precision + precision.T) / 2
        r = (X - self._means(C)) @ precision
        out = np.empty((X.shape[0], len(self.layout_)))
        for j, block in enumerate(self.layout_):
            cols = slice(block.start, block.stop)
            p_bb = precision[cols, cols]
            chol = np.linalg.cholesky(p_bb)
            z = solve_triangular(chol, r[:, cols].T, lower=True)  # r_bᵀ P_bb⁻¹ r_b = |z|²
            width = block.stop - block.start
            out[:, j] = (
                -0.5 * (z * z).sum(axis=0) + np.log(np.diag(chol)).sum() - 0.5 * width * LOG_2PI
            )
        return out

    def _best_replacements(
        self, X: np.ndarray, layout: list[Block], context: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact maxima of the conditionals x_b | x_-b ~ N(x_b − P_bb⁻¹ r_b, P_bb⁻¹), with
        r = P (x − μ) and P the precision of x (given the context): a numeric block's best
        value is its conditional mean, gaining ½ r_b²/P_bb; a one-hot block is maximised
        exactly over its categories. Gains of the fitted density (on discrete columns too)."""
        precision = np.linalg.inv(self.conditional_covariance_)
        precision = (precision + precision.T) / 2
        r = (X - self._means(context)) @ precision
        contributions = np.zeros((X.shape[0], len(layout)))
        typical = X.copy()
        for i, b in enumerate(layout):
            cols = slice(b.start, b.stop)
            p_bb = precision[cols, cols]
            shift = np.linalg.solve(p_bb, r[:, cols].T).T  # x_b − conditional mean
            q_observed = np.einsum("ni,ij,nj->n", shift, p_bb, shift)
            if not b.categorical:
                contributions[:, i] = q_observed / 2
                typical[:, cols] = X[:, cols] - shift
                continue
            # (e_c − m)ᵀ P_bb (e_c − m) for every category c, with w = m's offset from 0: m = −w
            w = shift - X[:, cols]
            pw = w @ p_bb
            q = np.diag(p_bb)[None, :] + 2 * pw + np.einsum("ni,ni->n", pw, w)[:, None]
            best = q.argmin(axis=1)
            contributions[:, i] = np.maximum(q_observed - q[np.arange(len(X)), best], 0) / 2
            typical[:, cols] = np.eye(b.stop - b.start)[best]
        return contributions, typical

    def _log_prob(self, X: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        return gaussian_log_pdf(X, self._means(context), self.chol_)

    def _sample(
        self, n: int, rng: np.random.Generator, context: np.ndarray | None = None
    ) -> np.ndarray:
        if context is None:
            return sample_gaussian(n, self.mean_, self.chol_, rng)
        return self._means(context) + rng.standard_normal((n, self.n_features_in_)) @ self.chol_.T

    def _state(self) -> dict[str, np.ndarray]:
        # the joint parameters of [x, context] (of x alone without context)
        return {"mean": self.joint_mean_, "covariance": self.joint_covariance_}

    def _fitted_json(self) -> dict[str, Any]:
        return {"shrinkage": float(self.shrinkage_)}

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        self._set_joint(state["mean"], state["covariance"])
        self.shrinkage_ = fitted["shrinkage"]
