"""Tests for anomaly.scoring: batch files scored in chunks, flags, quarantine, rejection, ids."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from anomaly.calibration import benjamini_hochberg
from anomaly.config import Config, ConfigError, load_config
from anomaly.demo_data import CATEGORICAL, ID, NUMERIC, TIMESTAMP, generate_normal, plant_anomalies
from anomaly.detector import Detector
from anomaly.scoring import BatchSummary, batch_id_for, score_file
from anomaly.training import train

REPO = Path(__file__).resolve().parents[1]
SCORES = ["log_likelihood", "p_value", "is_anomaly", "reason"]
#: by default the scored output copies the feature columns
OUTPUT_COLUMNS = [ID, TIMESTAMP, *NUMERIC, *CATEGORICAL, *SCORES]


def make_config(folder: Path, **overrides: dict) -> Config:
    """The demo config with a fast model kind and the given sections overridden."""
    settings = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    settings["model"]["kind"] = "gaussian"
    settings["data"].pop("evaluation")  # these tests bring their own data
    for section, values in overrides.items():
        settings[section] = {**settings.get(section, {}), **values}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return load_config(path, home=folder / "home")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Config:
    return make_config(tmp_path_factory.mktemp("fpr"))


@pytest.fixture(scope="module")
def detector(config) -> Detector:
    return train(config, generate_normal(6_000, seed=1)).detector


@pytest.fixture(scope="module")
def fdr_detector(tmp_path_factory) -> Detector:
    config = make_config(tmp_path_factory.mktemp("fdr"), calibration={"rule": "fdr", "alpha": 0.1})
    return train(config, generate_normal(6_000, seed=1)).detector


@pytest.fixture(scope="module")
def batch() -> pd.DataFrame:
    frame, _ = plant_anomalies(generate_normal(1_500, seed=7), rate=0.05, seed=7)
    return frame


def write_batch(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def assert_no_temporary_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []


# ------------------------------------------------------------------- scoring a file
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_score_file_matches_scoring_the_whole_frame(detector, batch, tmp_path, suffix):
    path = write_batch(batch, tmp_path / "inbox" / f"batch_001{suffix}")
    out = tmp_path / "scored"
    summary = score_file(detector, path, out, chunk_rows=400, model_version="7")

    assert isinstance(summary, BatchSummary)
    assert summary.status == "scored"
    assert summary.error is None
    assert summary.batch_id == f"batch_001{suffix}"
    assert summary.source == str(path)
    assert summary.model_version == "7"
    assert summary.rows_in == summary.rows_scored + summary.rows_quarantined == len(batch)

    output = Path(summary.output)
    assert output == out / f"batch_001{suffix}.scored.parquet"
    scored = pd.read_parquet(output)
    assert list(scored.columns) == OUTPUT_COLUMNS
    assert len(scored) == summary.rows_scored
    assert not scored[ID].duplicated().any()

    whole = detector.score(batch).scored.reset_index(drop=True)
    assert scored[ID].tolist() == whole[ID].tolist()
    np.testing.assert_array_equal(scored["is_anomaly"], whole["is_anomaly"])
    np.testing.assert_allclose(scored["log_likelihood"], whole["log_likelihood"], rtol=1e-12)
    np.testing.assert_array_equal(scored["p_value"], whole["p_value"])
    assert (scored[TIMESTAMP] == whole[TIMESTAMP]).all()
    assert scored["reason"].tolist() == whole["reason"].tolist()

    assert summary.rows_flagged == int(scored["is_anomaly"].sum()) > 0
    assert summary.flag_rate == pytest.approx(summary.rows_flagged / summary.rows_scored)
    assert summary.expected_rate == detector.calibrator.alpha
    assert summary.mean_log_likelihood == pytest.approx(scored["log_likelihood"].mean())
    assert summary.quarantine_output is None
    assert_no_temporary_files(out)


def test_chunked_scoring_equals_unchunked(detector, batch, tmp_path):
    path = write_batch(batch, tmp_path / "batch.parquet")
    small = score_file(detector, path, tmp_path / "small", chunk_rows=137)
    large = score_file(detector, path, tmp_path / "large", chunk_rows=1_000_000)
    pd.testing.assert_frame_equal(pd.read_parquet(small.output), pd.read_parquet(large.output))
    differ = {"output", "explain_seconds"}  # timings differ run to run
    assert {k: v for k, v in small.to_dict().items() if k not in differ} == pytest.approx(
        {k: v for k, v in large.to_dict().items() if k not in differ}
    )


def test_fdr_rule_is_applied_to_the_whole_batch(fdr_detector, batch, tmp_path):
    path = write_batch(batch, tmp_path / "batch.parquet")
    summary = score_file(fdr_detector, path, tmp_path / "out", chunk_rows=100)
    scored = pd.read_parquet(summary.output)
    p = scored["p_value"].to_numpy()
    has_reason = (scored["reason"] != "").to_numpy()
    whole_batch = benjamini_hochberg(p, fdr_detector.calibrator.alpha) | has_reason
    np.testing.assert_array_equal(scored["is_anomaly"], whole_batch)
    np.testing.assert_array_equal(
        scored["is_anomaly"], fdr_detector.score(batch).scored["is_anomaly"]
    )
    # the test can tell: BH run chunk by chunk would flag differently here
    per_chunk = np.concatenate(
        [
            benjamini_hochberg(p[i : i + 100], fdr_detector.calibrator.alpha)
            for i in range(0, len(p), 100)
        ]
    )
    assert (per_chunk | has_reason != whole_batch).any()
    assert summary.rows_flagged == int(whole_batch.sum())


def test_rows_with_bad_values_are_quarantined_with_reasons(detector, batch, tmp_path):
    frame = batch.head(300).copy()
    frame["amount"] = frame["amount"].astype(object)
    frame.loc[3, "amount"] = "N/A"
    frame.loc[5, "distance_km"] = math.inf
    frame.loc[8, "hour"] = np.nan
    frame.loc[9, "merchant_category"] = None
    frame.loc[10, ID] = frame.loc[2, ID]
    frame.loc[12, TIMESTAMP] = None
    path = tmp_path / "messy.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "out"
    summary = score_file(detector, path, out, chunk_rows=64)

    assert summary.status == "scored"
    assert summary.rows_quarantined == 6
    assert summary.rows_in == len(frame) == summary.rows_scored + summary.rows_quarantined
    quarantine = pd.read_parquet(summary.quarantine_output)
    assert Path(summary.quarantine_output) == out / "messy.csv.quarantine.parquet"
    assert len(quarantine) == summary.rows_quarantined
    reasons = dict(zip(quarantine[ID], quarantine["reason"], strict=True))
    ids = frame[ID]
    assert reasons[ids[3]] == "non-numeric value in amount: 'N/A'"
    assert reasons[ids[5]] == "infinite value in distance_km"
    assert reasons[ids[8]] == "missing value in hour"
    assert reasons[ids[9]] == "missing value in merchant_category"
    assert reasons[ids[12]] == f"missing or unparseable timestamp in {TIMESTAMP}"
    duplicate = quarantine.loc[quarantine["reason"].str.startswith("duplicate id"), ID].tolist()
    assert duplicate == [ids[2]]
    # the raw values are kept (as text) for inspection
    assert quarantine.loc[quarantine[ID] == ids[3], "amount"].item() == "N/A"

    scored = pd.read_parquet(summary.output)
    assert len(scored) == summary.rows_scored
    assert set(scored[ID]).isdisjoint({ids[i] for i in (3, 5, 8, 9, 12)})
    assert scored[ID].tolist().count(ids[2]) == 1
    assert_no_temporary_files(out)


def test_duplicate_ids_across_chunks_are_quarantined(detector, batch, tmp_path):
    frame = batch.head(200).copy()
    frame.loc[150, ID] = frame.loc[10, ID]
    path = write_batch(frame, tmp_path / "dups.parquet")
    chunked = score_file(detector, path, tmp_path / "chunked", chunk_rows=100)
    whole = detector.score(frame)
    assert len(whole.quarantined) == 1
    assert chunked.rows_quarantined == 1
    assert not pd.read_parquet(chunked.output)[ID].duplicated().any()


def test_empty_parquet_batch(detector, tmp_path):
    path = write_batch(generate_normal(0, seed=1), tmp_path / "empty.parquet")
    summary = score_file(detector, path, tmp_path / "out")
    assert (summary.status, summary.rows_in) == ("scored", 0)


def test_empty_csv_batch(detector, tmp_path):
    path = write_batch(generate_normal(0, seed=1), tmp_path / "empty.csv")
    summary = score_file(detector, path, tmp_path / "out")
    assert summary.status == "scored"
    assert summary.rows_in == summary.rows_scored == summary.rows_flagged == 0
    assert summary.mean_log_likelihood is None
    assert not summary.shift_alarm
    assert_no_temporary_files(tmp_path / "out")


def test_training_without_test_rows(tmp_path):
    config = make_config(tmp_path, split={"calibration": 0.3, "test": 0.0})
    result = train(config, generate_normal(500, seed=1))
    assert result.metrics["rows_test"] == 0


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_batch_with_missing_column_is_rejected(detector, batch, tmp_path, suffix):
    path = write_batch(batch.drop(columns=["distance_km"]), tmp_path / f"broken{suffix}")
    out = tmp_path / "out"
    summary = score_file(detector, path, out, chunk_rows=500)
    assert summary.status == "rejected"
    assert "'distance_km'" in summary.error
    assert (summary.rows_in, summary.rows_scored, summary.rows_flagged) == (0, 0, 0)
    assert summary.output is None
    assert list(out.iterdir()) == []  # no output, no quarantine file, no temporary file
    assert_no_temporary_files(out)


def test_renamed_column_is_rejected_with_a_hint(detector, batch, tmp_path):
    path = write_batch(batch.rename(columns={"amount": "Amount"}), tmp_path / "renamed.parquet")
    summary = score_file(detector, path, tmp_path / "out")
    assert summary.status == "rejected"
    assert re.search(r"'amount' \(found 'Amount'\?\)", summary.error)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("garbage.parquet", b"not a parquet file at all", "cannot read garbage.parquet"),
        ("notes.txt", b"id,amount\n1,2\n", "unsupported file type '.txt'"),
        ("blank.csv", b"", "blank.csv is empty"),
    ],
)
def test_unreadable_files_are_rejected(detector, tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out"
    summary = score_file(detector, path, out)
    assert summary.status == "rejected"
    assert expected in summary.error
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------- passthrough columns
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_scored_output_copies_the_feature_columns_by_default(detector, batch, tmp_path, suffix):
    path = write_batch(batch, tmp_path / f"b{suffix}")
    summary = score_file(detector, path, tmp_path / "out", chunk_rows=400)
    scored = pd.read_parquet(summary.output).set_index(ID)
    raw = batch.set_index(ID).loc[scored.index]
    for col in NUMERIC:  # numbers as float64, the input's values
        assert scored[col].dtype == np.float64
        np.testing.assert_allclose(scored[col], raw[col].astype(float), rtol=1e-15)
    for col in CATEGORICAL:
        assert scored[col].tolist() == raw[col].astype(str).tolist()


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_passthrough_all_and_a_list(detector, batch, tmp_path, suffix):
    extra = batch.assign(note=[f"n{i}" if i % 3 else None for i in range(len(batch))], shop=7)
    path = write_batch(extra, tmp_path / f"b{suffix}")
    every = score_file(detector, path, tmp_path / "all", chunk_rows=400, passthrough="all")
    scored = pd.read_parquet(every.output)
    inputs = [c for c in extra.columns if c not in (ID, TIMESTAMP)]  # in the file's order
    assert list(scored.columns) == [ID, TIMESTAMP, *inputs, *SCORES]
    assert inputs[-2:] == ["note", "shop"]
    by_id = extra.set_index(ID).loc[scored[ID]]
    assert scored["note"].tolist() == [None if v is None else v for v in by_id["note"]]
    assert set(scored["shop"]) == {"7"}  # columns that are not numeric features: as text
    some = score_file(detector, path, tmp_path / "some", passthrough=["note", "amount"])
    assert list(pd.read_parquet(some.output).columns) == [ID, TIMESTAMP, "note", "amount", *SCORES]
    none = score_file(detector, path, tmp_path / "none", passthrough=[])
    assert list(pd.read_parquet(none.output).columns) == [ID, TIMESTAMP, *SCORES]


def test_passthrough_of_a_column_the_batch_lacks_rejects_it(detector, batch, tmp_path):
    path = write_batch(batch, tmp_path / "b.parquet")
    out = tmp_path / "out"
    summary = score_file(detector, path, out, passthrough=["amount", "merchant_name"])
    assert summary.status == "rejected"
    assert "scoring.passthrough names column(s) ['merchant_name']" in summary.error
    assert list(out.iterdir()) == []


def test_passthrough_config_is_validated(tmp_path):
    assert make_config(tmp_path / "a", scoring={"passthrough": "all"}).scoring.passthrough == "all"
    with pytest.raises(ConfigError, match=r"scoring.passthrough"):
        make_config(tmp_path / "b", scoring={"passthrough": "everything"})
    with pytest.raises(ConfigError, match=r"\['p_value'\] name\(s\) the scored output's own"):
        make_config(tmp_path / "c", scoring={"passthrough": ["amount", "p_value"]})


# ------------------------------------------------------------------- batch ids
@pytest.mark.parametrize(
    "path",
    [
        Path("inbox/../../etc/passwd.csv"),
        Path("inbox/my batch (1).parquet"),
        Path("inbox/a;rm -rf ~ && echo $(id)`x`|cat>y.csv"),
        Path("inbox/..hidden.parquet"),
        Path("inbox/..parquet"),
        Path(".."),
        Path("inbox/données été.csv"),
        Path("inbox/*?.csv"),
    ],
)
def test_batch_id_is_safe(tmp_path, path):
    batch_id = batch_id_for(path)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", batch_id)
    assert not batch_id.startswith(".")
    assert ".." not in batch_id.split(".")  # no path-like parts survive
    target = (tmp_path / f"{batch_id}.parquet").resolve()
    assert target.parent == tmp_path.resolve()


def test_batch_id_keeps_clean_names():
    assert batch_id_for(Path("/data/inbox/batch_001.parquet")) == "batch_001.parquet"
    assert batch_id_for(Path("2024-03-04.v2.csv")) == "2024-03-04.v2.csv"
    assert batch_id_for(Path("../x/passwd.csv")) == "passwd.csv"
    assert re.fullmatch(r"my_batch_1\.csv-[0-9a-f]{8}", batch_id_for(Path("my batch;1.csv")))


def test_batch_ids_do_not_collide():
    names = ["x.csv", "x.parquet", "a b.csv", "a_b.csv", "a;b.csv", "-rf.csv", "rf.csv"]
    ids = [batch_id_for(Path(n)) for n in names]
    assert len(set(ids)) == len(ids)
    assert not any(i.startswith("-") for i in ids)


@settings(max_examples=200, deadline=None)
@given(name=st.text(st.characters(exclude_characters="/\x00"), min_size=1, max_size=40))
def test_batch_id_property(name):
    assume(name not in {".", ".."})  # not file names: pathlib drops "." from a path
    batch_id = batch_id_for(Path("inbox") / name)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", batch_id)
    assert batch_id[0] not in "._"
    assert batch_id == batch_id_for(Path("elsewhere") / name)


# ------------------------------------------------------------------- calibration in the pipeline
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Detector, int]:
    """A detector with a large calibration set, so its own scatter is small."""
    config = make_config(tmp_path_factory.mktemp("cal"), split={"calibration": 0.5, "test": 0.05})
    result = train(config, generate_normal(30_000, seed=21))
    return result.detector, int(result.metrics["rows_calibration"])


def test_flag_rate_on_fresh_normal_rows_is_near_alpha(calibrated, tmp_path):
    detector, n_cal = calibrated
    fresh = generate_normal(20_000, seed=2024)
    path = write_batch(fresh, tmp_path / "fresh.parquet")
    summary = score_file(detector, path, tmp_path / "out", chunk_rows=5_000)
    n = summary.rows_scored
    assert n == len(fresh)
    alpha = detector.calibrator.alpha
    # binomial sd of the batch's flag rate, widened by the calibration set's own binomial scatter
    sd = math.sqrt(alpha * (1 - alpha) * (1 / n + 1 / n_cal))
    assert abs(summary.flag_rate - alpha) <= 4 * sd, (summary.flag_rate, alpha, sd)
    assert not summary.shift_alarm
    assert summary.flag_rate == pytest.approx(summary.rows_flagged / n)


def test_flag_rate_on_planted_batch_raises_shift_alarm(detector, tmp_path):
    frame, _ = plant_anomalies(generate_normal(3_000, seed=8), rate=0.1, seed=8)
    summary = score_file(detector, write_batch(frame, tmp_path / "b.parquet"), tmp_path / "out")
    assert summary.flag_rate > detector.calibrator.alpha
    assert summary.shift_alarm
    assert summary.shift_p_value < detector.calibrator.shift_pvalue


def test_output_numeric_columns_are_finite(detector, tmp_path):
    frame = generate_normal(500, seed=3)
    frame.loc[0, NUMERIC] = 1e308
    summary = score_file(detector, write_batch(frame, tmp_path / "huge.parquet"), tmp_path / "o")
    scored = pd.read_parquet(summary.output)
    assert summary.rows_scored == len(frame)
    assert np.isfinite(scored["log_likelihood"]).all()
    assert scored.loc[scored[ID] == frame.loc[0, ID], "is_anomaly"].item()
    assert ((scored["p_value"] > 0) & (scored["p_value"] <= 1)).all()
