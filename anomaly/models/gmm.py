"""Gaussian mixture with full covariances; the number of components is chosen by BIC.

With discrete features (one-hot blocks, and lattice columns with at most ``max_levels``
distinct training values) it is a latent-class mixture for mixed data (AutoClass; Cheeseman
& Stutz 1996) whose discrete part is a mixture of trees (Meilă & Jordan 2000, *Learning with
mixtures of trees*): p(x) = Σ_k w_k N(x_C; μ_k, Σ_k) Π_{j∈D} q_kj(x_j | x_π_k(j)), each
component's discrete features following its own Chow–Liu forest (π_k(j) the parent of j, none
for a root), exactly normalised over the discrete values, fitted by EM here (``_fit_mixed``).
With ``tree=False`` every feature is a root (the product of per-component pmfs). Without
discrete features, scikit-learn's ``GaussianMixture`` as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree
from scipy.special import entr, log_ndtr, logsumexp
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from anomaly.models.base import (
    LOG_2PI,
    UNSEEN_PROB,
    Block,
    DensityModel,
    category_codes,
    nonzero_scale,
)
from anomaly.models.constraints import Interval, Table
from anomaly.models.gaussian import gaussian_log_pdf, sample_gaussian

#: EM stops when the mean log-likelihood per row improves by less than this (scikit-learn's)
TOL = 1e-3
#: (tree edge, row) pairs handled at once (:meth:`_Forest.blocks`; about 50 bytes each)
TREE_CELLS = 2**22


class GMM(DensityModel):
    """Mixture of full-covariance Gaussians fitted by EM; the component count minimising BIC
    wins. Discrete features get a probability mass function per component: a Chow–Liu forest
    (module docstring), or independent pmfs with ``tree=False``.

    The forest of a component is refitted at every M-step from its responsibility-weighted
    counts: the pairwise mutual informations come from one weighted Gram matrix of the level
    indicators (each feature's most frequent level left out and recovered from the margins),
    and an edge is kept only where its weighted information N_k·I_k(x_i; x_j) exceeds its BIC
    cost, (m_i − 1)(m_j − 1)·log(n)/2 for features of m_i and m_j levels; the maximum
    spanning forest of what is left is the structure (rooted at each tree's first feature).
    So independent features get no edge and the model is then the product of pmfs; a single
    discrete feature has no edge either. A child's conditional pmf given each parent level
    is smoothed with ``alpha`` like the marginals; given a parent value not seen in training
    the child takes its marginal pmf, so every factor, and the product, stays normalised.
    BIC counts each table's free parameters.

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
    max_levels : int ≥ 0
        A lattice column (a numeric block with a ``step``) with at most this many distinct
        values in training gets a pmf per component over them; one with more is dequantised
        (as are all of them with 0). One-hot blocks always get a pmf over their categories.
    alpha : float > 0
        Added to every level's expected count in each component's pmf (Dirichlet smoothing).
    tree : bool
        Whether the discrete features of each component follow a Chow–Liu forest (True) or are
        independent (False: naive Bayes within a component).

    Attributes
    ----------
    n_components_ : int
        The component count chosen by BIC.
    bic_ : dict of int to float
        BIC of each component count tried (lower is better).
    weights_ : ndarray of shape (n_components_,)
    means_ : ndarray of shape (n_components_, n_continuous)
    covariances_ : ndarray of shape (n_components_, n_continuous, n_continuous)
        Of the continuous columns (all columns unless the model has discrete features).
    continuous_ : ndarray of shape (n_continuous,)
        The columns the Gaussians are over.
    discrete_ : ndarray of shape (n_discrete,)
        First column of each discrete feature's block.
    levels_ : ndarray of shape (n_levels,)
        Each discrete feature's levels, feature after feature: a lattice column's values seen
        in training, a one-hot block's category indices.
    level_features_ : ndarray of shape (n_levels,)
        Which discrete feature (index into ``discrete_``) each level belongs to.
    log_pmfs_ : ndarray of shape (n_components_, n_levels)
        log q_kj of each level, UNSEEN_PROB already taken out (see :meth:`_indicators`): the
        marginal pmfs, used for roots and for a child whose parent's value was not seen.
    parents_ : ndarray of shape (n_components_, n_discrete)
        Each discrete feature's parent in its component's forest (an index into
        ``discrete_``), −1 for a root.
    log_conditionals_ : ndarray of shape (n_entries,)
        log q_kj(a | b) of every edge's table (child level a, parent level b; a major),
        component after component, children in feature order, UNSEEN_PROB taken out.

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
    native_categories = True
    parameter_constraints: ClassVar[Table] = {
        "max_components": [Interval(Integral, 1, None)],
        "reg_covar": [Interval(Real, 0, None)],
        "max_iter": [Interval(Integral, 1, None)],
        "max_levels": [Interval(Integral, 0, None)],
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "tree": [bool],
    }

    def __init__(
        self,
        seed: int = 0,
        max_components: int = 8,
        reg_covar: float = 1e-3,
        max_iter: int = 200,
        max_levels: int = 16,
        alpha: float = 0.5,
        tree: bool = True,
    ) -> None:
        super().__init__(seed)
        self.max_components = max_components
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.max_levels = max_levels
        self.alpha = alpha
        self.tree = tree

    # ------------------------------------------------------------------ which columns
    def _cells(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The base class's cells, less the lattice columns with few levels (they get pmfs)."""
        widths, origins = super()._cells(X)
        for block in self.layout_:
            column = block.start
            few = len(np.unique(X[:, column])) <= self.max_levels
            if not block.categorical and block.step > 0 and few:
                widths[column] = 0.0
        return widths, np.where(widths > 0, origins, 0.0)

    def _discrete_blocks(self) -> list[Block]:
        """The blocks modelled by pmfs: one-hot blocks and lattice columns not dequantised."""
        return [
            b
            for b in self.layout_
            if b.categorical or (b.step > 0 and self.cell_widths_[b.start] == 0)
        ]

    def _lattice(self, j: int) -> tuple[float, float]:
        """The base class's, and a lattice feature's own lattice (it has no cell width)."""
        own = getattr(self, "lattices_", {})
        return own[j] if j in own else super()._lattice(j)

    def has_discrete(self) -> bool:
        """Whether the model has discrete features (pmfs) besides its Gaussians."""
        return len(getattr(self, "discrete_", ())) > 0

    # ------------------------------------------------------------------ fit
    def _fit(self, X: np.ndarray) -> None:
        blocks = self._discrete_blocks()
        if not blocks:
            self._fit_gaussian(X)
            return
        in_blocks = {j for b in blocks for j in range(b.start, b.stop)}
        self.continuous_ = np.array([j for j in range(X.shape[1]) if j not in in_blocks], int)
        self.discrete_ = np.array([b.start for b in blocks], int)
        levels, features = [], []
        for f, block in enumerate(blocks):
            values = (
                np.arange(block.stop - block.start, dtype=float)
                if block.categorical
                else np.unique(X[:, block.start])
            )
            levels.append(values)
            features.append(np.full(len(values), f))
        self.levels_ = np.concatenate(levels)
        self.level_features_ = np.concatenate(features)
        self._index_levels()
        # the spread of a lattice feature's training values, for the mass of unseen values
        self.lattice_means_ = np.array(
            [0.0 if b.categorical else X[:, b.start].mean() for b in blocks]
        )
        self.lattice_stds_ = np.array(
            [0.0 if b.categorical else X[:, b.start].std() for b in blocks]
        )
        self._unseen_norms()
        self._fit_mixed(X)

    def _fit_gaussian(self, X: np.ndarray) -> None:
        """No discrete features: scikit-learn's GaussianMixture for each component count."""
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
        self._warn(not_converged)
        self.weights_ = best.weights_
        self.means_ = best.means_ * scale + loc
        self.covariances_ = best.covariances_ * np.outer(scale, scale)
        self.continuous_ = np.arange(X.shape[1])
        self.discrete_, self.lattices_ = np.zeros(0, int), {}  # none (also after a refit)
        self._factorise()

    def _warn(self, not_converged: list[int]) -> None:
        if not_converged:
            chosen = "did not" if self.n_components_ in not_converged else "did"
            msg = (
                f"gmm: EM did not converge within max_iter={self.max_iter} iterations for "
                f"{not_converged} component(s) (the chosen {self.n_components_} {chosen}), so "
                "their BIC may be too high; raise max_iter, or reg_covar for degenerate data"
            )
            warnings.warn(msg, ConvergenceWarning, stacklevel=5)

    def _fit_mixed(self, X: np.ndarray) -> None:
        """EM of the mixed mixture for each component count, initialised by k-means on the
        standardised columns; BIC counts the pmfs' and the trees' free parameters too."""
        n = X.shape[0]
        loc = X[:, self.continuous_].mean(axis=0)
        scale = nonzero_scale(X[:, self.continuous_].std(axis=0))
        Z = (X[:, self.continuous_] - loc) / scale
        H, constant, codes = self._indicators(X)
        gram = (
            _Gram.of(H, self.level_features_, n) if self.tree and len(self.discrete_) > 1 else None
        )
        standardised = (X - X.mean(axis=0)) / nonzero_scale(X.std(axis=0))
        n_levels = self.level_counts_
        distinct = len(np.unique(standardised, axis=0))  # more components than rows cannot help
        best, self.bic_, not_converged = None, {}, []
        for k in range(1, min(self.max_components, distinct) + 1):
            labels = KMeans(k, n_init=1, random_state=self.seed).fit(standardised).labels_
            resp = np.eye(k)[labels]
            params = self._m_step(Z, H, codes, resp, gram)
            previous, converged = -np.inf, False
            for _ in range(self.max_iter):
                log_joint = self._joint(Z, H, codes, *params)
                total = logsumexp(log_joint, axis=1)
                resp = np.exp(log_joint - total[:, None])
                params = self._m_step(Z, H, codes, resp, gram)
                current = total.mean()
                if abs(current - previous) < TOL:
                    converged = True
                    break
                previous = current
            if not converged:
                not_converged.append(k)
            log_lik = logsumexp(self._joint(Z, H, codes, *params), axis=1).sum() + constant.sum()
            dc = Z.shape[1]
            free = (k - 1) + k * (dc + dc * (dc + 1) // 2) + k * int((n_levels - 1).sum())
            component, child = np.nonzero(params[4] >= 0)  # a table per edge, not a pmf
            free += int(((n_levels[child] - 1) * (n_levels[params[4][component, child]] - 1)).sum())
            self.bic_[k] = float(-2 * log_lik + free * np.log(n))
            if best is None or self.bic_[k] < self.bic_[best[0]]:
                best = (k, params)
        self.n_components_, params = best
        weights, means, covariances, self.log_pmfs_, self.parents_, self.log_conditionals_ = params
        self._warn(not_converged)
        self.weights_ = weights
        self.means_ = means * scale + loc
        self.covariances_ = covariances * np.outer(scale, scale)
        self._index_forest()
        self._factorise()

    def _m_step(
        self,
        Z: np.ndarray,
        H: sparse.csr_matrix,
        codes: np.ndarray,
        resp: np.ndarray,
        gram: _Gram | None,
    ) -> tuple[np.ndarray, ...]:
        """Weights, means, covariances (standardised units), smoothed log pmfs, the forests'
        parents and their tables' log conditionals."""
        nk = resp.sum(axis=0) + 10 * np.finfo(float).eps
        weights = nk / nk.sum()
        means = resp.T @ Z / nk[:, None]
        dc = Z.shape[1]
        covariances = np.empty((len(nk), dc, dc))
        for k in range(len(nk)):
            diff = Z - means[k]
            covariances[k] = (resp[:, k, None] * diff).T @ diff / nk[k]
            covariances[k].flat[:: dc + 1] += self.reg_covar
        raw = np.asarray((H.T @ resp).T)  # components × levels
        counts = raw + self.alpha
        totals = np.zeros((len(nk), len(self.discrete_)))
        np.add.at(totals.T, self.level_features_, counts.T)
        log_pmfs = np.log(counts) - np.log(totals[:, self.level_features_]) + np.log1p(-UNSEEN_PROB)
        parents = np.full((len(nk), len(self.discrete_)), -1)
        if gram is not None:
            for k in range(len(nk)):
                parents[k] = self._chow_liu(gram, resp[:, k], raw[k])
        forest = _Forest.of(parents, self.level_counts_)
        counts = np.full(forest.size, self.alpha)
        for k in range(len(nk)):
            for rows, entries, both in forest.blocks(codes, k):
                weight = np.broadcast_to(resp[rows, k], entries.shape)[both]
                counts += np.bincount(entries[both], weight, minlength=forest.size)
        columns = np.bincount(forest.entry_column, counts)
        log_conditionals = np.log(counts) - np.log(columns[forest.entry_column])
        log_conditionals += np.log1p(-UNSEEN_PROB)
        return weights, means, covariances, log_pmfs, parents, log_conditionals

    def _chow_liu(self, gram: _Gram, r: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """The parents (−1: a root) of the maximum spanning forest over the pairs of discrete
        features whose weighted information N·I(x_i; x_j) (rows weighted by ``r``; ``raw``
        the weighted count of each level) pays for their parameters (BIC)."""
        n_features = len(self.discrete_)
        gain = gram.information(r, raw)
        gain -= gram.cost
        rows, cols = np.nonzero(gain > 0)
        upper = rows < cols
        rows, cols = rows[upper], cols[upper]
        graph = sparse.csr_matrix((-gain[rows, cols], (rows, cols)), (n_features, n_features))
        return _orient(minimum_spanning_tree(graph))

    def _joint(
        self,
        Z: np.ndarray,
        H: sparse.csr_matrix,
        codes: np.ndarray,
        weights: np.ndarray,
        means: np.ndarray,
        covariances: np.ndarray,
        log_pmfs: np.ndarray,
        parents: np.ndarray,
        log_conditionals: np.ndarray,
    ) -> np.ndarray:
        """log w_k + log N(z; μ_k, Σ_k) + Σ_j log q_kj(x_j | x_π(j)): rows × components."""
        out = np.log(weights) + np.asarray(H @ log_pmfs.T)
        forest = _Forest.of(parents, self.level_counts_)
        out += self._tree_terms(codes, forest, self._deltas(forest, log_pmfs, log_conditionals)).T
        if Z.shape[1]:
            chols = np.linalg.cholesky(covariances)
            out += np.stack(
                [gaussian_log_pdf(Z, m, c) for m, c in zip(means, chols, strict=True)], 1
            )
        return out

    def _deltas(
        self, forest: _Forest, log_pmfs: np.ndarray, log_conditionals: np.ndarray
    ) -> np.ndarray:
        """Each table entry's log q_kj(a | b) − log q_kj(a): what a row with those levels adds
        to the product of marginals."""
        edge = forest.entry_edge
        levels = self.first_levels_[forest.child[edge]] + forest.entry_child_level
        return log_conditionals - log_pmfs[forest.component[edge], levels]

    @staticmethod
    def _tree_terms(codes: np.ndarray, forest: _Forest, deltas: np.ndarray) -> np.ndarray:
        """Σ over each component's edges of the rows' deltas (0 where the child's or the
        parent's value was not seen): components × rows."""
        out = np.zeros((forest.n_components, codes.shape[0]))
        for k in range(forest.n_components):
            for rows, entries, both in forest.blocks(codes, k):
                gathered = deltas[np.where(both, entries, 0)]
                out[k, rows] = np.where(both, gathered, 0.0).sum(axis=0)
        return out

    # ------------------------------------------------------------------ discrete terms
    def _index_levels(self) -> None:
        """Each discrete feature's block, level count and first level, and a lattice
        feature's spacing and first value (derived state: rebuilt on load)."""
        blocks = {b.start: b for b in self.layout_}
        self.blocks_ = [blocks[int(s)] for s in self.discrete_]
        self.origins_ = np.array(
            [self.levels_[self.level_features_ == f][0] for f in range(len(self.discrete_))]
        )
        self.steps_ = np.array([0.0 if b.categorical else b.step for b in self.blocks_])
        self.level_counts_ = np.bincount(self.level_features_)
        self.first_levels_ = np.concatenate([[0], np.cumsum(self.level_counts_)[:-1]])
        self.lattices_ = {
            b.start: (float(step), float(origin))
            for b, step, origin in zip(self.blocks_, self.steps_, self.origins_, strict=True)
            if not b.categorical
        }

    def _lattice_index(self, f: int, values: np.ndarray) -> np.ndarray:
        """Each value's nearest lattice point of discrete feature f, as an integer offset."""
        return np.round((values - self.origins_[f]) / self.steps_[f]).astype(np.int64)

    def _unseen_norms(self) -> None:
        """Per lattice feature: log of the mass the discretised N(mean, max(std, step)²) gives
        to the lattice points not seen in training (unseen values share UNSEEN_PROB by it)."""
        self.unseen_norms_ = np.zeros(len(self.discrete_))
        for f, block in enumerate(self.blocks_):
            if block.categorical:
                continue
            seen = self.levels_[self.level_features_ == f]
            seen_mass = np.exp(self._log_cells(f, seen)).sum()
            self.unseen_norms_[f] = np.log(max(1.0 - seen_mass, 1e-300))

    def _log_cells(self, f: int, values: np.ndarray) -> np.ndarray:
        """log of the cell masses [v ± step/2] of lattice points v under feature f's
        discretised Gaussian (computed in the far tail's favour: the upper tail mirrored)."""
        sd = max(self.lattice_stds_[f], self.steps_[f])
        z = (values - self.lattice_means_[f]) / sd
        half = self.steps_[f] / (2 * sd)
        z = -np.abs(z)  # the Gaussian is symmetric: compute in the lower tail
        hi, lo = log_ndtr(z + half), log_ndtr(z - half)
        with np.errstate(divide="ignore"):
            return hi + np.log(-np.expm1(np.minimum(lo - hi, -1e-300)))

    def _indicators(self, X: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
        """The rows' levels as a sparse indicator matrix (rows × levels) and as codes (rows ×
        discrete features: the level's index within its feature, −1 for a value not seen in
        training), and per row the log probability of its unseen values (categories not
        seen, lattice points not seen, which every component gives the same mass)."""
        n = X.shape[0]
        codes = np.empty((n, len(self.discrete_)), np.int64, order="F")  # by column
        constant = np.zeros(n)
        for f, block in enumerate(self.blocks_):
            if block.categorical:
                codes[:, f] = category_codes(X[:, block.start : block.stop])
                constant[codes[:, f] < 0] += np.log(UNSEEN_PROB)
            else:
                index = self._lattice_index(f, X[:, block.start])
                mine = self.levels_[self.level_features_ == f]
                known = self._lattice_index(f, mine)
                position = np.clip(np.searchsorted(known, index), 0, len(known) - 1)
                unseen = known[position] != index
                codes[:, f] = np.where(unseen, -1, position)
                if unseen.any():
                    points = self.origins_[f] + index[unseen] * self.steps_[f]
                    constant[unseen] += (
                        np.log(UNSEEN_PROB) + self._log_cells(f, points) - self.unseen_norms_[f]
                    )
        rows, features = np.nonzero(codes >= 0)
        cols = self.first_levels_[features] + codes[rows, features]
        H = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, len(self.levels_)))
        return H, constant, codes

    def _index_forest(self) -> None:
        """The forests' edges and tables, and each entry's delta (derived state)."""
        self.forest_ = _Forest.of(self.parents_, self.level_counts_)
        self.deltas_ = self._deltas(self.forest_, self.log_pmfs_, self.log_conditionals_)

    # ------------------------------------------------------------------ scoring
    def _factorise(self) -> None:
        self.chols_ = np.linalg.cholesky(self.covariances_)
        self.precisions_ = np.linalg.inv(self.covariances_)

    def _components(self, X: np.ndarray) -> np.ndarray:
        """log w_k + log N(x_C; μ_k, Σ_k) + Σ_j log q_kj(x_j | x_π(j)): components × rows."""
        Xc = X[:, self.continuous_]
        out = np.log(self.weights_)[:, None] + np.zeros((1, X.shape[0]))
        if Xc.shape[1]:
            out = np.stack(
                [
                    np.log(w) + gaussian_log_pdf(Xc, m, c)
                    for w, m, c in zip(self.weights_, self.means_, self.chols_, strict=True)
                ]
            )
        if self.has_discrete():
            H, constant, codes = self._indicators(X)
            out += np.asarray(H @ self.log_pmfs_.T).T + constant
            out += self._tree_terms(codes, self.forest_, self.deltas_)
        return out

    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        return logsumexp(self._components(X), axis=0)

    def explanation_for(self, layout: list[Block]) -> str:
        """``mixture`` (Gaussian conditionals), or the generic search for a model with discrete
        features."""
        return "replacement" if self.has_discrete() else super().explanation_for(layout)

    def _conditional_mixtures(
        self, X: np.ndarray, columns: list[int]
    ) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """x_j given x_-j, per column j: a mixture of the components' 1-D conditionals
        N(x_j − r_kj/P_kj, 1/P_kj), r_k = P_k (x − μ_k), weighted by w_k N(x_-j; μ_k, Σ_k) =
        w_k N(x; μ_k, Σ_k) / N(x_j; its conditional), O(K·d²) a row. With dequantised columns,
        ``log_prob`` is the mean of the density over fixed points x + o_s of the cell, so the
        mixture has a component per point and component (x_j's own offset moves its mean).
        Only for a model without discrete features (see :meth:`explanation_for`)."""
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
        labels = np.repeat(
            np.arange(len(self.weights_)), rng.multinomial(n, self.weights_ / self.weights_.sum())
        )
        out = np.zeros((n, self.n_features_in_))
        continuous = [
            sample_gaussian(int((labels == k).sum()), m, ch, rng)
            for k, (m, ch) in enumerate(zip(self.means_, self.chols_, strict=True))
        ]
        out[:, self.continuous_] = np.concatenate(continuous)
        if self.has_discrete():
            codes = self._sample_codes(labels, rng)
            for f, block in enumerate(self.blocks_):
                if block.categorical:
                    out[np.arange(n), block.start + codes[:, f]] = 1.0
                else:
                    out[:, block.start] = self.levels_[self.first_levels_[f] + codes[:, f]]
        return out[rng.permutation(n)]

    def _sample_codes(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each row's discrete levels drawn from its component (``labels``, sorted) by
        ancestral sampling: a component's features in the order of their depth in its forest,
        a root from its pmf, a child from its table's column of the parent's drawn level,
        over the levels seen in training (the UNSEEN_PROB left to unseen values is not
        drawn). One uniform a row and feature, drawn feature after feature."""
        n, n_features = len(labels), len(self.discrete_)
        uniforms = rng.random((n_features, n))
        codes = np.zeros((n, n_features), np.int64)
        forest, bounds = self.forest_, np.searchsorted(labels, np.arange(len(self.weights_) + 1))
        edge = np.full(self.parents_.shape, -1)
        edge[forest.component, forest.child] = np.arange(len(forest.child))
        for k, parents in enumerate(self.parents_):
            rows = slice(bounds[k], bounds[k + 1])
            for f in np.argsort(_depths(parents), kind="stable"):
                size, e = self.level_counts_[f], edge[k, f]
                if e < 0:
                    first = self.first_levels_[f]
                    probs = np.exp(self.log_pmfs_[k, first : first + size])[None, :]
                else:
                    start = forest.offset[e]
                    table = self.log_conditionals_[start : start + size * forest.n_parent_levels[e]]
                    probs = np.exp(table).reshape(size, -1).T[codes[rows, parents[f]]]
                cdf = np.cumsum(probs, axis=1)
                cdf /= cdf[:, -1:]
                drawn = (uniforms[f, rows][:, None] > cdf).sum(axis=1)
                codes[rows, f] = np.minimum(drawn, size - 1)
        return codes

    # ------------------------------------------------------------------ storage
    def _state(self) -> dict[str, np.ndarray]:
        state = {"weights": self.weights_, "means": self.means_, "covariances": self.covariances_}
        if self.has_discrete():
            state |= {
                "continuous": self.continuous_,
                "discrete": self.discrete_,
                "levels": self.levels_,
                "level_features": self.level_features_,
                "log_pmfs": self.log_pmfs_,
                "lattice_means": self.lattice_means_,
                "lattice_stds": self.lattice_stds_,
                "unseen_norms": self.unseen_norms_,
                "parents": self.parents_,
                "log_conditionals": self.log_conditionals_,
            }
        return state

    def _fitted_json(self) -> dict[str, Any]:
        return {"n_components": self.n_components_, "bic": self.bic_}

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        self.weights_ = state["weights"]
        self.means_ = state["means"]
        self.covariances_ = state["covariances"]
        self.n_components_ = fitted["n_components"]
        self.bic_ = {int(k): v for k, v in fitted["bic"].items()}
        # models saved without discrete features (all before them): Gaussians over every column
        self.continuous_ = state.get("continuous", np.arange(self.n_features_in_))
        if "discrete" in state:
            self.discrete_ = state["discrete"]
            self.levels_ = state["levels"]
            self.level_features_ = state["level_features"]
            self.log_pmfs_ = state["log_pmfs"]
            self.lattice_means_ = state["lattice_means"]
            self.lattice_stds_ = state["lattice_stds"]
            self.unseen_norms_ = state["unseen_norms"]
            self._index_levels()
            # models saved before the trees: every feature a root
            no_tree = np.full((len(self.weights_), len(self.discrete_)), -1)
            self.parents_ = state.get("parents", no_tree)
            self.log_conditionals_ = state.get("log_conditionals", np.zeros(0))
            self._index_forest()
        self._factorise()


def _xlogx(x: np.ndarray) -> np.ndarray:
    """x log x elementwise, 0 at 0 (and at rounding errors below 0); overwrites x."""
    x = np.maximum(x, 0.0, out=x)
    return np.negative(entr(x, out=x), out=x)


def _orient(forest: sparse.spmatrix) -> np.ndarray:
    """Each node's parent (−1: a root) in an undirected forest (features × features), each
    tree rooted at its first node: one breadth-first search from a virtual node joined to
    every tree's first node."""
    n = forest.shape[0]
    _, labels = connected_components(forest, directed=False)
    _, roots = np.unique(labels, return_index=True)
    edges = sparse.coo_matrix(forest)
    rows = np.concatenate([edges.row, np.full(len(roots), n)])
    cols = np.concatenate([edges.col, roots])
    graph = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), (n + 1, n + 1))
    _, predecessors = breadth_first_order(graph, n, directed=False)
    parents = predecessors[:n].astype(np.int64)
    parents[parents == n] = -1
    return parents


def _depths(parents: np.ndarray) -> np.ndarray:
    """Each node's depth in a forest given as parents (−1: a root)."""
    depths = np.zeros(len(parents), np.int64)
    for _ in range(len(parents) + 1):
        deeper = np.where(parents >= 0, depths[parents] + 1, 0)
        if np.array_equal(deeper, depths):
            return depths
        depths = deeper
    msg = "gmm: the saved parents do not form a forest (a cycle); refit the model"
    raise ValueError(msg)


@dataclass(frozen=True)
class _Gram:
    """What every M-step's Chow–Liu fit needs of the training rows: their level indicators
    less each feature's most frequent level (sparse, or dense when not sparse), which levels
    are kept, each feature's level count, and each edge's BIC cost,
    (m_i − 1)(m_j − 1)·log(n)/2 for features of m_i and m_j levels."""

    indicators: sparse.csr_matrix | np.ndarray
    kept: np.ndarray
    sizes: np.ndarray
    cost: np.ndarray

    @classmethod
    def of(cls, H: sparse.csr_matrix, level_features: np.ndarray, n: int) -> _Gram:
        counts = np.asarray(H.sum(axis=0)).ravel()
        sizes = np.bincount(level_features)
        kept = np.ones(len(counts), bool)
        kept[np.lexsort((-counts, level_features))[np.cumsum(sizes) - sizes]] = False
        indicators = H[:, kept].tocsr()
        if indicators.nnz > 0.05 * np.prod(indicators.shape):
            indicators = indicators.toarray()
        cost = np.outer(sizes - 1, sizes - 1) * np.log(n) / 2  # BIC's, of an edge's table
        return cls(indicators, kept, sizes, cost)

    def information(self, r: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """N·I(x_i; x_j) of every pair of features, rows weighted by ``r`` (N = Σ r; ``raw``:
        each level's weighted count), features × features (the diagonal is meaningless).

        The weighted counts of every pair of kept levels are the Gram matrix of the
        indicators; the left-out levels ρ follow from the margins: c(ρ_i) = N − c(i),
        c(a, ρ_j) = c(a) − Σ_b∈j c(a, b), c(ρ_i, ρ_j) = N − c(i) − c(j) + c(i, j), with c(i)
        the count of i's kept levels (so a row whose value of j was not seen in training
        counts as ρ_j, in the pair's table and in j's margin alike). Then N·I = Σ c log c −
        Σ_a c(a) log c(a) − Σ_b c(b) log c(b) + N log N over the pair's table.
        """
        total = r.sum()
        if sparse.issparse(self.indicators):
            weighted = self.indicators.multiply(r[:, None]).tocsr()
            pairs = (self.indicators.T @ weighted).toarray()
        else:
            pairs = self.indicators.T @ (self.indicators * r[:, None])
        kept = raw[self.kept]
        by_feature = self.by_feature(pairs, 1)  # kept level a × feature j: Σ_b∈j c(a, b)
        both = self.by_feature(by_feature, 0)  # c(i, j) over the kept levels of both
        mass = self.by_feature(kept, 0)  # c(i)
        # in place where the arrays are large (by_feature and both may be pairs itself)
        info = np.subtract.outer(total - mass, mass)
        info += both
        info = _xlogx(info)  # the cells (ρ_i, ρ_j)
        kept_left = self.by_feature(_xlogx(kept[:, None] - by_feature), 0)  # cells (a, ρ_j)
        info += kept_left
        info += kept_left.T
        info += self.by_feature(self.by_feature(_xlogx(pairs), 1), 0)  # cells (a, b)
        margins = self.by_feature(_xlogx(kept.copy()), 0) + _xlogx(total - mass)
        info -= margins[:, None]
        info -= margins[None, :]
        info += _xlogx(np.asarray(total))
        return info

    def by_feature(self, values: np.ndarray, axis: int) -> np.ndarray:
        """Sums of ``values`` along ``axis`` (the kept levels) over each feature's kept
        levels (0 for a feature of one level)."""
        if (self.sizes == 2).all():
            return values  # one kept level a feature (0/1 columns): nothing to sum
        shape = list(values.shape)
        shape[axis] = len(self.sizes)
        out = np.zeros(shape)
        where = [slice(None)] * values.ndim
        where[axis] = np.flatnonzero(self.sizes > 1)
        starts = (np.cumsum(self.sizes - 1) - (self.sizes - 1))[self.sizes > 1]
        out[tuple(where)] = np.add.reduceat(values, starts, axis=axis)
        return out


@dataclass(frozen=True)
class _Forest:
    """The edges of every component's forest (component after component, children in
    feature order) and their tables in the flat array of log conditionals: an edge's table
    is child level major, so entry (a, b) of edge e is ``offset[e] + a·n_parent_levels[e] +
    b``; an entry's column (edge, b) is where its child's pmf is normalised."""

    n_components: int
    component: np.ndarray
    child: np.ndarray
    parent: np.ndarray
    offset: np.ndarray
    n_parent_levels: np.ndarray
    entry_edge: np.ndarray
    entry_child_level: np.ndarray
    entry_column: np.ndarray

    @classmethod
    def of(cls, parents: np.ndarray, level_counts: np.ndarray) -> _Forest:
        component, child = np.nonzero(parents >= 0)
        parent = parents[component, child]
        rows, cols = level_counts[child], level_counts[parent]
        ends = np.cumsum(rows * cols)
        offset = ends - rows * cols
        entry_edge = np.repeat(np.arange(len(child)), rows * cols)
        local = np.arange(ends[-1] if len(ends) else 0) - offset[entry_edge]
        column = np.cumsum(cols) - cols
        return cls(
            len(parents),
            component,
            child,
            parent,
            offset,
            cols,
            entry_edge,
            local // cols[entry_edge],
            column[entry_edge] + local % cols[entry_edge],
        )

    @property
    def size(self) -> int:
        return len(self.entry_edge)

    def blocks(self, codes: np.ndarray, k: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Per block of rows (about ``TREE_CELLS`` (edge, row) pairs, so memory stays bounded
        on wide data), per edge of component k and row: the entry of the row's (child,
        parent) levels, and whether both values were seen in training (edges × rows each).
        Nothing for a component without edges."""
        edges = slice(*np.searchsorted(self.component, [k, k + 1]))
        n_edges = edges.stop - edges.start
        if n_edges == 0:
            return
        codes = codes.T  # features × rows: a row of it is contiguous if codes is F-ordered
        step = max(1, TREE_CELLS // n_edges)
        for start in range(0, codes.shape[1], step):
            rows = slice(start, start + step)
            a, b = codes[self.child[edges], rows], codes[self.parent[edges], rows]
            entries = self.offset[edges, None] + a * self.n_parent_levels[edges, None] + b
            yield rows, entries, (a >= 0) & (b >= 0)
