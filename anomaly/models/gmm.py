"""Gaussian mixture with full covariances; the number of components is chosen by BIC."""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from anomaly.models.base import LOG_2PI, DensityModel, nonzero_scale
from anomaly.models.constraints import Interval, Table
from anomaly.models.gaussian import gaussian_log_pdf, sample_gaussian


class GMM(DensityModel):
    """Mixture of full-covariance Gaussians fitted by EM (scikit-learn's ``GaussianMixture``);
    the component count minimising BIC wins.

    If EM stops at ``max_iter`` before converging for some component counts, ``fit`` warns once
    (``sklearn.exceptions.ConvergenceWarning``) naming them.

    Parameters
    ----------
    seed : int
        Seeds EM's k-means initialisation.
    max_components : int ≥ 1
        Component counts 1 … ``max_components`` (at most the number of rows) are fitted.
    reg_covar : float ≥ 0
        Added to every covariance's diagonal, in units of each feature's variance, so a
        component cannot collapse onto repeated (discrete) values.
    max_iter : int ≥ 1
        EM iterations per component count.

    Attributes
    ----------
    n_components_ : int
        The component count chosen by BIC.
    bic_ : dict of int to float
        BIC of each component count tried (lower is better).
    weights_ : ndarray of shape (n_components_,)
    means_ : ndarray of shape (n_components_, n_features)
    covariances_ : ndarray of shape (n_components_, n_features, n_features)

    Examples
    --------
    >>> import numpy as np
    >>> from anomaly.models import create
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(-4, 1, (200, 1)), rng.normal(4, 1, (200, 1))])
    >>> model = create("gmm", max_components=3).fit(X)
    >>> model.n_components_, sorted(model.means_.round().ravel().tolist())
    (2, [-4.0, 4.0])
    """

    kind = "gmm"
    explanation = "mixture"
    parameter_constraints: ClassVar[Table] = {
        "max_components": [Interval(Integral, 1, None)],
        "reg_covar": [Interval(Real, 0, None)],
        "max_iter": [Interval(Integral, 1, None)],
    }

    def __init__(
        self,
        seed: int = 0,
        max_components: int = 8,
        reg_covar: float = 1e-3,
        max_iter: int = 200,
    ) -> None:
        super().__init__(seed)
        self.max_components = max_components
        self.reg_covar = reg_covar
        self.max_iter = max_iter

    def _fit(self, X: np.ndarray) -> None:
        # fit in standardised units so reg_covar means the same for any units of X, then
        # map the parameters back (an exact change of variables)
        loc, scale = X.mean(axis=0), X.std(axis=0)
        scale = nonzero_scale(scale)
        X = (X - loc) / scale
        best, self.bic_, not_converged = None, {}, []
        for k in range(1, min(self.max_components, X.shape[0]) + 1):
            gm = GaussianMixture(
                n_components=k,
                covariance_type="full",
                reg_covar=self.reg_covar,
                max_iter=self.max_iter,
                random_state=self.seed,
            )
            with warnings.catch_warnings():  # reported once below, for all k together
                warnings.simplefilter("ignore", ConvergenceWarning)
                gm.fit(X)
            if not gm.converged_:
                not_converged.append(k)
            self.bic_[k] = float(gm.bic(X))
            if best is None or self.bic_[k] < self.bic_[best.n_components]:
                best = gm
        self.n_components_ = best.n_components
        if not_converged:
            chosen = "did not" if self.n_components_ in not_converged else "did"
            msg = (
                f"gmm: EM did not converge within max_iter={self.max_iter} iterations for "
                f"{not_converged} component(s) (the chosen {self.n_components_} {chosen}), so "
                "their BIC may be too high; raise max_iter, or reg_covar for degenerate data"
            )
            warnings.warn(msg, ConvergenceWarning, stacklevel=3)
        self.weights_ = best.weights_
        self.means_ = best.means_ * scale + loc
        self.covariances_ = best.covariances_ * np.outer(scale, scale)
        self._factorise()

    def _factorise(self) -> None:
        self.chols_ = np.linalg.cholesky(self.covariances_)
        self.precisions_ = np.linalg.inv(self.covariances_)

    def _components(self, X: np.ndarray) -> np.ndarray:
        """log w_k + log N(x; μ_k, Σ_k): components × rows."""
        return np.stack(
            [
                np.log(w) + gaussian_log_pdf(X, m, c)
                for w, m, c in zip(self.weights_, self.means_, self.chols_, strict=True)
            ]
        )

    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        return logsumexp(self._components(X), axis=0)

    def _conditional_mixtures(
        self, X: np.ndarray, columns: list[int]
    ) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """x_j given x_-j, per column j: a mixture of the components' 1-D conditionals
        N(x_j − r_kj/P_kj, 1/P_kj), r_k = P_k (x − μ_k), weighted by w_k N(x_-j; μ_k, Σ_k) =
        w_k N(x; μ_k, Σ_k) / N(x_j; its conditional), O(K·d²) a row. With discrete columns,
        ``log_prob`` is the mean of the density over fixed points x + o_s of the cell, so the
        mixture has a component per point and component (x_j's own offset moves its mean)."""
        offsets = self._cell_offsets() if self._dequantised() else np.zeros((1, X.shape[1]))
        parts = []
        for offset in offsets:
            Z = X + offset
            joint = self._components(Z).T  # rows × K
            r = np.einsum("nkd,kde->nke", Z[:, None, :] - self.means_[None], self.precisions_)
            parts.append((joint, r))
        out = []
        for j in columns:
            variances = np.broadcast_to(
                1 / self.precisions_[:, j, j], (X.shape[0], len(self.weights_))
            )
            log_w, means = [], []
            for joint, r in parts:
                means.append(X[:, j : j + 1] - r[:, :, j] * variances)
                at_x = -0.5 * (r[:, :, j] ** 2 * variances + np.log(variances) + LOG_2PI)
                log_w.append(joint - at_x)
            out.append((j, np.hstack(log_w), np.hstack(means), np.hstack([variances] * len(parts))))
        return out

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        counts = rng.multinomial(n, self.weights_ / self.weights_.sum())
        rows = [
            sample_gaussian(c, m, ch, rng)
            for c, m, ch in zip(counts, self.means_, self.chols_, strict=True)
        ]
        out = np.concatenate(rows)
        return out[rng.permutation(n)]

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_, "means": self.means_, "covariances": self.covariances_}

    def _fitted_json(self) -> dict[str, Any]:
        return {"n_components": self.n_components_, "bic": self.bic_}

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        self.weights_ = state["weights"]
        self.means_ = state["means"]
        self.covariances_ = state["covariances"]
        self.n_components_ = fitted["n_components"]
        self.bic_ = {int(k): v for k, v in fitted["bic"].items()}
        self._factorise()
