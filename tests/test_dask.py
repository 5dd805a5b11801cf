"""The scale-out path: the score flow's batches on a real 2-worker Dask LocalCluster."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from reliability_support import make_inbox, snapshot, trained_champion, write_config
from test_scoring_equality import store_rows

from anomaly.config import load_config
from anomaly.demo_data import generate_normal, plant_anomalies
from anomaly.inbox import pending_batches
from anomaly.pipeline import score_batches
from flows.score import score_flow, score_flow_for
from flows.train import train_flow

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")


@contextlib.contextmanager
def local_cluster() -> Iterator[distributed.LocalCluster]:
    """Two single-threaded worker processes. On a loaded machine a worker's event loop can be
    starved for longer than distributed's TCP timeout (30 s), and the scheduler then drops
    the worker for good ("Lost all workers"): these tests allow 5 minutes."""
    with (
        dask.config.set({"distributed.comm.timeouts.tcp": "300s"}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
    ):
        yield cluster


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

    with local_cluster() as cluster:
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


# ---------------------------------------------------------------------------- split files
#: a 4,000-row file in row groups of 250 and chunks of 200, split into 3 parts (1,600 rows:
#: the 1,500-row files are not split)
BIG_ROWS, SPLIT_ROWS = 4_000, 1_600
#: the reliability inbox's 400-row Parquet batches in 3 parts (chunks of 150)
SPLIT_PARTS = 150


def add_big_file(root: Path) -> None:
    """A large batch in the project's inbox: unreadable amounts, an unseen category, and ids
    repeated within a chunk, across chunks of a part and across parts."""
    frame, _ = plant_anomalies(generate_normal(BIG_ROWS, seed=11), 0.03, 11)
    frame["amount"] = frame["amount"].astype(str)
    frame.loc[[17, 1_333, 3_999], "amount"] = "n/a"
    frame.loc[[50, 2_800], "merchant_category"] = "never seen"
    for row, earlier in ((5, 3), (300, 20), (1_700, 10), (3_998, 1_999), (2_100, 2_050)):
        frame.loc[row, "transaction_id"] = frame.loc[earlier, "transaction_id"]
    frame.to_parquet(root / "inbox" / "big.parquet", row_group_size=250)


def store_tables(root: Path) -> dict[str, pd.DataFrame]:
    """The project's store rows, without what names its folder or the clock, in key order
    (the runners store their batches in different orders)."""
    tables = store_rows(f"sqlite:///{root / 'home' / 'review.db'}")
    found = {}
    for name, frame in tables.items():
        keys = [c for c in ("batch_id", "record_id", "row") if c in frame.columns]
        frame = frame.drop(columns=["source", "output", "content_hash"], errors="ignore")
        found[name] = frame.sort_values(keys).reset_index(drop=True)
    return found


def test_split_file_on_dask_equals_thread_scoring(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    threads = make_project(tmp_path / "threads", "split-test", chunk_rows=200)
    add_big_file(tmp_path / "threads")
    train_flow(str(threads))
    shutil.copytree(tmp_path / "threads", tmp_path / "dask")
    by_threads = {s["batch_id"]: s for s in score_flow(str(threads))}  # each file whole

    with (
        local_cluster() as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as stream,
    ):
        path = tmp_path / "dask" / "config.yaml"
        settings = yaml.safe_load(path.read_text())
        settings["scoring"].update(dask_address=cluster.scheduler_address, split_rows=SPLIT_ROWS)
        path.write_text(yaml.safe_dump(settings))
        by_dask = {s["batch_id"]: s for s in score_flow_for(load_config(path))(str(path))}
    parts = [t for t in stream.data if "score_part" in str(t["key"])]
    assert len(parts) == 3  # the small files are not split
    part_workers = {t["worker"] for t in parts}
    assert len(part_workers) == 2

    assert by_dask.keys() == by_threads.keys()
    big = by_dask["big.parquet"]
    assert big["rows_in"] == BIG_ROWS
    assert big["rows_quarantined"] == 3 + 5  # the amounts and the repeated ids
    for batch_id, summary in by_dask.items():
        expected = by_threads[batch_id]
        for key in ("rows_in", "rows_scored", "rows_quarantined", "rows_flagged", "flag_rate"):
            assert summary[key] == expected[key]
        for key in ("output", "quarantine_output"):
            assert (summary[key] is None) == (expected[key] is None)
            if summary[key]:
                pd.testing.assert_frame_equal(
                    pd.read_parquet(summary[key]), pd.read_parquet(expected[key])
                )
    split, whole = store_tables(tmp_path / "dask"), store_tables(tmp_path / "threads")
    for name, frame in whole.items():
        pd.testing.assert_frame_equal(split[name], frame)
    assert not list((tmp_path / "dask" / "home" / "scored").rglob(".*"))  # no scratch left
    processed = tmp_path / "dask" / "inbox" / "processed"
    assert (processed / "big.parquet").is_file()


def test_split_file_faults_on_dask_leave_exactly_once(tmp_path):
    """A part that raises on a worker fails the run and puts the batch back; a worker killed
    in a part has the part scored again by another. Either way the result is what one clean
    unsplit run leaves (the faults in the merge, with real kills: tests/test_faults.py)."""
    top, uri = trained_champion(tmp_path)
    clean = load_config(write_config(top / "clean", uri, top / "train.parquet"))
    make_inbox(top / "clean" / "inbox", n_parquet=1)  # one batch split in 3 parts is enough
    score_batches(clean, pending_batches(clean))
    expected = snapshot(clean, top / "clean")

    with (
        local_cluster() as cluster,
        distributed.Client(cluster) as client,
    ):

        def on_cluster(function, items):
            return client.gather(client.map(function, items, pure=False))

        def faulty(mode: str, marker: Path):
            """Parts on the cluster; the first part after the first fails once: ``mode``."""

            def run(function, items):
                def part(rows):
                    if rows is not None and rows.start > 0 and not marker.exists():
                        marker.touch()
                        if mode == "kill":
                            os._exit(1)
                        raise RuntimeError("injected fault in a part")
                    return function(rows)

                return on_cluster(part, items)

            return run

        for mode in ("raise", "kill"):
            root = top / mode
            config = load_config(
                write_config(root, uri, top / "train.parquet", split_rows=SPLIT_PARTS)
            )
            make_inbox(root / "inbox", n_parquet=1)
            fault = faulty(mode, root / "fault-fired")
            if mode == "raise":
                with pytest.raises(RuntimeError, match="injected fault"):
                    score_batches(config, pending_batches(config), map_parts=fault)
                assert (root / "inbox" / "batch_1.parquet").is_file()  # put back
                score_batches(config, pending_batches(config), map_parts=on_cluster)
            else:
                score_batches(config, pending_batches(config), map_parts=fault)
            assert (root / "fault-fired").is_file()
            (root / "fault-fired").unlink()
            assert snapshot(config, root) == expected, mode
