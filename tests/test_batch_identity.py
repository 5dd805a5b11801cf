"""A batch is its file name and its content: a different file under a used name becomes a batch
of its own (``name@<hash>``) and never replaces stored records, their reviews or the outputs; the
same file again is the same batch, stored once. Through ``pipeline.process_batch`` (what the
score flow runs for each batch) with a real registered detector, and through ``anomaly score``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomaly import registry, store
from anomaly.config import Config, load_config
from anomaly.demo_data import ID, generate_normal, plant_anomalies
from anomaly.inbox import content_hash, pending_batches
from anomaly.pipeline import process_batch, scored_dir, train_and_store
from anomaly.scoring import output_paths
from anomaly.store import store_engine

REPO = Path(__file__).resolve().parents[1]


def write_config(root: Path) -> Path:
    settings = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    settings["name"] = "identity"
    settings["model"]["kind"] = "gaussian"
    settings["data"] = {"train": str(root / "train.parquet"), "inbox": str(root / "inbox")}
    settings["home"] = str(root / "home")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Config, Path]:
    root = tmp_path_factory.mktemp("identity")
    generate_normal(2000, seed=0).to_parquet(root / "train.parquet")
    (root / "inbox").mkdir()
    config_path = write_config(root)
    config = load_config(config_path)
    train_and_store(config)
    return config, config_path


def batch_frame(seed: int) -> pd.DataFrame:
    frame, _ = plant_anomalies(generate_normal(300, seed=seed), 0.1, seed)
    return frame


def deliver(config: Config, frame: pd.DataFrame, name: str = "batch_001.parquet") -> Path:
    path = Path(config.data.inbox) / name
    frame.to_parquet(path, index=False)
    return path


def score(config: Config, path: Path):
    detector, version = registry.load_detector(config)
    return process_batch(config, detector, version, path, store_engine(config))


def flagged_of(config: Config, batch_id: str) -> dict[str, tuple]:
    rows, _ = store.queue(store_engine(config), store.QueueFilter(batch_id=batch_id), limit=10**6)
    return {r.record_id: (r.log_likelihood, r.label, r.values) for r in rows}


def outputs_of(config: Config, batch_id: str) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in output_paths(scored_dir(config), batch_id) if p.exists()
    }


def test_a_different_file_under_a_used_name_replaces_nothing(project):
    config, _ = project
    engine = store_engine(config)
    inbox = Path(config.data.inbox)
    a, b = batch_frame(1), batch_frame(2)
    first = score(config, deliver(config, a))
    assert first.batch_id == "batch_001.parquet"
    assert first.rows_flagged > 2
    stored_a = flagged_of(config, first.batch_id)
    reviewed = sorted(stored_a)[:2]
    store.add_review(engine, first.batch_id, reviewed[0], "confirmed", "ann", "card stolen")
    store.add_review(engine, first.batch_id, reviewed[1], "false_positive", "bob")
    stored_a = flagged_of(config, first.batch_id)
    outputs_a = outputs_of(config, first.batch_id)
    processed_a = (inbox / "processed" / "batch_001.parquet").read_bytes()

    # another file, the same name
    path = deliver(config, b)
    digest = content_hash(path)
    second = score(config, path)
    assert second.batch_id == f"batch_001@{digest[:12]}.parquet"
    assert second.status == "scored"
    assert second.content_hash == digest
    # the earlier batch, its flagged records, their reviews and its outputs are all still there
    assert flagged_of(config, first.batch_id) == stored_a
    assert [r.label for r in store.reviews_of(engine, first.batch_id, reviewed[0])] == ["confirmed"]
    assert store.get_batch(engine, first.batch_id).rows_flagged == first.rows_flagged
    assert outputs_of(config, first.batch_id) == outputs_a
    assert (inbox / "processed" / "batch_001.parquet").read_bytes() == processed_a
    # the new one is a batch of its own, with its own outputs and processed file
    stored_b = flagged_of(config, second.batch_id)
    assert len(stored_b) == second.rows_flagged > 0
    assert set(stored_b).isdisjoint(stored_a)  # other rows (ids differ by seed)
    scored_b = pd.read_parquet(second.output)
    assert sorted(scored_b[ID]) == sorted(b[ID])
    moved = inbox / "processed" / f"batch_001@{digest[:12]}.parquet"
    assert pd.read_parquet(moved).equals(b)

    # the first file again: the same batch, stored once, reviews and labels kept
    again = score(config, deliver(config, a))
    assert again.batch_id == first.batch_id
    assert flagged_of(config, first.batch_id).keys() == stored_a.keys()
    assert {k: v[1] for k, v in flagged_of(config, first.batch_id).items()} == {
        k: v[1] for k, v in stored_a.items()
    }
    assert outputs_of(config, first.batch_id) == outputs_a
    # and the second again: its own id again
    assert score(config, deliver(config, b)).batch_id == second.batch_id
    ids = [x.batch_id for x in store.batches(engine)]
    assert sorted(ids) == sorted([first.batch_id, second.batch_id])
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == sorted(
        ["batch_001.parquet", moved.name]
    )


@pytest.mark.slow
def test_a_reused_name_through_the_cli(project):
    """``anomaly score --json`` twice, a different file of the same name each time: two batches,
    the first one's records and review untouched."""
    config, config_path = project
    engine = store_engine(config)
    env = {**os.environ, "ANOMALY_HOME": str(config.home)}
    env.pop("PREFECT_API_URL", None)

    def run() -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "score", "--config", str(config_path), "--json"],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    deliver(config, batch_frame(5), "daily.parquet")
    first = run()
    record = sorted(flagged_of(config, first["batch_id"]))[0]
    store.add_review(engine, first["batch_id"], record, "confirmed", "ann")
    before = flagged_of(config, first["batch_id"])
    digest = content_hash(deliver(config, batch_frame(6), "daily.parquet"))
    second = run()
    assert (first["batch_id"], second["batch_id"]) == (
        "daily.parquet",
        f"daily@{digest[:12]}.parquet",
    )
    assert second["content_hash"] == digest
    assert flagged_of(config, first["batch_id"]) == before
    assert store.get_record(engine, first["batch_id"], record).label == "confirmed"
    assert pending_batches(config) == []
