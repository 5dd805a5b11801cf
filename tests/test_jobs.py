"""The library jobs every door runs: train (:func:`anomaly.pipeline.train_and_store`) and the
promotion gate (:func:`anomaly.promotion.run_gate`), against a real MLflow (SQLite) and store;
no Prefect."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from anomaly import registry
from anomaly.config import Config, load_config
from anomaly.dashboard.registry_view import model_overview
from anomaly.demo_data import generate_normal, plant_anomalies
from anomaly.pipeline import score_batches, train_and_store
from anomaly.promotion import run_gate
from anomaly.store import add_review, model_labels, store_engine
from anomaly.tracking import active, auto_metric, tracking_uri

N_TRAIN = 1_000
FEATURES = {
    "id": "transaction_id",
    "timestamp": "timestamp",
    "numeric": ["amount", "hour", "distance_km"],
    "categorical": ["merchant_category"],
}


def make_config(folder: Path, **extra: object) -> Config:
    """Training rows, an inbox with one batch, and a config of the given settings."""
    folder.mkdir(parents=True, exist_ok=True)
    generate_normal(N_TRAIN, seed=0).to_parquet(folder / "train.parquet")
    (folder / "inbox").mkdir()
    batch, _ = plant_anomalies(generate_normal(300, seed=4), rate=0.05, seed=4)
    batch.to_parquet(folder / "inbox" / "b1.parquet")
    settings = {
        "name": "jobs",
        "features": FEATURES,
        "data": {"train": "train.parquet", "inbox": "inbox"},
        "model": {"kind": "gaussian"},
        **extra,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return load_config(path, home=folder / "home")


def test_a_context_model_trains_registers_and_loads_as_a_pyfunc(tmp_path, monkeypatch):
    # issue 15: the pyfunc's input example left out the context columns, so training a
    # context model failed with "SchemaError: batch is missing required column(s) 'channel'"
    config = make_config(tmp_path, features={**FEATURES, "context": ["channel"]})
    trained = train_and_store(config)
    assert registry.alias_version(config, registry.CHAMPION) == trained.version
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with active(config):
        model = mlflow.pyfunc.load_model(f"models:/{config.name}@champion")
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == ["transaction_id", "amount", "hour", "distance_km", "merchant_category",
                      "channel", "timestamp"]  # fmt: skip
    batch = generate_normal(20, seed=9)
    batch["timestamp"] = batch["timestamp"].astype(str)
    out = model.predict(batch[inputs])
    assert len(out) == 20
    assert not out["quarantined"].any()


def test_train_folds_in_reviewed_false_positives_and_confirmed_anomalies(tmp_path):
    config = make_config(tmp_path)
    first = train_and_store(config)
    assert "eval_rows" not in first.result.metrics  # nothing labelled yet
    (summary,) = score_batches(config, [Path(config.data.inbox) / "b1.parquet"])
    flagged = summary.flagged_rows.frame()["transaction_id"].astype(str).tolist()
    assert len(flagged) >= 3
    engine = store_engine(config)
    add_review(engine, summary.batch_id, flagged[0], "false_positive", "ann")
    add_review(engine, summary.batch_id, flagged[1], "confirmed", "ann")
    add_review(engine, summary.batch_id, flagged[2], "unsure", "ann")

    second = train_and_store(config)  # reads the reviews from the store itself
    m = second.result.metrics
    # the false positive joined the normal rows; unsure and confirmed ones did not
    assert m["rows_train"] + m["rows_calibration"] + m["rows_test"] == N_TRAIN + 1
    # both labelled reviews are evaluation rows: one anomaly, one normal
    assert m["eval_rows"] == 2
    assert "eval_auroc" in m
    dataset = MlflowClient(tracking_uri(config)).get_run(second.run_id).inputs.dataset_inputs
    assert '"num_rows": 1001' in dataset[0].dataset.profile

    # the same job with the reviews left out (as passed by a caller) trains on data.train only
    no_reviews = train_and_store(config, model_labels(config).iloc[0:0])
    assert "eval_rows" not in no_reviews.result.metrics


def test_a_model_learns_only_from_reviews_of_what_it_flagged(tmp_path):
    """Two models sharing one store: the false positive and the confirmed anomaly reviewed
    for one join its training and evaluation rows, not the other's."""
    config = make_config(tmp_path)
    other_path = tmp_path / "other.yaml"
    other_path.write_text(
        (tmp_path / "config.yaml").read_text().replace("name: jobs", "name: other")
    )
    other = load_config(other_path, home=tmp_path / "home")
    assert other.name == "other"
    assert store_engine(other).url == store_engine(config).url  # one store
    train_and_store(config)
    (summary,) = score_batches(config, [Path(config.data.inbox) / "b1.parquet"])
    flagged = summary.flagged_rows.frame()["transaction_id"].astype(str).tolist()
    engine = store_engine(config)
    add_review(engine, summary.batch_id, flagged[0], "false_positive", "ann")
    add_review(engine, summary.batch_id, flagged[1], "confirmed", "ann")
    assert len(model_labels(config)) == 2
    assert model_labels(other).empty
    m = train_and_store(other).result.metrics
    assert m["rows_train"] + m["rows_calibration"] + m["rows_test"] == N_TRAIN
    assert "eval_rows" not in m
    m = train_and_store(config).result.metrics
    assert m["rows_train"] + m["rows_calibration"] + m["rows_test"] == N_TRAIN + 1
    assert m["eval_rows"] == 2


def test_the_gate_decides_reports_and_moves_aliases(tmp_path):
    config = make_config(tmp_path)
    with pytest.raises(registry.RegistryError, match="no challenger"):
        run_gate(config)
    first = train_and_store(config)  # the first model is champion (and challenger)
    same = run_gate(config)
    assert not same.promoted
    assert same.decision.reasons == [f"v{first.version} is already the champion"]

    (summary,) = score_batches(config, [Path(config.data.inbox) / "b1.parquet"])
    ids = summary.flagged_rows.frame()["transaction_id"].astype(str).tolist()
    engine = store_engine(config)
    add_review(engine, summary.batch_id, ids[0], "confirmed", "ann")
    add_review(engine, summary.batch_id, ids[1], "false_positive", "ann")
    second = train_and_store(config)

    dry = run_gate(config, dry_run=True)
    assert (dry.challenger, dry.champion, dry.promoted) == (second.version, first.version, False)
    assert "eval_normal_log_likelihood" in dry.decision.challenger
    assert "eval_normal_log_likelihood" in dry.decision.champion
    assert registry.alias_version(config, registry.CHAMPION) == first.version

    result = run_gate(config)
    assert result.decision == dry.decision  # same data, same numbers
    assert result.promoted == result.decision.promote
    champion = second.version if result.promoted else first.version
    assert registry.alias_version(config, registry.CHAMPION) == champion
    tags = MlflowClient(tracking_uri(config)).get_model_version(config.name, second.version).tags
    assert tags["promotion.decision"] == result.decision.summary()


@pytest.mark.parametrize("rule", ["mean", "consensus"])
def test_auto_says_what_it_chose(rule, tmp_path):
    params = {"candidates": ["gaussian", "kde"], "rule": rule}
    config = make_config(tmp_path, model={"kind": "auto", "params": params})
    trained = train_and_store(config)
    selection = trained.result.selection
    scores = selection["candidates"]
    assert set(scores) == {"gaussian", "kde"}
    if rule == "mean":
        assert selection["chosen"] == max(scores, key=scores.__getitem__)
    else:  # the default rule: both kinds, weighted
        assert selection["chosen"] == "consensus of gaussian + kde"
        assert set(selection["weights"]) == {"gaussian", "kde"}
    run = MlflowClient(tracking_uri(config)).get_run(trained.run_id)
    assert run.data.params["auto.chosen"] == selection["chosen"]
    assert run.data.tags["auto.chosen"] == selection["chosen"]
    for kind, value in scores.items():
        assert run.data.metrics[auto_metric(kind)] == pytest.approx(value)
    for kind, weight in selection["weights"].items():
        assert run.data.metrics[f"auto.{kind}.weight"] == pytest.approx(weight)
    (version,) = model_overview(config).versions
    assert version.auto_chosen == selection["chosen"]
    assert version.auto_candidates == pytest.approx(scores)
