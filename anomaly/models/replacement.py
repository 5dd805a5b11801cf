"""Each feature's most likely value given the others: what explanations are made of.

For a row x and a raw feature b (a numeric column or a one-hot block of ``layout``) the best
replacement is v* = argmax_v log p(x with x_b := v), and its gain c_b = log p(x with x_b := v*)
− log p(x) ≥ 0 in nats (``anomaly/explain.py`` gives the meaning). Every gain is the model's
own gain at the value shown (scored by ``log_prob`` here; ``kde``/``knn`` score it themselves,
to 1e-6 nats of their density, ``anomaly/models/kernel.py``), so it is the gain of a value the
model was actually asked about: a lower bound of the true maximum, never above it. Two ways to
find v*:

* :func:`search`, for any kind: candidate values (``grid`` quantiles of the model's own
  samples and the row's own value), then ``refine`` steps of successive parabolic
  interpolation around the best; one batched ``log_prob`` call per feature and round.
* :func:`mixture_search`, for kinds whose conditional x_b | x_-b is a 1-D Gaussian mixture
  (``gmm``: K components; ``vae``: one decoder Gaussian per importance draw): the mixture's
  local modes, by mean-shift (Carreira-Perpiñán 2000) from its highest components; the
  highest of them is scored, every feature's in one ``log_prob`` call. ``kde``/``knn`` (one
  kernel per centre) find and compare their modes the same way (:func:`mixture_modes`,
  :func:`best_mode`) but score the best on the mixture itself, which their bound makes exact
  to 1e-6 nats (:func:`columnwise` puts the columns together).

A categorical block is maximised exactly over its categories. A lattice column (the model's
``_lattice`` step > 0, e.g. an integer count) only takes values on its lattice: the search's
candidates are snapped to it, and a mode's two lattice neighbours compete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
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
REFERENCE_SAMPLES = 500
#: :func:`mixture_modes`: the highest components kept of a conditional mixture, the mean-shift
#: starts (their highest means) and iterations (the mode found is scored exactly anyway)
MODE_COMPONENTS = 48
MODE_STARTS = 4
MODE_ITERATIONS = 15
#: rows of mixtures per block of :func:`mixture_modes` (its arrays stay in cache)
MODE_ROWS = 1_024


def search(
    model: DensityModel,
    X: np.ndarray,
    layout: list[Block],
    context: np.ndarray | None = None,
    grid: int = 6,
    refine: int = 3,
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
        reference = model.candidate_sample(REFERENCE_SAMPLES, seed=seed)
    else:  # samples given the explained rows' own contexts
        rows = np.random.default_rng(seed).integers(0, n, REFERENCE_SAMPLES)
        reference = model.candidate_sample(REFERENCE_SAMPLES, seed=seed, context=context[rows])
    base = model.log_prob(X, context)
    levels = (np.arange(grid) + 0.5) / grid
    for i, b in enumerate(layout):
        cols = slice(b.start, b.stop)
        if b.categorical:
            top, best = _categories(model, X, context, b, base)
        else:
            values = np.unique(
                _on_lattice(model, b.start, np.quantile(reference[:, b.start], levels))
            )
            candidates = np.broadcast_to(values[:, None, None], (len(values), n, 1))
            gains = _gains(model, X, context, cols, candidates, base)
            top, value = _refine(model, X, context, b.start, values, gains, base, refine)
            best = value[:, None]
        contributions[:, i] = np.maximum(top, 0)
        typical[:, cols] = np.where((top > 0)[:, None], best, X[:, cols])
    return contributions, typical


def mixture_search(
    model: DensityModel, X: np.ndarray, layout: list[Block], mixtures: Mixtures
) -> Gains:
    """Best replacements from the conditional mixtures' modes (module docstring)."""
    return columnwise(model, X, layout, lambda Z, at: _scored_modes(model, Z, at, mixtures))


def columnwise(
    model: DensityModel,
    X: np.ndarray,
    layout: list[Block],
    numeric: Callable[[np.ndarray, list[int]], tuple[np.ndarray, np.ndarray]],
) -> Gains:
    """Gains and typical values with the numeric columns' from ``numeric(X, columns)`` (their
    gains and best values, columns × rows) and each categorical block maximised over its
    categories by ``log_prob``."""
    n = X.shape[0]
    contributions, typical = np.zeros((n, len(layout))), X.copy()
    if n == 0:
        return contributions, typical
    numeric_blocks = {b.start: i for i, b in enumerate(layout) if not b.categorical}
    if numeric_blocks:
        gains, values = numeric(X, list(numeric_blocks))
        for c, (j, i) in enumerate(numeric_blocks.items()):
            contributions[:, i] = np.maximum(gains[c], 0)
            typical[:, j] = np.where(gains[c] > 0, values[c], X[:, j])
    categorical = [(i, b) for i, b in enumerate(layout) if b.categorical]
    base = model.log_prob(X) if categorical else None
    for i, b in categorical:
        top, best = _categories(model, X, None, b, base)
        contributions[:, i] = np.maximum(top, 0)
        typical[:, b.start : b.stop] = np.where((top > 0)[:, None], best, X[:, b.start : b.stop])
    return contributions, typical


def _scored_modes(
    model: DensityModel, X: np.ndarray, columns: list[int], mixtures: Mixtures
) -> tuple[np.ndarray, np.ndarray]:
    """Each column's best mixture mode (columns × rows) and its gain scored by ``log_prob``:
    every column's modes in one pass, then every mode scored in one call."""
    n = X.shape[0]
    found = list(mixtures(X, columns))
    modes = mixture_modes(*(np.concatenate([f[k] for f in found]) for k in (1, 2, 3)))
    values = np.empty((len(found), n))
    for c, (j, log_w, means, variances) in enumerate(found):
        own = modes[c * n : (c + 1) * n]  # rows × starts
        height = partial(mixture_log_density, log_w=log_w, means=means, variances=variances)
        values[c] = best_mode(model, j, own, height)[0]
    return _column_gains(model, X, columns, values, model.log_prob(X)), values


def best_mode(
    model: DensityModel, j: int, modes: np.ndarray, height: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the highest by ``height`` (log mixture density at rows × points) of its
    ``modes`` of column j (rows × starts) or, on a lattice column, of the modes' lattice
    neighbours, and that height."""
    step = _step(model, j)
    if step > 0:
        below = _on_lattice(model, j, modes - step / 2)
        modes = np.hstack([below, below + step])
    heights = height(modes)
    best = heights.argmax(axis=1)
    rows = np.arange(len(modes))
    return modes[rows, best], heights[rows, best]


def mixture_modes(log_w: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Per row, local modes of Σ_i exp(log w_i) N(v; mean_i, var_i) (rows × components):
    mean-shift v ← Σ r_i mean_i/var_i / Σ r_i/var_i, r_i ∝ w_i N(v; mean_i, var_i), which
    climbs to a local maximum, from each of the ``MODE_STARTS`` highest components' means
    (rows × starts); where the log mixture is concave, Newton's step instead (unless it is
    over 4 mean-shift steps long), which converges in a few steps where mean-shift crawls. Only
    the ``MODE_COMPONENTS`` highest components take part. In blocks of ``MODE_ROWS`` rows, in
    float32 about each row's highest component (the mode found is scored exactly anyway)."""
    return np.concatenate(
        [
            _modes(log_w[rows], means[rows], variances[rows])
            for rows in row_batches(len(log_w), MODE_ROWS)
        ]
        or [np.zeros((0, MODE_STARTS))]
    )


def _modes(log_w: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    offset = log_w - 0.5 * np.log(variances)  # each component's log-density at its mean
    if offset.shape[1] > MODE_COMPONENTS:
        keep = np.argpartition(-offset, MODE_COMPONENTS - 1, axis=1)[:, :MODE_COMPONENTS]
        offset, means, variances = (
            np.take_along_axis(a, keep, axis=1) for a in (offset, means, variances)
        )
    starts = np.argsort(-offset, axis=1)[:, :MODE_STARTS]
    origin = np.take_along_axis(means, starts[:, :1], axis=1)
    means = (means - origin).astype(np.float32)
    v = np.take_along_axis(means, starts, axis=1)
    offset = offset.astype(np.float32)[:, None]
    means, precisions = means[:, None], (1 / variances).astype(np.float32)[:, None]
    tolerance = 1e-4 * np.sqrt(variances.min(axis=1))
    moving = np.arange(len(v))  # the rows not yet settled; the others are left alone
    for _ in range(MODE_ITERATIONS):
        at, mu, p = v[moving], means[moving], precisions[moving]
        pull = (mu - at[:, :, None]) * p  # each component's d/dv log N(v; mean_i, var_i)
        logits = offset[moving] - 0.5 * (mu - at[:, :, None]) * pull
        r = np.exp(logits - logits.max(axis=2, keepdims=True))
        r /= r.sum(axis=2, keepdims=True)  # responsibilities
        slope = (r * pull).sum(axis=2)  # d/dv of the log mixture, then its second derivative
        curve = (r * (pull * pull - p)).sum(axis=2) - slope**2
        shift = slope / (r * p).sum(axis=2)  # mean-shift's step
        with np.errstate(divide="ignore"):
            newton = -slope / np.where(curve < 0, curve, -np.inf)
        # Newton's step where the log mixture is concave and the step is not wild
        step = np.where((curve < 0) & (np.abs(newton) <= 4 * np.abs(shift)), newton, shift)
        v[moving] = at + step
        moving = moving[np.abs(step).max(axis=1) >= tolerance[moving]]
        if not moving.size:
            break
    return v + origin


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
    return model._lattice(j)[0]


def _on_lattice(model: DensityModel, j: int, values: np.ndarray) -> np.ndarray:
    """``values`` of column j moved to the nearest point of its lattice (if it has one)."""
    step, origin = model._lattice(j)
    if step == 0:
        return values
    return origin + np.round((values - origin) / step) * step


def _categories(
    model: DensityModel, X: np.ndarray, context: np.ndarray | None, b: Block, base: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    candidates = np.eye(b.stop - b.start)[:, None, :].repeat(X.shape[0], axis=1)
    return _best(model, X, context, slice(b.start, b.stop), candidates, base)


def _refine(
    model: DensityModel,
    X: np.ndarray,
    context: np.ndarray | None,
    j: int,
    values: np.ndarray,
    gains: np.ndarray,
    base: np.ndarray,
    steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best gain and value of column j after ``steps`` rounds of successive
    parabolic interpolation (one ``log_prob`` row per row and round) from the candidates
    ``values`` (sorted; gains k × n) and the row's own value (gain 0): each round tries the
    vertex of the parabola through the best point and its two neighbours (or, where that is
    not a maximum inside them, the middle of the wider side; beyond the best point where it
    is the outermost) and keeps the best point with its neighbours."""
    n = X.shape[0]
    own = X[:, j]
    # per row: the candidates and the row's own value, in order
    points = np.vstack([np.broadcast_to(values[:, None], gains.shape), own[None]])
    heights = np.vstack([gains, np.zeros((1, n))])
    order = np.argsort(points, axis=0, kind="stable")
    points, heights = np.take_along_axis(points, order, 0), np.take_along_axis(heights, order, 0)
    k = heights.argmax(axis=0)
    cols, last = np.arange(n), len(points) - 1
    b, fb = points[k, cols], heights[k, cols]
    a = np.where(k > 0, points[np.maximum(k - 1, 0), cols], np.nan)
    fa = np.where(k > 0, heights[np.maximum(k - 1, 0), cols], np.nan)
    c = np.where(k < last, points[np.minimum(k + 1, last), cols], np.nan)
    fc = np.where(k < last, heights[np.minimum(k + 1, last), cols], np.nan)
    for _ in range(steps):
        with np.errstate(invalid="ignore", divide="ignore"):
            num = (b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)
            den = (b - a) * (fb - fc) - (b - c) * (fb - fa)
            vertex = b - 0.5 * num / den
        inside = np.isfinite(vertex) & (vertex > a) & (vertex < c) & (vertex != b)
        middle = np.where(b - a > c - b, (a + b) / 2, (b + c) / 2)
        outward = np.where(np.isnan(a), 2 * b - c, 2 * b - a)  # one spacing past the end
        v = np.where(inside, vertex, np.where(np.isnan(a) | np.isnan(c), outward, middle))
        v = _on_lattice(model, j, v)
        fv = _gains(model, X, context, slice(j, j + 1), v[None, :, None], base)[0]
        better, left = fv > fb, v < b
        a, fa, c, fc, b, fb = (
            np.where(better & left, a, np.where(left, v, np.where(better, b, a))),
            np.where(better & left, fa, np.where(left, fv, np.where(better, fb, fa))),
            np.where(better & ~left, c, np.where(~left, v, np.where(better, b, c))),
            np.where(better & ~left, fc, np.where(~left, fv, np.where(better, fb, fc))),
            np.where(better, v, b),
            np.where(better, fv, fb),
        )
    return fb, b


def _column_gains(
    model: DensityModel, X: np.ndarray, columns: list[int], values: np.ndarray, base: np.ndarray
) -> np.ndarray:
    """The gain over ``base`` of putting ``values[c]`` (n per column) into column
    ``columns[c]`` alone (columns × n), in as few ``log_prob`` calls as fit ``CALL_ROWS``."""
    n = X.shape[0]
    gain = np.empty((len(columns), n))
    for group in row_batches(len(columns), CALL_ROWS // max(n, 1)):
        Z = np.repeat(X[None], group.stop - group.start, axis=0)
        for c in range(group.start, group.stop):
            Z[c - group.start, :, columns[c]] = values[c]
        scores = model.log_prob(Z.reshape(-1, X.shape[1])).reshape(-1, n)
        gain[group] = scores - base[None]
    return gain


def _gains(
    model: DensityModel,
    X: np.ndarray,
    context: np.ndarray | None,
    cols: slice,
    candidates: np.ndarray,
    base: np.ndarray,
) -> np.ndarray:
    """The gain over ``base`` of each candidate (k × n × width) put into ``cols`` (k × n)."""
    k, n = candidates.shape[:2]
    gain = np.empty((k, n))
    for rows in row_batches(n, CALL_ROWS // k):
        m = rows.stop - rows.start
        Z = np.repeat(X[None, rows], k, axis=0)
        Z[:, :, cols] = candidates[:, rows]
        C = None if context is None else np.tile(context[rows], (k, 1))
        gain[:, rows] = model.log_prob(Z.reshape(k * m, -1), C).reshape(k, m) - base[None, rows]
    return gain


def _best(
    model: DensityModel,
    X: np.ndarray,
    context: np.ndarray | None,
    cols: slice,
    candidates: np.ndarray,
    base: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best gain over ``base`` among ``candidates`` (k × n × width) and that
    candidate (n × width)."""
    n = candidates.shape[1]
    gain = _gains(model, X, context, cols, candidates, base)
    arg = gain.argmax(axis=0)
    return gain[arg, np.arange(n)], candidates[arg, np.arange(n)]
