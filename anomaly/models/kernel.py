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

Explanations (``_conditional_modes``): x_j given x_-j is the 1-D mixture over every centre of
N(x_j; c_ij, h_i²) weighted by the rest of kernel i at x_-j. A kernel is left out only where a
bound shows its weight is under e^-14/n of the row's own density (then the kernels left out
change any gain by under 1e-6 nats, whatever the value), and the bound costs one float32
product per group of columns, not a pass over every centre per column; the mixture's best mode
is scored on the kept kernels in float64, so no ``log_prob`` row is spent per feature.

Fitting computes with torch (imported by ``fit``); a fitted model holds numpy arrays and scores,
explains and samples with numpy alone, so loading and scoring a saved model never imports torch
(it costs a command a second or more to import; issue 14).
"""

from __future__ import annotations

from functools import partial
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anomaly.models import replacement
from anomaly.models.base import LOG_2PI, Block, DensityModel, nonzero_scale
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
#: explanations (``_conditional_modes``): a kernel is left out of x_j's conditional mixture
#: when its weight is below e^-TRUNCATION / n of the row's highest kernel, so the gains are
#: exact to TRUNCATION_NATS; the bound that finds those kernels leaves out the columns of one
#: of (at most) GROUPS groups at a time and allows ROUNDING_FACTOR times the float32 rounding
#: bound of the scoring product
TRUNCATION = 14.0
TRUNCATION_NATS = 1e-6  # ≥ log(1 + e^-TRUNCATION) = 8.3e-7
GROUPS = 5
ROUNDING_FACTOR = 4.0
#: the modes are looked for on the kernels within MODE_RANGE nats of the highest (the others
#: move them by under e^-MODE_RANGE); the best is then scored on every kept kernel
MODE_RANGE = 12.0
#: the widths (components) of the classes the modes are looked for in (padding costs time)
MODE_WIDTHS = (4, 8, 16, 32, 48)


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


def _starts(segment: np.ndarray) -> np.ndarray:
    """Where each run of equal values of ``segment`` (sorted) starts."""
    return np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])


def _segment_logsumexp(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """log Σ exp(values) per segment (``segment`` sorted, every segment 0..max present)."""
    starts = _starts(segment)
    top = np.maximum.reduceat(values, starts)
    return top + np.log(np.add.reduceat(np.exp(values - top[segment]), starts))


def _kept_log_density(
    r: np.ndarray,
    a: np.ndarray,
    centre: np.ndarray,
    p: np.ndarray,
    scale: float,
    loc: float,
    v: np.ndarray,
) -> np.ndarray:
    """log Σ_i exp(a_i − p_i (z − centre_i)²/2) over each row's kernels (row r, sorted) at
    the points v (rows × points, in the column's units; z whitened)."""
    z = (v - loc) / scale
    return _segment_logsumexp(a[:, None] - 0.5 * p[:, None] * (z[r] - centre[:, None]) ** 2, r)


def _mode_candidates(
    mixtures: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]], rows: int
) -> list[np.ndarray]:
    """Per mixture (row r, log a, centre, precision per kernel, rows sorted; whitened, for a
    column of ``scale`` and ``loc``): its modes in the column's units (rows × MODE_STARTS),
    by ``replacement.mixture_modes``; all the mixtures' rows at once, padded (log weight −∞)
    in classes of similar width."""
    # log weights with replacement.mixture_log_density's convention, in the column's units
    parts = [
        (f * rows + r, a - 0.5 * np.log(p), centre * scale + loc, scale**2 / p)
        for f, (r, a, centre, p, scale, loc) in enumerate(mixtures)
    ]
    segment, log_w, means, variances = (np.concatenate(x) for x in zip(*parts, strict=True))
    counts = np.bincount(segment, minlength=len(mixtures) * rows)
    position = np.arange(len(segment)) - (np.cumsum(counts) - counts)[segment]
    modes = np.empty((len(counts), replacement.MODE_STARTS))
    previous = 0
    for width in (*MODE_WIDTHS, int(counts.max())):
        members = np.flatnonzero((counts > previous) & (counts <= width))
        previous = width
        if not members.size:
            continue
        slot = np.full(len(counts), -1)
        slot[members] = np.arange(len(members))
        pick = np.flatnonzero(slot[segment] >= 0)
        at = (slot[segment[pick]], position[pick])
        shape = (len(members), max(width, replacement.MODE_STARTS))
        padded = [np.full(shape, -np.inf), np.empty(shape), np.ones(shape)]
        padded[1][:] = means[pick][position[pick] == 0][:, None]  # padding: the first mean
        for array, value in zip(padded, (log_w, means, variances), strict=True):
            array[at] = value[pick]
        modes[members] = replacement.mixture_modes(*padded)
    return [modes[f * rows : (f + 1) * rows] for f in range(len(mixtures))]


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

    def _mixture_replacements(self, X: np.ndarray, layout: list[Block]) -> replacement.Gains:
        return replacement.columnwise(self, X, layout, self._conditional_modes)

    def _conditional_modes(
        self, X: np.ndarray, columns: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per column j of ``columns`` and row x: the best mode v of x_j given x_-j and its gain
        log p(x with x_j := v) − log p(x) (columns × rows each), to within ``TRUNCATION_NATS``.

        p(x with x_j := v) ∝ Σ_i exp(a_ij − (v − c_ij)²/(2h_i²)) (whitened units), with a_ij =
        log k_i(x) + (x_j − c_ij)²/(2h_i²) the rest of kernel i at x_-j: a 1-D mixture over
        every centre. The kernels with a_ij below L − log n − ``TRUNCATION``, L the row's
        highest log k_i(x), are left out: together they weigh under e^-TRUNCATION · e^L, less
        than that share of the row's own density and of any density above it (a positive
        gain's), so leaving them out changes no gain by more than ``TRUNCATION_NATS``. They are
        found without computing a_ij for every centre: for j in a group g of the columns (at
        most ``GROUPS`` groups), a_ij ≤ log k_i(x) + Σ_{l ∈ g} (x_l − c_il)²/(2h_i²) (the
        kernel without all of g), one float32 product per group and block of rows, its
        rounding bounded and allowed for. The kernels kept (a few hundred of 20,000 on the
        speed benchmark's data) are recomputed in float64; the modes of each mixture
        (``_mode_candidates``) are compared and the best is scored on it, and the row's own
        density on the kernels with log k_i(x) above the same level."""
        centres, h = self.centres_, self.bandwidths_
        n, d = centres.shape
        at = np.asarray(columns)
        w = 1.0 / h.astype(np.float64) ** 2  # each kernel's precision (whitened)
        log_norm = self._log_normaliser(h)
        exact = centres.astype(np.float64)
        exact_t = np.ascontiguousarray(exact.T)
        groups = np.array_split(at, min(GROUPS, len(at)))
        # [q_g, |q_g|², 1] @ ... = −|q_g − c_g|²/(2h²), the group's part of log k_i(q)
        parts = [_augmented_centres(centres[:, g], h, np.zeros(n)) for g in groups]
        # float32 rounding of a log-kernel at q: under (d + 2)·2⁻²⁴·Σ|terms|, with
        # Σ|terms| ≤ (a|q|² + 2b|q| + c)/2; ROUNDING_FACTOR times that, for two products
        norms = np.linalg.norm(exact, axis=1)
        a, b = w.max(), (w * norms).max()
        c = (w * norms**2).max() + 2 * np.abs(log_norm).max()
        Q = (X - self.loc_) / self.scale_
        Q32 = Q.astype(np.float32)
        gains, values = np.empty((len(at), len(X))), np.empty((len(at), len(X)))
        step = max(1, SCORE_BLOCK_ENTRIES // n)
        log_kernel, bound = (np.empty((min(step, len(X)), n), np.float32) for _ in range(2))
        keep = np.empty((len(groups) + 1, *log_kernel.shape), dtype=bool)
        with np.errstate(over="ignore", invalid="ignore"):
            for rows in replacement.row_batches(len(X), step):
                q, q32 = Q[rows], Q32[rows]
                m = len(q)
                lk = np.matmul(_augmented_queries(q32), self._augmented, out=log_kernel[:m])
                size = np.linalg.norm(q, axis=1)
                margin = ROUNDING_FACTOR * (d + 2) * 2.0**-24 * (a * size**2 + 2 * b * size + c)
                level = lk.max(1) - np.log(n) - TRUNCATION - 2 * margin
                # a row that overflowed float32 (a NaN) keeps every kernel
                overflow = ~np.isfinite(level)
                level = np.where(overflow, -np.inf, level)[:, None]
                kept = keep[:, :m]
                np.greater_equal(lk, level, out=kept[0])
                for g, part, out in zip(groups, parts, kept[1:], strict=True):
                    upper = np.matmul(_augmented_queries(q32[:, g]), part, out=bound[:m])
                    np.greater_equal(np.subtract(lk, upper, out=upper), level, out=out)
                kept[:, overflow] = True
                # every kept kernel's log k_i(x) and differences, once, in float64
                r, i = np.divmod(np.flatnonzero(np.logical_or.reduce(kept, axis=0)), n)
                member = kept[:, r, i]  # which of the sets keeps each pair
                diff = q.T[:, r] - exact_t[:, i]  # columns × pairs
                precision = w[i]
                log_k = -0.5 * precision * np.einsum("ij,ij->j", diff, diff) - log_norm[i]
                base = _segment_logsumexp(log_k[member[0]], r[member[0]])
                # per column: (j, r, a_ij, c_ij, 1/h_i²) of the kernels its group keeps
                found = []
                for g, among in zip(groups, member[1:], strict=True):
                    r_g, i_g, log_k_g, p_g = r[among], i[among], log_k[among], precision[among]
                    for j in g:
                        a_j = log_k_g + 0.5 * p_g * diff[j, among] ** 2
                        found.append((j, r_g, a_j, exact_t[j, i_g], p_g))
                self._score_modes(found, m, at, gains[:, rows], values[:, rows], base)
        return gains, values

    def _score_modes(
        self,
        found: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
        rows: int,
        at: np.ndarray,
        gains: np.ndarray,
        values: np.ndarray,
        base: np.ndarray,
    ) -> None:
        """Each column's best mode and its gain over ``base`` into ``values`` and ``gains``
        (at the column's place in ``at``), from the kept kernels ``found`` per column (j, row,
        a_ij, c_ij, 1/h_i², rows sorted): every column's modes in one pass, on its kernels
        within ``MODE_RANGE`` of the row's highest (``_mode_candidates``), compared and scored
        on every kept kernel."""
        near = [a >= np.maximum.reduceat(a, _starts(r))[r] - MODE_RANGE for _, r, a, *_ in found]
        nearest = [
            (r[k], a[k], centre[k], p[k], self.scale_[j], self.loc_[j])
            for (j, r, a, centre, p), k in zip(found, near, strict=True)
        ]
        modes = _mode_candidates(nearest, rows)
        for f, (j, r, a, centre, p) in enumerate(found):
            height = partial(_kept_log_density, *nearest[f])
            best = replacement.best_mode(self, j, modes[f], height)[0]
            top = _kept_log_density(r, a, centre, p, *nearest[f][4:], best[:, None])[:, 0]
            column = np.searchsorted(at, j)
            gains[column] = np.where(np.isfinite(top), top - base, 0.0)
            values[column] = best

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
