"""The scoring path of issue 18 (vectorised validation, one Parquet pass, ids checked across
chunks from spill files) gives what the path before it gave (``tests/scoring_reference.py``,
kept verbatim): the same scored and quarantined outputs, summary, flagged and quarantined rows
and store rows, on every file of the bad-input corpus and on demo batches, under the ``fpr`` and
the ``fdr`` rule, with chunks small enough that ids repeat across them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scoring_reference import score_file_reference, validate_reference
from test_scoring import make_config

from anomaly.demo_data import ID, generate_normal, plant_anomalies
from anomaly.detector import Detector
from anomaly.io import DataError, iter_rows
from anomaly.preprocessing import SchemaError
from anomaly.scoring import score_file
from anomaly.store import connect, write_batch
from anomaly.training import train

REPO = Path(__file__).resolve().parents[1]
BAD = REPO / "tests" / "data" / "bad"
CHUNK_ROWS = 16
#: the store's columns that hold the time of writing, not a result
CLOCK = {"scored_at", "created_at", "updated_at"}


def _make_bad():
    spec = importlib.util.spec_from_file_location("make_bad", BAD.parent / "make_bad.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CORPUS = sorted(p for p in BAD.iterdir() if p.suffix in (".csv", ".parquet"))


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    return train(make_config(tmp_path_factory.mktemp("fpr")), generate_normal(3_000, 1)).detector


@pytest.fixture(scope="module")
def fdr_detector(tmp_path_factory) -> Detector:
    config = make_config(tmp_path_factory.mktemp("fdr"), calibration={"rule": "fdr", "alpha": 0.1})
    return train(config, generate_normal(3_000, seed=1)).detector


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """The committed corpus, its two 10,000-column files and demo batches, one of them with
    ids repeated within and across chunks."""
    folder = tmp_path_factory.mktemp("files")
    _make_bad().write_wide(folder)
    demo, _ = plant_anomalies(generate_normal(1_500, seed=7), rate=0.05, seed=7)
    demo.to_parquet(folder / "demo.parquet")
    demo.iloc[:400].to_csv(folder / "demo.csv", index=False)
    repeated = demo.copy()
    # 5 and 40 repeat 3 within the first chunk of 100; 250 and 1499 repeat earlier chunks' ids
    repeated.loc[[5, 40, 250, 1_499], ID] = repeated[ID].iloc[[3, 3, 10, 2]].to_numpy()
    repeated.to_parquet(folder / "repeated_ids.parquet")
    return [*CORPUS, *sorted(folder.glob("*.csv")), *sorted(folder.glob("*.parquet"))]


def store_rows(url: str) -> dict[str, pd.DataFrame]:
    """Every row of the result tables, without the clock columns."""
    engine = connect(url)
    tables = {}
    with engine.connect() as conn:
        for table in ("batches", "flagged", "quarantined"):
            frame = pd.read_sql_table(table, conn)
            tables[table] = frame.drop(columns=[c for c in frame.columns if c in CLOCK])
    engine.dispose()
    return tables


def scored_equal(detector: Detector, path: Path, tmp: Path, chunk_rows: int) -> None:
    new = score_file(detector, path, tmp / "new", chunk_rows=chunk_rows, batch_id="b")
    old = score_file_reference(detector, path, tmp / "old", chunk_rows=chunk_rows, batch_id="b")
    skip = {"output", "quarantine_output", "explain_seconds"}
    assert {k: v for k, v in new.to_dict().items() if k not in skip} == {
        k: v for k, v in old.to_dict().items() if k not in skip
    }
    for attr in ("output", "quarantine_output"):
        a, b = getattr(new, attr), getattr(old, attr)
        assert (a is None) == (b is None)
        if a is not None:
            assert Path(a).name == Path(b).name
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    if old.flagged_rows is None or not len(old.flagged_rows):
        assert new.flagged_rows is None or not len(new.flagged_rows)
    else:
        pd.testing.assert_frame_equal(new.flagged_rows.frame(), old.flagged_rows.frame())
    if old.quarantined is None:
        assert new.quarantined is None
    else:
        pd.testing.assert_frame_equal(new.quarantined, old.quarantined)
    if new.status != "scored":
        return
    stores = []
    for name, summary in (("new", new), ("old", old)):
        url = f"sqlite:///{tmp / f'{name}.db'}"
        engine = connect(url)
        rows = summary.flagged_rows
        flagged = rows.frame() if rows is not None else pd.DataFrame()
        quarantined = summary.quarantined if summary.quarantined is not None else pd.DataFrame()
        write_batch(engine, summary, "m", flagged, quarantined, ID)
        engine.dispose()
        stores.append(store_rows(url))
    for table in stores[1]:
        paths = ["output", "quarantine_output"]
        frame = stores[0][table].drop(columns=paths, errors="ignore")
        reference = stores[1][table].drop(columns=paths, errors="ignore")
        pd.testing.assert_frame_equal(frame, reference)


def test_validation_equals_the_reference(detector, files):
    pre = detector.preprocessor
    compared = 0
    for path in [p for p in files if "wide" not in p.name]:  # wide ones: the slow test below
        try:
            size = CHUNK_ROWS if path in CORPUS else 256
            chunks = [chunk for chunk, _ in iter_rows(path, size)]
        except DataError:
            continue
        for chunk in chunks:
            try:
                expected = validate_reference(pre, chunk)
            except SchemaError as exc:
                with pytest.raises(SchemaError, match=re.escape(str(exc))):
                    pre._validate(chunk)
                continue
            pd.testing.assert_frame_equal(pre._validate(chunk), expected)
            compared += 1
    assert compared > 50


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_scores_as_the_reference(detector, path, tmp_path):
    scored_equal(detector, path, tmp_path, CHUNK_ROWS)


@pytest.mark.slow
def test_demo_and_wide_batches_score_as_the_reference(detector, fdr_detector, files, tmp_path):
    made = [p for p in files if p not in CORPUS]
    assert any(p.name == "repeated_ids.parquet" for p in made)
    for i, path in enumerate(made):
        runs = [(detector, 100), (fdr_detector, 64)][: 1 if "wide" in path.name else 2]
        for j, (det, chunk_rows) in enumerate(runs):
            scored_equal(det, path, tmp_path / f"{i}-{j}", chunk_rows)


def test_repeated_ids_across_chunks_are_quarantined_in_place(detector, files, tmp_path):
    """The case the spill files exist for, checked on its own: the later copies go."""
    path = next(p for p in files if p.name == "repeated_ids.parquet")
    summary = score_file(detector, path, tmp_path, chunk_rows=100)
    reasons = summary.quarantined["reason"]
    assert reasons.str.startswith("duplicate id").sum() == 4
    across = summary.quarantined.loc[~reasons.str.contains("'"), ID]  # no quoted repr
    assert sorted(across) == sorted(pd.read_parquet(path)[ID].iloc[[2, 10]])
    scored = pd.read_parquet(summary.output)
    assert not scored[ID].duplicated().any()
    assert len(scored) + len(summary.quarantined) == 1_500
    assert np.isfinite(scored["log_likelihood"]).all()
