"""``gmm``'s discrete features as a mixture of Chow–Liu forests (``tree=True``, the default).

The pmf stays exactly normalised over every discrete value (seen or not, with unseen parents),
with one component or several, each with its own forest; the pair information equals the
tables counted directly; dependent pairs of 0/1 columns are learnt (held-out likelihood,
anomalies that break the pairs, samples that keep them) where naive Bayes sees nothing; on
independent columns the edges are pruned, so the forest is no worse than the product;
save/load is exact, and a model saved before the trees loads and scores as it did.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from scipy import sparse
from sklearn.metrics import roc_auc_score

from anomaly import models
from anomaly.models import gmm
from anomaly.models.base import Block, lattice_layout
from anomaly.models.gmm import _Gram


def make(**params: object) -> models.DensityModel:
    return models.create("gmm", seed=0, max_components=3, **params)


def pairs(n: int, rng: np.random.Generator, flip: float = 0.05, d: int = 12) -> np.ndarray:
    """0/1 columns in pairs, the second the first flipped with probability ``flip``: every
    column is a fair coin on its own, and the pairs are independent."""
    x = (rng.random((n, d)) < 0.5).astype(float)
    x[:, 1::2] = np.logical_xor(x[:, ::2], rng.random((n, d // 2)) < flip)
    return x


def mixed(n: int, seed: int) -> tuple[np.ndarray, list[Block]]:
    """A one-hot block of 3 categories, a count and two 0/1 columns, dependent, from two
    clusters."""
    rng = np.random.default_rng(seed)
    cluster = rng.random(n) < 0.4
    c = np.where(cluster, rng.choice(3, n, p=[0.7, 0.2, 0.1]), rng.choice(3, n, p=[0.1, 0.3, 0.6]))
    k = np.minimum(rng.poisson(1.0 + 1.5 * c), 6)
    b1 = rng.random(n) < np.where(k > 2, 0.85, 0.15)
    b2 = np.logical_xor(b1, rng.random(n) < np.where(cluster, 0.1, 0.3))
    X = np.column_stack([np.eye(3)[c], k, b1, b2]).astype(float)
    layout = [
        Block("c", 0, 3, categorical=True),
        Block("k", 3, 4, step=1.0),
        Block("b1", 4, 5, step=1.0),
        Block("b2", 5, 6, step=1.0),
    ]
    return X, layout


@pytest.fixture(scope="module")
def fitted_mixed() -> models.DensityModel:
    X, layout = mixed(1_500, 0)
    return make().fit(X, layout=layout)


def test_forest_pmf_sums_to_one_over_every_value(fitted_mixed):
    """Σ over every category (and the unseen all-zero pattern), every count far beyond the
    training range and every value of the 0/1 columns (2 … 5 and −2 never seen) of the pmf is
    1: every factor is normalised, also given a parent value never seen."""
    model = fitted_mixed
    assert (model.parents_ >= 0).sum() >= 2  # the dependences are learnt
    patterns = [*np.eye(3), np.zeros(3)]
    counts, binary = range(-20, 80), range(-2, 6)
    grid = np.array(
        [[*p, k, b1, b2] for p, k, b1, b2 in itertools.product(patterns, counts, binary, binary)]
    )
    assert np.exp(model.log_prob(grid)).sum() == pytest.approx(1.0, abs=1e-6)


def test_each_component_has_its_own_forest_and_the_mixture_sums_to_one(tmp_path):
    """Two latent classes of six 0/1 columns, columns 0–1 dependent in one class and 2–3 in
    the other: two components, each with its edge; Σ over {−1, 0, 1, 2}⁶ of the pmf is 1;
    samples keep each class's pair and repeat after save/load."""
    rng = np.random.default_rng(0)
    z = rng.random(3_000) < 0.5
    X = (rng.random((3_000, 6)) < np.where(z, 0.15, 0.85)[:, None]).astype(float)
    X[~z, 1] = np.logical_xor(X[~z, 0], rng.random((~z).sum()) < 0.05)
    X[z, 3] = np.logical_xor(X[z, 2], rng.random(z.sum()) < 0.05)
    model = make().fit(X, layout=lattice_layout(X))
    assert model.n_components_ == 2
    ones = int(np.argmax(model.log_pmfs_[:, 1]))  # the component of mostly ones (level 1)

    def joined(k: int, i: int, j: int) -> bool:
        return model.parents_[k, i] == j or model.parents_[k, j] == i

    assert joined(ones, 0, 1)
    assert not joined(ones, 2, 3)
    assert joined(1 - ones, 2, 3)
    assert not joined(1 - ones, 0, 1)
    grid = np.array(list(itertools.product(range(-1, 3), repeat=6)), dtype=float)
    assert np.exp(model.log_prob(grid)).sum() == pytest.approx(1.0, abs=1e-6)
    samples = model.sample(4_000, seed=2)
    high = samples.mean(axis=1) > 0.5  # the class of mostly ones, where 0 and 1 agree
    assert np.mean(samples[high, 0] != samples[high, 1]) < 0.1
    assert np.mean(samples[~high, 2] != samples[~high, 3]) < 0.1
    loaded = models.load(model.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.sample(300, seed=2), model.sample(300, seed=2))
    np.testing.assert_array_equal(loaded.log_prob(grid), model.log_prob(grid))


@pytest.mark.parametrize("storage", ["sparse", "dense"])
def test_pair_information_equals_the_weighted_tables_counted_directly(fitted_mixed, storage):
    """N·I of every pair of features from the Gram matrix of the indicators less each
    feature's most frequent level equals Σ c log(c N / c(a) c(b)) over the pair's table of
    weighted counts, for one-hot, count and 0/1 features; a category not seen in training
    (an all-zero row of the one-hot block) counts as the block's most frequent level."""
    model = fitted_mixed
    X, _ = mixed(700, 1)
    X[:20, :3] = 0.0
    H, _, codes = model._indicators(X)
    r = np.random.default_rng(0).random(len(X))
    gram = _Gram.of(H, model.level_features_, len(X))
    assert (codes[:20, 0] == -1).all()
    codes[:20, 0] = np.argmax(np.asarray(H.sum(axis=0)).ravel()[:3])
    convert = sparse.csr_matrix if storage == "sparse" else np.asarray
    gram = dataclasses.replace(gram, indicators=convert(gram.indicators))
    info = gram.information(r, np.asarray(H.T @ r).ravel())
    n_features = codes.shape[1]
    for i, j in itertools.permutations(range(n_features), 2):
        table = np.zeros((model.level_counts_[i], model.level_counts_[j]))
        np.add.at(table, (codes[:, i], codes[:, j]), r)
        expected = table * np.log(table * r.sum() / np.outer(table.sum(1), table.sum(0)))
        assert info[i, j] == pytest.approx(expected.sum(), rel=1e-9, abs=1e-9)


def test_scoring_in_blocks_of_rows_changes_nothing(fitted_mixed, monkeypatch):
    X, _ = mixed(500, 7)
    whole = fitted_mixed.log_prob(X)
    monkeypatch.setattr(gmm, "TREE_CELLS", 7)  # a few rows a block
    np.testing.assert_array_equal(fitted_mixed.log_prob(X), whole)


def test_a_constant_feature_and_unseen_training_values_get_no_spurious_edge():
    """A one-hot block of one category (always on) carries no information, also when the
    other block has rows of no category (all zero) in training; a copy of a 0/1 column is
    its neighbour in the tree."""
    X, layout = mixed(1_500, 0)
    X[:30, :3] = 0.0
    X = np.column_stack([X, np.ones(len(X)), X[:, 4]])
    layout = [*layout, Block("one", 6, 7, categorical=True), Block("copy", 7, 8, step=1.0)]
    model = make().fit(X, layout=layout)
    assert (model.parents_[:, 4] == -1).all()
    assert (model.parents_ == 4).sum() == 0
    assert ((model.parents_[:, 5] == 2) | (model.parents_[:, 2] == 5)).all()


def test_a_single_discrete_feature_gets_no_edge():
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.poisson(2.0, 400), rng.normal(size=400)]).astype(float)
    model = make().fit(X, layout=lattice_layout(X))
    assert model.has_discrete()
    assert (model.parents_ == -1).all()
    assert model.log_conditionals_.size == 0


def test_dependent_pairs_of_binary_columns_are_learnt():
    """Held-out log-likelihood well above the product's; rows whose columns are fair coins
    (the same marginals, no pairs) rank as anomalies, where naive Bayes (independent pmfs, one
    component, what BIC picks on InternetAds) ties every row; samples keep the pairs."""
    rng = np.random.default_rng(0)
    X, heldout = pairs(2_000, rng), pairs(1_000, rng)
    anomalies = (rng.random((50, X.shape[1])) < 0.5).astype(float)
    layout = lattice_layout(X)
    forest = make().fit(X, layout=layout)
    product = make(tree=False).fit(X, layout=layout)  # latent classes of independent pmfs
    naive = models.create("gmm", seed=0, max_components=1, tree=False).fit(X, layout=layout)
    assert forest.n_components_ == 1
    np.testing.assert_array_equal(forest.parents_[0, 1::2], np.arange(0, X.shape[1], 2))
    # per pair log 2 − H(0.05) = 0.49 nats of dependence, 2.9 for six pairs
    heldout_lp = forest.log_prob(heldout).mean()
    assert heldout_lp - naive.log_prob(heldout).mean() > 2.5
    assert heldout_lp - product.log_prob(heldout).mean() > 1.5
    y = np.r_[np.zeros(len(heldout)), np.ones(len(anomalies))]
    test = np.vstack([heldout, anomalies])
    assert roc_auc_score(y, -forest.log_prob(test)) > 0.95
    assert roc_auc_score(y, -naive.log_prob(test)) == pytest.approx(0.5, abs=0.05)
    samples = forest.sample(4_000, seed=1)
    assert np.mean(samples[:, ::2] != samples[:, 1::2]) == pytest.approx(0.05, abs=0.01)


def test_on_independent_columns_the_edges_are_pruned():
    """Independent 0/1, count and categorical columns: (almost) no edge pays for itself, and
    the held-out likelihood is the product's within a small tolerance."""
    rng = np.random.default_rng(1)

    def rows(n: int) -> np.ndarray:
        binary = rng.random((n, 6)) < [0.5, 0.3, 0.1, 0.7, 0.5, 0.2]
        counts = np.minimum(rng.poisson([1.0, 3.0], (n, 2)), 12)
        return np.column_stack([binary, counts, np.eye(4)[rng.integers(0, 4, n)]]).astype(float)

    X, heldout = rows(1_500), rows(1_500)
    layout = [Block(f"b{j}", j, j + 1, step=1.0) for j in range(8)]
    layout.append(Block("c", 8, 12, categorical=True))
    forest, product = make().fit(X, layout=layout), make(tree=False).fit(X, layout=layout)
    assert (forest.parents_ >= 0).sum() <= 1
    gap = forest.log_prob(heldout).mean() - product.log_prob(heldout).mean()
    assert gap > -0.01


def test_save_load_is_exact_and_samples_repeat(fitted_mixed, tmp_path):
    X, _ = mixed(300, 5)
    model = fitted_mixed
    directory = model.save(tmp_path / "m")
    with np.load(directory / "weights.npz", allow_pickle=False) as weights:
        assert {"parents", "log_conditionals"} <= set(weights.files)
    loaded = models.load(directory)
    assert loaded.tree is True
    np.testing.assert_array_equal(loaded.parents_, model.parents_)
    np.testing.assert_array_equal(loaded.log_prob(X), model.log_prob(X))
    np.testing.assert_array_equal(loaded.sample(500, seed=4), model.sample(500, seed=4))
    samples = model.sample(500, seed=4)
    assert (samples[:, :3].sum(axis=1) == 1).all()
    assert set(np.unique(samples[:, 4:])) <= {0.0, 1.0}


def test_a_model_saved_before_the_trees_loads_and_scores_unchanged(tmp_path):
    """A gmm with discrete pmfs saved before ``tree`` existed (no such parameter, no forest
    in its weights) loads as independent pmfs: the same log-probabilities and samples."""
    X, layout = mixed(800, 2)
    old = make(tree=False).fit(X, layout=layout)
    directory = old.save(tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    del config["params"]["tree"]
    (directory / "config.json").write_text(json.dumps(config))
    with np.load(directory / "weights.npz", allow_pickle=False) as data:
        weights = {
            key: data[key] for key in data.files if key not in ("parents", "log_conditionals")
        }
    np.savez(directory / "weights.npz", **weights)
    loaded = models.load(directory)
    assert (loaded.parents_ == -1).all()
    np.testing.assert_array_equal(loaded.log_prob(X), old.log_prob(X))
    np.testing.assert_array_equal(loaded.sample(200, seed=0), old.sample(200, seed=0))
