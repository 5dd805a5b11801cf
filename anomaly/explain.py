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
* ``mixture`` (``gmm``, ``kde``, ``knn``, ``vae``): x_b | x_-b is a 1-D Gaussian mixture
  (per component, per kernel with weights from the other features, or per importance draw of
  the ``vae``); its mode, found by mean-shift, is scored by ``log_prob`` (``kde``/``knn``: on
  the mixture of every kernel a certified bound keeps, exact to 1e-6 nats).
* ``conditional`` (``autoregressive``, ``independent``): the model's own conditional
  log p(x_b | x_-b), at its ``conditional_modes``.
* ``replacement`` (every other kind, e.g. ``flow``; any kind on request): the joint
  log p(x with x_b := v), maximised over candidate values (quantiles of the model's samples,
  then parabolic steps), as one batched ``log_prob`` call per feature and round.

The model does it (``DensityModel.best_replacements``, ``anomaly/models/replacement.py``);
``auto`` explains the kind it chose. For ``mixture`` and ``replacement`` every gain is the
model's own ``log_prob`` difference at the value shown (``kde``/``knn``: the density's own
difference to 1e-6 nats, computed on the kernels that matter in float64, so within
``log_prob``'s float32 rounding of it), a lower bound on the true maximum: contributions can
only be under-, never over-stated (beyond that tolerance). Lattice (e.g. integer) columns take
values on their lattice only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from anomaly.models.base import Block, DensityModel, default_layout
from anomaly.models.replacement import row_batches

if TYPE_CHECKING:
    from anomaly.detector import Detector

METHODS = ("auto", "closed_form", "mixture", "conditional", "replacement")
#: rows explained per call of the model (bounds the memory of the candidates and mixtures)
ATTRIBUTE_ROWS = 4_096


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
    grid: int = 6,
    refine: int = 3,
    seed: int = 0,
    context: np.ndarray | None = None,
) -> Attribution:
    """Contributions of each block of ``layout`` to each row's improbability (module doc).

    ``method``: ``auto`` (the model's own), or one of :data:`METHODS` the model offers (its
    own, or ``replacement``, the search with ``grid`` quantiles, ``refine`` parabolic steps and
    ``seed``, for any kind).
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
    if method not in METHODS:
        msg = f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}"
        raise ValueError(msg)
    chosen = model.explanation_for(blocks) if method == "auto" else method
    batches = list(row_batches(len(X), ATTRIBUTE_ROWS)) or [slice(0, 0)]
    parts = [
        model.best_replacements(
            X[rows],
            blocks,
            chosen,
            None if context is None else context[rows],
            grid=grid,
            refine=refine,
            seed=seed,
        )
        for rows in batches
    ]
    contributions, typical = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Attribution(contributions, typical, blocks, chosen)


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
    # a numeric column read from CSV is text; a scored row's values parse, so show numbers
    values = {
        b.name: (
            raw[b.name] if b.categorical else pd.to_numeric(raw[b.name], errors="coerce")
        ).tolist()
        for b in attr.blocks
    }
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
