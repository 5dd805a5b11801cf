"""Honest likelihoods on discrete data, for every kind (contract additions to test_models.py).

Integer-valued and one-hot columns get probability mass, not density spikes: on a table of known
distribution no kind's held-out log-likelihood exceeds minus the true entropy (Gibbs), and the
probabilities over the discrete values sum to at most one (about one where the cells cover the
space). Also: a fit or score leaves the caller's torch thread setting alone, and a forked child
can fit and score after its parent did.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import poisson
from sklearn.metrics import roc_auc_score

from anomaly import models
from anomaly.config import Features
from anomaly.models import KINDS
from anomaly.models.base import UNSEEN_PROB, Block, lattice_layout, lattice_step
from anomaly.preprocessing import Preprocessor

_TORCH = {"max_epochs": 40, "batch_size": 64, "learning_rate": 1e-2, "progress": False}
SMALL: dict[str, dict[str, Any]] = {
    "gmm": {"max_components": 3},
    "flow": {**_TORCH, "transforms": 2, "hidden": (32, 32), "n_threads": 1},
    "vae": {**_TORCH, "latent": 2, "hidden": (32, 32), "n_threads": 1},
    "autoregressive": {**_TORCH, "hidden": (32, 32), "components": 4},
    "auto": {
        "candidates": ("gaussian", "gmm", "kde"),
        "candidate_params": {"gmm": {"max_components": 3}},
    },
}
#: −H of x ~ N(0, 1), k ~ Poisson(3), c uniform over 3 categories (independent): nats per row
_K = np.arange(80)
_PK = poisson.pmf(_K, 3.0)
MINUS_ENTROPY = float(
    -0.5 * np.log(2 * np.pi * np.e) + np.sum(_PK[_PK > 0] * np.log(_PK[_PK > 0])) - np.log(3)
)


def make(kind: str) -> models.DensityModel:
    return models.create(kind, seed=0, **SMALL.get(kind, {}))


def frame(n: int, seed: int, numeric: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "id": [f"{seed}-{i}" for i in range(n)],
            "x": rng.normal(size=n),
            "k": rng.poisson(3.0, n),
            "c": rng.choice(["a", "b", "c"], n),
        }
    )
    return df if numeric else df.drop(columns="x")


def test_lattice_step():
    assert lattice_step(np.array([0.0, 3, 1, 7, 1])) == 1.0
    assert lattice_step(np.array([0.25, 0.75, 2.25])) == 0.5
    assert lattice_step(np.array([0.1, 0.2, 0.3, 0.5]) * 3 - 7) == pytest.approx(0.3)
    assert lattice_step(np.random.default_rng(0).normal(size=500)) == 0.0
    assert lattice_step(np.ones(10)) == 0.0  # constant: no lattice
    assert lattice_step(np.arange(5_000.0)) == 0.0  # too many levels to call discrete
    cents = np.round(np.random.default_rng(0).lognormal(3.5, 0.9, 400), 2)
    assert lattice_step(cents) == pytest.approx(0.01)
    assert lattice_step(cents, max_share=0.5) == 0.0  # they hardly repeat: no spike to fear
    layout = lattice_layout(np.column_stack([np.arange(6.0), np.linspace(0, 1, 6) ** 0.5]))
    assert [b.step for b in layout] == [1.0, 0.0]


def test_preprocessor_marks_integer_columns_discrete_and_skips_their_jacobian(tmp_path):
    spec = Features(id="id", numeric=["x", "k"], categorical=["c"])
    pre = Preprocessor(spec).fit(frame(500, 1))
    assert pre.steps_ == {"k": 1.0}
    assert pre.transforms_["k"] == "none"  # a lattice stays a lattice (no log transform)
    layout = pre.layout_
    assert layout[0].step == 0.0
    assert layout[1].step == pytest.approx(1.0 / pre.scales_["k"])
    prepared = pre.transform(frame(5, 2))
    np.testing.assert_allclose(prepared.log_det, -np.log(pre.scales_["x"]))
    # inverse_transform puts counts back on the integers
    back = pre.inverse_transform(prepared.X + 0.01)
    np.testing.assert_array_equal(back["k"], frame(5, 2)["k"])
    pre.save(tmp_path)
    assert Preprocessor.load(tmp_path).layout_ == layout


@pytest.fixture(scope="module")
def mixed() -> tuple[Preprocessor, Any, Any]:
    spec = Features(id="id", numeric=["x", "k"], categorical=["c"])
    pre = Preprocessor(spec).fit(frame(1_000, 1))
    return pre, pre.transform(frame(1_000, 1)), pre.transform(frame(3_000, 2))


@pytest.mark.parametrize("kind", KINDS)
def test_heldout_likelihood_respects_gibbs_on_mixed_data(mixed, kind, tmp_path):
    """E[log q] ≤ E[log p] = −H for any distribution q of the same events: no kind may beat
    the truth (3 standard errors of slack for the finite held-out sample)."""
    pre, train, test = mixed
    model = make(kind).fit(train.X, layout=pre.layout_)
    ll = model.log_prob(test.X) + test.log_det
    slack = 3 * ll.std() / np.sqrt(len(ll))
    assert ll.mean() <= MINUS_ENTROPY + slack, (kind, ll.mean(), MINUS_ENTROPY)
    assert ll.mean() > MINUS_ENTROPY - 1.5, (kind, ll.mean())  # and still a fair model
    # save/load is exact and keeps the cells
    loaded = models.load(model.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.log_prob(test.X[:200]), model.log_prob(test.X[:200]))
    samples = pre.inverse_transform(loaded.sample(300, seed=1))
    assert (samples["k"] == np.round(samples["k"])).all()
    assert abs(samples["k"].mean() - 3.0) < 0.6


@pytest.mark.parametrize("kind", KINDS)
def test_probabilities_over_discrete_values_sum_to_at_most_one(kind):
    """A table of one count and one category: Σ_k Σ_c P(k, c) ≤ 1, and Σ_k P(k) ≈ 1 (the cells
    of a lattice column tile the line); ≈ 1 over (k, c) too for kinds with native categories."""
    spec = Features(id="id", numeric=["k"], categorical=["c"])
    pre = Preprocessor(spec).fit(frame(800, 1, numeric=False))
    model = make(kind).fit(pre.transform(frame(800, 1, numeric=False)).X, layout=pre.layout_)
    grid = pd.DataFrame(
        [(f"{k}{c}", k, c) for k in range(-5, 40) for c in "abc"], columns=["id", "k", "c"]
    )
    prepared = pre.transform(grid)
    total = float(np.exp(model.log_prob(prepared.X) + prepared.log_det).sum())
    assert total <= 1.02, (kind, total)
    if model.native_categories:
        assert total == pytest.approx(1.0, abs=0.03), (kind, total)

    count_only = Preprocessor(Features(id="id", numeric=["k"])).fit(frame(800, 1, False))
    model = make(kind).fit(count_only.transform(frame(800, 1, False)).X, count_only.layout_)
    ks = count_only.transform(pd.DataFrame({"id": range(60), "k": np.arange(-10, 50)}))
    pmf = np.exp(model.log_prob(ks.X) + ks.log_det)
    assert pmf.sum() == pytest.approx(1.0, abs=0.03), (kind, pmf.sum())
    assert abs(pmf @ np.arange(-10, 50) - 3.0) < 0.5


def test_models_saved_without_cells_load_as_continuous(tmp_path):
    X = np.random.default_rng(0).poisson(3.0, (200, 1)).astype(float)
    model = make("gaussian").fit(X, layout=[Block("k", 0, 1, step=1.0)])
    directory = model.save(tmp_path / "m")
    old = json.loads((directory / "config.json").read_text())
    del old["cells"]
    for block in old["layout"]:
        del block["step"]
    (directory / "config.json").write_text(json.dumps(old))
    loaded = models.load(directory)
    assert not loaded._dequantised()
    np.testing.assert_allclose(loaded.log_prob(X[:5]), loaded._density(X[:5], None))


# ---------------------------------------------------------------------- library etiquette
def test_fit_and_score_leave_the_callers_torch_threads_alone():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        X = np.random.default_rng(0).normal(size=(200, 2))
        model = models.create("flow", seed=0, max_epochs=2, progress=False).fit(X)
        assert torch.get_num_threads() == 1
        model.log_prob(X)
        model.sample(5)
        assert torch.get_num_threads() == 1
        pinned = models.create("flow", seed=0, max_epochs=1, progress=False, n_threads=2)
        pinned.fit(X)
        assert torch.get_num_threads() == 1  # an explicit n_threads is restored afterwards
    finally:
        torch.set_num_threads(before)


FORK_SCRIPT = """
import os, sys, time
import numpy as np, torch
from anomaly import models
torch.set_num_threads(1)  # the caller's choice, e.g. a multi-process harness
X = np.random.default_rng(0).normal(size=(300, 3))
flow = {"max_epochs": 2, "progress": False}
models.create("flow", seed=0, **flow).fit(X).log_prob(X)
models.create("kde", seed=0).fit(X).log_prob(X)
pid = os.fork()
if pid == 0:
    code = 1
    try:
        scores = [
            models.create("flow", seed=1, **flow).fit(X).log_prob(X),
            models.create("kde", seed=1).fit(X).log_prob(X),
        ]
        code = 0 if all(np.isfinite(s).all() for s in scores) else 2
    finally:
        os._exit(code)
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.1)
os.kill(pid, 9)
sys.exit("the forked child hung")
"""


def test_fit_in_a_forked_child_after_a_fit_in_the_parent_completes():
    """A fresh process (no thread pool left by other tests) fits with the one thread it chose,
    forks, and the child fits and scores. When fits switched torch to all cores, the child
    inherited an OpenMP pool it could not use and hung forever."""
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2_000:]


# ---------------------------------------------------------------------- autoregressive masses
def test_autoregressive_cell_mass_is_the_cdf_difference_even_in_far_tails():
    from scipy.stats import norm

    from anomaly.models.autoregressive import _mixture_log_cell

    log_w = torch.log(torch.tensor([0.3, 0.7], dtype=torch.float64))
    mean = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    log_std = torch.log(torch.tensor([0.5, 1.5], dtype=torch.float64))
    x = torch.tensor([-3.0, -1.0, 0.4, 2.0, 5.0, 60.0, -80.0], dtype=torch.float64)
    half = 0.25
    got = _mixture_log_cell(x[:, None], torch.tensor(half), log_w, mean, log_std).numpy()
    # scipy's survival/cdf logs, each component on the side where its cell is a tail
    w, m, s = log_w.exp().numpy(), mean.numpy(), log_std.exp().numpy()
    a = (x.numpy()[:, None] - half - m) / s
    b = (x.numpy()[:, None] + half - m) / s
    with np.errstate(divide="ignore"):  # each side is -inf where the other one is used
        right = norm.logsf(a) + np.log1p(-np.exp(norm.logsf(b) - norm.logsf(a)))
        left = norm.logcdf(b) + np.log1p(-np.exp(norm.logcdf(a) - norm.logcdf(b)))
    per_component = np.where(a + b > 0, right, left)
    expected = np.logaddexp.reduce(np.log(w) + per_component, axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert np.isfinite(got).all()
    assert got[-2] < -700  # 39 standard deviations out


def test_autoregressive_cell_mass_from_erfc_equals_the_log_ndtr_form():
    """The mass as a difference of Φ (erfc; log_ndtr only beyond FAR_TAIL) equals the log_ndtr
    form on every cell, log and gradients, on random cells out to 10⁴ standard deviations."""
    from anomaly.models.autoregressive import LOG_STD_RANGE, _log_tail_cell, _mixture_log_cell

    rng = np.random.default_rng(0)
    n = 50_000
    log_std = torch.tensor(rng.uniform(*LOG_STD_RANGE, n), requires_grad=True)
    mean = torch.tensor(rng.normal(0, 2, n), requires_grad=True)
    half = torch.tensor(10 ** rng.uniform(-2, 1, n) / 2)  # cells of 0.01 to 10 units
    sds = rng.choice([-1, 1], n) * 10 ** rng.uniform(-3, 4, n)  # the cell's middle, in sd
    x = mean.detach() + torch.tensor(sds) * log_std.detach().exp()
    one = torch.zeros(n, 1, dtype=torch.float64)  # one component: the mass of each cell
    got = _mixture_log_cell(x[:, None], half[:, None], one, mean[:, None], log_std[:, None])
    a = (x - half - mean) / log_std.exp()
    b = (x + half - mean) / log_std.exp()
    flip = a + b > 0
    want = _log_tail_cell(torch.where(flip, -b, a), torch.where(flip, -a, b))
    got_grads = torch.autograd.grad(got.sum(), [mean, log_std])
    want_grads = torch.autograd.grad(want.sum(), [mean, log_std])
    got, want = got.detach().numpy(), want.detach().numpy()
    assert (want > -700).sum() > n // 2
    assert (want < -1e5).sum() > n // 10  # far tails, where log_ndtr is used
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(got_grad.numpy(), want_grad.numpy(), rtol=1e-7, atol=1e-300)


def test_autoregressive_masses_of_binary_features_sum_to_one(tmp_path):
    """Two dependent 0/1 columns and a continuous one: Σ over the lattice of the masses times
    ∫ the density of x is 1 (the lattice taken wide: smoothing puts a little mass next to 0/1);
    samples, modes and saved models stay on the lattice."""
    rng = np.random.default_rng(0)
    b1 = rng.random(1_000) < 0.3
    b2 = rng.random(1_000) < np.where(b1, 0.8, 0.1)
    X = np.column_stack([b1, b2, rng.normal(2.0 * b2, 1.0)]).astype(float)
    layout = lattice_layout(X)
    assert [block.step for block in layout] == [1.0, 1.0, 0.0]
    model = make("autoregressive").fit(X, layout=layout)
    xs = np.linspace(-12, 14, 1_301)
    total = 0.0
    for v1 in range(-3, 5):
        for v2 in range(-3, 5):
            grid = np.column_stack([np.full_like(xs, v1), np.full_like(xs, v2), xs])
            total += np.exp(model.log_prob(grid)).sum() * (xs[1] - xs[0])
    assert total == pytest.approx(1.0, abs=0.01)
    # P(b2 = 1 | b1) learnt: the column is a Bernoulli, not a spike
    rows = np.array([[1.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    assert model.log_prob(rows)[0] > model.log_prob(rows)[1]
    samples = model.sample(500, seed=3)
    assert set(np.unique(samples[:, :2])) <= {-1.0, 0.0, 1.0, 2.0}
    assert abs(samples[:, 1].mean() - X[:, 1].mean()) < 0.08
    _, _, modes = model.conditional_modes(X[:20])
    assert (modes[:, :2] == np.round(modes[:, :2])).all()
    gains, _ = model.best_replacements(X[:20], layout)
    assert (gains >= 0).all()
    directory = model.save(tmp_path / "m")
    assert json.loads((directory / "config.json").read_text())["fitted"]["cell_masses"] is True
    np.testing.assert_array_equal(models.load(directory).log_prob(X), model.log_prob(X))


# ---------------------------------------------------------------------- gmm: latent classes
def binary_mixed(n: int, seed: int) -> np.ndarray:
    """Two dependent 0/1 columns and a continuous one that depends on the second."""
    rng = np.random.default_rng(seed)
    b1 = rng.random(n) < 0.3
    b2 = rng.random(n) < np.where(b1, 0.8, 0.1)
    return np.column_stack([b1, b2, rng.normal(2.0 * b2, 1.0)]).astype(float)


def test_gmm_pmfs_of_binary_features_sum_to_one_exactly(tmp_path):
    """The 0/1 columns get per-component pmfs: Σ over every lattice value (seen or not) of the
    mass times ∫ the density of x is 1, to the x grid's precision; samples are 0/1 with the
    training frequencies; saved and loaded, the model scores identically."""
    X = binary_mixed(1_000, 0)
    layout = lattice_layout(X)
    model = make("gmm").fit(X, layout=layout)
    assert model.has_discrete()
    assert not model._dequantised()
    np.testing.assert_array_equal(model.continuous_, [2])
    xs = np.linspace(-12, 14, 1_301)
    total = 0.0
    for v1 in range(-3, 5):
        for v2 in range(-3, 5):
            grid = np.column_stack([np.full_like(xs, v1), np.full_like(xs, v2), xs])
            total += np.exp(model.log_prob(grid)).sum() * (xs[1] - xs[0])
    assert total == pytest.approx(1.0, abs=1e-3)
    # the dependence is learnt, and a value off the lattice is its nearest lattice point's cell
    rows = np.array([[1.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.2, 1.1, 2.0], [3.0, 1.0, 2.0]])
    lp = model.log_prob(rows)
    assert lp[0] > lp[1] == lp[2] > lp[3] + 15  # 3 was never seen: a share of UNSEEN_PROB
    samples = model.sample(2_000, seed=3)
    assert set(np.unique(samples[:, :2])) == {0.0, 1.0}
    np.testing.assert_allclose(samples[:, :2].mean(axis=0), X[:, :2].mean(axis=0), atol=0.04)
    directory = model.save(tmp_path / "m")
    loaded = models.load(directory)
    np.testing.assert_array_equal(loaded.log_prob(rows), lp)
    np.testing.assert_array_equal(loaded.sample(50, seed=1), model.sample(50, seed=1))
    # a refit without discrete features leaves none behind
    assert not model.fit(X[:, 2:]).has_discrete()


def test_gmm_categorical_block_and_count_are_exact_pmfs():
    """A one-hot block and a count with few levels: the probabilities over every category
    (and the unseen all-zero pattern) and every count sum to 1, however far the count goes."""
    rng = np.random.default_rng(1)
    c = rng.integers(0, 3, 600)
    k = rng.poisson(1.0 + 2.0 * c)
    X = np.column_stack([k, np.eye(3)[c]]).astype(float)
    layout = [Block("k", 0, 1, step=1.0), Block("c", 1, 4, categorical=True)]
    model = make("gmm").fit(X, layout=layout)
    assert model.has_discrete()
    assert len(model.continuous_) == 0
    patterns = [*np.eye(3), np.zeros(3)]
    grid = np.array([[kk, *p] for kk in range(-30, 200) for p in patterns])
    assert np.exp(model.log_prob(grid)).sum() == pytest.approx(1.0, abs=1e-6)
    # a count never seen in training is improbable but possible
    unseen = model.log_prob(np.array([[k.max() + 3.0, 0, 0, 1]]))[0]
    assert np.log(1e-20) < unseen < np.log(UNSEEN_PROB)
    samples = model.sample(400, seed=0)
    assert (samples[:, 1:].sum(axis=1) == 1).all()
    assert set(np.unique(samples[:, 0])) <= set(np.unique(k))


def test_gmm_ranks_a_rare_pattern_of_binary_features_as_anomalous():
    """Twelve 0/1 columns from two latent classes (all mostly 1 or all mostly 0): rows mixing
    the classes are rare, and the latent-class mixture finds them."""
    d = 12

    def rows(n: int, rng: np.random.Generator, mixed: bool = False) -> np.ndarray:
        if mixed:  # the first half from one class, the second from the other
            p = np.broadcast_to(np.where(np.arange(d) < d // 2, 0.9, 0.1), (n, d))
        else:
            p = np.where(rng.random((n, 1)) < 0.5, 0.9, 0.1) * np.ones((1, d))
        return np.column_stack([rng.random((n, d)) < p, rng.normal(size=n)]).astype(float)

    rng = np.random.default_rng(0)
    X = rows(1_000, rng)
    test = np.vstack([rows(300, rng), rows(30, rng, mixed=True)])
    model = make("gmm").fit(X, layout=lattice_layout(X))
    assert model.n_components_ == 2
    np.testing.assert_allclose(np.sort(np.exp(model.log_pmfs_[:, 1])), [0.1, 0.9], atol=0.04)
    scores = -model.log_prob(test)
    assert roc_auc_score(np.r_[np.zeros(300), np.ones(30)], scores) > 0.99


def test_gmm_saved_without_discrete_features_loads_unchanged(tmp_path):
    """A gmm saved before discrete features had pmfs (its count dequantised, no ``max_levels``
    in its parameters, no pmfs in its weights) loads and scores exactly as it was saved."""
    rng = np.random.default_rng(2)
    X = np.column_stack([rng.normal(size=300), rng.poisson(3.0, 300)]).astype(float)
    layout = lattice_layout(X)
    old = models.create("gmm", seed=0, max_components=3, max_levels=0).fit(
        X, layout=layout
    )  # the old path exactly
    assert old._dequantised()
    assert not old.has_discrete()
    directory = old.save(tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    for name in ("max_levels", "alpha"):
        del config["params"][name]
    (directory / "config.json").write_text(json.dumps(config))
    with np.load(directory / "weights.npz") as weights:
        assert sorted(weights.files) == ["covariances", "means", "weights"]
    loaded = models.load(directory)
    assert loaded.max_levels == 16
    assert not loaded.has_discrete()
    np.testing.assert_array_equal(loaded.log_prob(X), old.log_prob(X))
    # and a fresh fit gives the count pmfs
    assert make("gmm").fit(X, layout=layout).has_discrete()


def test_gmm_with_discrete_features_explains_by_the_search():
    X = binary_mixed(600, 4)
    layout = lattice_layout(X)
    model = make("gmm").fit(X, layout=layout)
    assert model.explanation_for(layout) == "replacement"
    planted = X[:10].copy()
    planted[:, 2] += 8.0  # x far from its class
    gains, typical = model.best_replacements(planted, layout)
    assert (gains >= 0).all()
    assert (gains.argmax(axis=1) == 2).all()
    assert set(np.unique(typical[:, :2])) <= {0.0, 1.0}
