"""Explanations: the definition, every kind, the record-level contract, pyfunc and store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from anomaly import models
from anomaly.config import Config, Data, Features
from anomaly.demo_data import ID, generate_normal
from anomaly.detector import Detector
from anomaly.explain import attribute, explain
from anomaly.models import kernel
from anomaly.models.base import Block
from anomaly.pyfunc import predict_explained
from anomaly.scoring import score_file
from anomaly.store import Flagged, connect, write_batch
from anomaly.training import train

LAYOUT = [
    Block("x0", 0, 1),
    Block("x1", 1, 2),
    Block("x2", 2, 3),
    Block("x3", 3, 4),
    Block("c", 4, 7, categorical=True),
]
#: cheap settings so every kind fits in seconds
FAST = {
    "flow": {"max_epochs": 40, "progress": False, "n_threads": 1},
    "vae": {"max_epochs": 40, "progress": False, "n_threads": 1},
    "kde": {"max_points": 1500},
    "knn": {"max_points": 1500},
}


def synthetic(n: int, seed: int) -> np.ndarray:
    """x1 ≈ x0 (a dependency), x2 independent, x3 depends on the category c (one-hot)."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=n)
    x1 = x0 + 0.3 * rng.normal(size=n)
    x2 = rng.normal(size=n)
    c = rng.integers(0, 3, n)
    x3 = 2.0 * c + 0.4 * rng.normal(size=n)
    return np.column_stack([x0, x1, x2, x3, np.eye(3)[c]])


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return synthetic(1500, seed=0)


@pytest.fixture(scope="module")
def gaussian(data) -> models.DensityModel:
    return models.create("gaussian").fit(data)


def planted(data: np.ndarray) -> tuple[np.ndarray, list[set[str]]]:
    """Rows with a known culprit: a shifted feature, a broken pair, a wrong category."""
    rows, truth = [], []
    for i in range(6):
        for j, name in enumerate(["x0", "x1", "x2", "x3"]):
            x = data[100 + 10 * i + j].copy()
            x[j] += 7.0 * data[:, j].std()
            rows.append(x)
            truth.append({name})
        x = data[200 + i].copy()
        x[1] = x[0] + (3.0 if x[0] < 0 else -3.0)  # x1 far from x0: the pair is broken
        rows.append(x)
        truth.append({"x0", "x1"})
        x = data[300 + i].copy()
        c = int(np.argmax(x[4:]))
        x[4:] = np.eye(3)[(c + 1) % 3]  # x3 is normal for c, not for c + 1
        rows.append(x)
        truth.append({"x3", "c"})
    return np.array(rows), truth


def test_gaussian_closed_form_is_the_maximum_over_each_feature(gaussian, data):
    X, _ = planted(data)
    attr = attribute(gaussian, X, LAYOUT)
    assert attr.method == "closed_form"
    base = gaussian.log_prob(X)
    # the typical value is the maximiser: substituting it gains exactly the contribution
    for b, block in enumerate(LAYOUT):
        Z = X.copy()
        Z[:, block.start : block.stop] = attr.typical[:, block.start : block.stop]
        np.testing.assert_allclose(gaussian.log_prob(Z) - base, attr.contributions[:, b], atol=1e-6)
    # and no value on a fine grid gains more (numeric x2)
    grid = np.linspace(-8, 8, 4001)
    Z = np.repeat(X[None], grid.size, axis=0)
    Z[:, :, 2] = grid[:, None]
    best = (gaussian.log_prob(Z.reshape(-1, X.shape[1])).reshape(grid.size, -1) - base).max(0)
    assert np.all(best <= attr.contributions[:, 2] + 1e-9)
    np.testing.assert_allclose(best, attr.contributions[:, 2], atol=1e-3)


def test_replacement_search_agrees_with_the_closed_form(gaussian, data):
    X, _ = planted(data)
    exact = attribute(gaussian, X, LAYOUT)
    searched = attribute(gaussian, X, LAYOUT, method="replacement").contributions
    assert np.all(searched <= exact.contributions + 1e-6)  # a grid maximum never overstates
    # where the conditional mode lies inside the searched range (the model's 1st..99th
    # percentile), the search finds it
    lo, hi = np.quantile(data[:, :4], [0.03, 0.97], axis=0)
    inside = (exact.typical[:, :4] >= lo) & (exact.typical[:, :4] <= hi)
    assert inside.mean() > 0.8
    np.testing.assert_allclose(
        searched[:, :4][inside], exact.contributions[:, :4][inside], atol=0.05
    )
    np.testing.assert_allclose(searched[:, 4], exact.contributions[:, 4], atol=1e-6)


@pytest.mark.parametrize("kind", ["gmm", "kde", "knn"])
def test_mixture_modes_agree_with_the_search(kind, data):
    """``gmm``, ``kde``, ``knn``: each feature's conditional is a 1-D Gaussian mixture, and its
    mode (mean-shift, then scored by log_prob) is what the generic search approximates with a
    grid. Both state the log_prob gain of the value shown; the mode's is never materially
    lower, and higher where the search's range of candidates stops short of the maximum."""
    model = models.create(kind, seed=0, **FAST.get(kind, {})).fit(data)
    X, _ = planted(data)
    mixture = attribute(model, X, LAYOUT)
    assert mixture.method == "mixture"
    searched = attribute(model, X, LAYOUT, method="replacement")
    gap = mixture.contributions - searched.contributions
    assert gap.min() > -0.05, gap.min()
    assert np.mean(gap > -1e-3) > 0.99
    np.testing.assert_array_equal(
        mixture.contributions.argmax(axis=1), searched.contributions.argmax(axis=1)
    )
    # the stated contribution is the gain of the typical value shown: gmm's by log_prob; kde's
    # and knn's numeric ones to 1e-6 nats of the density (float64), so to log_prob's float32
    # rounding (categories are scored by log_prob)
    base = model.log_prob(X)
    for b, block in enumerate(LAYOUT):
        Z = X.copy()
        Z[:, block.start : block.stop] = mixture.typical[:, block.start : block.stop]
        rounding = 1e-6 if kind == "gmm" else 1e-3
        np.testing.assert_allclose(
            model.log_prob(Z) - base, mixture.contributions[:, b], atol=rounding
        )
        if kind != "gmm" and not block.categorical:
            exact = kernel_log_density(model, Z) - kernel_log_density(model, X)
            np.testing.assert_allclose(exact, mixture.contributions[:, b], rtol=0, atol=1e-6)


def kernel_log_density(model: models.DensityModel, X: np.ndarray) -> np.ndarray:
    """A ``kde``/``knn`` model's log-density (up to a constant), summed over every centre in
    float64: log Σ_i exp(−|q − c_i|²/(2h_i²) − log Z_i), q the whitened row."""
    Q = (X - model.loc_) / model.scale_
    centres, h = model.centres_.astype(np.float64), model.bandwidths_.astype(np.float64)
    d2 = ((Q[:, None, :] - centres[None]) ** 2).sum(-1)
    log_k = -0.5 * d2 / h**2 - model._log_normaliser(model.bandwidths_)
    top = log_k.max(axis=1)
    return top + np.log(np.exp(log_k - top[:, None]).sum(axis=1))


@pytest.mark.parametrize("kind", ["kde", "knn"])
def test_kernel_gains_are_the_density_gains_to_a_millionth_of_a_nat(kind, monkeypatch):
    """``kde``/``knn`` score their modes on the kernels their bound keeps, not by log_prob:
    on random data with far outliers, a lattice column and a one-hot block, every gain is
    the density's own (every centre, float64) within 1e-6 nats (numeric features; the
    categories are scored by log_prob); with a truncation too loose
    for that, the same check fails (so it can)."""
    rng = np.random.default_rng(11)
    n, d = 2000, 9
    mixing = rng.normal(size=(d - 4, d - 4))
    X = np.column_stack(
        [
            rng.normal(size=(n, d - 4)) @ mixing,
            rng.poisson(4, n).astype(float),
            np.eye(3)[rng.integers(0, 3, n)],
        ]
    )
    layout = [Block(f"x{j}", j, j + 1) for j in range(d - 4)]
    layout += [Block("k", d - 4, d - 3, step=1.0), Block("c", d - 3, d, categorical=True)]
    model = models.create(kind, seed=0, max_points=1000).fit(X, layout=layout)
    rows = X[:60].copy()
    rows[:20, rng.integers(0, d - 4, 20)] += rng.choice([-1, 1], 20) * rng.uniform(3, 40, 20)
    rows[20:30, d - 4] += 15
    base = kernel_log_density(model, rows)

    def error() -> float:
        attr = attribute(model, rows, layout)
        worst = 0.0
        for b, block in enumerate(layout[:-1]):  # numeric (categories: by log_prob)
            Z = rows.copy()
            Z[:, block.start : block.stop] = attr.typical[:, block.start : block.stop]
            gap = kernel_log_density(model, Z) - base - attr.contributions[:, b]
            worst = max(worst, float(np.abs(gap).max()))
        return worst

    assert error() <= 1e-6
    monkeypatch.setattr(kernel, "TRUNCATION", -2.0)
    assert error() > 1e-6


def test_vae_mixture_states_the_gain_of_the_value_shown(data):
    """``vae``: each feature's conditional is the mixture of decoder Gaussians over importance
    draws; its mode is scored by ``log_prob``, so substituting the typical value gains the
    stated contribution, and each row's largest contribution is as large as a fine search's."""
    model = models.create("vae", seed=0, **FAST["vae"]).fit(data)
    X, _ = planted(data)
    attr = attribute(model, X, LAYOUT)
    assert attr.method == "mixture"
    base = model.log_prob(X)
    for b, block in enumerate(LAYOUT):
        Z = X.copy()
        Z[:, block.start : block.stop] = attr.typical[:, block.start : block.stop]
        np.testing.assert_allclose(model.log_prob(Z) - base, attr.contributions[:, b], atol=1e-4)
    searched = attribute(model, X, LAYOUT, method="replacement", grid=16, refine=6)
    assert attr.contributions.max(axis=1).sum() >= 0.95 * searched.contributions.max(axis=1).sum()


def test_gmm_mixture_mode_is_the_maximum_over_a_feature(data):
    """On a fine grid no value of a numeric feature gains more than the mode found."""
    model = models.create("gmm", seed=0).fit(data)
    X, _ = planted(data)
    attr = attribute(model, X, LAYOUT)
    grid = np.linspace(-8, 8, 4001)
    Z = np.repeat(X[None], grid.size, axis=0)
    Z[:, :, 2] = grid[:, None]
    best = model.log_prob(Z.reshape(-1, X.shape[1])).reshape(grid.size, -1) - model.log_prob(X)
    np.testing.assert_allclose(np.maximum(best.max(0), 0), attr.contributions[:, 2], atol=1e-4)


def test_lattice_columns_keep_their_lattice(data):
    """A count's typical value is a count, for the mixture modes and for the search."""
    rng = np.random.default_rng(3)
    counts = rng.poisson(3 + 2 * (data[:, 0] > 0)).astype(float)
    X = np.column_stack([data[:, :4], counts])
    layout = [*LAYOUT[:4], Block("k", 4, 5, step=1.0)]
    planted_rows = X[:40].copy()
    planted_rows[:20, 4] += 9  # too many for x0
    for kind in ("gmm", "kde", "gaussian"):
        model = models.create(kind, seed=0, **FAST.get(kind, {})).fit(X, layout=layout)
        for method in {model.explanation_for(layout), "replacement"} - {"closed_form"}:
            typical = attribute(model, planted_rows, layout, method=method).typical[:, 4]
            np.testing.assert_allclose(typical, np.round(typical), atol=1e-9, err_msg=method)


@pytest.mark.parametrize("kind", ["gaussian", "gmm", "kde", "knn", "flow", "vae"])
def test_every_kind_blames_the_planted_culprit(kind, data):
    model = models.create(kind, seed=0, **FAST.get(kind, {})).fit(data)
    X, truth = planted(data)
    attr = attribute(model, X, LAYOUT)
    assert attr.contributions.shape == (len(X), len(LAYOUT))
    assert np.all(attr.contributions >= 0)
    names = np.array([b.name for b in LAYOUT])
    ranked = names[np.argsort(-attr.contributions, axis=1)]
    single = [i for i, t in enumerate(truth) if len(t) == 1]
    pairs = [i for i, t in enumerate(truth) if len(t) == 2]
    top1 = np.mean([ranked[i, 0] in truth[i] for i in single])
    top2 = np.mean([bool(set(ranked[i, :2]) & truth[i]) for i in pairs])
    assert top1 >= 0.9, (kind, top1)
    assert top2 >= 0.9, (kind, top2)


def test_auto_explains_the_kind_it_chose(data):
    model = models.create("auto", candidates=("gaussian",)).fit(data)
    X, _ = planted(data)
    attr = attribute(model, X, LAYOUT)
    assert attr.method == "closed_form"
    np.testing.assert_allclose(attr.contributions, attribute(model.model_, X, LAYOUT).contributions)


def test_conditional_method_matches_replacement_for_a_factorised_model(data):
    """For p(x) = Π p(x_i) the conditionals are the marginals, so both methods maximise the
    same function: ``independent``'s modes over its 1,024 grid points, the replacement search
    over 16 quantiles of samples refined by 6 parabolic steps (finer than its default, which
    can miss the top of a bump of these binned densities by a few hundredths of a nat). They
    agree to the search's resolution, and the modes are never materially the lower maximum
    (the search's steps may land between the grid points, a few 1e-5 nats higher)."""
    model = models.create("independent").fit(data, layout=LAYOUT)
    X, _ = planted(data)
    conditional = attribute(model, X, LAYOUT, method="conditional")
    replacement = attribute(model, X, LAYOUT, method="replacement", grid=16, refine=6)
    gap = conditional.contributions - replacement.contributions
    assert gap.min() > -1e-4
    assert gap.max() < 1e-3
    np.testing.assert_array_equal(
        conditional.contributions.argmax(axis=1), replacement.contributions.argmax(axis=1)
    )


def test_bad_arguments_say_what_to_do(gaussian, data):
    with pytest.raises(ValueError, match="unknown explanation method 'shap'"):
        attribute(gaussian, data[:3], LAYOUT, method="shap")
    gmm = models.create("gmm", max_components=1).fit(data)
    with pytest.raises(ValueError, match="'closed_form' does not explain a gmm model: use 'mix"):
        attribute(gmm, data[:3], LAYOUT, method="closed_form")
    with pytest.raises(ValueError, match="'conditional' does not explain a gmm model"):
        attribute(gmm, data[:3], LAYOUT, method="conditional")
    with pytest.raises(ValueError, match="layout must cover columns"):
        attribute(gaussian, data[:3], LAYOUT[:-1])
    independent = models.create("independent").fit(data)  # every column its own feature
    with pytest.raises(ValueError, match="needs the layout the model was fitted with"):
        attribute(independent, data[:3], LAYOUT, method="conditional")
    assert attribute(independent, data[:3], LAYOUT).method == "replacement"


# ---------------------------------------------------------------------------- records
FEATURES = Features(
    id=ID,
    timestamp="timestamp",
    numeric=["amount", "hour", "distance_km", "tx_last_24h", "account_age_days"],
    categorical=["merchant_category", "channel"],
)


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    home = tmp_path_factory.mktemp("explain")
    config = Config(
        name="explain-test",
        features=FEATURES,
        data=Data(train=str(home / "unused.parquet")),
        model={"kind": "gaussian"},
        home=home,
    )
    return train(config, generate_normal(4000, seed=1)).detector


def records() -> pd.DataFrame:
    """Five records: a huge amount, a far distance, an unseen category, a bad row, a normal."""
    df = generate_normal(5, seed=9)
    df.loc[0, "amount"] = 250_000.0
    df.loc[1, "distance_km"] = 15_000.0
    df.loc[2, "channel"] = "carrier-pigeon"
    df["hour"] = df["hour"].astype(object)
    df.loc[3, "hour"] = "noon"  # quarantined
    return df


def test_explain_records_contract(detector):
    df = records()
    explained = explain(detector, df, top=3)
    assert len(explained) == len(df)
    assert explained[3] == []  # quarantined
    for row in (0, 1, 2, 4):
        items = explained[row]
        assert len(items) == 3
        assert all(set(item) == {"feature", "contribution", "value", "typical"} for item in items)
        contributions = [item["contribution"] for item in items]
        assert contributions == sorted(contributions, reverse=True)
        json.dumps(items)  # JSON-safe, as the store and pyfunc need
        for item in items:
            assert item["value"] == df.loc[row, item["feature"]]  # raw units, not standardised
    assert [explained[r][0]["feature"] for r in (0, 1, 2)] == ["amount", "distance_km", "channel"]
    amount = explained[0][0]
    assert amount["contribution"] > 10
    assert 1 < amount["typical"] < 2000  # a typical amount in currency units
    assert explained[2][0]["typical"] in {"chip", "contactless", "online"}
    assert explained[0][0]["contribution"] > explained[4][0]["contribution"]


def test_explained_values_of_a_csv_file_are_numbers(detector, tmp_path):
    """A CSV file is read as text; the values beside the contributions are numbers all the same
    (as for a Parquet file, and as docs/explanations.md shows them)."""
    from anomaly.io import read_table

    df = records().drop(index=3)
    df.to_csv(tmp_path / "records.csv", index=False)
    explained = explain(detector, read_table(tmp_path / "records.csv"), top=7)
    amount = next(item for item in explained[0] if item["feature"] == "amount")
    assert amount["value"] == 250_000.0
    for items in explained:
        for item in items:
            is_numeric = item["feature"] in FEATURES.numeric
            assert isinstance(item["value"], float if is_numeric else str), item


def test_pyfunc_output_carries_contributions_of_flagged_rows(detector):
    df = records()
    out = predict_explained(detector, df)
    assert list(out.index) == list(range(len(df)))
    flagged = out["is_anomaly"].astype(bool) & ~out["quarantined"].astype(bool)
    assert flagged[[0, 1, 2]].all()
    for i in range(len(df)):
        parsed = json.loads(out.loc[i, "contributions"])
        assert (len(parsed) > 0) == bool(flagged[i])
    assert json.loads(out.loc[0, "contributions"])[0]["feature"] == "amount"


def test_scored_batch_stores_contributions(detector, tmp_path):
    df = records().drop(index=3)
    df["hour"] = df["hour"].astype(float)
    path = tmp_path / "batch.parquet"
    df.to_parquet(path)
    summary = score_file(detector, path, tmp_path / "out")
    assert summary.rows_flagged >= 3
    engine = connect(f"sqlite:///{tmp_path / 'review.db'}")
    write_batch(engine, summary, "explain-test", summary.flagged_rows.frame(), pd.DataFrame(), ID)
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        stored = {r.record_id: r.contributions for r in session.query(Flagged)}
    assert len(stored) == summary.rows_flagged
    first = stored[df.loc[0, ID]]
    assert first[0]["feature"] == "amount"
    assert first[0]["value"] == 250_000.0
    assert all(len(c) == 5 for c in stored.values())


def test_score_file_explains_only_the_worst_explain_rows(detector, tmp_path):
    df = records().drop(index=3)
    df["hour"] = df["hour"].astype(float)
    path = tmp_path / "batch.parquet"
    df.to_parquet(path)
    summary = score_file(detector, path, tmp_path / "out", explain_rows=2)
    flagged = summary.flagged_rows.frame()
    assert summary.rows_flagged >= 3
    explained = flagged["contributions"].map(len) > 0
    assert explained.sum() == 2
    # the two explained rows are the two least likely flagged rows
    worst = flagged["log_likelihood"].nsmallest(2).index
    assert set(flagged.index[explained]) == set(worst)
    none = score_file(detector, path, tmp_path / "none", explain_rows=0)
    assert (none.flagged_rows.frame()["contributions"].map(len) == 0).all()
    assert summary.explain_seconds > 0


def test_cli_explain_prints_one_json_line_per_flagged_record(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from anomaly.config import load_config
    from anomaly.pipeline import train_and_store
    from flows.cli import app

    monkeypatch.setenv("ANOMALY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    generate_normal(3000, seed=1).to_parquet(tmp_path / "train.parquet")
    settings = {
        "name": "explain-cli",
        "features": FEATURES.model_dump(),
        "data": {"train": "train.parquet"},
        "model": {"kind": "gaussian"},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    train_and_store(load_config(config))
    df = records()
    df.to_csv(tmp_path / "records.csv", index=False)
    args = ["explain", "--config", str(config), "--input", str(tmp_path / "records.csv")]
    result = CliRunner().invoke(app, [*args, "--top", "2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    by_id = {line[ID]: line for line in lines}
    assert all(line["is_anomaly"] for line in lines)
    assert by_id[df.loc[0, ID]]["contributions"][0]["feature"] == "amount"
    assert all(len(line["contributions"]) == 2 for line in lines)
    assert df.loc[3, ID] not in by_id  # quarantined
    everything = CliRunner().invoke(app, [*args, "--all"])
    assert len(everything.stdout.splitlines()) == len(df) - 1  # every scored row
    # explained and printed in parts, saying how far it got; the same lines
    monkeypatch.setattr("flows.cli.EXPLAIN_PART", 3)
    in_parts = CliRunner().invoke(app, [*args, "--all"])
    whole = [json.loads(line) for line in everything.stdout.splitlines()]
    parts = [json.loads(line) for line in in_parts.stdout.splitlines()]
    assert [r[ID] for r in parts] == [r[ID] for r in whole]
    for a, b in zip(parts, whole, strict=True):  # equal up to float summation order
        assert [c["feature"] for c in a["contributions"]] == [
            c["feature"] for c in b["contributions"]
        ]
        for x, y in zip(a["contributions"], b["contributions"], strict=True):
            assert x["contribution"] == pytest.approx(y["contribution"], abs=1e-3)
    assert "explained 3 of 4 records so far" in in_parts.stderr
    # the quarantined row is not lost: named on stderr with its reason
    assert f"quarantined {df.loc[3, ID]}: non-numeric value in hour" in everything.stderr
    assert "1 quarantined row(s), not explained" in everything.stderr
    # a file missing a column: one line and exit code 2, as for the other user errors
    df.drop(columns=["amount"]).to_csv(tmp_path / "no-amount.csv", index=False)
    missing = CliRunner().invoke(
        app, ["explain", "--config", str(config), "--input", str(tmp_path / "no-amount.csv")]
    )
    assert missing.exit_code == 2, missing.output
    assert "Traceback" not in missing.output
    assert "missing required column(s) 'amount'" in " ".join(missing.stderr.split())


def test_autoregressive_explains_from_its_conditional_modes(data):
    model = models.create(
        "autoregressive", hidden=(64, 64), components=4, orders=1, max_epochs=60, progress=False
    ).fit(data, layout=LAYOUT)
    X, truth = planted(data)
    observed, best, modes = model.conditional_modes(X)
    np.testing.assert_allclose(observed, model.feature_log_probs(X), atol=1e-6)
    # each block's mode, put in alone, reaches the stated best conditional log-density
    for b, block in enumerate(LAYOUT):
        Z = X.copy()
        Z[:, block.start : block.stop] = modes[:, block.start : block.stop]
        np.testing.assert_allclose(model.feature_log_probs(Z)[:, b], best[:, b], atol=1e-5)
    attr = attribute(model, X, LAYOUT)
    assert attr.method == "conditional"
    np.testing.assert_allclose(attr.contributions, np.maximum(best - observed, 0))
    names = np.array([b.name for b in LAYOUT])
    ranked = names[np.argsort(-attr.contributions, axis=1)]
    single = [i for i, t in enumerate(truth) if len(t) == 1]
    pairs = [i for i, t in enumerate(truth) if len(t) == 2]
    assert np.mean([ranked[i, 0] in truth[i] for i in single]) >= 0.9
    assert np.mean([bool(set(ranked[i, :2]) & truth[i]) for i in pairs]) >= 0.9
