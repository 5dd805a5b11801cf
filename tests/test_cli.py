"""Tests for the ``anomaly`` command line (typer app), run in-process with CliRunner.

Only what the CLI shows is checked (exit codes, printed text, files written), not where the
model store keeps its versions. Tests share one ANOMALY_HOME (creating a model store is the
slow part) and keep apart by giving their config a name of their own.
"""

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from anomaly.demo_data import CATEGORICAL, ID, NUMERIC, generate_normal, plant_anomalies
from anomaly.training import split_rows
from flows.cli import app

pytestmark = pytest.mark.usefixtures("prefect_server")  # the commands run Prefect flows

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {
    "batch_id",
    "rows_in",
    "rows_scored",
    "rows_quarantined",
    "rows_flagged",
    "model_version",
    "output",
}
runner = CliRunner()


@dataclass(frozen=True)
class Project:
    name: str
    root: Path
    config: Path
    home: Path
    inbox: Path
    train: pd.DataFrame
    batches: dict[str, pd.DataFrame]  # batch id -> rows written


def settings(name: str, train: str = "train.parquet", inbox: str = "inbox") -> dict:
    """The demo config, renamed, with a fast model kind and the given data paths."""
    s = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    s["name"] = name
    s["model"]["kind"] = "gaussian"
    s["data"] = {"train": train, "inbox": inbox}
    return s


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("anomaly-home")


@pytest.fixture
def project(tmp_path, monkeypatch, shared_home, request) -> Project:
    name = "m" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]  # short: no wrapping
    home = shared_home
    monkeypatch.setenv("ANOMALY_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    train = generate_normal(3_000, seed=1)
    train.to_parquet(tmp_path / "data" / "train.parquet", index=False)
    a, _ = plant_anomalies(generate_normal(400, seed=2), rate=0.05, seed=2)
    a.to_parquet(inbox / "batch_a.parquet", index=False)
    b, _ = plant_anomalies(generate_normal(300, seed=3), rate=0.05, seed=3)
    b["amount"] = b["amount"].astype(object)
    b.loc[7, "amount"] = "N/A"
    b.to_csv(inbox / "batch_b.csv", index=False)
    # files that are not (complete) batches
    a.head(5).to_parquet(inbox / ".batch_c.parquet", index=False)
    (inbox / "batch_d.parquet.part").write_bytes(b"partial")
    (inbox / "README.txt").write_text("not a batch")
    config = tmp_path / "conf" / "shop.yaml"
    config.parent.mkdir()
    # data paths relative to the config's folder
    config.write_text(yaml.safe_dump(settings(name, "../data/train.parquet", "../inbox")))
    return Project(name, tmp_path, config, home, inbox, train, {"batch_a": a, "batch_b": b})


def flat(text: str) -> str:
    """Rich wraps at the terminal width; compare text with whitespace collapsed."""
    return " ".join(text.split())


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def train_version(project: Project) -> str:
    """Run ``anomaly train``; return the version it reports."""
    result = invoke("train", "--config", project.config)
    assert result.exit_code == 0, result.output
    match = re.search(rf"{project.name} v(\S+) \(gaussian\)", flat(result.stdout))
    assert match, result.stdout
    return match[1]


def assert_clean_failure(result, *fragments: str, code: int | None = None) -> None:
    """Non-zero exit through typer.Exit: a message on stderr and no traceback."""
    assert result.exit_code != 0
    if code is not None:
        assert result.exit_code == code
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    message = flat(result.stderr)
    assert "error:" in message, message
    squashed = "".join(message.split())  # rich may break a long path anywhere
    for fragment in fragments:
        assert fragment in message or "".join(fragment.split()) in squashed, fragment


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ------------------------------------------------------------------- train
def test_train_prints_metrics_and_each_run_is_a_new_version(project):
    result = invoke("train", "--config", project.config)
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    for metric in [
        "rows_train",
        "rows_calibration",
        "rows_test",
        "rows_quarantined",
        "calibration_threshold",
        "train_log_likelihood",
        "heldout_log_likelihood",
        "heldout_fpr",
    ]:
        assert re.search(rf"│ {metric} │ -?[0-9.e+-]+ │", text), metric
    fit, cal, test = (len(i) for i in split_rows(len(project.train), 0.2, 0.1, 0))
    assert f"│ rows_train │ {fit} │" in text
    assert f"│ rows_calibration │ {cal} │" in text
    assert f"│ rows_test │ {test} │" in text
    first = re.search(rf"{project.name} v(\S+) \(gaussian\)", text)[1]

    second = train_version(project)
    assert second != first
    # scoring with a named version uses that version
    result = invoke("score", "-c", project.config, "--json", "--model-version", first)
    assert result.exit_code == 0, result.output
    assert {s["model_version"] for s in json_lines(result.stdout)} == {first}


# ------------------------------------------------------------------- score
def test_score_json_then_nothing_new(project):
    version = train_version(project)
    result = invoke("score", "-c", project.config, "--json")
    assert result.exit_code == 0, result.output
    summaries = json_lines(result.stdout)
    assert sorted(Path(s["source"]).stem for s in summaries) == sorted(project.batches)
    for s in summaries:
        assert s.keys() >= SUMMARY_KEYS
        assert s["status"] == "scored"
        assert s["model_version"] == version
        rows = project.batches[Path(s["source"]).stem]
        assert s["rows_in"] == s["rows_scored"] + s["rows_quarantined"] == len(rows)
        output = Path(s["output"])
        assert output.is_relative_to(project.home / "scored" / project.name)
        scored = pd.read_parquet(output)
        assert len(scored) == s["rows_scored"]
        assert int(scored["is_anomaly"].sum()) == s["rows_flagged"]
    by_id = {Path(s["source"]).stem: s for s in summaries}
    assert by_id["batch_b"]["rows_quarantined"] == 1
    assert by_id["batch_a"]["rows_quarantined"] == 0

    second = invoke("score", "-c", project.config, "--json")
    assert second.exit_code == 0
    assert json_lines(second.stdout) == []
    table = invoke("score", "-c", project.config)
    assert table.exit_code == 0
    assert "no new batches" in table.stderr

    # a new file is picked up, and only it (here as a table)
    new, _ = plant_anomalies(generate_normal(200, seed=4), 0.05, 4)
    new.to_parquet(project.inbox / "batch_e.parquet", index=False)
    third = invoke("score", "-c", project.config)
    assert third.exit_code == 0, third.output
    text = flat(third.stdout)
    assert re.search(r"│ batch_e\.parquet │ scored │ 200 │ 200 │ 0 │ \d+ │", text), text
    assert "batch_a" not in text

    # the inbox disappears: a clear error
    project.inbox.rename(project.root / "moved")
    assert_clean_failure(invoke("score", "-c", project.config), "does not exist", code=2)


def test_score_explicit_batches_one_rejected(project, tmp_path):
    train_version(project)
    broken = tmp_path / "broken.parquet"
    project.batches["batch_a"].drop(columns=["channel"]).to_parquet(broken, index=False)
    good = project.inbox / "batch_a.parquet"
    result = invoke("score", "-c", project.config, "--json", "--batch", broken, "--batch", good)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    summaries = {Path(s["source"]).stem: s for s in json_lines(result.stdout)}
    assert summaries["broken"]["status"] == "rejected"
    assert "'channel'" in summaries["broken"]["error"]
    assert summaries["broken"]["output"] is None
    assert summaries["batch_a"]["status"] == "scored"
    assert Path(summaries["batch_a"]["output"]).is_file()
    assert not list(Path(summaries["batch_a"]["output"]).parent.glob("broken*"))

    assert_clean_failure(
        invoke("score", "-c", project.config, "--model-version", "99"), "99", code=2
    )


# ------------------------------------------------------------------- sample
def test_sample_writes_records_with_the_feature_columns(project):
    train_version(project)
    for name in ("f.parquet", "f.csv"):
        result = invoke("sample", "-c", project.config, "-n", "50", "--out", name)
        assert result.exit_code == 0, result.output
        assert "wrote 50 samples" in flat(result.stderr)
        path = project.root / name  # relative to the working directory
        frame = pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)
        assert len(frame) == 50
        assert list(frame.columns) == [*NUMERIC, *CATEGORICAL]
        assert np.isfinite(frame[NUMERIC].to_numpy(np.float64)).all()
        for col in CATEGORICAL:
            assert set(frame[col]) <= set(project.train[col])

    for out, seed in [("a.parquet", "1"), ("b.parquet", "1"), ("c.parquet", "2")]:
        result = invoke("sample", "-c", project.config, "-n", "20", "--seed", seed, "--out", out)
        assert result.exit_code == 0, result.output
    a, b, c = (pd.read_parquet(project.root / f) for f in ("a.parquet", "b.parquet", "c.parquet"))
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize("command", ["train", "score", "sample"])
def test_missing_config(project, command):
    result = invoke(command, "-c", project.root / "nope.yaml")
    assert_clean_failure(result, "config file not found", "nope.yaml", code=2)


@pytest.mark.parametrize("command", ["train", "score", "sample"])
def test_invalid_config(project, command):
    bad = settings(project.name)
    bad["model"]["kind"] = "forest"
    bad["calibration"]["alpha"] = 2
    path = project.root / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = invoke(command, "-c", path)
    assert_clean_failure(
        result, "model.kind", "unknown model kind 'forest'", "calibration.alpha", code=2
    )


def test_invalid_model_parameter_fails_cleanly(project):
    """A model parameter outside its kind's table: one line naming it, exit code 2."""
    bad = settings(project.name, "../data/train.parquet", "../inbox")
    bad["model"]["params"] = {"shrinkage": 2}
    project.config.write_text(yaml.safe_dump(bad))
    result = invoke("train", "-c", project.config)
    message = "gaussian: shrinkage must be a number in [0, 1] or None, got 2"
    assert_clean_failure(result, message, code=2)


@pytest.mark.parametrize("command", ["score", "sample"])
def test_using_a_model_before_training(project, command):
    result = invoke(command, "-c", project.config)
    assert_clean_failure(result, f"'{project.name}'", "anomaly train", code=2)
    assert not (project.home / "scored" / project.name).exists()
    assert not (project.root / "samples.parquet").exists()


def test_train_help_says_what_the_default_costs_and_the_faster_one():
    text = flat(invoke("train", "--help").stdout)
    assert "by default auto: the consensus of gmm, kde, knn and flow" in text
    assert "{candidates: [kde, knn], rule: mean}" in text


class Lines(logging.Handler):
    """The messages logged to a logger (Prefect's logging setup replaces the root handlers,
    pytest's caplog among them, when a flow starts in-process)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_train_of_auto_shows_each_fit_and_what_it_chose(project):
    """The default kind fits several candidates, slowly: each fit is a line (without -v)."""
    s = yaml.safe_load(project.config.read_text())
    s["model"] = {"kind": "auto", "params": {"candidates": ["gaussian", "independent"]}}
    project.config.write_text(yaml.safe_dump(s))
    lines, logger = Lines(), logging.getLogger("anomaly")
    logger.addHandler(lines)
    try:
        result = invoke("train", "--config", project.config)
    finally:
        logger.removeHandler(lines)
    assert result.exit_code == 0, result.output
    for kind in ("auto", "gaussian", "independent"):
        assert any(m.startswith(f"fitting {kind} on ") for m in lines.messages), lines.messages
        assert any(re.fullmatch(rf"fitted {kind} in [0-9.]+ s", m) for m in lines.messages)
    assert "auto chose consensus of gaussian + independent" in flat(result.stdout)


def test_training_data_missing(project):
    (project.root / "data" / "train.parquet").unlink()
    result = invoke("train", "-c", project.config)
    assert_clean_failure(result, "no data files match", "train.parquet", code=2)


def test_training_data_missing_a_column(project):
    """Named as training data (was "batch is missing ..."), before the flow starts."""
    project.train.drop(columns=["amount"]).to_parquet(project.root / "data" / "train.parquet")
    result = invoke("train", "-c", project.config)
    assert_clean_failure(
        result, "training data", "train.parquet", "missing required column(s) 'amount'", code=2
    )
    assert "Beginning flow run" not in result.output  # no flow was started


@pytest.mark.parametrize(
    ("paths", "fragment"),
    [
        (["nope.parquet"], "nope.parquet: no such file"),
        (["inbox"], "is a directory"),
        (["inbox/batch_a.parquet", "elsewhere/batch_a.parquet"], "the same file name"),
    ],
)
def test_score_batch_paths_are_checked_before_anything(project, paths, fragment):
    (project.root / "elsewhere").mkdir()
    (project.root / "elsewhere" / "batch_a.parquet").write_bytes(b"")
    args = [arg for path in paths for arg in ("--batch", project.root / path)]
    result = invoke("score", "-c", project.config, *args)  # no model yet: not even looked up
    assert_clean_failure(result, fragment, code=2)


def test_run_names_a_known_deployment(project):
    result = invoke("run", "nightly", "-c", project.config)
    assert_clean_failure(result, "no deployment 'nightly'", code=2)


def test_sample_count_must_be_positive(project):
    result = invoke("sample", "-c", project.config, "-n", "0")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "-n" in flat(result.stderr)


def test_demo_unknown_kind_fails_cleanly(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = invoke("demo", "--home", tmp_path / "h", "--kind", "forest")
    assert_clean_failure(result, "forest")


# ------------------------------------------------------------------- demo
@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch):
    elsewhere = tmp_path / "env-home"
    monkeypatch.setenv("ANOMALY_HOME", str(elsewhere))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "demo-home"
    result = invoke("demo", "--home", home, "--kind", "gaussian")
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    match = re.search(r"precision ([0-9.]+), recall ([0-9.]+)", text)
    assert match, text
    precision, recall = float(match[1]), float(match[2])
    # far better than flagging at random (2 % of rows are planted anomalies)
    assert 0.2 < precision <= 1
    assert 0.2 < recall <= 1

    name = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["name"]
    batches = sorted((home / "demo" / "inbox" / "processed").glob("*.parquet"))
    assert len(batches) == 3  # each batch stored, then moved out of the inbox
    assert not list((home / "demo" / "inbox").glob("*.parquet"))
    scored_dir = home / "scored" / name
    for batch in batches:
        raw = pd.read_parquet(batch)
        scored = pd.read_parquet(scored_dir / f"{batch.name}.scored.parquet")
        assert scored[ID].tolist() == raw[ID].tolist()
        assert scored["is_anomaly"].any()
