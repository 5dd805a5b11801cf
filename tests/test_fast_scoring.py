"""The fast scoring paths of ``independent`` and ``autoregressive`` (issue 18, item 6) give the
densities of the literal definitions (``tests/density_reference.py``) and of the code before
them: saved models of that code (``tests/data/old_models``, written by its
``make_old_models.py``) load and score as they did, to 1e-6 nats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly import models
from anomaly.models.base import Block
from tests.density_reference import autoregressive_log_prob, independent_feature_log_probs

OLD = Path(__file__).parent / "data" / "old_models"
NATS = 1e-6


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(OLD / "expected.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("kind", ["independent", "autoregressive"])
def test_old_saved_models_score_as_before(expected, kind):
    model = models.load(OLD / kind)
    X = expected["X"]
    context = expected["context"] if kind == "autoregressive" else None
    np.testing.assert_allclose(model.log_prob(X, context), expected[f"{kind}_log_prob"], atol=NATS)
    np.testing.assert_allclose(
        model.feature_log_probs(X, context), expected[f"{kind}_feature_log_probs"], atol=NATS
    )
    _, best, modes = model.conditional_modes(X, context)
    np.testing.assert_allclose(best, expected[f"{kind}_best"], atol=NATS)
    np.testing.assert_allclose(modes, expected[f"{kind}_modes"], atol=1e-6, rtol=1e-6)


def _awkward_table(rng: np.random.Generator, n: int) -> np.ndarray:
    """Columns that exercise the table's cases: a wide-range column with an outlier (a tiny
    bandwidth against the grid spacing), a smooth one, a constant one, bimodal with a gap."""
    wide = np.concatenate([rng.normal(0, 1, n - 1), [400.0]])
    smooth = rng.normal(5, 2, n)
    constant = np.full(n, 3.0)
    gap = np.where(rng.random(n) < 0.5, rng.normal(-4, 0.3, n), rng.normal(4, 0.3, n))
    return np.column_stack([wide, smooth, constant, gap])


@pytest.mark.parametrize("bandwidth", [None, 0.002, 0.5])
def test_independent_fast_terms_equal_the_full_kernel_sum(bandwidth):
    rng = np.random.default_rng(3)
    model = models.create("independent", bandwidth=bandwidth).fit(_awkward_table(rng, 3_000))
    X = _awkward_table(rng, 2_000)
    X[:100] *= rng.uniform(-30, 30, (100, 1))  # far outside the training range
    X[100:200, 3] = rng.uniform(-1, 1, 100)  # inside the gap between the modes
    fast = model.feature_log_probs(X)
    np.testing.assert_allclose(fast, independent_feature_log_probs(model, X), atol=1e-9)
    assert np.isfinite(fast[200:]).all()


def test_independent_table_is_mostly_used():
    """The exact sum is the exception: typical rows go through the Taylor table."""
    rng = np.random.default_rng(4)
    model = models.create("independent").fit(_awkward_table(rng, 3_000)[:, [1, 3]])
    X = _awkward_table(rng, 2_000)[:, [1, 3]]
    Z = (X - model.loc_) / model.scale_
    exact = [table.log_pdf(Z[:, j])[1].mean() for j, table in enumerate(model.tables_)]
    assert max(exact) < 0.01, exact


def test_independent_mixed_layout_equals_the_reference():
    rng = np.random.default_rng(5)
    c = rng.choice(3, 1_000)
    X = np.column_stack([rng.normal(c, 1.0), np.eye(3)[c]])
    layout = [Block("x", 0, 1), Block("c", 1, 4, categorical=True)]
    model = models.create("independent").fit(X, layout=layout)
    X[:10, 1:] = 0.0  # unseen category
    np.testing.assert_allclose(
        model.feature_log_probs(X), independent_feature_log_probs(model, X), atol=1e-9
    )


@pytest.mark.parametrize("with_context", [False, True])
def test_autoregressive_equals_the_literal_product_of_conditionals(with_context):
    rng = np.random.default_rng(6)
    c = rng.choice(3, 600)
    X = np.column_stack(
        [rng.normal(c, 1.0), rng.normal(size=600), np.eye(3)[c], rng.gamma(2, 1, 600)]
    )
    layout = [
        Block("x", 0, 1),
        Block("y", 1, 2),
        Block("c", 2, 5, categorical=True),
        Block("g", 5, 6),
    ]
    context = rng.normal(size=(600, 2)) if with_context else None
    model = models.create(
        "autoregressive", hidden=(32, 32), components=4, orders=3, max_epochs=3, progress=False
    ).fit(X, layout=layout, context=context)
    X[:20, 0] *= 50  # far tails: clipped network input, float64 likelihood
    fast = model.log_prob(X, context)
    np.testing.assert_allclose(fast, autoregressive_log_prob(model, X, context), atol=NATS)


def test_autoregressive_lattice_features_equal_the_literal_product_of_masses():
    """Binary and count features (lattice steps) get their cells' masses along each order; the
    fast path equals the literal product; models saved before keep dequantising."""
    rng = np.random.default_rng(8)
    b = (rng.random(600) < 0.3).astype(float)
    X = np.column_stack([b, rng.poisson(2 + 3 * b), rng.normal(b, 1.0)])
    layout = [Block("b", 0, 1, step=1.0), Block("k", 1, 2, step=1.0), Block("x", 2, 3)]
    model = models.create(
        "autoregressive", hidden=(32, 32), components=4, orders=3, max_epochs=3, progress=False
    ).fit(X, layout=layout)
    assert not model._dequantised()
    X[:10, 1] = 60.0  # far in a count's tail: a finite mass
    fast = model.log_prob(X)
    assert np.isfinite(fast).all()
    np.testing.assert_allclose(fast, autoregressive_log_prob(model, X), atol=NATS)
    assert models.load(OLD / "autoregressive")._dequantised()
