"""Why was a record flagged: per-feature contributions from the density model itself.

One definition for every model kind. The contribution of raw feature ``b`` to the
improbability of a record ``x`` is the log-likelihood the record would gain if that feature
alone took its most likely value given the others::

    c_b(x) = max_v log p(x with x_b := v) − log p(x) = max_v log p(v | x_-b) − log p(x_b | x_-b)

in nats, ≥ 0 (0: the feature already has its most likely value given the rest); the maximising
``v`` is the *typical* value shown beside the record's own. The two forms are equal for any
joint density, since p(x_-b) cancels. How the maximum is found depends on the kind
(``method``):

* ``closed_form`` (``gaussian``): x_b | x_-b is Gaussian, so the maximum over a numeric
  feature is its conditional mean and c_b = ½ r_b² / P_bb with r = P (x − μ), P = Σ⁻¹; a
  categorical (one-hot) block is maximised exactly over its categories.
* ``conditional`` (kinds with ``feature_log_probs``, e.g. ``autoregressive``, ``independent``):
  the model's own conditional log p(x_b | x_-b), maximised over candidate values — or, for a
  kind with ``conditional_modes``, at the conditional's own mode candidates
  (``autoregressive``: its mixture components' means and each category, one network pass per
  feature; ``independent``: each marginal's mode, one value per feature).
* ``replacement`` (every other kind: ``gmm``, ``kde``, ``knn``, ``flow``, ``vae``): the joint
  log p(x with x_b := v), maximised over candidate values, as one batched ``log_prob`` call
  per feature.

Candidates: each category of a categorical block; for a numeric column, ``grid`` quantiles of
the model's own samples, then ``refine`` points between the best quantile's neighbours.
A grid maximum is a lower bound on the true maximum, so these contributions can only be
under-, never over-stated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from anomaly.models.base import Block, DensityModel, default_layout
from anomaly.models.gaussian import Gaussian

if TYPE_CHECKING:
    from anomaly.detector import Detector

METHODS = ("auto", "closed_form", "conditional", "replacement")
#: rows per batched log_prob call (candidates × records)
CALL_ROWS = 262_144
#: model samples drawn to place the numeric candidates
REFERENCE_SAMPLES = 2_000


@dataclass(frozen=True)
class Attribution:
    """Per-record, per-feature contributions (nats) and the typical values, in model space."""

    contributions: np.ndarray  #: (n_rows, n_blocks), ≥ 0, larger = more to blame
    typical: np.ndarray  #: (n_rows, n_columns): each block's typical value in its own columns
    blocks: list[Block]
    method: str


def attribute(
    model: DensityModel,
    X: np.ndarray,
    layout: list[Block] | None = None,
    method: str = "auto",
    grid: int = 16,
    refine: int = 6,
    seed: int = 0,
    context: np.ndarray | None = None,
) -> Attribution:
    """Contributions of each block of ``layout`` to each row's improbability (module doc).

    ``context``: the rows' context columns, for a model fitted with context (features
    conditioned on, never blamed).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        msg = f"attribute expects a 2-D array (rows × columns), got shape {X.shape}"
        raise ValueError(msg)
    blocks = default_layout(X.shape[1]) if layout is None else list(layout)
    covered = sorted(j for b in blocks for j in range(b.start, b.stop))
    if covered != list(range(X.shape[1])):
        msg = f"layout must cover columns 0..{X.shape[1] - 1} exactly once; it covers {covered}"
        raise ValueError(msg)
    model = getattr(model, "model_", model)  # `auto`: explain the kind it chose
    method = _resolve(model, method, blocks)
    if method == "closed_form":
        contributions, typical = _gaussian(model, X, blocks, context)
    elif method == "conditional" and hasattr(model, "conditional_modes"):
        contributions, typical = _modes(model, X, blocks, context)
    else:
        contributions, typical = _search(model, X, blocks, method, grid, refine, seed, context)
    return Attribution(contributions, typical, blocks, method)


def _resolve(model: DensityModel, method: str, blocks: list[Block]) -> str:
    # a model's conditionals are per block of the layout it was fitted with
    own_blocks = getattr(model, "layout_", None) == blocks
    if method not in METHODS:
        msg = f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}"
        raise ValueError(msg)
    if method == "auto":
        if isinstance(model, Gaussian):
            return "closed_form"
        has_conditionals = hasattr(model, "feature_log_probs") and own_blocks
        return "conditional" if has_conditionals else "replacement"
    if method == "closed_form" and not isinstance(model, Gaussian):
        msg = f"method 'closed_form' needs a gaussian model, not {model.kind!r}"
        raise ValueError(msg)
    if method == "conditional" and not hasattr(model, "feature_log_probs"):
        msg = f"method 'conditional' needs a model with feature_log_probs; {model.kind!r} has none"
        raise ValueError(msg)
    if method == "conditional" and not own_blocks:
        msg = "method 'conditional' needs the layout the model was fitted with"
        raise ValueError(msg)
    return method


# ---------------------------------------------------------------------------- gaussian
def _gaussian(
    model: Gaussian, X: np.ndarray, blocks: list[Block], context: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact maxima of the Gaussian conditionals x_b | x_-b ~ N(x_b − P_bb⁻¹ r_b, P_bb⁻¹)."""
    model._check_input(X)
    mean, covariance = model.conditional(context)  # of x | context (no context: of x)
    precision = np.linalg.inv(covariance)
    precision = (precision + precision.T) / 2
    r = (X - mean) @ precision
    contributions = np.zeros((X.shape[0], len(blocks)))
    typical = X.copy()
    for i, b in enumerate(blocks):
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


# ---------------------------------------------------------------------------- modes
def _modes(
    model: DensityModel, X: np.ndarray, blocks: list[Block], context: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Gains from the model's own conditional modes (``conditional_modes``)."""
    kwargs = {} if context is None else {"context": context}
    observed, best, modes = model.conditional_modes(X, **kwargs)  # type: ignore[attr-defined]
    contributions = np.maximum(best - observed, 0)
    typical = X.copy()
    for i, b in enumerate(blocks):
        cols = slice(b.start, b.stop)
        typical[:, cols] = np.where((contributions[:, i] > 0)[:, None], modes[:, cols], X[:, cols])
    return contributions, typical


# ---------------------------------------------------------------------------- search
def _search(
    model: DensityModel,
    X: np.ndarray,
    blocks: list[Block],
    method: str,
    grid: int,
    refine: int,
    seed: int,
    context: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maximise over candidate values, one batched model call per block (and refinement)."""
    if grid < 2 or refine < 0:
        msg = f"need grid ≥ 2 and refine ≥ 0, got grid={grid}, refine={refine}"
        raise ValueError(msg)
    n = X.shape[0]
    contributions = np.zeros((n, len(blocks)))
    typical = X.copy()
    if n == 0:
        return contributions, typical
    if context is None:
        reference = model.sample(REFERENCE_SAMPLES, seed=seed)
    else:  # samples given the explained rows' own contexts
        rows = np.random.default_rng(seed).integers(0, n, REFERENCE_SAMPLES)
        reference = model.sample(REFERENCE_SAMPLES, seed=seed, context=context[rows])
    levels = (np.arange(grid) + 0.5) / grid
    for i, b in enumerate(blocks):
        cols = slice(b.start, b.stop)
        score = _scorer(model, method, i)
        base = score(X, context)
        if b.categorical:
            candidates = np.eye(b.stop - b.start)[:, None, :].repeat(n, axis=1)
        else:
            values = np.quantile(reference[:, b.start], levels)
            candidates = np.broadcast_to(values[:, None, None], (grid, n, 1))
        top, best, k = _best(score, X, context, cols, candidates, base)
        if not b.categorical and refine:
            lo = values[np.maximum(k - 1, 0)]
            hi = values[np.minimum(k + 1, grid - 1)]
            steps = (np.arange(1, refine + 1) / (refine + 1))[:, None]
            fine = (lo[None, :] + steps * (hi - lo)[None, :])[:, :, None]
            fine_top, fine_best, _ = _best(score, X, context, cols, fine, base)
            better = fine_top > top
            top = np.where(better, fine_top, top)
            best = np.where(better[:, None], fine_best, best)
        contributions[:, i] = np.maximum(top, 0)
        typical[:, cols] = np.where((top > 0)[:, None], best, X[:, cols])
    return contributions, typical


Scorer = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def _scorer(model: DensityModel, method: str, block: int) -> Scorer:
    """What is maximised: the joint log p(x), or the model's conditional of block ``block``."""

    def score(Z: np.ndarray, context: np.ndarray | None) -> np.ndarray:
        kwargs = {} if context is None else {"context": context}
        if method == "conditional":
            return model.feature_log_probs(Z, **kwargs)[:, block]
        return model.log_prob(Z, **kwargs)

    return score


def _best(
    score: Scorer,
    X: np.ndarray,
    context: np.ndarray | None,
    cols: slice,
    candidates: np.ndarray,
    base: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's best gain over ``base``, its candidate (n, width) and the candidate's index."""
    k, n = candidates.shape[:2]
    gain = np.empty((k, n))
    step = max(1, CALL_ROWS // k)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        m = rows.stop - rows.start
        Z = np.repeat(X[None, rows], k, axis=0)
        Z[:, :, cols] = candidates[:, rows]
        C = None if context is None else np.tile(context[rows], (k, 1))
        gain[:, rows] = score(Z.reshape(k * m, -1), C).reshape(k, m) - base[None, rows]
    arg = gain.argmax(axis=0)
    return gain[arg, np.arange(n)], candidates[arg, np.arange(n)], arg


# ---------------------------------------------------------------------------- records
def explain(
    detector: Detector, df: pd.DataFrame, top: int = 5, method: str = "auto"
) -> list[list[dict[str, Any]]]:
    """Per row of ``df``, up to ``top`` features most to blame, largest contribution first.

    Each is ``{"feature", "contribution" (nats), "value" (raw), "typical" (raw)}``; a
    quarantined row gets an empty list. See the module docstring for the definition.
    """
    if top < 1:
        msg = f"top must be ≥ 1, got {top}"
        raise ValueError(msg)
    pre = detector.preprocessor
    prepared = pre.transform(df)
    out: list[list[dict[str, Any]]] = [[] for _ in range(len(df))]
    if len(prepared.X) == 0:
        return out
    attr = attribute(
        detector.model, prepared.X, pre.layout_, method=method, context=prepared.context
    )
    typical = pre.inverse_transform(attr.typical)
    raw = df.reset_index(drop=True).iloc[prepared.scored.index]
    names = [b.name for b in attr.blocks]
    values = {name: raw[name].tolist() for name in names}
    typicals = {name: typical[name].tolist() for name in names}
    contributions = attr.contributions.round(4).tolist()
    order = np.argsort(-attr.contributions, axis=1, kind="stable")[:, :top].tolist()
    for r, position in enumerate(prepared.scored.index):
        out[position] = [
            {
                "feature": names[j],
                "contribution": contributions[r][j],
                "value": _plain(values[names[j]][r]),
                "typical": _plain(typicals[names[j]][r]),
            }
            for j in order[r]
        ]
    return out


def _plain(value: object) -> str | float | int | bool | None:
    """A JSON-safe scalar (values come from ``tolist()``, so numbers are Python's)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return value if isinstance(value, str | int | bool) or value is None else str(value)
