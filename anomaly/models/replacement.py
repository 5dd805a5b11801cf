"""Each feature's most likely value given the others: what explanations are made of.

For a row x and a raw feature b (a numeric column or a one-hot block of ``layout``) the best
replacement is v* = argmax_v log p(x with x_b := v), and its gain c_b = log p(x with x_b := v*)
− log p(x) ≥ 0 in nats (``anomaly/explain.py`` gives the meaning). Every gain here is scored
by the model's own ``log_prob`` at the value shown, so it is the gain of a value the model was
actually asked about: a lower bound of the true maximum, never above it. Two ways to find v*:

* :func:`search`, for any kind: candidate values (``grid`` quantiles of the model's own
  samples, then ``refine`` points between the best one's neighbours), one batched
  ``log_prob`` call per feature and round.
* :func:`mixture_search`, for kinds whose conditional x_b | x_-b is a 1-D Gaussian mixture
  (``gmm``: K components; ``kde``/``knn``: one kernel per centre, the heaviest kept): the
  mixture's local modes, by mean-shift (Carreira-Perpiñán 2000) from its highest components;
  the highest of them is scored by one ``log_prob`` call per feature.

A categorical block is maximised exactly over its categories. A lattice column (the model's
``cell_widths_`` > 0, e.g. an integer count) only takes values on its lattice: the search's
candidates are snapped to it, and a mode's two lattice neighbours compete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anomaly.models.base import Block, DensityModel

#: gains (n_rows × n_blocks) and typical values (n_rows × n_columns)
Gains = tuple[np.ndarray, np.ndarray]
#: per column j of ``columns``: (j, log weights, means, variances), each n_rows × components,
#: the 1-D Gaussian mixture Σ_i exp(log w_i) N(v; mean_i, var_i) ∝ p(x with x_j := v)
Mixtures = Callable[
    [np.ndarray, list[int]], Iterable[tuple[int, np.ndarray, np.ndarray, np.ndarray]]
]
#: rows per batched log_prob call (candidates × records)
CALL_ROWS = 262_144
#: model samples drawn to place the search's numeric candidates
REFERENCE_SAMPLES = 2_000
#: :func:`mixture_modes`: the highest components kept of a conditional mixture, the mean-shift
#: starts (their highest means) and iterations (the mode found is scored exactly anyway)
MODE_COMPONENTS = 48
MODE_STARTS = 4
MODE_ITERATIONS = 15


def search(
    model: DensityModel,
    X: np.ndarray,
    layout: list[Block],
    context: np.ndarray | None = None,
    grid: int = 16,
    refine: int = 6,
    seed: int = 0,
) -> Gains:
    """Best replacements by candidate values, for any kind (module docstring)."""
    if grid < 2 or refine < 0:
        msg = f"need grid ≥ 2 and refine ≥ 0, got grid={grid}, refine={refine}"
        raise ValueError(msg)
    n = X.shape[0]
    contributions, typical = np.zeros((n, len(layout))), X.copy()
    if n == 0:
        return contributions, typical
    if context is None:
        reference = model.sample(REFERENCE_SAMPLES, seed=seed)
    else:  # samples given the explained rows' own contexts
        rows = np.random.default_rng(seed).integers(0, n, REFERENCE_SAMPLES)
        reference = model.sample(REFERENCE_SAMPLES, seed=seed, context=context[rows])
    base = model.log_prob(X, context)
    levels = (np.arange(grid) + 0.5) / grid
    for i, b in enumerate(layout):
        cols = slice(b.start, b.stop)
        if b.categorical:
            top, best = _categories(model, X, context, b, base)
        else:
            values = _on_lattice(model, b.start, np.quantile(reference[:, b.start], levels))
            candidates = np.broadcast_to(values[:, None, None], (grid, n, 1))
            top, best, k = _best(model, X, context, cols, candidates, base)
            if refine:
                lo = values[np.maximum(k - 1, 0)]
                hi = values[np.minimum(k + 1, grid - 1)]
                steps = (np.arange(1, refine + 1) / (refine + 1))[:, None]
                fine = _on_lattice(model, b.start, lo[None, :] + steps * (hi - lo)[None, :])
                fine_top, fine_best, _ = _best(model, X, context, cols, fine[:, :, None], base)
                better = fine_top > top
                top = np.where(better, fine_top, top)
                best = np.where(better[:, None], fine_best, best)
        contributions[:, i] = np.maximum(top, 0)
        typical[:, cols] = np.where((top > 0)[:, None], best, X[:, cols])
    return contributions, typical


def mixture_search(
    model: DensityModel, X: np.ndarray, layout: list[Block], mixtures: Mixtures
) -> Gains:
    """Best replacements from the conditional mixtures' modes (module docstring)."""
    n = X.shape[0]
    contributions, typical = np.zeros((n, len(layout))), X.copy()
    if n == 0:
        return contributions, typical
    base = model.log_prob(X)
    numeric = {b.start: i for i, b in enumerate(layout) if not b.categorical}
    for j, log_w, means, variances in mixtures(X, list(numeric)):
        modes = mixture_modes(log_w, means, variances)  # rows × starts
        step = _step(model, j)
        if step > 0:  # the modes' lattice neighbours
            below = _on_lattice(model, j, modes - step / 2)
            modes = np.hstack([below, below + step])
        # the highest of them on the mixture, then scored exactly
        height = mixture_log_density(modes, log_w, means, variances)
        candidates = modes[np.arange(n), height.argmax(axis=1)][None, :, None]
        top, best, _ = _best(model, X, None, slice(j, j + 1), candidates, base)
        contributions[:, numeric[j]] = np.maximum(top, 0)
        typical[:, j] = np.where(top > 0, best[:, 0], X[:, j])
    for i, b in enumerate(layout):
        if b.categorical:
            top, best = _categories(model, X, None, b, base)
            contributions[:, i] = np.maximum(top, 0)
            typical[:, b.start : b.stop] = np.where(
                (top > 0)[:, None], best, X[:, b.start : b.stop]
            )
    return contributions, typical


def mixture_modes(log_w: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Per row, local modes of Σ_i exp(log w_i) N(v; mean_i, var_i) (rows × components):
    mean-shift v ← Σ r_i mean_i/var_i / Σ r_i/var_i, r_i ∝ w_i N(v; mean_i, var_i), which
    climbs to a local maximum, from each of the ``MODE_STARTS`` highest components' means
    (rows × starts). Only the ``MODE_COMPONENTS`` highest components take part."""
    offset = log_w - 0.5 * np.log(variances)  # each component's log-density at its mean
    if offset.shape[1] > MODE_COMPONENTS:
        keep = np.argpartition(-offset, MODE_COMPONENTS - 1, axis=1)[:, :MODE_COMPONENTS]
        offset, means, variances = (
            np.take_along_axis(a, keep, axis=1) for a in (offset, means, variances)
        )
    starts = np.argsort(-offset, axis=1)[:, :MODE_STARTS]
    v = np.take_along_axis(means, starts, axis=1)
    offset, means, precisions = offset[:, None], means[:, None], 1 / variances[:, None]
    tolerance = 1e-4 * np.sqrt(variances.min())
    for _ in range(MODE_ITERATIONS):
        logits = offset - 0.5 * (v[:, :, None] - means) ** 2 * precisions
        r = np.exp(logits - logits.max(axis=2, keepdims=True)) * precisions
        new = (r * means).sum(axis=2) / r.sum(axis=2)
        done = np.abs(new - v).max() < tolerance
        v = new
        if done:
            break
    return v


def mixture_log_density(
    v: np.ndarray, log_w: np.ndarray, means: np.ndarray, variances: np.ndarray
) -> np.ndarray:
    """log Σ_i exp(log w_i) N(v; mean_i, var_i) at each of v's points (rows × points), up to
    the constant ½ log 2π."""
    offset = (log_w - 0.5 * np.log(variances))[:, None]
    logits = offset - 0.5 * (v[:, :, None] - means[:, None]) ** 2 / variances[:, None]
    top = logits.max(axis=2)
    return top + np.log(np.exp(logits - top[:, :, None]).sum(axis=2))


def from_modes(
    X: np.ndarray, layout: list[Block], observed: np.ndarray, best: np.ndarray, modes: np.ndarray
) -> Gains:
    """Gains and typical values from a model's own conditional modes: ``observed`` and
    ``best`` are log p(x_b | x_-b) at the row's value and at the mode (n × blocks), ``modes``
    the modes in their blocks' columns."""
    contributions = np.maximum(best - observed, 0)
    typical = X.copy()
    for i, b in enumerate(layout):
        cols = slice(b.start, b.stop)
        typical[:, cols] = np.where((contributions[:, i] > 0)[:, None], modes[:, cols], X[:, cols])
    return contributions, typical


def row_batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` rows covering 0..n."""
    size = max(1, size)
    return (slice(start, min(start + size, n)) for start in range(0, n, size))


def _step(model: DensityModel, j: int) -> float:
    widths = getattr(model, "cell_widths_", None)
    return 0.0 if widths is None else float(widths[j])


def _on_lattice(model: DensityModel, j: int, values: np.ndarray) -> np.ndarray:
    """``values`` of column j moved to the nearest point of its lattice (if it has one)."""
    step = _step(model, j)
    if step == 0:
        return values
    origin = model.cell_origins_[j]
    return origin + np.round((values - origin) / step) * step


def _categories(
    model: DensityModel, X: np.ndarray, context: np.ndarray | None, b: Block, base: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    candidates = np.eye(b.stop - b.start)[:, None, :].repeat(X.shape[0], axis=1)
    top, best, _ = _best(model, X, context, slice(b.start, b.stop), candidates, base)
    return top, best


def _best(
    model: DensityModel,
    X: np.ndarray,
    context: np.ndarray | None,
    cols: slice,
    candidates: np.ndarray,
    base: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's best gain over ``base`` among ``candidates`` (k × n × width), that
    candidate (n × width) and its index."""
    k, n = candidates.shape[:2]
    gain = np.empty((k, n))
    for rows in row_batches(n, CALL_ROWS // k):
        m = rows.stop - rows.start
        Z = np.repeat(X[None, rows], k, axis=0)
        Z[:, :, cols] = candidates[:, rows]
        C = None if context is None else np.tile(context[rows], (k, 1))
        gain[:, rows] = model.log_prob(Z.reshape(k * m, -1), C).reshape(k, m) - base[None, rows]
    arg = gain.argmax(axis=0)
    return gain[arg, np.arange(n)], candidates[arg, np.arange(n)], arg
