"""The Prefect flows end to end on small data, against a real (temporary) Prefect server."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from anomaly import registry
from anomaly.config import load_config
from anomaly.demo_data import generate_normal, plant_anomalies
from anomaly.store import add_review, batch_counts, current_labels, store_engine
from anomaly.tracking import tracking_uri
from flows.deployments import deployments
from flows.promote import promote_flow
from flows.score import batches_of_run, score_flow
from flows.train import train_flow

pytestmark = pytest.mark.usefixtures("prefect_server")

FEATURES = {
    "id": "transaction_id",
    "timestamp": "timestamp",
    "numeric": ["amount", "hour", "distance_km", "tx_last_24h", "account_age_days"],
    "categorical": ["merchant_category", "channel"],
}


def project(root: Path, name: str = "flows-test", **extra: object) -> Path:
    """Training data, labelled evaluation rows, an inbox with two batches, and a config."""
    root.mkdir(parents=True, exist_ok=True)
    generate_normal(3000, seed=0).to_parquet(root / "train.parquet")
    evaluation, truth = plant_anomalies(generate_normal(800, seed=50), 0.1, 50)
    evaluation.merge(truth, on="transaction_id").to_parquet(root / "evaluation.parquet")
    inbox = root / "inbox"
    inbox.mkdir(exist_ok=True)
    for seed in (1, 2):
        batch, _ = plant_anomalies(generate_normal(400, seed=seed), 0.05, seed)
        batch.to_parquet(inbox / f"batch_{seed}.parquet")
    settings = {
        "name": name,
        "features": FEATURES,
        "data": {"train": "train.parquet", "inbox": "inbox", "evaluation": "evaluation.parquet"},
        "model": {"kind": "gaussian"},
        "schedule": {"score": "*/5 * * * *", "train": "30 2 * * 1", "timezone": "Europe/Paris"},
        **extra,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ANOMALY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def artifact(key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(limit=50)
    latest = [a for a in found if a.key == key]
    assert latest, f"no artifact {key}"
    return str(max(latest, key=lambda a: a.created).data)


def test_train_promote_score_end_to_end(tmp_path, home):
    path = project(tmp_path)
    config = load_config(path)
    first = train_flow(str(path))
    assert first["version"] == "1"
    assert registry.alias_version(config, "champion") == "1"  # first model: promoted directly
    assert 0.5 < first["metrics"]["eval_auroc"] <= 1
    assert "Trained flows-test v1" in artifact("train-summary")

    second = train_flow(str(path))
    assert registry.alias_version(config, "challenger") == second["version"] == "2"
    dry = promote_flow(str(path), dry_run=True)
    assert not dry["promoted"]
    assert registry.alias_version(config, "champion") == "1"  # dry run moved nothing
    decision = promote_flow(str(path))
    # same data, same seed: an identical model passes a gate that allows no worse
    assert decision["promoted"], decision["decision"]
    assert registry.alias_version(config, "champion") == "2"
    assert registry.alias_version(config, "previous") == "1"
    assert "challenger v2 vs champion v1" in artifact("promotion-decision")

    # a partial write and a temp file are never read
    inbox = Path(config.data.inbox)
    (inbox / "batch_3.parquet.tmp").write_bytes(b"PAR1 half a file")
    (inbox / ".batch_4.parquet").write_bytes(b"PAR1 hidden, in progress")
    summaries = score_flow(str(path))
    assert sorted(s["batch_id"] for s in summaries) == ["batch_1.parquet", "batch_2.parquet"]
    engine = store_engine(config)
    for s in summaries:
        assert s["status"] == "scored"
        assert s["model_version"] == "2"
        assert s["rows_in"] == 400 == s["rows_scored"] + s["rows_quarantined"]
        assert batch_counts(engine, s["batch_id"]) == (s["rows_flagged"], s["rows_quarantined"])
        assert (inbox / "processed" / s["batch_id"]).is_file()
    assert (inbox / "batch_3.parquet.tmp").exists()
    assert "batch_1.parquet" in artifact("score-summary")
    # each batch's numbers are an MLflow run of the experiment
    c = MlflowClient(tracking_uri(config))
    runs = c.search_runs(
        [c.get_experiment_by_name(config.name).experiment_id], "tags.stage = 'scoring'"
    )
    logged = {r.data.tags["batch_id"]: r.data.metrics for r in runs}
    assert logged.keys() == {s["batch_id"] for s in summaries}
    for s in summaries:
        assert logged[s["batch_id"]]["rows_flagged"] == s["rows_flagged"]
        assert logged[s["batch_id"]]["flag_rate"] == pytest.approx(s["flag_rate"])
    # idempotent: nothing new to do, and the store is unchanged
    assert score_flow(str(path)) == []
    assert batch_counts(engine, "batch_1.parquet")[0] == summaries[0]["rows_flagged"]


def test_training_progress_reaches_the_run_logs(tmp_path, home):
    """Each fit's progress line is in the train run's logs (what the Prefect UI shows), not
    only on the console of the process that ran it."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    state = train_flow(str(project(tmp_path)), return_state=True)
    assert state.is_completed()
    APILogHandler().flush()  # the log worker sends what it holds
    run = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run])))
    progress = [log.message for log in logs if log.name.startswith("anomaly.")]
    assert any(m.startswith("fitting ") for m in progress), progress
    assert any(m.startswith("fitted ") for m in progress), progress
    assert all(log.task_run_id is not None for log in logs if log.name.startswith("anomaly."))
    # outside the task the library's loggers send nothing to the API
    assert not any(
        isinstance(h, APILogHandler) for h in logging.getLogger("anomaly.models").handlers
    )


def test_a_score_run_lists_its_batches_rejected_ones_too(tmp_path, home):
    """What ``anomaly run score`` prints after the run's state (which is Completed also when a
    file was rejected)."""
    path = project(tmp_path)
    train_flow(str(path))
    inbox = Path(load_config(path).data.inbox)
    pd.read_parquet(inbox / "batch_1.parquet").drop(columns=["amount"]).to_csv(
        inbox / "broken.csv", index=False
    )
    state = score_flow(str(path), return_state=True)
    assert state.is_completed()
    listed = {b["batch_id"]: b for b in batches_of_run(state.state_details.flow_run_id)}
    assert set(listed) == {"batch_1.parquet", "batch_2.parquet", "broken.csv"}
    assert listed["batch_1.parquet"]["status"] == "scored"
    assert listed["broken.csv"]["status"] == "rejected"
    assert "missing required column(s) 'amount'" in listed["broken.csv"]["error"]


def test_promotion_gate_says_no_to_a_worse_challenger(tmp_path, home):
    path = project(tmp_path, name="gate-test")
    config = load_config(path)
    train_flow(str(path))
    # a challenger trained on the wrong data: amounts 30 times too large
    wrong = generate_normal(3000, seed=0)
    wrong["amount"] *= 30
    wrong.to_parquet(tmp_path / "train.parquet")
    train_flow(str(path))
    result = promote_flow(str(path))
    assert not result["promoted"]
    assert "fails log-likelihood" in result["decision"]
    assert registry.alias_version(config, "champion") == "1"
    history = registry.history(config)
    assert [e.alias for e in history] == ["challenger", "champion", "challenger"]


def test_crash_between_store_and_mark_done_loses_and_duplicates_nothing(
    tmp_path, home, monkeypatch
):
    clean_path = project(tmp_path / "clean", name="crash-clean")
    train_flow(str(clean_path))
    clean = {s["batch_id"]: s for s in score_flow(str(clean_path))}

    path = project(tmp_path / "crash", name="crash-test")
    train_flow(str(path))

    def crash(*args, **kwargs):
        raise OSError("killed after storing, before marking done")

    monkeypatch.setattr("anomaly.pipeline.mark_done", crash)
    with pytest.raises(OSError, match="killed after storing"):
        score_flow(str(path))
    config = load_config(path)
    assert len(list(Path(config.data.inbox).glob("*.parquet"))) == 2  # not marked done
    monkeypatch.undo()
    monkeypatch.setenv("ANOMALY_HOME", str(home))
    rerun = {s["batch_id"]: s for s in score_flow(str(path))}
    assert rerun.keys() == clean.keys()
    engine, clean_engine = store_engine(config), store_engine(load_config(clean_path))
    for batch_id, summary in rerun.items():
        assert summary["rows_flagged"] == clean[batch_id]["rows_flagged"]
        assert batch_counts(engine, batch_id) == batch_counts(clean_engine, batch_id)
        out = pd.read_parquet(summary["output"])
        assert not out["transaction_id"].duplicated().any()


def test_reviews_flow_back_into_training(tmp_path, home):
    path = project(tmp_path, name="feedback-test")
    config = load_config(path)
    train_flow(str(path))
    (summary, *_) = score_flow(str(path))
    engine = store_engine(config)
    flagged = pd.read_parquet(summary["output"]).query("is_anomaly")
    ids = flagged["transaction_id"].tolist()
    add_review(engine, summary["batch_id"], ids[0], "false_positive", "ana", "known customer")
    add_review(engine, summary["batch_id"], ids[1], "confirmed", "ana")
    assert len(current_labels(engine)) == 2
    second = train_flow(str(path))
    metrics = second["metrics"]
    # one false positive joined the 3000 training rows, one confirmed anomaly the evaluation
    assert metrics["rows_train"] + metrics["rows_calibration"] + metrics["rows_test"] == 3001
    assert metrics["eval_rows"] == 800 + 2


def test_deployments_carry_the_configured_schedules(tmp_path, home):
    path = project(tmp_path, name="deploy-test")
    found = {d.name: d for d in deployments(path)}
    score = found["deploy-test-score"]
    (schedule,) = score.schedules
    assert schedule.schedule.cron == "*/5 * * * *"
    assert schedule.schedule.timezone == "Europe/Paris"
    assert score.concurrency_limit == 1
    assert score.concurrency_options.collision_strategy == "CANCEL_NEW"
    (retrain,) = found["deploy-test-retrain"].schedules
    assert retrain.schedule.cron == "30 2 * * 1"
    assert not found["deploy-test-promote"].schedules
    assert score.parameters == {"config_path": str(path.resolve())}
