"""``auto``: fit several kinds and combine or choose them on held-out rows; no labels needed.

Each kind in ``candidates`` is fitted on ``1 - heldout_fraction`` of the rows and scored on the
rest (log-likelihoods are honest on discrete columns, see ``anomaly.models.base``, so the kinds
compare in nats). The ``rule`` makes one density of them:

- ``"mean"``: the one kind with the best mean held-out log-likelihood, refitted
  on all rows;
- ``"tail"``: the one kind with the best mean log-likelihood on the held-out rows that are
  least typical under all candidates pooled (their lowest ``TAIL_FRACTION``), where anomalies
  are ranked; refitted on all rows;
- ``"stack"``: the stacked density Σ_k w_k p_k (Smyth & Wolpert 1999, *Linearly combining
  density estimators via stacking*), the weights maximising the held-out likelihood (EM over
  the fixed held-out log-densities); components under ``min_weight`` are dropped. A mixture of
  normalised densities is normalised and samples (pick a component, draw from it);
- ``"product"``: the geometric mixture Π_k p_k^(1/K) / Z, a product of experts whose log is
  the average of the candidates' log-likelihoods minus log Z: a row is normal only if the
  families agree it is (the averaging ensemble of the outlier-ensemble literature, Aggarwal &
  Sathe 2015). The average is meaningful because the nats are honest. Z is estimated by
  importance sampling from an arithmetic mixture Σ_k v_k p_k of the candidates (the proposal,
  ``proposal_weights``): the ratio Π_k p_k^(w_k) / Σ_k v_k p_k is at most
  Σ_k w_k p_k / Σ_k v_k p_k ≤ max_k w_k / v_k (AM–GM), so the estimate has bounded variance,
  and the ratio over that bound is the acceptance probability of an exact rejection sampler.
  v = w, except that a kind whose sampling is sequential over the d columns (``flow``,
  ``autoregressive``: a draw costs ∝ d² where the others' cost ∝ d) gets its share cut by
  ``SEQUENTIAL_COLUMNS`` / d beyond that many columns (the bound grows by the same factor at
  most; on 1,555 columns the default's Z estimate drew 1,800 rows from ``flow``, 289 CPU s per
  1,024);
- ``"consensus"``: the same geometric mixture Π_k p_k^(w_k) / Z with weights w_k ∝ 1 / s_k,
  s_k the spread (``spread``) of candidate k's log-likelihood over the held-out rows. Its log
  ranks rows exactly as the mean of the candidates' standardised log-likelihoods
  (log p_k − m_k) / s_k does: the z-score averaging ensemble of the outlier-ensemble
  literature (Aggarwal & Sathe 2015; Kriegel et al. 2011 on making scores comparable), where
  each family gets an equal say in the ranking whatever the scale of its nats. Being a
  normalised density, it samples, saves and calibrates like any kind. The default.

A combination (``stack``, ``product``, ``consensus``) keeps the models fitted on the fit part:
its weights and Z were estimated for them. ``selection_`` says what was decided:
``{"rule", "chosen", "weights", "candidates": {kind: held-out log-likelihood per record}}``.

The default is ``consensus`` over one kind of each family: ``gmm`` (parametric), ``kde`` and
``knn`` (kernel), ``flow`` (neural). No label-free rule picks the right family reliably: with
honest likelihoods, held-out likelihood still prefers ``gmm``/``flow`` on datasets where they rank
anomalies worse, in line with Ma et al. (2023, *The need for unsupervised outlier model
selection*). A choice of one family is blind wherever another family is the right one (the
kernel pair, the earlier default, trails the best peer by 4–6 points of AUROC on vertebral,
Waveform and yeast, where a mixture or a flow wins, and by more on data it was not chosen on);
the consensus gives every family an equal say, so no single family's blind spot decides
(docs/benchmarks.md, §1c). ``rule="mean"`` with ``candidates=("kde", "knn")`` is the earlier
default: faster to fit and to explain.
"""

from __future__ import annotations

import logging
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp

from anomaly.models.base import Block, DensityModel, heldout_split
from anomaly.models.constraints import Interval, Options, SequenceOf, Table
from anomaly.models.kinds import PATHS, create

logger = logging.getLogger(__name__)

RULES = ("stack", "product", "consensus", "mean", "tail")
#: the rules whose density is a geometric mixture Π_k p_k^(w_k) / Z
GEOMETRIC = ("product", "consensus")
#: draws from the arithmetic mixture that estimate log Z of the ``product`` rule
Z_SAMPLES = 4_096
#: a geometric mixture's ``sample`` draws at most this many proposals per row (and at least
#: ``Z_SAMPLES``) for exact rejection; rows still missing then are drawn by importance
#: resampling of all the proposals (weights ∝ the ratio; approximate, logged). Where the
#: acceptance rate is below 1 / ``PROPOSALS_PER_ROW`` (rejection could not deliver the rows),
#: one pool of ``Z_SAMPLES`` proposals is drawn and resampled
PROPOSALS_PER_ROW = 16
#: beyond this many columns, a sequential sampler's share of the proposals is cut by this / d
SEQUENTIAL_COLUMNS = 64
#: share of the held-out rows the ``tail`` rule scores on
TAIL_FRACTION = 0.1


def stack_weights(H: np.ndarray, iterations: int = 500) -> np.ndarray:
    """Mixture weights maximising Σ_i log Σ_k w_k exp(H[k, i]) (EM; H: kinds × rows)."""
    w = np.full(H.shape[0], 1.0 / H.shape[0])
    for _ in range(iterations):
        log_r = np.log(np.maximum(w, 1e-300))[:, None] + H
        log_r -= logsumexp(log_r, axis=0, keepdims=True)
        new = np.exp(log_r).mean(axis=1)
        if np.abs(new - w).max() < 1e-7:
            return new
        w = new
    return w


def spread(h: np.ndarray) -> float:
    """Spread of one candidate's held-out log-likelihoods: their interquartile range.

    Robust: a few held-out rows with a value the fit part never showed (log p ≈ −10¹⁰ under
    the exact discrete kernels) do not swamp it, as they would a standard deviation.
    """
    q1, q3 = np.percentile(h, [25, 75])
    return float(q3 - q1)


def consensus_weights(H: np.ndarray) -> np.ndarray:
    """Weights ∝ 1 / spread of each candidate's held-out log-likelihoods, summing to 1."""
    s = np.array([spread(h) for h in H])
    if not np.all(s > 0):  # a degenerate spread (e.g. one held-out row): equal say
        return np.full(len(s), 1.0 / len(s))
    return (1.0 / s) / (1.0 / s).sum()


def tail_rows(H: np.ndarray, fraction: float = TAIL_FRACTION) -> np.ndarray:
    """Indices of the held-out rows least typical under the candidates pooled (H: kinds × rows)."""
    pooled = logsumexp(H, axis=0)
    n = max(1, round(fraction * H.shape[1]))
    return np.argsort(pooled)[:n]


class Auto(DensityModel):
    """A combination of several kinds (default: the consensus of ``gmm``, ``kde``, ``knn``,
    ``flow``) or one selected kind, decided on held-out rows.

    Parameters
    ----------
    seed : int
        Seeds the held-out split and every candidate.
    candidates : non-empty list of kinds other than "auto"
        The kinds fitted and compared (default: ``gmm``, ``kde``, ``knn``, ``flow``).
    candidate_params : dict or None
        kind → that kind's parameters (kinds not named use their defaults); each candidate
        checks its own when it is fitted.
    heldout_fraction : float in (0, 1)
        Share of the rows the candidates are scored on.
    rule : {"mean", "tail", "stack", "product", "consensus"}
        How the candidates make one density (module docstring; default ``"consensus"``).
    min_weight : float in [0, 1)
        ``stack``: components with a smaller weight are dropped.

    Attributes
    ----------
    chosen_ : str
        The kind chosen, or the combination (e.g. ``"stack of kde + knn"``).
    selection_ : dict
        What was decided: rule, chosen, weights and each candidate's held-out log-likelihood
        per record.
    components_ : list of DensityModel
        The fitted models the density is made of.
    weights_ : ndarray of shape (n_components,)

    Examples
    --------
    >>> import numpy as np
    >>> from anomaly.models import create
    >>> X = np.random.default_rng(0).normal(size=(300, 2))
    >>> model = create("auto", candidates=("gaussian", "independent")).fit(X)
    >>> sorted(model.selection_["candidates"]), model.log_prob(X[:4]).shape
    (['gaussian', 'independent'], (4,))
    """

    kind = "auto"
    exact_cells = True  # the candidates see the layout and handle discrete columns themselves
    parameter_constraints: ClassVar[Table] = {
        "candidates": [SequenceOf(Options(*(kind for kind in PATHS if kind != "auto")))],
        "candidate_params": [dict, None],
        "heldout_fraction": [Interval(Real, 0, 1, closed="neither")],
        "rule": [Options(*RULES)],
        "min_weight": [Interval(Real, 0, 1, closed="left")],
    }

    def __init__(
        self,
        seed: int = 0,
        candidates: tuple[str, ...] = ("gmm", "kde", "knn", "flow"),
        candidate_params: dict[str, dict[str, Any]] | None = None,
        heldout_fraction: float = 0.2,
        rule: str = "consensus",
        min_weight: float = 0.01,
    ) -> None:
        super().__init__(seed)
        self.candidates = candidates
        self.candidate_params = candidate_params
        self.heldout_fraction = heldout_fraction
        self.rule = rule
        self.min_weight = min_weight

    def validate_parameters(self) -> None:
        """Also each candidate's (``candidate_params``), before any candidate is fitted."""
        super().validate_parameters()
        for kind in self.candidates:
            self._make(kind).validate_parameters()

    def _make(self, kind: str) -> DensityModel:
        return create(kind, seed=self.seed, **(self.candidate_params or {}).get(kind, {}))

    def _fit(self, X: np.ndarray) -> None:
        kinds = list(dict.fromkeys(self.candidates))
        held_rows, rest = heldout_split(X.shape[0], self.heldout_fraction, self.seed)
        held, fit_part = X[held_rows], X[rest]
        fitted = [self._make(k).fit(fit_part, layout=self.layout_) for k in kinds]
        H = np.stack([model.log_prob(held) for model in fitted])
        self.scores_ = {k: float(h.mean()) for k, h in zip(kinds, H, strict=True)}
        logger.info("auto: held-out log-likelihood per record %s", self.scores_)
        if self.rule == "stack":
            w = stack_weights(H)
            w = np.where(w >= self.min_weight, w, 0.0)
        elif self.rule == "product":
            w = np.ones(len(kinds))
        elif self.rule == "consensus":
            w = consensus_weights(H)
        else:
            rows = tail_rows(H) if self.rule == "tail" else slice(None)
            w = np.eye(len(kinds))[int(np.argmax(H[:, rows].mean(axis=1)))]
        keep = np.flatnonzero(w > 0)
        self.kinds_ = [kinds[i] for i in keep]
        self.weights_ = w[keep] / w[keep].sum()
        if self.rule in ("mean", "tail"):  # one kind: refit it on all rows (more data)
            self.components_ = [self._make(self.kinds_[0]).fit(X, layout=self.layout_)]
        else:  # a combination: keep the models its weights (and Z) were estimated for
            self.components_ = [fitted[i] for i in keep]
        self.log_z_ = 0.0
        if self.rule in GEOMETRIC and len(keep) > 1:
            rng = np.random.default_rng(self.seed)
            draws = self._mixture_sample(Z_SAMPLES, rng, self.proposal_weights())
            self.log_z_ = float(logsumexp(self._log_ratio(draws)) - np.log(Z_SAMPLES))
        self._set_chosen()

    def _set_chosen(self) -> None:
        one = len(self.kinds_) == 1
        how = f"{self.rule} of " if self.rule in GEOMETRIC else "stack of "
        self.chosen_ = self.kinds_[0] if one else how + " + ".join(self.kinds_)
        if one:  # explanations explain the kind itself (anomaly.explain)
            self.model_ = self.components_[0]
        self.selection_ = {
            "rule": self.rule,
            "chosen": self.chosen_,
            "weights": dict(zip(self.kinds_, self.weights_.tolist(), strict=True)),
            "candidates": dict(self.scores_),
        }

    def explanation_for(self, layout: list[Block]) -> str:
        """One chosen kind explains itself; a combination is explained by the search."""
        if len(self.components_) == 1:
            return self.components_[0].explanation_for(layout)
        return super().explanation_for(layout)

    def best_replacements(
        self,
        X: np.ndarray,
        layout: list[Block],
        method: str | None = None,
        context: np.ndarray | None = None,
        grid: int = 6,
        refine: int = 3,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The chosen kind's (one kind) or the search's (a combination) best replacements."""
        one = self.components_[0] if len(self.components_) == 1 else super()
        return one.best_replacements(X, layout, method, context, grid, refine, seed)

    def _component_log_probs(self, X: np.ndarray) -> np.ndarray:
        return np.stack([m.log_prob(X) for m in self.components_])

    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        L = self._component_log_probs(X)
        if self.rule in GEOMETRIC:
            return self.weights_ @ L - self.log_z_
        return logsumexp(np.log(self.weights_)[:, None] + L, axis=0)

    def proposal_weights(self) -> np.ndarray:
        """Weights v of the arithmetic mixture a geometric mixture's draws are proposed from:
        the weights, each sequential sampler's share cut by ``SEQUENTIAL_COLUMNS`` / d."""
        cut = min(1.0, SEQUENTIAL_COLUMNS / self.n_features_in_)
        v = self.weights_ * [cut if m.sequential_sampling else 1.0 for m in self.components_]
        return v / v.sum()

    def _log_ratio(self, X: np.ndarray) -> np.ndarray:
        """log of Π_k p_k^(w_k) / Σ_k v_k p_k (≤ log max_k w_k / v_k) per row."""
        L = self._component_log_probs(X)
        log_v = np.log(self.proposal_weights())
        return self.weights_ @ L - logsumexp(log_v[:, None] + L, axis=0)

    def _mixture_sample(
        self, n: int, rng: np.random.Generator, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """n draws from Σ_k weights_k p_k (default: the weights)."""
        w = self.weights_ if weights is None else weights
        counts = rng.multinomial(n, w / w.sum())
        draws = [
            m.sample(int(c), seed=int(rng.integers(2**31)))
            for c, m in zip(counts, self.components_, strict=True)
        ]
        return np.concatenate(draws)[rng.permutation(n)]

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.rule not in GEOMETRIC or len(self.components_) == 1 or n == 0:
            return self._mixture_sample(n, rng)
        # rejection from the proposal: accept a draw with probability ratio / bound
        v = self.proposal_weights()
        log_bound = float(np.log(np.max(self.weights_ / v)))
        log_rate = self.log_z_ - log_bound  # the acceptance rate
        kept: list[np.ndarray] = []
        pool: list[tuple[np.ndarray, np.ndarray]] = []  # every draw and its log ratio
        have = 0
        hopeful = PROPOSALS_PER_ROW * np.exp(log_rate) >= 1.0
        budget = max(PROPOSALS_PER_ROW * n, Z_SAMPLES) if hopeful else Z_SAMPLES
        while have < n and budget > 0:
            m = int(min(budget, np.ceil(1.2 * (n - have) * np.exp(min(-log_rate, 700.0)))))
            draws = self._mixture_sample(m, rng, v)
            log_ratio = self._log_ratio(draws)
            accept = np.log(rng.random(m)) < log_ratio - log_bound
            kept.append(draws[accept])
            pool.append((draws, log_ratio))
            have, budget = have + int(accept.sum()), budget - m
        if have < n:  # the rest by importance resampling (with replacement) of every draw
            draws = np.concatenate([d for d, _ in pool])
            log_ratio = np.concatenate([r for _, r in pool])
            p = np.exp(log_ratio - log_ratio.max())
            kept.append(draws[rng.choice(len(draws), n - have, p=p / p.sum())])
            logger.warning(
                "auto: acceptance rate %.2g; %d of %d samples drawn by importance resampling "
                "(approximate)",
                np.exp(log_rate),
                n - have,
                n,
            )
        return np.concatenate(kept)[:n][rng.permutation(n)]

    def candidate_sample(
        self, n: int, seed: int = 0, context: np.ndarray | None = None
    ) -> np.ndarray:
        """Draws from the proposal mixture of the components (``proposal_weights``): the same
        support as the density, without the rejection step a geometric mixture needs."""
        self._check_fitted()
        self._check_context(context, n, "sample")
        weights = self.proposal_weights() if self.rule in GEOMETRIC else None
        return self._mixture_sample(n, np.random.default_rng(seed), weights)

    def _fitted_json(self) -> dict[str, Any]:
        return {
            "kinds": self.kinds_,
            "weights": self.weights_.tolist(),
            "scores": self.scores_,
            "log_z": self.log_z_,
        }

    def _save_weights(self, directory: Path) -> None:
        for i, model in enumerate(self.components_):
            model.save(directory / f"component{i}")

    def _load_weights(self, directory: Path, fitted: dict[str, Any]) -> None:
        from anomaly.models.loading import load

        self.scores_ = fitted["scores"]
        self.log_z_ = fitted.get("log_z", 0.0)
        if "kinds" not in fitted:  # saved before stacking: one chosen kind in chosen/
            self.kinds_, self.weights_ = [fitted["chosen"]], np.ones(1)
            self.components_ = [load(directory / "chosen")]
        else:
            self.kinds_, self.weights_ = fitted["kinds"], np.asarray(fitted["weights"])
            self.components_ = [load(directory / f"component{i}") for i in range(len(self.kinds_))]
        self._set_chosen()
