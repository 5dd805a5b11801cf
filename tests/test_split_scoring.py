"""A batch file scored in parts and merged (issue 18, the Dask split-file path, here with the
parts run one after another in this process) gives what scoring it whole gives: the scored and
quarantine outputs, the summary, the flagged and quarantined rows and the store rows, under the
``fpr`` and the ``fdr`` rule, with ids repeated within a chunk, across chunks and across parts.
``tests/test_dask.py`` runs the same parts on a real cluster."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_scoring import make_config
from test_scoring_equality import store_rows

from anomaly.demo_data import ID, generate_normal, plant_anomalies
from anomaly.detector import Detector
from anomaly.scoring import BatchSummary, Part, plan_parts, score_file
from anomaly.store import connect, write_batch
from anomaly.training import train

#: chunks of 64 rows in row groups of 100: a part's edges cut row groups
CHUNK_ROWS, ROW_GROUP, SPLIT_ROWS = 64, 100, 300


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    return train(make_config(tmp_path_factory.mktemp("fpr")), generate_normal(3_000, 1)).detector


@pytest.fixture(scope="module")
def fdr_detector(tmp_path_factory) -> Detector:
    config = make_config(tmp_path_factory.mktemp("fdr"), calibration={"rule": "fdr", "alpha": 0.1})
    return train(config, generate_normal(3_000, seed=1)).detector


def messy_batch(folder: Path) -> Path:
    """1,500 rows with planted anomalies, unreadable amounts, an unseen category and ids
    repeated within a chunk (5, 40 ← 3), across chunks of a part (100 ← 20, 700 ← 600) and
    across parts (1,400 ← 10; 900 ← 299)."""
    frame, _ = plant_anomalies(generate_normal(1_500, seed=7), rate=0.05, seed=7)
    frame["amount"] = frame["amount"].astype(str)
    frame.loc[[17, 333, 1_234], "amount"] = "n/a"
    frame.loc[[50, 800], "merchant_category"] = "never seen"
    for row, earlier in ((5, 3), (40, 3), (100, 20), (700, 600), (1_400, 10), (900, 299)):
        frame.loc[row, ID] = frame.loc[earlier, ID]
    path = folder / "messy.parquet"
    frame.to_parquet(path, row_group_size=ROW_GROUP)
    return path


def frames(summary: BatchSummary) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The flagged and the quarantined rows of a batch, each as one frame (or None)."""
    rows = summary.flagged_rows
    return None if rows is None else rows.frame(), summary.quarantined


def same_result(split: BatchSummary, whole: BatchSummary, tmp: Path) -> None:
    """Everything two runs leave is equal (but the output folder and the explaining time)."""
    skip = {"output", "quarantine_output", "explain_seconds"}
    assert {k: v for k, v in split.to_dict().items() if k not in skip} == {
        k: v for k, v in whole.to_dict().items() if k not in skip
    }
    for attr in ("output", "quarantine_output"):
        a, b = getattr(split, attr), getattr(whole, attr)
        assert (a is None) == (b is None)
        if a is not None:
            assert Path(a).name == Path(b).name
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    for a, b in zip(frames(split), frames(whole), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            pd.testing.assert_frame_equal(a, b)
    if whole.status != "scored":
        return
    stores = []
    for name, summary in (("split", split), ("whole", whole)):
        url = f"sqlite:///{tmp / f'{name}.db'}"
        engine = connect(url)
        write_batch(engine, summary, "m", summary.flagged_rows.frame(), summary.quarantined, ID)
        engine.dispose()
        stores.append(store_rows(url))
    for table, frame in stores[1].items():
        paths = ["output", "quarantine_output"]
        pd.testing.assert_frame_equal(
            stores[0][table].drop(columns=paths, errors="ignore"),
            frame.drop(columns=paths, errors="ignore"),
        )


def score_both(detector: Detector, path: Path, tmp: Path, **kwargs) -> BatchSummary:
    """Score ``path`` whole and in parts, check they agree, return the split run's summary."""
    whole = score_file(detector, path, tmp / "whole", CHUNK_ROWS, batch_id="b", **kwargs)
    split = score_file(
        detector, path, tmp / "split", CHUNK_ROWS, batch_id="b", split_rows=SPLIT_ROWS, **kwargs
    )
    same_result(split, whole, tmp)
    return split


def test_a_large_file_is_planned_in_parts_of_whole_chunks(tmp_path):
    path = messy_batch(tmp_path)
    parts = plan_parts(path, CHUNK_ROWS, SPLIT_ROWS)
    assert parts == [range(s, min(s + 256, 1_500)) for s in range(0, 1_500, 256)]
    assert plan_parts(path, CHUNK_ROWS, 1_500) == plan_parts(path, CHUNK_ROWS, None) == [None]
    csv = tmp_path / "messy.csv"
    pd.read_parquet(path).to_csv(csv, index=False)
    assert plan_parts(csv, CHUNK_ROWS, SPLIT_ROWS) == [None]  # CSV is never split


@pytest.mark.parametrize("rule", ["fpr", "fdr"])
def test_split_scoring_equals_whole_file_scoring(detector, fdr_detector, rule, tmp_path):
    path = messy_batch(tmp_path)
    split = score_both(detector if rule == "fpr" else fdr_detector, path, tmp_path)
    reasons = split.quarantined["reason"]
    assert reasons.str.startswith("duplicate id").sum() == 6
    assert reasons.str.contains("amount").sum() == 3
    assert split.rows_flagged > 0
    assert split.rows_in == 1_500
    assert not [p for p in (tmp_path / "split").iterdir() if p.name.startswith(".")]


def test_split_scoring_keeps_passthrough_columns_and_rejections(detector, tmp_path):
    path = messy_batch(tmp_path)
    score_both(detector, path, tmp_path / "all", passthrough="all")
    rejected = score_both(detector, path, tmp_path / "missing", passthrough=["nope"])
    assert rejected.status == "rejected"
    assert "nope" in rejected.error
    frame = pd.read_parquet(path).drop(columns=["channel"])
    frame.to_parquet(tmp_path / "no_channel.parquet", row_group_size=ROW_GROUP)
    rejected = score_both(detector, tmp_path / "no_channel.parquet", tmp_path / "schema")
    assert rejected.status == "rejected"
    assert "channel" in rejected.error


def test_parts_out_of_order_are_refused(detector, tmp_path):
    path = messy_batch(tmp_path)

    def backwards(function, items) -> list[Part]:
        return [function(item) for item in reversed(items)]

    with pytest.raises(ValueError, match="file order"):
        score_file(detector, path, tmp_path, CHUNK_ROWS, split_rows=SPLIT_ROWS, map_parts=backwards)
    assert not list(tmp_path.glob(".*.work"))


def test_a_rerun_scores_beside_a_part_still_writing_into_the_failed_run(
    detector, tmp_path, monkeypatch
):
    """A part of a failed split run may still be writing on a Dask worker into that run's work
    folder while the batch is scored again: a file it writes as the folder is wiped leaves the
    folder in place (the re-run then failed with FileExistsError). Each run has its own
    folder; the earlier runs' folders of that batch, not another batch's, are wiped first."""
    import shutil

    from anomaly import scoring

    path = messy_batch(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    other = out / ".messy.parquet.x.parquet.abcdefgh.work"  # another batch's, live
    other.mkdir()
    runs = []

    def failing(function, items) -> list[Part]:
        function(items[0])
        runs.extend(f for f in out.glob(".messy.parquet.*work") if f != other)
        raise RuntimeError("injected fault in a part")

    with pytest.raises(RuntimeError, match="injected fault"):
        score_file(detector, path, out, CHUNK_ROWS, split_rows=SPLIT_ROWS, map_parts=failing)
    (failed,) = runs
    (out / ".messy.parquet.work").mkdir()  # an older version's folder, left by a kill
    real_rmtree = shutil.rmtree

    def raced(folder, ignore_errors=False):  # the stale part's file lands mid-wipe
        real_rmtree(folder, ignore_errors=ignore_errors)
        if Path(folder) == failed:
            failed.mkdir()
            (failed / "part-1.arrow").write_bytes(b"late")

    monkeypatch.setattr(scoring.shutil, "rmtree", raced)
    failed.mkdir()  # the stale part writes on after the failed run wiped its folder
    (failed / "part-1.arrow").write_bytes(b"late")
    summary = score_file(detector, path, out, CHUNK_ROWS, split_rows=SPLIT_ROWS)
    assert summary.status == "scored"
    assert not (out / ".messy.parquet.work").exists()
    assert other.is_dir()
    assert {f for f in out.glob(".messy.parquet.*work") if f != other} <= {failed}
