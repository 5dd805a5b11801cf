"""The sample-quality check: good samples pass, collapsed ones are obvious, metrics are logged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from anomaly import models
from anomaly.config import Config, Data, Features
from anomaly.preprocessing import Preprocessor
from anomaly.sample_check import compare, sample_quality
from anomaly.tracking import log_training, tracking_uri
from anomaly.training import train

FEATURES = Features(id="id", numeric=["x", "y", "n"], categorical=["c"])


def two_modes(n: int, seed: int) -> pd.DataFrame:
    """x has two modes (±3); y follows x; n is an integer count; c depends on the mode."""
    rng = np.random.default_rng(seed)
    mode = rng.integers(0, 2, n)
    x = np.where(mode == 1, 3.0, -3.0) + 0.5 * rng.normal(size=n)
    return pd.DataFrame(
        {
            "id": [f"r{seed}-{i}" for i in range(n)],
            "x": x,
            "y": 0.8 * x + 0.5 * rng.normal(size=n),
            "n": rng.poisson(4.0, n).astype(float),
            "c": np.where(mode == 1, "hi", rng.choice(["lo", "mid"], n)),
        }
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[Preprocessor, np.ndarray, pd.DataFrame]:
    train_rows = two_modes(3000, seed=0)
    pre = Preprocessor(FEATURES).fit(train_rows)
    return pre, pre.transform(train_rows).X, two_modes(1500, seed=1)


def test_a_good_model_is_hard_to_tell_from_the_data(fitted):
    pre, X, heldout = fitted
    metrics = sample_quality(models.create("gmm", max_components=3).fit(X), pre, heldout)
    assert metrics["sample_c2st_auroc"] < 0.65
    assert metrics["sample_ks_max"] < 0.1
    assert metrics["sample_tv_c"] < 0.05
    assert metrics["sample_corr_max_diff"] < 0.1


def test_a_model_that_missed_a_mode_is_obvious(fitted):
    pre, X, heldout = fitted
    one_mode = X[pre.inverse_transform(X)["x"].to_numpy() > 0]
    collapsed = sample_quality(models.create("gaussian").fit(one_mode), pre, heldout)
    # half the data lies where no sample goes: the best classifier's AUROC is ½·1 + ½·½ = 0.75
    assert collapsed["sample_c2st_auroc"] > 0.7
    assert collapsed["sample_ks_x"] > 0.4
    assert collapsed["sample_tv_c"] > 0.4


def test_a_constant_sampler_is_obvious(fitted):
    pre, X, heldout = fitted
    constant = np.repeat(X[:1], 50, axis=0) + 1e-9 * np.arange(50)[:, None]
    model = models.create("gaussian", shrinkage=0.0, min_variance=1e-12).fit(constant)
    metrics = sample_quality(model, pre, heldout)
    assert metrics["sample_c2st_auroc"] > 0.99
    assert metrics["sample_ks_max"] > 0.5  # one value: KS ≥ max(F(v), 1 − F(v)) ≥ ½


def test_integer_columns_are_compared_as_integers(fitted):
    """Counts are discrete columns: the model fits them dequantised and samples land on their
    lattice, so raw samples are counts too and the check compares them as such."""
    pre, X, heldout = fitted
    model = models.create("gmm", max_components=3).fit(X)
    metrics = sample_quality(model, pre, heldout)
    raw = compare(
        heldout,
        pre.inverse_transform(model.sample(1500)),
        FEATURES.numeric,
        FEATURES.categorical,
    )
    assert pre.steps_  # the count column is discrete
    assert raw["sample_c2st_auroc"] < 0.65  # samples are counts: nothing gives them away
    assert metrics["sample_c2st_auroc"] < 0.65


def test_same_distribution_compares_as_equal():
    frame = two_modes(1000, seed=3)
    metrics = compare(frame, frame.copy(), FEATURES.numeric, FEATURES.categorical)
    assert metrics["sample_ks_max"] == 0
    assert metrics["sample_tv_max"] == 0
    assert metrics["sample_corr_max_diff"] == pytest.approx(0, abs=1e-12)
    other = compare(frame, two_modes(1000, seed=4), FEATURES.numeric, FEATURES.categorical)
    assert 0.4 < other["sample_c2st_auroc"] < 0.6


def test_too_few_heldout_rows_is_a_clear_error(fitted):
    pre, X, heldout = fitted
    with pytest.raises(ValueError, match="at least 10 held-out rows, got 3"):
        sample_quality(models.create("gaussian").fit(X), pre, heldout.head(3))


def test_training_logs_the_sample_metrics(tmp_path):
    data = two_modes(2000, seed=4)
    config = Config(
        name="sample-check",
        features=FEATURES,
        data=Data(train=str(tmp_path / "train.parquet")),
        model={"kind": "gaussian"},
        home=tmp_path / "home",
    )
    result = train(config, data)
    assert 0.5 <= result.metrics["sample_c2st_auroc"] <= 1
    assert {"sample_ks_x", "sample_ks_y", "sample_tv_c", "sample_corr_max_diff"} <= set(
        result.metrics
    )
    run_id, _ = log_training(config, result, data, source=config.data.train)
    logged = MlflowClient(tracking_uri(config)).get_run(run_id).data.metrics
    assert logged["sample_c2st_auroc"] == pytest.approx(result.metrics["sample_c2st_auroc"])
    assert logged["sample_tv_c"] == pytest.approx(result.metrics["sample_tv_c"])


def test_a_conditional_model_is_checked_given_each_rows_context():
    """x depends on the context column m; samples drawn for each held-out row's m match."""
    features = Features(id="id", numeric=["x", "y", "n"], categorical=["c"], context=["m"])
    rows = two_modes(3000, seed=5)
    rows["m"] = np.where(rows["x"] > 0, "up", "down")
    pre = Preprocessor(features).fit(rows)
    prepared = pre.transform(rows)
    model = models.create("gaussian").fit(prepared.X, layout=pre.layout_, context=prepared.context)
    heldout = two_modes(1500, seed=6)
    heldout["m"] = np.where(heldout["x"] > 0, "up", "down")
    metrics = sample_quality(model, pre, heldout)
    assert metrics["sample_c2st_auroc"] < 0.7
    assert metrics["sample_ks_x"] < 0.1  # both modes present: each row's context picks one
