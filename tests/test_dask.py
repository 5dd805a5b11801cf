"""The scale-out path: the score flow's batches on a real 2-worker Dask LocalCluster."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomaly.config import load_config
from anomaly.demo_data import generate_normal, plant_anomalies
from flows.score import score_flow, score_flow_for
from flows.train import train_flow

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
distributed = pytest.importorskip("distributed")


def make_project(root: Path, name: str, **scoring: object) -> Path:
    root.mkdir(parents=True)
    generate_normal(2000, seed=0).to_parquet(root / "train.parquet")
    inbox = root / "inbox"
    inbox.mkdir()
    for seed in (1, 2, 3, 4):
        batch, _ = plant_anomalies(generate_normal(1500, seed=seed), 0.03, seed)
        batch.to_parquet(inbox / f"part-{seed}.parquet", row_group_size=500)
    settings = {
        "name": name,
        "home": "home",
        "features": {
            "id": "transaction_id",
            "numeric": ["amount", "hour", "distance_km", "tx_last_24h", "account_age_days"],
            "categorical": ["merchant_category", "channel"],
        },
        "data": {"train": "train.parquet", "inbox": "inbox"},
        "model": {"kind": "gmm", "params": {"max_components": 3}},
        "scoring": {"chunk_rows": 500, **scoring},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_dask_scoring_equals_thread_scoring(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    threads = make_project(tmp_path / "threads", "dask-test")
    train_flow(str(threads))
    # the same trained state for the Dask run: copy the project after training
    shutil.copytree(tmp_path / "threads", tmp_path / "dask")
    by_threads = {s["batch_id"]: s for s in score_flow(str(threads))}

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        path = tmp_path / "dask" / "config.yaml"
        settings = yaml.safe_load(path.read_text())
        settings["scoring"]["dask_address"] = cluster.scheduler_address
        path.write_text(yaml.safe_dump(settings))
        config = load_config(path)
        runner_flow = score_flow_for(config)
        assert type(runner_flow.task_runner).__name__ == "DaskTaskRunner"
        by_dask = {s["batch_id"]: s for s in runner_flow(str(path))}
        workers = {w["id"] for w in cluster.scheduler_info["workers"].values()}
    assert len(workers) == 2

    assert by_dask.keys() == by_threads.keys() == {f"part-{i}.parquet" for i in (1, 2, 3, 4)}
    for batch_id, summary in by_dask.items():
        for key in ("rows_in", "rows_scored", "rows_quarantined", "rows_flagged"):
            assert summary[key] == by_threads[batch_id][key]
        pd.testing.assert_frame_equal(
            pd.read_parquet(summary["output"]),
            pd.read_parquet(by_threads[batch_id]["output"]),
        )
