"""Conditional densities: context columns are conditioned on, not judged.

Synthetic data where x's distribution depends on a categorical context (x | a ~ N(0, 1),
x | b ~ N(4, 0.5²)): x = 4 is normal in context b and rare in context a, which a model of
p(x) alone cannot see (4 is a common value overall). Checked for every kind that supports
context, then through the preprocessor, training and the detector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from anomaly import models
from anomaly.config import Config, ConfigError, Data, Features, ModelSpec, load_config
from anomaly.detector import Detector
from anomaly.preprocessing import Preprocessor
from anomaly.training import train

N = 1_500
MEANS, STDS = np.array([0.0, 4.0]), np.array([1.0, 0.5])
_TORCH = {"max_epochs": 60, "batch_size": 64, "learning_rate": 1e-2, "progress": False}
SMALL: dict[str, dict[str, Any]] = {
    "gaussian": {},
    "flow": {**_TORCH, "learning_rate": 3e-3, "transforms": 3, "hidden": (32, 32), "n_threads": 1},
    "autoregressive": {**_TORCH, "hidden": (64, 64), "components": 4, "orders": 1},
}
A, B = np.array([1.0, 0.0]), np.array([0.0, 1.0])  # the context's one-hot rows


def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, context one-hot) with x | context ~ N(MEANS[c], STDS[c])."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 2, n)
    return rng.normal(MEANS[c], STDS[c])[:, None], np.eye(2)[c]


def std_of(model: models.DensityModel, c: int) -> float:
    """The conditional std the kind can reach: gaussian's does not move with the context (it
    is the pooled residual std), the others can match the true one."""
    if model.kind == "gaussian":
        return float(np.sqrt(np.mean(STDS**2)))
    return float(STDS[c])


def test_context_kinds_are_tested():
    assert set(SMALL) == set(models.context_kinds())


@pytest.fixture(scope="module")
def fitted() -> Callable[[str], models.DensityModel]:
    cache: dict[str, models.DensityModel] = {}

    def get(kind: str) -> models.DensityModel:
        if kind not in cache:
            X, C = draw(N, seed=1)
            cache[kind] = models.create(kind, seed=0, **SMALL[kind]).fit(X, context=C)
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", SMALL)
def test_conditional_density_integrates_to_one_in_each_context(fitted, kind):
    model = fitted(kind)
    x = np.linspace(-8.0, 10.0, 3_001)
    for c, context in enumerate((A, B)):
        lp = model.log_prob(x[:, None], context=np.tile(context, (len(x), 1)))
        mass = np.trapezoid(np.exp(lp), x)
        assert mass == pytest.approx(1.0, abs=0.03), (c, mass)
        # and it is the right conditional: close to the true one near its mode
        truth = norm.logpdf(x, MEANS[c], std_of(model, c))
        inside = np.abs(x - MEANS[c]) < 2 * STDS[c]
        assert np.abs(lp - truth)[inside].mean() < 0.2


@pytest.mark.parametrize("kind", SMALL)
def test_value_normal_in_one_context_is_caught_in_another(fitted, kind):
    model = fitted(kind)
    X, C = draw(2_000, seed=2)
    threshold = np.quantile(model.log_prob(X, context=C), 0.01)  # flags 1 % of normal rows
    value = np.array([[4.0]])
    assert model.log_prob(value, context=A[None])[0] < threshold  # rare given a
    assert model.log_prob(value, context=B[None])[0] > np.quantile(
        model.log_prob(X, context=C), 0.2
    )  # ordinary given b
    # the marginal model misses it: 4 is a common value of x overall
    marginal = models.create("gmm", max_components=3).fit(X)
    assert marginal.log_prob(value)[0] > np.quantile(marginal.log_prob(X), 0.05)


@pytest.mark.parametrize("kind", SMALL)
def test_samples_follow_their_context(fitted, kind):
    model = fitted(kind)
    for c, context in enumerate((A, B)):
        samples = model.sample(2_000, seed=c, context=np.tile(context, (2_000, 1)))
        assert samples.shape == (2_000, 1)
        assert abs(samples.mean() - MEANS[c]) < 0.15, (c, samples.mean())
        q25, q75 = np.quantile(samples, [0.25, 0.75])  # a robust spread: rare wide mixture
        spread = (q75 - q25) / 1.349  # components make the sample std noisy; std = IQR/1.349
        assert spread / std_of(model, c) == pytest.approx(1.0, abs=0.2)
    # mixed contexts in one call: row i follows context row i
    mixed = np.tile(np.stack([A, B]), (500, 1))
    samples = model.sample(1_000, seed=5, context=mixed)[:, 0]
    assert samples[1::2].mean() - samples[::2].mean() > 3.5


@pytest.mark.parametrize("kind", SMALL)
def test_context_model_save_load_round_trip(fitted, kind, tmp_path):
    model = fitted(kind)
    loaded = models.load(model.save(tmp_path / kind))
    assert loaded.n_context_ == 2
    X, C = draw(200, seed=3)
    np.testing.assert_array_equal(loaded.log_prob(X, context=C), model.log_prob(X, context=C))
    np.testing.assert_array_equal(
        loaded.sample(50, seed=1, context=C[:50]), model.sample(50, seed=1, context=C[:50])
    )


def test_gaussian_with_numeric_context_is_the_linear_conditional():
    """x = 2h + noise: the conditional mean moves with h, the variance is the residual one."""
    rng = np.random.default_rng(0)
    h = rng.normal(size=(5_000, 1))
    x = 2 * h + 0.3 * rng.normal(size=(5_000, 1))
    model = models.create("gaussian", shrinkage=0.0).fit(x, context=h)
    means, cov = model.conditional(np.array([[0.0], [1.0]]))
    np.testing.assert_allclose(means[:, 0], [0.0, 2.0], atol=0.03)
    np.testing.assert_allclose(cov, [[0.09]], rtol=0.05)
    lp = model.log_prob(np.array([[2.0]]), context=np.array([[1.0]]))
    assert lp[0] == pytest.approx(norm.logpdf(2.0, means[1, 0], np.sqrt(cov[0, 0])), rel=1e-9)


# ---------------------------------------------------------------------- the preprocessor
def frame(n: int, seed: int) -> pd.DataFrame:
    """Rows whose amount depends on the shop (categorical context) and the hour (numeric)."""
    rng = np.random.default_rng(seed)
    shop = rng.choice(["bakery", "jeweller"], n)
    hour = rng.uniform(8, 20, n)
    amount = np.where(shop == "bakery", 5.0, 500.0) + 0.1 * hour + rng.normal(0, 1, n)
    return pd.DataFrame(
        {
            "id": [f"r{seed}-{i}" for i in range(n)],
            "amount": amount,
            "size": rng.normal(0, 1, n),
            "shop": shop,
            "hour": hour,
        }
    )


FEATURES = Features(id="id", numeric=["amount", "size"], context=["shop", "hour"])


def test_preprocessor_builds_a_separate_context_matrix():
    df = frame(400, seed=0)
    pre = Preprocessor(FEATURES).fit(df)
    prepared = pre.transform(df)
    assert prepared.X.shape == (400, 2)  # the context is not in the model matrix
    assert pre.context_kinds_ == {"shop": "categorical", "hour": "numeric"}
    assert pre.context_names_ == ["hour", "shop=bakery", "shop=jeweller"]
    assert prepared.context.shape == (400, 3)
    np.testing.assert_allclose(prepared.context[:, 0].mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(prepared.context[:, 0].std(), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(prepared.context[:, 1], df["shop"] == "bakery")
    # no Jacobian for context columns: log_det is that of the numeric features only
    np.testing.assert_allclose(
        prepared.log_det, -np.log(pre.scales_["amount"]) - np.log(pre.scales_["size"])
    )
    assert Preprocessor(Features(id="id", numeric=["amount"])).fit(df).transform(df).context is None


def test_bad_context_values_are_quarantined_with_a_reason():
    pre = Preprocessor(FEATURES).fit(frame(200, seed=0))
    df = frame(6, seed=1).astype({"hour": object})
    df.loc[1, "hour"] = "noon"
    df.loc[2, "hour"] = None
    df.loc[3, "shop"] = None
    df.loc[4, "shop"] = "florist"
    prepared = pre.transform(df)
    reasons = prepared.quarantined["reason"].to_dict()
    assert reasons == {
        1: "non-numeric value in hour: 'noon'",
        2: "missing value in hour",
        3: "missing value in shop",
    }
    assert list(prepared.scored.index) == [0, 4, 5]
    assert prepared.context.shape == (3, 3)
    # an unseen context category is scored (all-zero one-hot) and noted, like a feature's
    np.testing.assert_array_equal(prepared.context[1, 1:], [0.0, 0.0])
    assert prepared.scored["reason"].tolist() == [
        "",
        "unseen category in context shop: 'florist'",
        "",
    ]


def test_missing_context_column_is_a_schema_error():
    pre = Preprocessor(FEATURES).fit(frame(50, seed=0))
    with pytest.raises(ValueError, match=r"missing required column.*'hour'"):
        pre.transform(frame(5, seed=1).drop(columns="hour"))


def test_preprocessor_context_survives_save_load(tmp_path):
    df = frame(300, seed=0)
    pre = Preprocessor(FEATURES).fit(df)
    pre.save(tmp_path)
    loaded = Preprocessor.load(tmp_path)
    np.testing.assert_array_equal(loaded.transform(df).context, pre.transform(df).context)
    assert loaded.context_names_ == pre.context_names_


def test_encode_context_for_generation():
    pre = Preprocessor(FEATURES).fit(frame(300, seed=0))
    C = pre.encode_context({"shop": "jeweller", "hour": "14"}, 4)
    z = (14 - pre.context_means_["hour"]) / pre.context_scales_["hour"]
    np.testing.assert_allclose(C, np.tile([z, 0.0, 1.0], (4, 1)))
    with pytest.raises(ValueError, match=r"missing: \['hour'\]"):
        pre.encode_context({"shop": "bakery"}, 2)
    with pytest.raises(ValueError, match=r"unknown: \['colour'\]"):
        pre.encode_context({"shop": "bakery", "hour": 3, "colour": "red"}, 2)
    with pytest.raises(ValueError, match=r"not seen in training.*bakery"):
        pre.encode_context({"shop": "florist", "hour": 3}, 2)
    with pytest.raises(ValueError, match="context hour is numeric"):
        pre.encode_context({"shop": "bakery", "hour": "noon"}, 2)


def test_config_context_columns_are_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: t\nfeatures: {id: id, numeric: [amount], context: [amount]}\ndata: {train: x.csv}\n"
    )
    with pytest.raises(ConfigError, match="columns listed twice"):
        load_config(path)
    path.write_text(
        "name: t\nfeatures: {id: id, numeric: [amount], context: [shop]}\ndata: {train: x.csv}\n"
    )
    assert load_config(path).features.context == ["shop"]


# ---------------------------------------------------------------------- end to end
@pytest.mark.parametrize("kind", ["gaussian", "autoregressive"])
def test_trained_detector_scores_and_samples_given_context(kind, tmp_path):
    params = {**SMALL[kind], "max_epochs": 30} if kind != "gaussian" else {}
    if kind == "autoregressive":  # the samples' mean is checked: no smoothing, which widens
        params["smoothing"] = 0.0  # each conditional by design (issue 16, item 2)
    config = Config(
        name="ctx",
        features=FEATURES,
        data=Data(train=str(tmp_path / "unused.csv")),
        model=ModelSpec(kind=kind, params=params),
        home=tmp_path,
    )
    result = train(config, frame(3_000, seed=0))
    detector = Detector.load(result.detector.save(tmp_path / "detector"))
    assert result.detector.model.n_context_ == 3
    # a jeweller-sized amount at the bakery (and the reverse) is caught; normal rows are not
    odd = frame(20, seed=7)
    odd["amount"] = np.where(odd["shop"] == "bakery", 500.0, 5.0) + 0.1 * odd["hour"]
    scored = detector.score(odd).scored
    assert scored["is_anomaly"].all()
    normal = detector.score(frame(1_000, seed=8)).scored
    assert normal["is_anomaly"].mean() < 0.05
    # generation for a given context
    samples = detector.sample(500, seed=1, context={"shop": "jeweller", "hour": 12})
    assert (samples["shop"] == "jeweller").all()
    assert abs(samples["amount"].mean() - 501.2) < 3.0
    bakery = detector.sample(500, seed=1, context={"shop": "bakery", "hour": 12})
    assert abs(bakery["amount"].mean() - 6.2) < 3.0
    with pytest.raises(ValueError, match="give their values"):
        detector.sample(5)
