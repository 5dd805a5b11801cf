"""Kernel density estimators: fixed bandwidth (``kde``) and k-NN variable bandwidth (``knn``).

Both are mixtures of Gaussian kernels, one per training row ("centre"):
    p(x) = 1/n Σ_i N(x; c_i, h_i² diag(s²))
with s the per-feature standard deviation of the training rows. Each kernel integrates to one,
so the estimate is a normalised density. ``kde`` uses one h for all centres; ``knn`` sets
h_i = α · (distance from c_i to its k-th nearest neighbour), the sample-point adaptive estimator
(Breiman, Meisel & Purcell 1977; Terrell & Scott 1992), which widens kernels where data are
sparse. Hyper-parameters are chosen by held-out log-likelihood on a split of the training rows.

Discrete columns (a layout block with a lattice ``step``, and one-hot columns, step 1) get a
*discrete Gaussian* kernel on the lattice instead of a density: mass ∝ exp(−(x − c)²/(2h²)) at
the lattice points x = c + m·step, normalised by Z = Σ_m exp(−m² step²/(2h²)) (a theta
function; by Poisson summation Z → h√(2π)/step for wide kernels, so it joins the continuous
kernel smoothly). The centres stay on the lattice (no dequantisation noise), each kernel is an
exact pmf over the lattice times a density over the continuous columns, so ``log_prob`` is an
exact log-probability on discrete columns, and the quadratic form, hence the fast scoring
below, is unchanged: only each centre's normalising constant differs.

Scoring is exact (no truncation of the kernel sum). The log-kernel of centre i at a query q,
    −|q − c_i|² / (2 h_i²) − d log h_i = q·(c_i/h_i²) − |q|²/(2 h_i²) − |c_i|²/(2 h_i²) − d log h_i,
is one inner product of the augmented vectors [q, |q|², 1] and [c_i/h_i², −1/(2h_i²), …], so a
block of queries costs one float32 matrix product and one in-place log-sum-exp, in blocks small
enough to stay in cache.

Fitting computes with torch (imported by ``fit``); a fitted model holds numpy arrays and scores,
explains and samples with numpy alone, so loading and scoring a saved model never imports torch
(it costs a command a second or more to import; issue 14).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anomaly.models import replacement
from anomaly.models.base import LOG_2PI, DensityModel, nonzero_scale
from anomaly.models.constraints import Interval, SequenceOf, Table

if TYPE_CHECKING:
    import torch

#: a distance block holds at most this many entries (float32: 64 MB)
BLOCK_ENTRIES = 16_000_000
#: a scoring block (queries × centres) holds at most this many entries (float32: 8 MB)
SCORE_BLOCK_ENTRIES = 2_000_000
#: hyper-parameters are chosen on at most this many held-out rows and fit-part centres; the
#: adaptive bandwidth α·d_k is scale-free in n, and the fixed one is rescaled to all rows
MAX_HELDOUT = 1_000
MAX_SELECTION_CENTRES = 5_000
#: explanations: the centres shortlisted per row, the ``SHORTLIST`` heaviest kernels and the
#: ``SHORTLIST_EXTREME`` heaviest without each of the row's ``EXTREME`` most outlying columns
#: (see ``_conditional_mixtures``)
SHORTLIST = 256
SHORTLIST_EXTREME = 64
EXTREME = 3


def _sq_distances(Q: torch.Tensor, C: torch.Tensor, c_norms: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between rows of Q and C, clamped at 0."""
    d2 = (Q * Q).sum(1, keepdim=True) + c_norms[None, :] - 2.0 * (Q @ C.T)
    return d2.clamp_min_(0.0)


def _blocks(n_rows: int, n_cols: int) -> list[slice]:
    """Row slices whose distance blocks against ``n_cols`` columns stay under BLOCK_ENTRIES."""
    step = max(1, BLOCK_ENTRIES // max(n_cols, 1))
    return [slice(start, start + step) for start in range(0, n_rows, step)]


def log_theta(t: np.ndarray) -> np.ndarray:
    """log Σ_{m ∈ ℤ} exp(−m² t²/2), the normaliser of a discrete Gaussian with lattice step t
    (in units of its width): the direct sum for t ≥ 2, its Poisson dual below."""
    t = np.asarray(t, dtype=np.float64)
    m = np.arange(1, 9, dtype=np.float64)
    direct = np.log1p(2 * np.exp(-0.5 * (m[None] * t[:, None]) ** 2).sum(1))
    small = np.minimum(t, 2.0)
    dual = np.exp(-2 * np.pi**2 * (m[None] / small[:, None]) ** 2).sum(1)
    dual = 0.5 * LOG_2PI - np.log(small) + np.log1p(2 * dual)
    return np.where(t >= 2.0, direct, dual)


def _mixture_log_prob(d2: torch.Tensor, log_norm: np.ndarray, h: torch.Tensor) -> torch.Tensor:
    """log 1/n Σ_i k_i(x) from squared distances d2 (rows × centres), the kernels' widths h and
    log normalising constants (see ``_KernelMixture._log_normaliser``)."""
    import torch

    log_kernel = d2 * (-0.5 / (h * h))[None, :]
    log_kernel -= torch.from_numpy(log_norm)[None, :].to(log_kernel.dtype)
    return torch.logsumexp(log_kernel, dim=1) - np.log(h.shape[0])


def _augmented_centres(centres: np.ndarray, h: np.ndarray, log_norm: np.ndarray) -> np.ndarray:
    """(d + 2) × n matrix A with [q, |q|², 1] @ A = the log-kernels −|q − c|²/(2h²) − log Z_i
    (float32, like ``centres`` and ``h``)."""
    w = 1.0 / (h * h)
    rows = [
        centres * w[:, None],
        (-0.5 * w)[:, None],
        (-0.5 * w * (centres * centres).sum(1) - log_norm.astype(centres.dtype))[:, None],
    ]
    return np.ascontiguousarray(np.concatenate(rows, axis=1).T)


def _augmented_queries(Q: np.ndarray) -> np.ndarray:
    """[q, |q|², 1] per row of Q (float32)."""
    return np.concatenate([Q, (Q * Q).sum(1, keepdims=True), np.ones((len(Q), 1), Q.dtype)], 1)


def _largest(a: np.ndarray, k: int, sort: bool = False) -> np.ndarray:
    """The indices of the ``k`` largest entries along ``a``'s last axis (largest first when
    ``sort``)."""
    idx = np.argpartition(a, a.shape[-1] - k, axis=-1)[..., a.shape[-1] - k :]
    if sort:
        order = np.argsort(-np.take_along_axis(a, idx, -1), axis=-1, kind="stable")
        idx = np.take_along_axis(idx, order, -1)
    return idx


def kth_neighbour_distance(C: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of C to its k-th nearest other row."""
    import torch

    k = min(k, C.shape[0] - 1)
    norms = (C * C).sum(1)
    out = []
    for rows in _blocks(C.shape[0], C.shape[0]):
        d2 = _sq_distances(C[rows], C, norms)
        # k + 1 smallest: the row itself is at distance 0
        out.append(torch.topk(d2, k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out).sqrt()


def _discrete_gaussian(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw m ∈ ℤ per entry with P(m) ∝ exp(−m² t²/2): exact by enumeration for t ≥ 0.3;
    below, a rounded N(0, 1/t²), whose pmf differs by under e^(−2π²/t²) < 1e-90."""
    out = np.round(rng.standard_normal(len(t)) / t)
    wide = t >= 0.3
    if wide.any():
        m = np.arange(-30, 31)
        logits = -0.5 * (m[None] * t[wide, None]) ** 2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        pick = (cdf < rng.random((int(wide.sum()), 1))).sum(axis=1)
        out[wide] = m[np.minimum(pick, len(m) - 1)]
    return out


class _KernelMixture(DensityModel):
    """Shared evaluation, sampling and storage of a Gaussian kernel mixture."""

    exact_cells = True  # discrete Gaussian kernels on lattice columns (module docstring)
    explanation = "mixture"
    parameter_constraints: ClassVar[Table] = {  # KDE's and KNN's alike
        "max_points": [Interval(Integral, 1, None), None],
        "min_bandwidth": [Interval(Real, 0, None, closed="neither")],
    }

    def _prepare(self, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the per-feature scale and return (fit-part, held-out) whitened tensors."""
        import torch

        # centre as well as scale: the |q|² + |c|² − 2q·c distance loses all float32
        # precision when the data sit far from the origin
        self.loc_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = nonzero_scale(scale)
        if self.max_points is not None and X.shape[0] > self.max_points:
            keep = np.random.default_rng(self.seed).choice(X.shape[0], self.max_points, False)
            X = X[np.sort(keep)]
        Z = torch.from_numpy((X - self.loc_) / self.scale_).float()
        order = torch.randperm(Z.shape[0], generator=torch.Generator().manual_seed(self.seed))
        n_held = max(1, min(MAX_HELDOUT, Z.shape[0] // 5))
        self._all = Z
        return Z[order[n_held:][:MAX_SELECTION_CENTRES]], Z[order[:n_held]]

    def _log_normaliser(self, h: np.ndarray) -> np.ndarray:
        """Per kernel: log of its normalising constant in whitened units, (log h + ½ log 2π)
        per continuous column plus log Z(step/h) per lattice column (float64)."""
        width = np.asarray(h, dtype=np.float64)
        steps = self.cell_widths_ / self.scale_
        out = int((steps == 0).sum()) * (np.log(width) + 0.5 * LOG_2PI)
        for step, count in zip(*np.unique(steps[steps > 0], return_counts=True), strict=True):
            out = out + count * log_theta(step / width)
        return out

    def _heldout_d2(self, fit_part: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
        return _sq_distances(held, fit_part, (fit_part * fit_part).sum(1))

    def _set_centres(self, centres: np.ndarray, bandwidths: np.ndarray) -> None:
        """The fitted state: whitened centres and their widths (float32 numpy arrays)."""
        self.centres_ = np.asarray(centres, dtype=np.float32)
        self.bandwidths_ = np.maximum(np.asarray(bandwidths, dtype=np.float32), self.min_bandwidth)
        log_norm = self._log_normaliser(self.bandwidths_)
        self._augmented = _augmented_centres(self.centres_, self.bandwidths_, log_norm)

    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        n = self.centres_.shape[0]
        Q = ((X - self.loc_) / self.scale_).astype(np.float32)
        step = max(1, SCORE_BLOCK_ENTRIES // n)
        out = np.empty(Q.shape[0])
        block = np.empty((min(step, Q.shape[0]), n), dtype=np.float32)
        # a row beyond float32's range overflows to a NaN score: log_prob maps it to the floor
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, Q.shape[0], step):
                qa = _augmented_queries(Q[start : start + step])
                log_kernel = np.matmul(qa, self._augmented, out=block[: len(qa)])
                top = log_kernel.max(1, keepdims=True)
                log_kernel -= top
                # clamp: exp below e^-80 is a (slow) subnormal float; the error is ≤ n·e^-80
                np.maximum(log_kernel, -80.0, out=log_kernel)
                np.exp(log_kernel, out=log_kernel)
                out[start : start + step] = np.log(log_kernel.sum(1)) + top[:, 0]
        # densities in X's units on continuous columns; lattice columns are probabilities
        constant = np.log(n) + np.log(self.scale_[self.cell_widths_ == 0]).sum()
        return out - constant

    def _conditional_mixtures(
        self, X: np.ndarray, columns: list[int]
    ) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """x_j given x_-j, per column j: the kernels' 1-D factors N(x_j; c_ij, h_i²) weighted
        by the rest of each kernel at x_-j, exp(log k_i(x) + (x_j − c_ij)²/(2h_i²)). Only the
        ``replacement.MODE_COMPONENTS`` heaviest are kept (their mode is then scored exactly),
        and they are looked for among a per-row shortlist of centres, not all of them: the
        ``SHORTLIST`` heaviest kernels at x, and the ``SHORTLIST_EXTREME`` heaviest at x
        without each of its ``EXTREME`` most outlying columns (whose term outweighs the others
        in log k_i(x)), so no column needs a pass over every centre. One scoring product serves
        every column."""
        centres, h = self.centres_, self.bandwidths_
        n, d = X.shape
        m = min(replacement.MODE_COMPONENTS, centres.shape[0])
        short, short_extreme = (min(k, centres.shape[0]) for k in (SHORTLIST, SHORTLIST_EXTREME))
        Q = ((X - self.loc_) / self.scale_).astype(np.float32)
        half_w = 0.5 / (h * h)
        at = np.array(columns)
        log_w, means, variances = (np.empty((len(at), n, m)) for _ in range(3))
        with np.errstate(over="ignore", invalid="ignore"):  # as in _log_prob
            for rows in replacement.row_batches(n, SCORE_BLOCK_ENTRIES // centres.shape[0]):
                q = Q[rows]
                r = np.arange(len(q))[:, None]
                log_kernel = _augmented_queries(q) @ self._augmented  # −|q − c|²/(2h²) − log Z_i
                found = [_largest(log_kernel, short)]
                for j in _largest(np.abs(q), min(EXTREME, d)).T:
                    rest = log_kernel + half_w * (q[r[:, 0], j][:, None] - centres.T[j]) ** 2
                    found.append(_largest(rest, short_extreme))
                idx = np.sort(np.concatenate(found, axis=1), axis=1)
                repeated = np.zeros(idx.shape, dtype=bool)
                repeated[:, 1:] = idx[:, 1:] == idx[:, :-1]
                # per shortlisted centre and column: log k_i(x) + (x_j − c_ij)²/(2h_i²)
                near = centres[idx][:, :, at].transpose(0, 2, 1)  # rows × columns × shortlist
                w = half_w[idx][:, None, :]
                rest = np.where(repeated, -np.inf, log_kernel[r, idx])
                rest = rest[:, None, :] + w * (q[:, at, None] - near) ** 2
                pick = _largest(rest, m, sort=True)  # rows × columns × m, largest first
                top = np.take_along_axis(rest, pick, 2).astype(np.float64)
                var = 0.5 / np.take_along_axis(np.broadcast_to(w, rest.shape), pick, 2)
                var = var.astype(np.float64)
                # exp(top) = weight × √(2π h²) of the normalised N(v; c_ij, h_i²)
                log_w[:, rows] = (top + 0.5 * np.log(2 * np.pi * var)).swapaxes(0, 1)
                means[:, rows] = np.take_along_axis(near, pick, 2).swapaxes(0, 1)
                variances[:, rows] = var.swapaxes(0, 1)
        scale, loc = self.scale_[at], self.loc_[at]
        return [
            (j, log_w[c], means[c] * scale[c] + loc[c], variances[c] * scale[c] ** 2)
            for c, j in enumerate(columns)
        ]

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        idx = rng.integers(0, self.centres_.shape[0], n)
        centres = self.centres_.astype(np.float64)[idx]
        h = self.bandwidths_.astype(np.float64)[idx]
        Z = centres + h[:, None] * rng.standard_normal(centres.shape)
        steps = self.cell_widths_ / self.scale_
        for j in np.flatnonzero(steps > 0):  # a discrete Gaussian on the lattice
            Z[:, j] = centres[:, j] + steps[j] * _discrete_gaussian(steps[j] / h, rng)
        return Z * self.scale_ + self.loc_

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "loc": self.loc_,
            "scale": self.scale_,
            "centres": self.centres_,
            "bandwidths": self.bandwidths_,
        }

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        self.loc_, self.scale_ = state["loc"], state["scale"]
        self._set_centres(state["centres"], state["bandwidths"])
        for key, value in fitted.items():
            setattr(self, key, value)


class KDE(_KernelMixture):
    """Gaussian kernel density estimate, one kernel per training row.

    Parameters
    ----------
    seed : int
        Seeds the held-out split and the subsample of ``max_points`` rows.
    bandwidth : float > 0 or None
        The kernel width in standard deviations of each feature; None: a multiple of Scott's
        rule chosen by held-out log-likelihood.
    max_points : int ≥ 1 or None
        Keep at most this many (seeded, random) training rows as kernel centres; None: all.
    min_bandwidth : float > 0
        Floor of the kernel width (standard deviations).

    Attributes
    ----------
    bandwidth_ : float
        The kernel width used (standard deviations).
    centres_ : ndarray of shape (n_centres, n_features), float32
        The kernel centres, standardised.

    Examples
    --------
    >>> import numpy as np
    >>> from anomaly.models import create
    >>> X = np.random.default_rng(0).normal(size=(300, 2))
    >>> model = create("kde", max_points=200).fit(X)
    >>> model.centres_.shape, model.log_prob(X[:4]).shape
    ((200, 2), (4,))
    """

    kind = "kde"
    parameter_constraints: ClassVar[Table] = {
        "bandwidth": [Interval(Real, 0, None, closed="neither"), None]
    }

    def __init__(
        self,
        seed: int = 0,
        bandwidth: float | None = None,
        max_points: int = 20_000,
        min_bandwidth: float = 1e-3,
    ) -> None:
        super().__init__(seed)
        self.bandwidth = bandwidth
        self.max_points = max_points
        self.min_bandwidth = min_bandwidth

    def _fit(self, X: np.ndarray) -> None:
        import torch

        fit_part, held = self._prepare(X)
        n, dim = self._all.shape
        if self.bandwidth is not None:
            self.bandwidth_ = float(self.bandwidth)
        else:
            d2 = self._heldout_d2(fit_part, held)
            scott = fit_part.shape[0] ** (-1.0 / (dim + 4))
            grid = scott * np.geomspace(0.05, 3.0, 24)
            scores = []
            for h in grid:
                hs = torch.full((fit_part.shape[0],), h)
                lp = _mixture_log_prob(d2, self._log_normaliser(hs.numpy()), hs)
                scores.append(lp.mean().item())
            best = float(grid[int(np.argmax(scores))])
            # the optimal bandwidth shrinks as n^(-1/(d+4)); rescale to all n rows
            self.bandwidth_ = best * (fit_part.shape[0] / n) ** (1.0 / (dim + 4))
        self._set_centres(self._all.numpy(), np.full(n, self.bandwidth_, dtype=np.float32))
        del self._all

    def _fitted_json(self) -> dict[str, Any]:
        return {"bandwidth_": self.bandwidth_}


class KNN(_KernelMixture):
    """Variable-bandwidth kernel estimator, h_i = α · (k-th neighbour distance of centre i).

    Parameters
    ----------
    seed : int
        Seeds the held-out split and the subsample of ``max_points`` rows.
    k : int ≥ 1 or None
        The neighbour whose distance sets each kernel's width; None: the best of ``k_grid``
        by held-out log-likelihood.
    alpha : float > 0 or None
        α; None: the best of a geometric grid (0.1 … 4) by held-out log-likelihood.
    k_grid : list of int ≥ 1
        The values of ``k`` tried when ``k`` is None.
    max_points, min_bandwidth
        As for :class:`KDE` (every kernel width is floored).

    Attributes
    ----------
    k_, alpha_ : int, float
        The k and α used.
    bandwidths_ : ndarray of shape (n_centres,), float32
        Each centre's kernel width (standard deviations).

    Examples
    --------
    >>> import numpy as np
    >>> from anomaly.models import create
    >>> X = np.random.default_rng(0).normal(size=(300, 2))
    >>> model = create("knn", k=10).fit(X)
    >>> model.k_, model.bandwidths_.shape, model.log_prob(X[:4]).shape
    (10, (300,), (4,))
    """

    kind = "knn"
    parameter_constraints: ClassVar[Table] = {
        "k": [Interval(Integral, 1, None), None],
        "alpha": [Interval(Real, 0, None, closed="neither"), None],
        "k_grid": [SequenceOf(Interval(Integral, 1, None))],
    }

    def __init__(
        self,
        seed: int = 0,
        k: int | None = None,
        alpha: float | None = None,
        k_grid: tuple[int, ...] = (5, 10, 20, 40),
        max_points: int = 20_000,
        min_bandwidth: float = 1e-3,
    ) -> None:
        super().__init__(seed)
        self.k = k
        self.alpha = alpha
        self.k_grid = k_grid
        self.max_points = max_points
        self.min_bandwidth = min_bandwidth

    def _fit(self, X: np.ndarray) -> None:
        fit_part, held = self._prepare(X)
        ks = [self.k] if self.k is not None else list(self.k_grid)
        alphas = [self.alpha] if self.alpha is not None else list(np.geomspace(0.1, 4.0, 20))
        d2 = self._heldout_d2(fit_part, held)
        best = (-np.inf, ks[0], alphas[0])
        for k in ks:
            dk = kth_neighbour_distance(fit_part, k)
            for a in alphas:
                h = (float(a) * dk).clamp_min(self.min_bandwidth)
                score = _mixture_log_prob(d2, self._log_normaliser(h.numpy()), h).mean().item()
                if score > best[0]:
                    best = (score, k, a)
        self.k_, self.alpha_ = int(best[1]), float(best[2])
        dk_all = kth_neighbour_distance(self._all, self.k_)
        self._set_centres(self._all.numpy(), (self.alpha_ * dk_all).numpy())
        del self._all

    def _fitted_json(self) -> dict[str, Any]:
        return {"k_": self.k_, "alpha_": self.alpha_}
