"""Contract suite for every density model in ``anomaly.models.KINDS``.

In the spirit of zuko's ``tests/test_flows.py`` and scikit-learn's ``parametrize_with_checks``:
one set of checks, parametrised over every registered kind, so a new kind is tested as soon as it
is added to ``KINDS``. Each (kind, dataset) pair is fitted once per session (see ``fitted``);
torch kinds use small networks and few epochs so the whole file stays fast.

The datasets have known densities, which lets the checks compare a model with the truth:
normalisation by numerical integration on a grid, Gibbs' inequality on held-out rows, samples
that score like real data.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import NearestNeighbors

from anomaly import models
from anomaly.models import KINDS
from anomaly.models.base import MIN_LOG_PROB, UNSEEN_PROB, Block

N_TRAIN = 400
N_HELDOUT = 2_000

# Small, fast settings per kind (kinds not listed use their defaults). Torch kinds run on one
# thread: tiny networks gain nothing from more and slow down badly when the CPU is shared.
_TORCH = {
    "max_epochs": 60,
    "batch_size": 64,
    "learning_rate": 1e-2,
    "progress": False,
    "n_threads": 1,
}
SMALL: dict[str, dict[str, Any]] = {
    "gmm": {"max_components": 4},
    "flow": {**_TORCH, "transforms": 3, "hidden": (32, 32)},
    # importance_samples: a larger K makes the estimate of p(x) closer to the exact integral
    "vae": {**_TORCH, "latent": 2, "hidden": (32, 32), "importance_samples": 256},
    "auto": {
        "candidates": ("gaussian", "gmm", "kde"),
        "candidate_params": {"gmm": {"max_components": 3}},
    },
    "autoregressive": {**_TORCH, "hidden": (64, 64), "components": 4, "orders": 2},
}

# Invalid parameter values each kind must reject with a ValueError: (params, message pattern).
# A new kind must add its own entries (test_every_kind_has_invalid_parameter_cases).
BAD_PARAMS: dict[str, list[tuple[dict[str, Any], str]]] = {
    "gaussian": [({"shrinkage": 1.5}, "shrinkage"), ({"shrinkage": -0.1}, "shrinkage")],
    "gmm": [
        ({"max_components": 0}, "max_components"),
        ({"max_levels": -1}, "max_levels"),
        ({"alpha": 0.0}, "alpha"),
    ],
    "kde": [({"bandwidth": 0.0}, "bandwidth"), ({"bandwidth": -1.0}, "bandwidth")],
    "knn": [({"k": 0}, "k must"), ({"alpha": -0.5}, "alpha must")],
    "flow": [
        ({"flow_type": "realnvp"}, "flow_type"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"learning_rate": -1.0}, "learning_rate"),
    ],
    "vae": [
        ({"batch_size": 0}, "batch_size"),
        ({"validation_fraction": 1.0}, "validation_frac"),
        ({"importance_samples": 15}, "importance_samples must be an even integer"),
    ],
    "auto": [
        ({"candidates": ()}, "candidates"),
        ({"candidates": ("gaussian", "auto")}, "candidates"),
        ({"candidates": ("gaussian", "no-such-kind")}, "no-such-kind"),
        ({"rule": "vote"}, "rule must be one of"),
    ],
    "independent": [
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"alpha": -1.0}, "alpha"),
        ({"bins": 1}, "bins"),
        ({"heldout_fraction": 1.5}, "heldout_fraction"),
    ],
    "autoregressive": [
        ({"components": 0}, "components"),
        ({"orders": 0}, "orders"),
        ({"smoothing": -1.0}, "smoothing"),
        ({"max_epochs": 0}, "max_epochs"),
    ],
}


# ---------------------------------------------------------------------- datasets with known density
@dataclass(frozen=True)
class Dataset:
    """Rows from a known distribution: ``draw(n, rng)`` and the true ``logpdf`` per row."""

    draw: Callable[[int, np.random.Generator], np.ndarray]
    logpdf: Callable[[np.ndarray], np.ndarray]
    grid: tuple[tuple[float, float, int], ...]  # integration box: (low, high, points) per feature

    def train(self) -> np.ndarray:
        return self.draw(N_TRAIN, np.random.default_rng(1))

    def heldout(self) -> np.ndarray:
        return self.draw(N_HELDOUT, np.random.default_rng(2))


def _mix1d_draw(n: int, rng: np.random.Generator) -> np.ndarray:
    first = rng.random(n) < 0.4
    return np.where(first, rng.normal(-2.0, 0.5, n), rng.normal(1.5, 0.8, n))[:, None]


def _mix1d_logpdf(X: np.ndarray) -> np.ndarray:
    x = X[:, 0]
    return np.logaddexp(
        np.log(0.4) + norm.logpdf(x, -2.0, 0.5), np.log(0.6) + norm.logpdf(x, 1.5, 0.8)
    )


def _banana_draw(n: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=n)
    return np.column_stack([a, 0.4 * a**2 - 1.0 + 0.5 * rng.normal(size=n)])


def _banana_logpdf(X: np.ndarray) -> np.ndarray:
    return norm.logpdf(X[:, 0]) + norm.logpdf(X[:, 1], 0.4 * X[:, 0] ** 2 - 1.0, 0.5)


GAUSS_MEAN = np.array([1.0, -2.0])
GAUSS_COV = np.array([[2.0, 0.8], [0.8, 1.0]])
SHIFT = 1_000.0  # e.g. a sensor reading around 1000 with unit-scale noise
SCALE = 0.01  # the same quantity in other units (e.g. metres instead of centimetres)

DATASETS: dict[str, Dataset] = {
    # two well separated Gaussian bumps in 1-D
    "mix1d": Dataset(_mix1d_draw, _mix1d_logpdf, ((-7.0, 7.0, 4_001),)),
    # a curved 2-D density
    "banana2d": Dataset(_banana_draw, _banana_logpdf, ((-6.0, 6.0, 150), (-4.0, 11.0, 150))),
    # the same 1-D mixture far from the origin: densities must not depend on where the data sit
    "mix1d_shifted": Dataset(
        lambda n, rng: _mix1d_draw(n, rng) + SHIFT,
        lambda X: _mix1d_logpdf(X - SHIFT),
        ((SHIFT - 7.0, SHIFT + 7.0, 4_001),),
    ),
    # the same 1-D mixture in small units: densities must not depend on the unit
    "mix1d_scaled": Dataset(
        lambda n, rng: _mix1d_draw(n, rng) * SCALE,
        lambda X: _mix1d_logpdf(X / SCALE) - np.log(SCALE),
        ((-7.0 * SCALE, 7.0 * SCALE, 4_001),),
    ),
    # a single correlated Gaussian
    "gauss2d": Dataset(
        lambda n, rng: rng.multivariate_normal(GAUSS_MEAN, GAUSS_COV, n),
        multivariate_normal(GAUSS_MEAN, GAUSS_COV).logpdf,
        ((-6.0, 8.0, 150), (-7.5, 3.5, 150)),
    ),
}

# Datasets the generic contract checks run on (a 1-D and a 2-D one).
CONTRACT_DATA = ("mix1d", "banana2d")
DENSITY_DATA = ("mix1d", "banana2d", "mix1d_shifted", "mix1d_scaled")


def cases(datasets: tuple[str, ...]) -> list[Any]:
    """pytest params for every (kind, dataset)."""
    return [pytest.param(kind, data, id=f"{kind}-{data}") for data in datasets for kind in KINDS]


# ---------------------------------------------------------------------- session cache of fits
@dataclass
class Fit:
    model: models.DensityModel
    returned: Any  # what fit() returned
    X: np.ndarray  # the training rows
    input_unchanged: bool  # fit() left the caller's array as it was


def make(kind: str, **params: Any) -> models.DensityModel:
    return models.create(kind, seed=0, **{**SMALL.get(kind, {}), **params})


@pytest.fixture(scope="session")
def fitted() -> Callable[[str, str], Fit]:
    """``fitted(kind, dataset)``: a model fitted once per session on the dataset's train rows."""
    cache: dict[tuple[str, str], Fit] = {}

    def get(kind: str, data: str) -> Fit:
        if (kind, data) not in cache:
            X = DATASETS[data].train()
            arg = X.copy()
            model = make(kind)
            returned = model.fit(arg)
            cache[kind, data] = Fit(model, returned, X, np.array_equal(arg, X))
        return cache[kind, data]

    return get


@pytest.fixture(scope="session")
def saved(
    fitted: Callable[[str, str], Fit], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Path]:
    """``saved(kind, dataset)``: the directory the fitted model was saved to (once)."""
    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, data: str) -> Path:
        if (kind, data) not in cache:
            directory = tmp_path_factory.mktemp(f"{kind}-{data}") / "model"
            assert fitted(kind, data).model.save(directory) == directory
            cache[kind, data] = directory
        return cache[kind, data]

    return get


def far_rows(X: np.ndarray) -> np.ndarray:
    """Rows astronomically far from the data, in every direction and in one feature only."""
    base = X[:3]
    one = base.copy()
    one[:, -1] += 1e6
    return np.concatenate([base + 1e6, base - 1e6, one, base + 1e30])


def json_normalised(value: Any) -> Any:
    return json.loads(json.dumps(value))


def grid_integral(
    log_density: Callable[[np.ndarray], np.ndarray], grid: tuple[tuple[float, float, int], ...]
) -> float:
    """∫ exp(log_density) over the grid box by the trapezoid rule."""
    axes = [np.linspace(lo, hi, n) for lo, hi, n in grid]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    density = np.exp(log_density(points)).reshape([len(a) for a in axes])
    for axis in reversed(axes):
        density = np.trapezoid(density, axis, axis=-1)
    return float(density)


# ---------------------------------------------------------------------- registry and create
def test_kinds_registry():
    assert {"gaussian", "gmm", "kde", "knn", "flow", "vae", "auto"} <= set(KINDS)
    assert {"independent", "autoregressive"} <= set(KINDS)
    for kind, cls in KINDS.items():
        assert cls.kind == kind
        assert issubclass(cls, models.DensityModel)


@pytest.mark.parametrize("kind", KINDS)
def test_create_returns_unfitted_model_with_params(kind):
    model = make(kind)
    assert isinstance(model, KINDS[kind])
    assert model.kind == kind
    assert model.seed == 0
    for name, value in SMALL.get(kind, {}).items():
        assert model.get_params()[name] == value
    assert not hasattr(model, "n_features_in_")


def test_create_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="unknown model kind 'nope'") as info:
        models.create("nope")
    for kind in KINDS:
        assert kind in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_create_rejects_unknown_parameter(kind):
    with pytest.raises(ValueError, match=f"bad parameters for model kind '{kind}'"):
        models.create(kind, no_such_parameter=1)


def test_every_kind_has_invalid_parameter_cases():
    assert set(BAD_PARAMS) == set(KINDS), "add invalid-parameter cases for new kinds"


@pytest.mark.parametrize(
    ("kind", "params", "pattern"),
    [
        pytest.param(kind, params, pattern, id=f"{kind}-{'-'.join(map(str, params.values()))}")
        for kind, entries in BAD_PARAMS.items()
        for params, pattern in entries
    ],
)
def test_invalid_parameter_values_raise(kind, params, pattern):
    X = DATASETS["mix1d"].train()
    with pytest.raises(ValueError, match=re.escape(pattern)):
        make(kind, **params).fit(X)


# ---------------------------------------------------------------------- fit / log_prob contract
@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_fit_returns_self_and_leaves_input_alone(fitted, kind, data):
    fit = fitted(kind, data)
    assert fit.returned is fit.model
    assert fit.input_unchanged
    assert fit.model.n_features_in_ == fit.X.shape[1]


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_log_prob_shape_dtype_finite(fitted, kind, data):
    fit = fitted(kind, data)
    X = DATASETS[data].heldout()[:50]
    lp = fit.model.log_prob(X)
    assert lp.shape == (50,)
    assert lp.dtype == np.float64
    assert np.isfinite(lp).all()
    np.testing.assert_array_equal(fit.model.score_samples(X), lp)
    # row i's score is a function of row i only
    np.testing.assert_allclose(fit.model.log_prob(X[::-1]), lp[::-1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(fit.model.log_prob(X[7:8]), lp[7:8], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_log_prob_far_rows_finite_and_lowest(fitted, kind, data):
    fit = fitted(kind, data)
    far = far_rows(fit.X)
    lp = fit.model.log_prob(far)
    assert lp.shape == (len(far),)
    assert lp.dtype == np.float64
    assert np.isfinite(lp).all(), lp
    assert lp.max() < fit.model.log_prob(fit.X).min()


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_log_prob_empty_input(fitted, kind, data):
    model = fitted(kind, data).model
    lp = model.log_prob(np.empty((0, model.n_features_in_)))
    assert lp.shape == (0,)
    assert lp.dtype == np.float64
    assert model.score_samples(np.empty((0, model.n_features_in_))).shape == (0,)


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_log_prob_does_not_mutate_input_and_accepts_read_only(fitted, kind, data):
    fit = fitted(kind, data)
    X = DATASETS[data].heldout()[:40].copy()
    before = X.copy()
    X.flags.writeable = False
    lp = fit.model.log_prob(X)
    np.testing.assert_array_equal(X, before)
    # nested lists are read as float64 rows
    np.testing.assert_allclose(fit.model.log_prob(before.tolist()), lp, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_log_prob_is_deterministic(fitted, kind, data):
    model = fitted(kind, data).model
    X = DATASETS[data].heldout()[:200]
    np.testing.assert_array_equal(model.log_prob(X), model.log_prob(X))


@pytest.mark.parametrize("kind", KINDS)
def test_refit_with_same_seed_is_reproducible(fitted, kind):
    fit = fitted(kind, "mix1d")
    X = DATASETS["mix1d"].heldout()[:200]
    again = make(kind).fit(fit.X)
    np.testing.assert_array_equal(again.log_prob(X), fit.model.log_prob(X))


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", KINDS)
def test_unfitted_model_raises_not_fitted(kind, tmp_path):
    model = make(kind)
    X = np.zeros((3, 2))
    calls = [
        lambda: model.log_prob(X),
        lambda: model.score_samples(X),
        lambda: model.sample(3),
        lambda: model.save(tmp_path / "m"),
    ]
    for call in calls:
        with pytest.raises(NotFittedError, match=f"{kind} model is not fitted"):
            call()
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_wrong_feature_count_raises(fitted, kind, data):
    model = fitted(kind, data).model
    d = model.n_features_in_
    for wrong in (d + 1, d + 2):
        with pytest.raises(ValueError, match=f"X has {wrong} features.*fitted on {d}"):
            model.log_prob(np.zeros((4, wrong)))
    with pytest.raises(ValueError, match="2-D array"):
        model.log_prob(np.zeros(d))


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_non_finite_input_raises(fitted, kind, data):
    fit = fitted(kind, data)
    for bad in (np.nan, np.inf, -np.inf):
        X = fit.X[:5].copy()
        X[1, 0] = bad
        X[3, -1] = bad
        with pytest.raises(ValueError, match="log_prob: 2 rows contain NaN or inf"):
            fit.model.log_prob(X)
    X = fit.X.copy()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="fit: 1 rows contain NaN"):
        make(kind).fit(X)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_rejects_bad_shapes(kind):
    with pytest.raises(ValueError, match="at least 2 rows"):
        make(kind).fit(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="2-D array"):
        make(kind).fit(np.zeros(10))


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_save_load_round_trip_without_pickle(fitted, saved, kind, data, monkeypatch):
    fit = fitted(kind, data)
    directory = saved(kind, data)

    # every file is JSON or a numpy archive; none is a pickle stream
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert directory / "config.json" in files
    for path in files:
        assert path.suffix in {".json", ".npz"}, path
        assert not path.read_bytes().startswith(b"\x80"), f"{path} is a pickle"

    real_np_load = np.load
    np_load_calls = []

    def strict_np_load(*args, **kwargs):
        kwargs["allow_pickle"] = False
        np_load_calls.append(args)
        return real_np_load(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a model must not unpickle anything")

    monkeypatch.setattr(np, "load", strict_np_load)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    loaded = models.load(directory)
    monkeypatch.undo()

    assert np_load_calls, "weights must be read with np.load(allow_pickle=False)"
    assert type(loaded) is type(fit.model)
    assert loaded.kind == kind
    assert loaded.n_features_in_ == fit.model.n_features_in_
    assert json_normalised(loaded.get_params()) == json_normalised(fit.model.get_params())

    X = np.concatenate([DATASETS[data].heldout()[:300], far_rows(fit.X)])
    np.testing.assert_array_equal(loaded.log_prob(X), fit.model.log_prob(X))
    np.testing.assert_array_equal(loaded.sample(50, seed=4), fit.model.sample(50, seed=4))


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_saved_config_is_plain_json(saved, kind, data):
    config = json.loads((saved(kind, data) / "config.json").read_text())
    assert config["kind"] == kind
    assert config["n_features_in"] == DATASETS[data].train().shape[1]
    assert config["params"]["seed"] == 0


def test_load_errors(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        models.load(tmp_path)
    config = json.loads((saved("gaussian", "mix1d") / "config.json").read_text())
    config["format_version"] = 999
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format version 999"):
        models.load(tmp_path)


# ---------------------------------------------------------------------- sampling
def sample_problems(
    model: models.DensityModel, samples: np.ndarray, heldout: np.ndarray, heldout_lp: float
) -> list[str]:
    """Why ``samples`` do not look like draws from the data distribution (empty: they do).

    The mean log_prob of the samples must be within 0.25 nats of that of held-out real rows.
    That rejects a sampler collapsed at a mode (it gains about d/2 nats for a Gaussian, 0.5 in
    1-D) or an over-dispersed one; per-feature location and spread checks reject a sampler that
    collapses onto a single point of typical density, which the mean log_prob alone can miss.
    test_sample_check_rejects_bad_samplers runs this on bad samplers for every fitted model.
    """
    problems = []
    gap = model.log_prob(samples).mean() - heldout_lp
    if not abs(gap) < 0.25:
        problems.append(f"mean log_prob of samples differs from held-out data by {gap:.3f}")
    spread = samples.std(axis=0) / heldout.std(axis=0)
    if not ((spread > 0.7) & (spread < 1.4)).all():
        problems.append(f"sample std / data std = {spread}")
    shift = np.abs(samples.mean(axis=0) - heldout.mean(axis=0)) / heldout.std(axis=0)
    if not (shift < 0.3).all():
        problems.append(f"sample mean off by {shift} data std")
    return problems


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_sample_shape_and_seeding(fitted, kind, data):
    model = fitted(kind, data).model
    d = model.n_features_in_
    first = model.sample(300, seed=1)
    assert first.shape == (300, d)
    assert first.dtype == np.float64
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(model.sample(300, seed=1), first)
    assert not np.allclose(model.sample(300, seed=2), first)
    assert len(np.unique(first[:, 0])) > 250  # not a handful of repeated points
    with pytest.raises(ValueError, match="n must be"):
        model.sample(-1)


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_sample_zero_rows(fitted, kind, data):
    model = fitted(kind, data).model
    empty = model.sample(0, seed=1)
    assert empty.shape == (0, model.n_features_in_)
    assert empty.dtype == np.float64


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_samples_score_like_data(fitted, kind, data):
    model = fitted(kind, data).model
    samples = model.sample(N_HELDOUT, seed=3)
    heldout = DATASETS[data].heldout()
    assert sample_problems(model, samples, heldout, model.log_prob(heldout).mean()) == []


@pytest.mark.parametrize(("kind", "data"), cases(CONTRACT_DATA))
def test_sample_check_rejects_bad_samplers(fitted, kind, data):
    """The tolerance in sample_problems is tight enough to catch broken samplers."""
    fit = fitted(kind, data)
    heldout = DATASETS[data].heldout()
    lp = fit.model.log_prob(heldout)
    # a fresh draw from the true distribution passes
    fresh = DATASETS[data].draw(len(heldout), np.random.default_rng(9))
    assert sample_problems(fit.model, fresh, heldout, lp.mean()) == []
    center = heldout.mean(axis=0)
    bad = {
        "zeros": np.zeros((100, fit.X.shape[1])),
        "one training row": np.repeat(fit.X[:1], 100, axis=0),
        "the mode": np.repeat(heldout[[np.argmax(lp)]], 100, axis=0),
        "the mean": np.repeat(center[None], 100, axis=0),
        "1.5x over-dispersed": center + 1.5 * (fresh - center),
        "shifted by one std": fresh + heldout.std(axis=0),
    }
    for name, samples in bad.items():
        assert sample_problems(fit.model, samples, heldout, lp.mean()), f"{name} not detected"


# ---------------------------------------------------------------------- densities
@pytest.mark.parametrize(
    ("kind", "data"),
    cases(DENSITY_DATA),
)
def test_density_integrates_to_one(fitted, kind, data):
    dataset = DATASETS[data]
    # the box holds (almost) all the true mass and the grid resolves the true density
    assert grid_integral(dataset.logpdf, dataset.grid) == pytest.approx(1.0, abs=2e-3)
    integral = grid_integral(fitted(kind, data).model.log_prob, dataset.grid)
    assert abs(integral - 1.0) < 0.05, f"∫ p = {integral:.4f}"


@pytest.mark.parametrize(("kind", "data"), cases(DENSITY_DATA))
def test_heldout_likelihood_between_truth_and_garbage(fitted, kind, data):
    """Gibbs' inequality: no density beats the true one on average, E_p[log q - log p] ≤ 0.

    An unnormalised "density" can, so this also catches normalisation errors in any dimension.
    The 0.05-nat slack covers the sampling error of a 2000-row mean (about 0.01). The lower
    bound (0.75 nats) only asks for a sensible fit: a single Gaussian on these data loses ~0.45.
    """
    model = fitted(kind, data).model
    heldout = DATASETS[data].heldout()
    excess = float(np.mean(model.log_prob(heldout) - DATASETS[data].logpdf(heldout)))
    assert excess < 0.05, f"beats the true density by {excess:.3f} nats per row"
    assert excess > -0.75, f"{-excess:.3f} nats per row worse than the true density"


# the same data moved or in other units: (dataset, transform of mix1d rows, log |Jacobian|)
TRANSFORMED = {
    "mix1d_shifted": (lambda X: X + SHIFT, 0.0),
    "mix1d_scaled": (lambda X: X * SCALE, np.log(SCALE)),
}


@pytest.mark.parametrize(("kind", "data"), cases(tuple(TRANSFORMED)))
def test_density_does_not_depend_on_location_or_units(fitted, kind, data):
    """Fitted on y = a·x + b, the density is p_Y(y) = p_X(x) / |a| (change of variables).

    Every model standardises its input or is affine-equivariant, so this holds up to
    rounding; 0.02 nats leaves room for gaussian's absolute min_variance floor (≤ 0.008 here).
    """
    transform, log_jacobian = TRANSFORMED[data]
    heldout = DATASETS["mix1d"].heldout()
    original = fitted(kind, "mix1d").model.log_prob(heldout)
    moved = fitted(kind, data).model.log_prob(transform(heldout)) + log_jacobian
    np.testing.assert_allclose(moved, original, rtol=0, atol=0.02)


@pytest.mark.parametrize(
    ("better", "worse", "data", "margin"),
    [
        ("gmm", "gaussian", "mix1d", 0.2),
        ("kde", "gaussian", "mix1d", 0.2),
        ("knn", "gaussian", "mix1d", 0.2),
        ("kde", "gaussian", "banana2d", 0.2),
        ("knn", "gaussian", "banana2d", 0.2),
        ("flow", "gaussian", "banana2d", 0.2),
        ("gmm", "gaussian", "banana2d", 0.1),
        ("independent", "gaussian", "mix1d", 0.2),
        ("autoregressive", "gaussian", "mix1d", 0.2),
        ("autoregressive", "gaussian", "banana2d", 0.2),
        # the dependency between the two features is worth ~0.4 nats per row
        ("autoregressive", "independent", "banana2d", 0.2),
    ],
)
def test_better_model_has_higher_heldout_likelihood(fitted, better, worse, data, margin):
    heldout = DATASETS[data].heldout()
    good = fitted(better, data).model.log_prob(heldout).mean()
    bad = fitted(worse, data).model.log_prob(heldout).mean()
    assert good > bad + margin, (good, bad)


# ---------------------------------------------------------------------- gaussian
@pytest.mark.parametrize("data", ["gauss2d", "mix1d", "banana2d"])
def test_gaussian_matches_scipy(fitted, data):
    model = fitted("gaussian", data).model
    X = np.concatenate([DATASETS[data].heldout()[:500], far_rows(fitted("gaussian", data).X)[:9]])
    reference = multivariate_normal(model.mean_, model.covariance_).logpdf(X)
    # log_prob is documented to floor at MIN_LOG_PROB (far rows)
    expected = np.maximum(np.atleast_1d(reference), MIN_LOG_PROB)
    np.testing.assert_allclose(model.log_prob(X), expected, rtol=1e-10)


@pytest.mark.parametrize("data", ["gauss2d", "mix1d"])
def test_gaussian_without_shrinkage_is_the_mle(data):
    X = DATASETS[data].train()
    model = make("gaussian", shrinkage=0.0, min_variance=1e-6).fit(X)
    d = X.shape[1]
    np.testing.assert_allclose(model.mean_, X.mean(axis=0), rtol=1e-12)
    mle = np.cov(X, rowvar=False, bias=True).reshape(d, d)
    np.testing.assert_allclose(model.covariance_ - 1e-6 * np.eye(d), mle, rtol=1e-12)
    assert model.shrinkage_ == 0.0
    # the MLE maximises the training likelihood: Ledoit-Wolf shrinkage cannot do better
    shrunk = make("gaussian").fit(X)
    assert model.log_prob(X).mean() >= shrunk.log_prob(X).mean()
    # shrinkage=1: a scaled identity with the same total variance
    full = make("gaussian", shrinkage=1.0, min_variance=0.0).fit(X)
    np.testing.assert_allclose(full.covariance_, np.trace(mle) / d * np.eye(d), rtol=1e-12)


def test_gaussian_recovers_true_parameters(fitted):
    model = fitted("gaussian", "gauss2d").model
    np.testing.assert_allclose(model.mean_, GAUSS_MEAN, atol=0.2)
    np.testing.assert_allclose(model.covariance_, GAUSS_COV, atol=0.3)


# ---------------------------------------------------------------------- gmm
@pytest.mark.parametrize(
    ("data", "components"),
    [
        ("mix1d", 2),
        ("gauss2d", 1),
        ("mix1d_scaled", 2),
    ],
)
def test_gmm_picks_components_by_bic(fitted, saved, data, components):
    model = fitted("gmm", data).model
    assert model.n_components_ == components
    assert sorted(model.bic_) == list(range(1, SMALL["gmm"]["max_components"] + 1))
    assert min(model.bic_, key=model.bic_.__getitem__) == components
    assert model.weights_.shape == (components,)
    np.testing.assert_allclose(model.weights_.sum(), 1.0)
    if data == "mix1d":
        order = np.argsort(model.means_[:, 0])
        np.testing.assert_allclose(model.means_[order, 0], [-2.0, 1.5], atol=0.2)
        np.testing.assert_allclose(model.weights_[order], [0.4, 0.6], atol=0.07)
    loaded = models.load(saved("gmm", data))
    assert loaded.n_components_ == components
    assert loaded.bic_ == model.bic_


# ---------------------------------------------------------------------- kde / knn
@pytest.mark.parametrize("data", CONTRACT_DATA)
def test_kernel_hyper_parameters_stored_and_survive_load(fitted, saved, data):
    kde = fitted("kde", data).model
    knn = fitted("knn", data).model
    assert isinstance(kde.bandwidth_, float)
    assert kde.bandwidth_ > 0
    assert knn.k_ in SMALL.get("knn", {}).get("k_grid", (5, 10, 20, 40))
    assert knn.alpha_ > 0
    loaded_kde = models.load(saved("kde", data))
    loaded_knn = models.load(saved("knn", data))
    assert loaded_kde.bandwidth_ == kde.bandwidth_
    assert (loaded_knn.k_, loaded_knn.alpha_) == (knn.k_, knn.alpha_)


def test_kernel_fixed_hyper_parameters_are_used():
    X = DATASETS["banana2d"].train()
    assert make("kde", bandwidth=0.3).fit(X).bandwidth_ == 0.3
    knn = make("knn", k=7, alpha=0.5).fit(X)
    assert (knn.k_, knn.alpha_) == (7, 0.5)


def _kernel_reference(X: np.ndarray, Q: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """log 1/n Σ_i N(q; x_i, widths_i² diag(s²)) in float64, s = per-feature std of X."""
    s = X.std(axis=0)
    per_kernel = np.stack(
        [multivariate_normal(x, (h * s) ** 2).logpdf(Q) for x, h in zip(X, widths, strict=True)]
    ).reshape(len(X), len(Q))
    return logsumexp(per_kernel, axis=0) - np.log(len(X))


@pytest.mark.parametrize("data", CONTRACT_DATA)
def test_kde_and_knn_match_float64_reference(fitted, data):
    X = fitted("kde", data).X
    Q = DATASETS[data].heldout()[:100]
    kde = fitted("kde", data).model
    expected = _kernel_reference(X, Q, np.full(len(X), kde.bandwidth_))
    np.testing.assert_allclose(kde.log_prob(Q), expected, rtol=0, atol=1e-3)

    knn = fitted("knn", data).model
    Z = X / X.std(axis=0)
    dist, _ = NearestNeighbors(n_neighbors=knn.k_ + 1).fit(Z).kneighbors(Z)
    widths = np.maximum(knn.alpha_ * dist[:, knn.k_], knn.min_bandwidth)
    np.testing.assert_allclose(knn.log_prob(Q), _kernel_reference(X, Q, widths), atol=1e-3)


# ---------------------------------------------------------------------- vae
@pytest.mark.parametrize("data", CONTRACT_DATA)
def test_vae_log_prob_independent_of_batch(fitted, data):
    """The importance-sampling draws are fixed, so a row scores the same in any batch.

    Not bit-identical: float32 matrix products of different shapes round differently (~1e-6).
    """
    model = fitted("vae", data).model
    heldout = DATASETS[data].heldout()
    # 4000 rows: more than one internal scoring chunk (2e6 // (K * max(d, latent)) = 3906
    # rows with these settings), so some rows are scored in a different chunk the second time
    big = np.concatenate([heldout, heldout])
    lp = model.log_prob(big)
    np.testing.assert_allclose(lp[N_HELDOUT:], lp[:N_HELDOUT], rtol=0, atol=1e-5)
    alone = np.array([model.log_prob(row[None])[0] for row in big[-5:]])
    np.testing.assert_allclose(alone, lp[-5:], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- auto
def fit_part(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """The rows ``auto`` fits its candidates on (the rest, 20 %, are held out)."""
    order = np.random.default_rng(seed).permutation(len(X))
    return X[order[round(0.2 * len(X)) :]]


@pytest.mark.parametrize("data", CONTRACT_DATA)
def test_auto_stacks_candidates_by_heldout_likelihood(data, tmp_path):
    train = DATASETS[data].train()
    model = make("auto", rule="stack").fit(train)
    assert set(model.scores_) == set(SMALL["auto"]["candidates"])
    assert all(np.isfinite(v) for v in model.scores_.values())
    weights = model.selection_["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert min(weights.values()) >= 0.01 - 1e-12
    assert model.selection_["candidates"] == model.scores_
    assert model.selection_["rule"] == "stack"
    # the kept kinds, as fitted on the fit part (80 %), mixed with their weights
    X = DATASETS[data].heldout()[:200]
    part = fit_part(train)
    parts = [
        np.log(w) + make(k, **SMALL["auto"]["candidate_params"].get(k, {})).fit(part).log_prob(X)
        for k, w in weights.items()
    ]
    np.testing.assert_allclose(model.log_prob(X), logsumexp(parts, axis=0), rtol=1e-12)
    assert abs(grid_integral(model.log_prob, DATASETS[data].grid) - 1.0) < 0.05
    loaded = models.load(model.save(tmp_path / "auto"))
    assert loaded.selection_ == model.selection_
    np.testing.assert_array_equal(loaded.log_prob(X), model.log_prob(X))


@pytest.mark.parametrize("rule", ["product", "consensus"])
@pytest.mark.parametrize("data", CONTRACT_DATA)
def test_auto_geometric_mixture_is_normalised(data, rule, tmp_path):
    """log p = Σ_k w_k log p_k − log Z, Z ≤ 1 estimated by importance sampling; ``product``:
    w_k = 1/K, ``consensus``: w_k ∝ 1 / (interquartile range of log p_k on the held-out rows)."""
    train = DATASETS[data].train()
    model = make("auto", rule=rule).fit(train)
    kinds = SMALL["auto"]["candidates"]
    assert model.log_z_ <= 0.0
    part = fit_part(train)
    held = train[np.random.default_rng(0).permutation(len(train))[: round(0.2 * len(train))]]
    fitted = [make(k, **SMALL["auto"]["candidate_params"].get(k, {})).fit(part) for k in kinds]
    if rule == "product":
        w = np.full(len(kinds), 1 / 3)
    else:
        iqr = np.array([np.subtract(*np.percentile(m.log_prob(held), [75, 25])) for m in fitted])
        w = (1 / iqr) / (1 / iqr).sum()
    assert list(model.selection_["weights"]) == list(kinds)
    np.testing.assert_allclose(list(model.selection_["weights"].values()), w, rtol=1e-10)
    X = DATASETS[data].heldout()[:200]
    log_p = w @ np.stack([m.log_prob(X) for m in fitted])
    np.testing.assert_allclose(model.log_prob(X), log_p - model.log_z_, rtol=1e-10)
    assert abs(grid_integral(model.log_prob, DATASETS[data].grid) - 1.0) < 0.05
    heldout = DATASETS[data].heldout()
    samples = model.sample(2_000, seed=1)
    problems = sample_problems(model, samples, heldout, model.log_prob(heldout).mean())
    assert not problems, problems
    loaded = models.load(model.save(tmp_path / "auto"))
    assert loaded.log_z_ == model.log_z_
    np.testing.assert_array_equal(loaded.log_prob(X), model.log_prob(X))


def test_geometric_mixture_samples_past_its_rejection_budget(monkeypatch, caplog):
    """With too few proposals for rejection alone, the rest of the rows come from importance
    resampling of the rejected ones: still n distinct rows that follow the density, and a
    warning says they are approximate."""
    from anomaly.models import auto

    train = DATASETS["mix1d"].train()
    model = make("auto", rule="consensus").fit(train)
    monkeypatch.setattr(auto, "PROPOSALS_PER_ROW", 0)  # the budget: Z_SAMPLES proposals
    n = 3 * auto.Z_SAMPLES
    with caplog.at_level("WARNING", logger="anomaly.models.auto"):
        samples = model.sample(n, seed=2)
    assert samples.shape == (n, 1)
    assert np.isfinite(samples).all()
    assert "importance resampling" in caplog.text
    heldout = DATASETS["mix1d"].heldout()
    problems = sample_problems(model, samples, heldout, model.log_prob(heldout).mean())
    assert not problems, problems
    # explanations place their candidates with the arithmetic mixture's draws, no rejection
    draws = model.candidate_sample(500, seed=0)
    assert draws.shape == (500, 1)
    assert np.isfinite(draws).all()


def test_geometric_mixture_proposes_less_from_sequential_samplers(monkeypatch):
    """A kind that samples column by column (``flow``, ``autoregressive``) gets its share of
    the proposals cut by SEQUENTIAL_COLUMNS / d. Here ``gmm`` plays one, cut to 1/20 beside
    ``gaussian`` on bimodal data: Z is still estimated without bias, the exact rejection
    sampler still draws from the density (Kolmogorov–Smirnov distance to its CDF on a grid),
    and explanations' candidates come mostly from ``gaussian``."""
    from anomaly.models import auto
    from anomaly.models.gmm import GMM

    assert models.create("flow").sequential_sampling
    assert models.create("autoregressive").sequential_sampling
    assert not models.create("kde").sequential_sampling
    train = DATASETS["mix1d"].train()
    kinds = {"candidates": ("gaussian", "gmm"), "rule": "product"}
    full = make("auto", **kinds).fit(train)
    np.testing.assert_allclose(full.proposal_weights(), full.weights_, rtol=1e-12)
    monkeypatch.setattr(GMM, "sequential_sampling", True)
    monkeypatch.setattr(auto, "SEQUENTIAL_COLUMNS", 0.05)  # cut = 0.05 / 1 column
    cut = make("auto", **kinds).fit(train)
    w = cut.weights_ * [1.0, 0.05]
    np.testing.assert_allclose(cut.proposal_weights(), w / w.sum(), rtol=1e-12)
    assert abs(cut.log_z_ - full.log_z_) < 0.03  # the same Z, from another proposal
    samples = np.sort(cut.sample(4_000, seed=3)[:, 0])
    grid = np.linspace(-7.0, 7.0, 4_001)
    cdf = np.cumsum(np.exp(cut.log_prob(grid[:, None])))
    cdf /= cdf[-1]
    ks = np.abs(np.searchsorted(samples, grid, side="right") / len(samples) - cdf).max()
    assert ks < 0.026, ks  # the 1 % critical value for 4,000 draws: 1.63 / sqrt(4000)
    calls = []
    gmm_sample = GMM.sample

    def counted(self, n, seed=0, context=None):
        calls.append(n)
        return gmm_sample(self, n, seed=seed, context=context)

    monkeypatch.setattr(GMM, "sample", counted)
    cut.candidate_sample(1_000, seed=0)
    assert sum(calls) < 2 * 1_000 * w[1] / w.sum()


def test_torch_sampling_redraws_rows_that_overflow(monkeypatch):
    model = make("flow").fit(DATASETS["gauss2d"].train())
    module_sample = type(model)._module_sample
    calls = []

    def overflowing_once(self, module, n, context):
        out = module_sample(self, module, n, context)
        if not calls:
            out[:3] = torch.inf
        calls.append(n)
        return out

    monkeypatch.setattr(type(model), "_module_sample", overflowing_once)
    samples = model.sample(100, seed=0)
    assert np.isfinite(samples).all()
    assert calls == [100, 3]


@pytest.mark.parametrize("rule", ["mean", "tail"])
def test_auto_selection_rules_pick_one_kind(rule, tmp_path):
    X = DATASETS["mix1d"].train()
    model = make("auto", rule=rule).fit(X)
    assert len(model.selection_["weights"]) == 1
    chosen = model.chosen_
    if rule == "mean":
        assert chosen == max(model.scores_, key=model.scores_.__getitem__)
    params = SMALL["auto"]["candidate_params"].get(chosen, {})
    held = DATASETS["mix1d"].heldout()[:100]
    alone = make(chosen, **params).fit(X)  # one kind is refitted on all rows
    np.testing.assert_array_equal(model.log_prob(held), alone.log_prob(held))
    assert model.model_.kind == chosen  # what explanations explain
    loaded = models.load(model.save(tmp_path / "auto"))
    assert loaded.chosen_ == chosen
    assert loaded.selection_ == model.selection_


def test_auto_on_a_single_gaussian():
    # 2000 rows (400 held out): enough for the Gaussian to beat the KDE on any draw we tried
    X = DATASETS["gauss2d"].draw(2_000, np.random.default_rng(3))
    model = models.create("auto", candidates=("gaussian", "kde"), rule="mean").fit(X)
    assert list(model.scores_) == ["gaussian", "kde"]
    # held-out scores (nats per row) are near the true negative entropy of the distribution
    neg_entropy = -multivariate_normal(GAUSS_MEAN, GAUSS_COV).entropy()
    for kind, score in model.scores_.items():
        assert abs(score - neg_entropy) < 0.25, (kind, score, neg_entropy)
    # the right model family wins
    assert model.scores_["gaussian"] > model.scores_["kde"]
    assert model.chosen_ == "gaussian"
    np.testing.assert_allclose(
        model.log_prob(X), models.create("gaussian").fit(X).log_prob(X), rtol=1e-12
    )
    # the stack puts most of its weight on the right family too
    stack = models.create("auto", candidates=("gaussian", "kde"), rule="stack").fit(X)
    assert stack.selection_["weights"].get("gaussian", 0.0) > 0.5


def test_auto_default_is_the_consensus_of_every_family():
    """The default gives a parametric, two kernel and a neural kind an equal say: its log
    ranks rows as the mean of their log-likelihoods standardised on the held-out rows."""
    X = DATASETS["mix1d"].train()
    model = models.create("auto", candidate_params={"flow": SMALL["flow"]}).fit(X)
    assert model.selection_["rule"] == "consensus"
    assert list(model.selection_["weights"]) == ["gmm", "kde", "knn", "flow"]
    held = X[np.random.default_rng(0).permutation(len(X))[: round(0.2 * len(X))]]
    test = DATASETS["mix1d"].heldout()[:300]
    z = []
    for m in model.components_:
        q1, q2, q3 = np.percentile(m.log_prob(held), [25, 50, 75])
        z.append((m.log_prob(test) - q2) / (q3 - q1))
    mean_z = np.mean(z, axis=0)
    slope, intercept = np.polyfit(mean_z, model.log_prob(test), 1)
    assert slope > 0
    np.testing.assert_allclose(model.log_prob(test), slope * mean_z + intercept, atol=1e-8)


# ---------------------------------------------------------------------- production defaults
@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "params", "data"),
    [
        pytest.param(kind, params, data, id=f"{name}-{data}")
        for data in CONTRACT_DATA
        for name, kind, params in [(kind, kind, {}) for kind in KINDS]
        + [("flow-nsf", "flow", {"flow_type": "nsf"})]
    ],
)
def test_default_settings_give_a_normalised_density(kind, params, data, tmp_path):
    """The full-size defaults (bigger networks, more epochs, all auto candidates)."""
    dataset = DATASETS[data]
    model = models.create(kind, **params).fit(dataset.train())
    integral = grid_integral(model.log_prob, dataset.grid)
    assert abs(integral - 1.0) < 0.05, f"∫ p = {integral:.4f}"
    heldout = dataset.heldout()
    excess = float(np.mean(model.log_prob(heldout) - dataset.logpdf(heldout)))
    assert -0.75 < excess < 0.05, f"{excess:.3f} nats per row from the true density"
    loaded = models.load(model.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.log_prob(heldout), model.log_prob(heldout))


# ---------------------------------------------------------------------- layouts: mixed types
#: kinds that model a one-hot block as a categorical distribution (the others see numbers)
NATIVE_MIXED = ("independent", "autoregressive")
MIXED_LAYOUT = [Block("x", 0, 1), Block("c", 1, 4, categorical=True)]
MIXED_P = np.array([0.5, 0.3, 0.2])
MIXED_MEAN, MIXED_STD = np.array([-2.0, 0.0, 3.0]), np.array([0.5, 1.0, 0.7])


def mixed_draw(n: int, rng: np.random.Generator) -> np.ndarray:
    """x | c ~ N(mean_c, std_c), c one-hot in columns 1–3."""
    c = rng.choice(3, size=n, p=MIXED_P)
    return np.column_stack([rng.normal(MIXED_MEAN[c], MIXED_STD[c]), np.eye(3)[c]])


def mixed_logpdf(X: np.ndarray) -> np.ndarray:
    c = X[:, 1:].argmax(axis=1)
    return np.log(MIXED_P[c]) + norm.logpdf(X[:, 0], MIXED_MEAN[c], MIXED_STD[c])


@pytest.fixture(scope="session")
def mixed_fitted() -> Callable[[str], models.DensityModel]:
    cache: dict[str, models.DensityModel] = {}

    def get(kind: str) -> models.DensityModel:
        if kind not in cache:
            X = mixed_draw(N_TRAIN, np.random.default_rng(1))
            cache[kind] = make(kind).fit(X, layout=MIXED_LAYOUT)
        return cache[kind]

    return get


def mixed_grid(c: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(-8.0, 8.0, 4_001)
    return x, np.column_stack([x, np.tile(np.eye(3)[c], (len(x), 1))])


@pytest.mark.parametrize("kind", NATIVE_MIXED)
def test_mixed_layout_sums_over_categories_to_one(mixed_fitted, kind):
    """Σ_c ∫ p(x, c) dx = 1, and each category's mass is near its true probability."""
    model = mixed_fitted(kind)
    masses = []
    for c in range(3):
        x, rows = mixed_grid(c)
        masses.append(np.trapezoid(np.exp(model.log_prob(rows)), x))
    assert sum(masses) == pytest.approx(1.0, abs=0.02), masses
    np.testing.assert_allclose(masses, MIXED_P, atol=0.07)


def test_mixed_layout_heldout_likelihood_near_truth(mixed_fitted):
    """autoregressive models x | c; independent cannot, and loses the mutual information."""
    heldout = mixed_draw(N_HELDOUT, np.random.default_rng(2))
    excess = {
        kind: float(np.mean(mixed_fitted(kind).log_prob(heldout) - mixed_logpdf(heldout)))
        for kind in NATIVE_MIXED
    }
    assert -0.25 < excess["autoregressive"] < 0.05, excess
    assert excess["independent"] < 0.05, excess
    assert excess["autoregressive"] > excess["independent"] + 0.5, excess


@pytest.mark.parametrize("kind", NATIVE_MIXED)
def test_unseen_category_is_finite_and_very_improbable(mixed_fitted, kind):
    model = mixed_fitted(kind)
    rows = mixed_draw(20, np.random.default_rng(5))
    unseen = rows.copy()
    unseen[:, 1:] = 0.0
    lp, lp_unseen = model.log_prob(rows), model.log_prob(unseen)
    assert np.isfinite(lp_unseen).all()
    # about log UNSEEN_PROB (−20.7 nats) below a seen category's score
    assert (lp_unseen < lp - 15).all()
    assert (lp_unseen > lp - 40).all()
    block = model.feature_log_probs(unseen)[:, 1]
    np.testing.assert_allclose(block, np.log(UNSEEN_PROB), rtol=1e-6)


@pytest.mark.parametrize("kind", NATIVE_MIXED)
def test_mixed_samples_are_one_hot_with_the_right_frequencies(mixed_fitted, kind):
    samples = mixed_fitted(kind).sample(3_000, seed=1)
    block = samples[:, 1:]
    assert set(np.unique(block)) == {0.0, 1.0}
    np.testing.assert_array_equal(block.sum(axis=1), 1.0)
    np.testing.assert_allclose(block.mean(axis=0), MIXED_P, atol=0.06)
    # x follows its category's distribution (autoregressive) or the marginal (independent)
    for c in range(3):
        x = samples[block[:, c] == 1, 0]
        expected = MIXED_MEAN[c] if kind == "autoregressive" else MIXED_P @ MIXED_MEAN
        assert abs(x.mean() - expected) < 0.35, (c, x.mean())


def test_independent_category_probabilities_are_smoothed_frequencies(mixed_fitted):
    model = mixed_fitted("independent")
    X = mixed_draw(N_TRAIN, np.random.default_rng(1))
    counts = X[:, 1:].sum(axis=0)
    expected = np.log((counts + 1.0) / (len(X) + 3.0) * (1 - UNSEEN_PROB))
    got = model.feature_log_probs(np.column_stack([np.zeros(3), np.eye(3)]))[:, 1]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("data", CONTRACT_DATA)
def test_independent_log_prob_is_the_sum_of_feature_terms(fitted, data):
    model = fitted("independent", data).model
    X = DATASETS[data].heldout()[:300]
    terms = model.feature_log_probs(X)
    assert terms.shape == (300, X.shape[1])
    np.testing.assert_allclose(terms.sum(axis=1), model.log_prob(X), rtol=1e-12)
    # each numeric marginal is a 1-D density that integrates to one
    for j in range(X.shape[1]):
        grid = np.linspace(-15.0, 15.0, 6_001)
        rows = np.zeros((len(grid), X.shape[1]))
        rows[:, j] = grid
        mass = np.trapezoid(np.exp(model.feature_log_probs(rows)[:, j]), grid)
        assert mass == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------------- feature conditionals
def _true_gauss_conditionals(X: np.ndarray) -> np.ndarray:
    """log p(x_j | x_-j) of GAUSS_MEAN/GAUSS_COV: joint minus the other feature's marginal."""
    joint = multivariate_normal(GAUSS_MEAN, GAUSS_COV).logpdf(X)
    return np.column_stack(
        [
            joint - norm.logpdf(X[:, 1 - j], GAUSS_MEAN[1 - j], np.sqrt(GAUSS_COV[1 - j, 1 - j]))
            for j in range(2)
        ]
    )


def test_gaussian_feature_log_probs_are_its_closed_form_conditionals(fitted):
    model = fitted("gaussian", "gauss2d").model
    X = DATASETS["gauss2d"].heldout()[:200]
    joint = multivariate_normal(model.mean_, model.covariance_)
    expected = np.column_stack(
        [
            joint.logpdf(X)
            - norm.logpdf(X[:, 1 - j], model.mean_[1 - j], np.sqrt(model.covariance_[1 - j, 1 - j]))
            for j in range(2)
        ]
    )
    np.testing.assert_allclose(model.feature_log_probs(X), expected, rtol=1e-9)


def test_gaussian_feature_log_probs_one_hot_block_is_one_term(mixed_fitted):
    model = make("gaussian").fit(mixed_draw(N_TRAIN, np.random.default_rng(1)), MIXED_LAYOUT)
    X = mixed_draw(50, np.random.default_rng(3))
    terms = model.feature_log_probs(X)
    assert terms.shape == (50, 2)
    # the block term is log q(x_block | x) of the fitted (dequantised) Gaussian q: its joint
    # density at the row minus the marginal of x
    marginal = norm.logpdf(X[:, 0], model.mean_[0], np.sqrt(model.covariance_[0, 0]))
    np.testing.assert_allclose(terms[:, 1], model._density(X, None) - marginal, rtol=1e-8)


def test_autoregressive_feature_log_probs_approximate_true_conditionals():
    """Order-agnostic training: the network's full conditionals are near the true ones."""
    X = DATASETS["gauss2d"].draw(3_000, np.random.default_rng(4))
    model = make("autoregressive", learning_rate=3e-3).fit(X)
    X = DATASETS["gauss2d"].heldout()[:1_000]
    terms = model.feature_log_probs(X)
    assert terms.shape == (1_000, 2)
    assert np.isfinite(terms).all()
    truth = _true_gauss_conditionals(X)
    gap = np.abs(terms - truth).mean(axis=0)
    assert (gap < 0.2).all(), gap  # (a fitted Gaussian's joint is ~0.02 nats off here)
    # far closer than the marginals, which ignore the other feature
    sd = np.sqrt(np.diag(GAUSS_COV))
    marginal_gap = np.abs(norm.logpdf(X, GAUSS_MEAN, sd) - truth).mean(axis=0)
    assert (gap < marginal_gap / 2).all(), (gap, marginal_gap)
    # shuffling which row is which breaks the dependency: the conditionals see it
    broken = np.column_stack([X[:, 0], X[::-1, 1]])
    assert terms.mean() > model.feature_log_probs(broken).mean() + 0.2


def test_autoregressive_orders_form_a_normalised_mixture():
    X = DATASETS["banana2d"].train()
    for orders in (1, 3):
        model = make("autoregressive", orders=orders).fit(X)
        assert model.module_.orders.shape == (orders, 2)
        np.testing.assert_array_equal(model.module_.orders[0].numpy(), [0, 1])  # natural first
        integral = grid_integral(model.log_prob, DATASETS["banana2d"].grid)
        assert abs(integral - 1.0) < 0.05, (orders, integral)


# ---------------------------------------------------------------------- layout and context errors
def test_layout_is_stored_saved_and_loaded(tmp_path, mixed_fitted):
    for kind in ("gaussian", "independent"):
        model = make(kind).fit(mixed_draw(100, np.random.default_rng(1)), layout=MIXED_LAYOUT)
        assert model.layout_ == MIXED_LAYOUT
        loaded = models.load(model.save(tmp_path / kind))
        assert loaded.layout_ == MIXED_LAYOUT
        assert loaded.n_context_ == 0
    assert make("gaussian").fit(np.zeros((5, 2)) + np.arange(5)[:, None]).layout_ == [
        Block("x0", 0, 1),
        Block("x1", 1, 2),
    ]


@pytest.mark.parametrize(
    ("layout", "pattern"),
    [
        ([Block("x", 0, 1)], "covers 1 columns, but X has 4"),
        ([Block("x", 0, 1), Block("c", 2, 4, True)], "does not fit"),
        ([Block("x", 0, 2), Block("c", 2, 4, True)], "does not fit"),
        ([Block("x", 0, 1), Block("x", 1, 4, True)], "unique"),
    ],
)
def test_bad_layout_raises(layout, pattern):
    with pytest.raises(ValueError, match=pattern):
        make("independent").fit(mixed_draw(50, np.random.default_rng(1)), layout=layout)


@pytest.mark.parametrize("kind", [k for k in KINDS if not KINDS[k].supports_context])
def test_kinds_without_context_refuse_it_naming_those_with(kind):
    X = DATASETS["mix1d"].train()
    with pytest.raises(ValueError, match="cannot condition on context") as info:
        make(kind).fit(X, context=np.zeros((len(X), 1)))
    for other in models.context_kinds():
        assert other in str(info.value)


def test_context_kinds():
    assert {"gaussian", "flow", "autoregressive"} <= set(models.context_kinds())


def test_context_must_match_the_fit(fitted):
    model = fitted("gaussian", "mix1d").model
    X = DATASETS["mix1d"].heldout()[:5]
    with pytest.raises(ValueError, match="fitted without context"):
        model.log_prob(X, context=np.zeros((5, 1)))
    rng = np.random.default_rng(0)
    with_context = make("gaussian").fit(rng.normal(size=(50, 2)), context=rng.normal(size=(50, 1)))
    with pytest.raises(ValueError, match="pass context"):
        with_context.log_prob(rng.normal(size=(5, 2)))
    with pytest.raises(ValueError, match="context has 4 rows, expected 5"):
        with_context.log_prob(rng.normal(size=(5, 2)), context=np.zeros((4, 1)))
    with pytest.raises(ValueError, match="context has 2 columns"):
        with_context.log_prob(rng.normal(size=(5, 2)), context=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="context has 4 rows, expected 3"):
        with_context.sample(3, context=np.zeros((4, 1)))
