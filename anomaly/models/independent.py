"""``independent``: the naive-Bayes factorisation p(x) = Π_b p(x_b), one marginal per feature.

Numeric feature: a 1-D Gaussian kernel density estimate, binned (Wand 1994): the standardised
training values are spread linearly over ``bins`` grid points and the density is the mixture of
Gaussians N(g_k, h²) with weight w_k = the share of values at grid point g_k. The weights sum to
one, so the density is exactly normalised; the bandwidth h is a multiple of Silverman's rule
chosen per feature by held-out log-likelihood (the joint held-out likelihood factorises, so the
per-feature choice maximises it). Categorical feature (a one-hot block of the layout): the
smoothed frequencies (count + ``alpha``) / (n + ``alpha`` × categories), scaled by
1 − UNSEEN_PROB; an all-zero block (a category not seen in training) gets UNSEEN_PROB.

Scoring evaluates that mixture without its ``bins`` terms per value (``TaylorTable``): the
kernel sum is expanded in a Taylor series around the nearest of a fine set of points, whose
coefficients are precomputed at fit (and load) time, so a value costs ``TAYLOR_TERMS``
multiply-adds. The expansion's error has a bound that is checked per value; a value where the
bound does not hold (outside the training range, far out in a tail) is computed term by term.

Fast, mixed-type and exactly explainable (``feature_log_probs`` are the terms of the sum), and
the baseline the dependent models (``autoregressive``) must beat.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp

from anomaly.models.base import (
    LOG_2PI,
    UNSEEN_PROB,
    DensityModel,
    category_codes,
    heldout_split,
    nonzero_scale,
)
from anomaly.models.constraints import Interval, Table

#: multiples of Silverman's bandwidth tried on held-out rows
FACTORS = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0)
#: query rows per chunk of the (rows × grid points) kernel matrix
CHUNK = 4_096
#: terms of the Taylor expansion of the kernel sum (see ``TaylorTable``)
TAYLOR_TERMS = 16
#: grid points farther than this many bandwidths from an expansion point are left out of it
REACH = 12.0
#: at most this many expansion points per grid cell (bounds the table's memory)
MAX_SUBCELLS = 16
#: a value is computed term by term when the expansion's relative error bound exceeds this
TOLERANCE = 1e-12


def _binned_log_pdf(z: np.ndarray, grid: np.ndarray, log_w: np.ndarray, h: float) -> np.ndarray:
    """log Σ_k w_k N(z; g_k, h²) per value of ``z``."""
    out = np.empty(len(z))
    for start in range(0, len(z), CHUNK):
        d = (z[start : start + CHUNK, None] - grid[None]) / h
        out[start : start + CHUNK] = logsumexp(log_w[None] - 0.5 * d * d, axis=1)
    return out - np.log(h) - 0.5 * LOG_2PI


def _linear_binning(z: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """Weights (summing to 1) of ``bins`` grid points from low to high, each value split
    between its two neighbours in proportion to closeness."""
    width = (high - low) / (bins - 1) if high > low else 1.0
    pos = np.clip((z - low) / width, 0, bins - 1)
    left = np.minimum(np.floor(pos).astype(int), bins - 2) if bins > 1 else np.zeros(len(z), int)
    frac = pos - left
    w = np.bincount(left, 1 - frac, minlength=bins) + np.bincount(left + 1, frac, minlength=bins)
    return w[:bins] / len(z)


class TaylorTable:
    """Fast exact-to-``TOLERANCE`` evaluation of ``_binned_log_pdf`` for one numeric feature.

    With e_k = (z₀ − g_k)/h for an expansion point z₀ and δ = (z − z₀)/h,
    Σ_k w_k exp(−(z − g_k)²/2h²) = exp(−δ²/2) Σ_k w_k exp(−e_k²/2) exp(−δ e_k)
                                 = exp(−δ²/2) Σ_r (−δ)^r / r! · M_r(z₀),
    M_r(z₀) = Σ_k w_k exp(−e_k²/2) e_k^r. The expansion points are ``subcells`` per grid cell,
    so |δ| ≤ 1/(2·subcells·h/Δ), and the M_r of all of them are discrete convolutions of the
    weights, computed once. Two truncations, both bounded per value (relative to the sum):
    grid points with |e_k| > REACH are left out (their share ≤ exp(−(REACH − |δ|)²/2) / sum,
    the weights summing to one), and the series stops after TAYLOR_TERMS terms (error ≤
    e^x Σ_{r ≥ TAYLOR_TERMS} x^r/r! with x = REACH·|δ|, since |δ e_k| ≤ x and the sum is at least
    e^−x Σ_k w_k exp(−e_k²/2)). Values whose bound exceeds TOLERANCE are marked for the exact
    term-by-term sum.
    """

    def __init__(self, grid: np.ndarray, log_w: np.ndarray, h: float) -> None:
        self.start, self.h = float(grid[0]), h
        step = (grid[-1] - grid[0]) / (len(grid) - 1)
        step = step if step > 0 else h  # a constant feature: all its weight is on grid[0]
        ratio = step / h  # grid spacing in bandwidths
        self.subcells = int(min(MAX_SUBCELLS, max(1, np.ceil(REACH * ratio / 2))))
        self.step = step / self.subcells
        # grid cells within REACH bandwidths (no offset is larger than the grid)
        reach = min(int(np.ceil(REACH / ratio)) + 1, len(grid) - 1)
        j = np.arange(-reach, reach + 1)
        w = np.exp(log_w)
        powers = np.arange(TAYLOR_TERMS)
        sign_factorial = (-1.0) ** powers / np.cumprod(np.maximum(powers, 1))
        # coefficients[r, m * subcells + v]: term r at the point g_m + v·step/subcells
        n_points = (len(grid) - 1) * self.subcells + 1
        self.coefficients = np.zeros((TAYLOR_TERMS, n_points))
        for v in range(self.subcells):
            e = (j + v / self.subcells) * ratio
            kernel = np.where(np.abs(e) <= REACH, np.exp(-0.5 * e * e), 0.0)
            for r in powers:
                moment = np.convolve(w, kernel * e**r)[reach : reach + len(grid)]
                self.coefficients[r, v :: self.subcells] = (sign_factorial[r] * moment)[
                    : len(range(v, n_points, self.subcells))
                ]

    def log_pdf(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(``_binned_log_pdf`` of z, mask of the values left to the exact sum)."""
        position = (z - self.start) / self.step
        point = np.rint(position)
        exact = ~((point >= 0) & (point < self.coefficients.shape[1]))
        index = np.where(exact, 0, point).astype(np.intp)
        delta = (position - point) * self.step / self.h
        total = self.coefficients[-1, index]
        for r in range(TAYLOR_TERMS - 2, -1, -1):
            total = total * delta + self.coefficients[r, index]
        x = REACH * np.abs(delta)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # Σ_{r ≥ R} x^r/r! ≤ x^R/R! / (1 − x/(R + 1)) for x < R + 1
            tail = x**TAYLOR_TERMS / math.factorial(TAYLOR_TERMS) / (1 - x / (TAYLOR_TERMS + 1))
            series_bound = np.where(x < 1, np.exp(x) * tail, np.inf)
            log_total = np.log(total)
            reach_bound = -0.5 * (REACH - np.abs(delta)) ** 2 - log_total
        exact |= ~(total > 0) | (series_bound > TOLERANCE) | (reach_bound > np.log(TOLERANCE))
        out = log_total - 0.5 * delta * delta - np.log(self.h) - 0.5 * LOG_2PI
        return out, exact


class Independent(DensityModel):
    """Product of per-feature marginals: binned KDE for numerics, frequencies for categories.

    Parameters
    ----------
    seed : int
        Seeds the held-out split.
    bandwidth : float > 0 or None
        Kernel width of every numeric feature in its standard deviations; None: a multiple of
        Silverman's rule chosen per feature by held-out log-likelihood.
    bins : int ≥ 2
        Grid points of each numeric feature's binned estimate.
    alpha : float > 0
        Added to each category's count (additive smoothing).
    heldout_fraction : float in (0, 1)
        Share of the rows held out to choose the bandwidths.

    Attributes
    ----------
    bandwidths_ : ndarray of shape (n_numeric,)
        Each numeric feature's kernel width (its standard deviations).
    category_log_probs_ : ndarray of shape (n_category_columns,)
        log p of each category, block after block.

    Examples
    --------
    >>> import numpy as np
    >>> from anomaly.models import Block, create
    >>> rng = np.random.default_rng(0)
    >>> X = np.column_stack([rng.normal(size=400), np.eye(2)[rng.integers(0, 2, 400)]])
    >>> layout = [Block("amount", 0, 1), Block("channel", 1, 3, categorical=True)]
    >>> model = create("independent").fit(X, layout=layout)
    >>> model.feature_log_probs(X[:2]).shape
    (2, 2)
    >>> np.exp(model.category_log_probs_).sum().round(6)
    np.float64(1.0)
    """

    kind = "independent"
    explanation = "conditional"
    native_categories = True
    parameter_constraints: ClassVar[Table] = {
        "bandwidth": [Interval(Real, 0, None, closed="neither"), None],
        "bins": [Interval(Integral, 2, None)],
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "heldout_fraction": [Interval(Real, 0, 1, closed="neither")],
    }

    def __init__(
        self,
        seed: int = 0,
        bandwidth: float | None = None,
        bins: int = 1_024,
        alpha: float = 1.0,
        heldout_fraction: float = 0.2,
    ) -> None:
        super().__init__(seed)
        self.bandwidth = bandwidth
        self.bins = bins
        self.alpha = alpha
        self.heldout_fraction = heldout_fraction

    # ------------------------------------------------------------------ fit
    def _fit(self, X: np.ndarray) -> None:
        numeric = [b.start for b in self.layout_ if not b.categorical]
        std = X[:, numeric].std(axis=0)
        self.loc_ = X[:, numeric].mean(axis=0)
        self.scale_ = nonzero_scale(std)
        Z = (X[:, numeric] - self.loc_) / self.scale_
        held_rows, rest = heldout_split(len(Z), self.heldout_fraction, self.seed)
        held, part = Z[held_rows], Z[rest]
        self.bandwidths_ = np.empty(len(numeric))
        self.grid_ = np.empty((len(numeric), self.bins))
        self.log_weights_ = np.empty((len(numeric), self.bins))
        for j in range(len(numeric)):
            self.bandwidths_[j] = self._choose_bandwidth(part[:, j], held[:, j])
            self.grid_[j], self.log_weights_[j] = self._bin(Z[:, j])
        log_probs = []
        for block in self.layout_:
            if block.categorical:
                counts = X[:, block.start : block.stop].sum(axis=0) + self.alpha
                log_probs.append(np.log(counts / counts.sum()) + np.log1p(-UNSEEN_PROB))
        self.category_log_probs_ = np.concatenate(log_probs) if log_probs else np.zeros(0)
        self._build_tables()

    def _build_tables(self) -> None:
        """The per-feature Taylor tables scoring uses (derived state: rebuilt on load)."""
        self.tables_ = [
            TaylorTable(grid, log_w, float(h))
            for grid, log_w, h in zip(self.grid_, self.log_weights_, self.bandwidths_, strict=True)
        ]

    def _bin(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grid = np.linspace(z.min(), z.max(), self.bins)
        with np.errstate(divide="ignore"):
            return grid, np.log(_linear_binning(z, z.min(), z.max(), self.bins))

    def _choose_bandwidth(self, part: np.ndarray, held: np.ndarray) -> float:
        if self.bandwidth is not None:
            return float(self.bandwidth)
        # Silverman's rule of thumb in standard deviations (the data are standardised)
        iqr = np.subtract(*np.percentile(part, [75, 25])) / 1.349
        spread = min(1.0, iqr) if iqr > 0 else 1.0
        base = 0.9 * spread * len(part) ** -0.2
        grid, log_w = self._bin(part)
        scores = [_binned_log_pdf(held, grid, log_w, f * base).mean() for f in FACTORS]
        return float(FACTORS[int(np.argmax(scores))] * base)

    # ------------------------------------------------------------------ scoring
    def feature_log_probs(self, X: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """Each feature's exact log p(x_b) (= log p(x_b | x_-b) here): n_rows × n_blocks.

        Numeric terms are densities in the units of X; categorical terms are probabilities.
        """
        X = self._check_input(X)
        self._check_context(context, X.shape[0], "feature_log_probs")
        out = np.empty((X.shape[0], len(self.layout_)))
        j = offset = 0
        for b, block in enumerate(self.layout_):
            if block.categorical:
                width = block.stop - block.start
                codes = category_codes(X[:, block.start : block.stop])
                lp = self.category_log_probs_[offset : offset + width]
                out[:, b] = np.where(codes >= 0, lp[np.maximum(codes, 0)], np.log(UNSEEN_PROB))
                offset += width
            else:
                z = (X[:, block.start] - self.loc_[j]) / self.scale_[j]
                lp, exact = self.tables_[j].log_pdf(z)
                if exact.any():
                    lp[exact] = _binned_log_pdf(
                        z[exact], self.grid_[j], self.log_weights_[j], self.bandwidths_[j]
                    )
                out[:, b] = lp - np.log(self.scale_[j])
                j += 1
        return out

    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        return self.feature_log_probs(X).sum(axis=1)

    def conditional_modes(
        self, X: np.ndarray, context: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per feature b: log p(x_b), the log-density at the marginal's most likely value, and
        that value (here the conditional given x_-b is the marginal, so its mode is one value
        per feature). A numeric mode is searched among the ``bins`` grid points (a lower bound
        on the maximum); a categorical one is the most frequent category. Returns (observed
        n × blocks, best n × blocks, modes n × columns)."""
        observed = self.feature_log_probs(X, context)
        best = np.empty(len(self.layout_))
        modes = np.array(X, dtype=float, copy=True)
        j = offset = 0
        for b, block in enumerate(self.layout_):
            if block.categorical:
                width = block.stop - block.start
                lp = self.category_log_probs_[offset : offset + width]
                best[b] = lp.max()
                modes[:, block.start : block.stop] = np.eye(width)[int(lp.argmax())]
                offset += width
            else:
                grid = self.grid_[j]
                lp = _binned_log_pdf(grid, grid, self.log_weights_[j], self.bandwidths_[j])
                best[b] = lp.max() - np.log(self.scale_[j])
                modes[:, block.start] = grid[int(lp.argmax())] * self.scale_[j] + self.loc_[j]
                j += 1
        return observed, np.broadcast_to(best, observed.shape).copy(), modes

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = np.zeros((n, self.n_features_in_))
        j = offset = 0
        for block in self.layout_:
            if block.categorical:
                width = block.stop - block.start
                p = np.exp(self.category_log_probs_[offset : offset + width])
                codes = rng.choice(width, size=n, p=p / p.sum())
                out[np.arange(n), block.start + codes] = 1.0
                offset += width
            else:
                w = np.exp(self.log_weights_[j])
                k = rng.choice(self.bins, size=n, p=w / w.sum())
                z = self.grid_[j][k] + self.bandwidths_[j] * rng.standard_normal(n)
                out[:, block.start] = z * self.scale_[j] + self.loc_[j]
                j += 1
        return out

    # ------------------------------------------------------------------ storage
    def _state(self) -> dict[str, np.ndarray]:
        return {
            "loc": self.loc_,
            "scale": self.scale_,
            "bandwidths": self.bandwidths_,
            "grid": self.grid_,
            "log_weights": self.log_weights_,
            "category_log_probs": self.category_log_probs_,
        }

    def _fitted_json(self) -> dict[str, Any]:
        return {"bandwidths": self.bandwidths_.tolist()}

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        self.loc_, self.scale_ = state["loc"], state["scale"]
        self.bandwidths_, self.grid_ = state["bandwidths"], state["grid"]
        self.log_weights_ = state["log_weights"]
        self.category_log_probs_ = state["category_log_probs"]
        self._build_tables()
