"""Issue 18 item 3: the rows that may be flagged are not held in memory while a batch is scored.
Each chunk's candidate rows go to a spill file in the batch's work folder; the flagged rows end
in a :class:`~anomaly.scoring.FlaggedRows` spill, one chunk's rows a piece, that the store reads
in slices; the slices give what the whole frame gives, in the store too."""

from __future__ import annotations

import gc
import os

import numpy as np
import pandas as pd
import pytest
from test_scoring import make_config
from test_scoring_equality import store_rows

from anomaly import scoring
from anomaly.demo_data import ID, generate_normal, plant_anomalies
from anomaly.detector import Detector
from anomaly.scoring import FlaggedRows, _pieces, score_file, score_part
from anomaly.store import connect, write_batch
from anomaly.training import train

CHUNK_ROWS = 100
EXPLAIN_ROWS = 7


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    """A detector that flags about 30 % of normal rows: many candidates in every chunk."""
    config = make_config(tmp_path_factory.mktemp("wide"), calibration={"alpha": 0.3})
    return train(config, generate_normal(3_000, seed=1)).detector


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    data, _ = plant_anomalies(generate_normal(2_000, seed=5), rate=0.02, seed=5)
    path = tmp_path_factory.mktemp("batch") / "b.parquet"
    data.to_parquet(path)
    return path


def test_a_part_keeps_its_candidate_rows_in_a_spill_file(detector, batch, tmp_path):
    part = score_part(detector, batch, tmp_path, CHUNK_ROWS, None, None)
    pieces = list(_pieces(part.candidates))
    assert part.candidates.parent == tmp_path / "part-000000000"
    assert len(pieces) == 2_000 // CHUNK_ROWS  # one frame a chunk (each has candidates)
    assert all(0 < len(piece) <= CHUNK_ROWS for piece in pieces)
    assert sum(map(len, pieces)) > 400
    # what the part holds in memory: no rows (its template has none)
    held = [v for v in vars(part).values() if isinstance(v, pd.DataFrame)]
    assert len(held) == 1
    assert held[0] is part.template
    assert len(part.template) == 0


def test_flagged_rows_are_read_in_slices_as_the_whole_frame(detector, batch, tmp_path):
    summary = score_file(
        detector, batch, tmp_path / "out", chunk_rows=CHUNK_ROWS, explain_rows=EXPLAIN_ROWS
    )
    rows = summary.flagged_rows
    assert isinstance(rows, FlaggedRows)
    assert len(rows) == summary.rows_flagged > 400
    assert len(rows.pieces) == 2_000 // CHUNK_ROWS
    assert max(rows.pieces) <= CHUNK_ROWS
    whole = rows.frame()
    assert len(whole) == len(rows)
    for start, stop in [(0, 1), (5, 250), (90, 91), (len(rows) - 3, len(rows) + 10), (7, 7)]:
        pd.testing.assert_frame_equal(rows.iloc[start:stop], whole.iloc[start:stop])
    # in any order, as the store may read them (by score), and column by column
    order = np.argsort(rows["log_likelihood"].to_numpy(), kind="stable")
    for start in (0, 150, len(rows) - 40):
        wanted = order[start : start + 200]
        pd.testing.assert_frame_equal(rows.iloc[wanted], whole.iloc[wanted])
    for column in whole.columns:
        pd.testing.assert_series_equal(rows[column], whole[column])
    explained = whole["contributions"].map(len) > 0
    assert explained.sum() == EXPLAIN_ROWS
    worst = whole["log_likelihood"].nsmallest(EXPLAIN_ROWS).index
    assert set(whole.index[explained]) == set(worst)
    # the work folder, with the spill files, is gone; the flagged rows' file has no name
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b.parquet.scored.parquet"]


def test_the_store_gets_the_same_rows_from_slices_as_from_the_frame(detector, batch, tmp_path):
    summary = score_file(detector, batch, tmp_path / "out", chunk_rows=CHUNK_ROWS)
    stores = []
    for name, flagged in (
        ("slices", summary.flagged_rows),
        ("frame", summary.flagged_rows.frame()),
    ):
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        engine = connect(url)
        write_batch(engine, summary, "m", flagged, pd.DataFrame(), ID)
        engine.dispose()
        stores.append(store_rows(url))
    assert len(stores[0]["flagged"]) == summary.rows_flagged
    for table, frame in stores[0].items():
        pd.testing.assert_frame_equal(frame, stores[1][table])


def test_id_parts_too_large_to_hold_are_split_and_find_the_same_repeats(
    detector, tmp_path, monkeypatch
):
    data = generate_normal(3_000, seed=6)
    # ids repeated within a chunk, across chunks, and three times
    data.loc[[5, 40, 250, 1_499, 2_999], ID] = data[ID].iloc[[3, 3, 10, 2, 10]].to_numpy()
    path = tmp_path / "repeated.parquet"
    data.to_parquet(path)
    whole = score_file(detector, path, tmp_path / "whole", chunk_rows=CHUNK_ROWS, batch_id="b")
    # a part of more than 8 records (here about 47) is split by the next bits of the hash
    monkeypatch.setattr(scoring._IdSpill, "HELD", 8)
    split = score_file(detector, path, tmp_path / "split", chunk_rows=CHUNK_ROWS, batch_id="b")
    # 5 and 40 repeat within chunk 0 (the chunk's checks), 250, 1499 and 2999 across chunks
    assert split.rows_quarantined == whole.rows_quarantined == 5
    skip = {"output", "quarantine_output", "explain_seconds"}
    assert {k: v for k, v in split.to_dict().items() if k not in skip} == {
        k: v for k, v in whole.to_dict().items() if k not in skip
    }
    pd.testing.assert_frame_equal(split.quarantined, whole.quarantined)
    pd.testing.assert_frame_equal(split.flagged_rows.frame(), whole.flagged_rows.frame())
    pd.testing.assert_frame_equal(pd.read_parquet(split.output), pd.read_parquet(whole.output))
    assert [p.name for p in (tmp_path / "split").iterdir()] == [
        p.name for p in (tmp_path / "whole").iterdir()
    ]


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_the_spill_file_is_made_by_the_first_rows_added_and_closed_with_the_set(tmp_path):
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "reason": ["", "a", ""]})
    before = _open_files()
    given = FlaggedRows.of(frame)  # held in memory: no file
    empty = FlaggedRows(tmp_path / "not-made", frame.iloc[:0])  # the folder is never used
    empty.add(frame.iloc[:0])
    assert _open_files() == before
    pd.testing.assert_frame_equal(given.frame(), frame)
    pd.testing.assert_frame_equal(empty.frame().drop(columns="contributions"), frame.iloc[:0])
    with pytest.raises(FileNotFoundError):  # the first rows make the file, in that folder
        empty.add(frame)
    spilled = FlaggedRows(tmp_path, frame.iloc[:0])
    spilled.contributions = None  # the rows' own (none here)
    spilled.add(frame.iloc[:2])
    spilled.add(frame.iloc[2:])
    assert _open_files() == before + 1
    assert list(tmp_path.iterdir()) == []  # it has no name
    pd.testing.assert_frame_equal(spilled.frame(), frame)
    pd.testing.assert_frame_equal(spilled.iloc[1:3], frame.iloc[1:3])
    pd.testing.assert_frame_equal(spilled.iloc[[2, 0]], frame.iloc[[2, 0]])
    pd.testing.assert_series_equal(spilled["reason"], frame["reason"])
    del spilled
    gc.collect()
    assert _open_files() == before
