"""The bad-input corpus (``tests/data/bad``, written by ``tests/data/make_bad.py``) through the
real pipeline with a real registered detector: every case ends as its ``cases.json`` entry says,
rows in = rows scored + rows quarantined, a rejected batch leaves nothing in the store or the
outputs and is moved aside with its reason, and nothing is written outside the inbox, the
outputs and the state folder (file names with ``..``, shell characters, newlines, bytes that are
not UTF-8)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from anomaly import registry
from anomaly.config import Config, load_config
from anomaly.demo_data import generate_normal
from anomaly.detector import Detector
from anomaly.pipeline import process_batch, scored_dir, train_and_store
from anomaly.scoring import batch_id_for, output_paths
from anomaly.store import Batch, batch_counts, store_engine

REPO = Path(__file__).resolve().parents[1]
BAD = REPO / "tests" / "data" / "bad"
CASES = json.loads((BAD / "cases.json").read_text())


def _make_bad():
    spec = importlib.util.spec_from_file_location("make_bad", BAD.parent / "make_bad.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_bad = _make_bad()


@dataclass
class Project:
    root: Path
    config: Config
    detector: Detector
    version: str
    engine: Engine
    wide: Path  # folder of the cases made at test time


def write_config(root: Path, inbox: Path, **extra: object) -> Path:
    """The demo config with a fast model kind, small chunks and ``inbox``."""
    settings = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    settings["name"] = "bad-input"
    settings["model"]["kind"] = "gaussian"
    settings["data"] = {"train": str(root / "train.parquet"), "inbox": str(inbox)}
    settings["scoring"] = {"chunk_rows": make_bad.CHUNK_ROWS}
    settings.update(extra)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    root = tmp_path_factory.mktemp("bad-input")
    generate_normal(2000, seed=0).to_parquet(root / "train.parquet")
    config = load_config(write_config(root, root / "inbox"), home=root / "home")
    trained = train_and_store(config)
    detector, version = registry.load_detector(config)
    assert version == trained.version
    make_bad.write_wide(root)
    return Project(root, config, detector, version, store_engine(config), root)


def test_corpus_is_large_and_current(tmp_path):
    assert len(CASES) >= 40
    fresh = _make_bad().write_corpus(tmp_path)
    assert fresh == CASES, "tests/data/bad is stale: run python tests/data/make_bad.py"
    committed = {c["file"] for c in CASES if not c.get("made_at_test_time")}
    assert committed <= {p.name for p in BAD.iterdir()}
    for case in CASES:  # Parquet bytes vary with the pyarrow version; CSV text does not
        if case["file"].endswith(".csv") and not case.get("made_at_test_time"):
            assert (tmp_path / case["file"]).read_bytes() == (BAD / case["file"]).read_bytes()


def deliver(case: dict, project: Project, inbox: Path, outside: Path) -> Path:
    """Put the case's file into ``inbox`` under its delivery name."""
    source = (project.wide if case.get("made_at_test_time") else BAD) / case["file"]
    target = inbox / case.get("deliver_as", case["file"])
    if case.get("symlink"):
        outside.mkdir(exist_ok=True)
        secret = outside / "secret.csv"
        secret.write_bytes(source.read_bytes())
        os.symlink(secret, target)
    else:
        target.write_bytes(source.read_bytes())
    return target


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def count_containing(reasons: pd.Series, text: str) -> int:
    return int(reasons.astype(str).str.contains(text, regex=False).sum())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input_case(case, project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a shell, if anything reached one, would write here
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    config = project.config.model_copy(
        update={"data": project.config.data.model_copy(update={"inbox": str(inbox)})}
    )
    path = deliver(case, project, inbox, outside)
    batch_id = batch_id_for(path)
    out_dir = scored_dir(config)
    before_home, before_here = files_under(config.home), files_under(tmp_path)

    summary = process_batch(config, project.detector, project.version, path, project.engine)

    assert summary is not None
    assert summary.batch_id == batch_id
    assert summary.status == case["outcome"], summary.error
    output, quarantine_output = output_paths(out_dir, batch_id)
    flagged_stored, quarantined_stored = batch_counts(project.engine, batch_id)
    with Session(project.engine) as session:
        stored = session.scalars(select(Batch).where(Batch.batch_id == batch_id)).one()
    assert stored.status == case["outcome"]
    assert stored.source.isprintable()
    if case["outcome"] == "rejected":
        assert re.search(case["error"], summary.error), summary.error
        assert summary.error.isprintable()  # one line, valid text
        assert "Traceback" not in summary.error
        assert (flagged_stored, quarantined_stored) == (0, 0)
        assert not output.exists()
        assert not quarantine_output.exists()
        moved = inbox / "rejected" / path.name
        assert moved.is_file() or moved.is_symlink()
        reason = (inbox / "rejected" / f"{batch_id}.reason.txt").read_text()
        assert reason == summary.error + "\n"
    else:
        assert summary.error is None
        assert summary.rows_in == case["rows_in"]
        assert summary.rows_in == summary.rows_scored + summary.rows_quarantined
        scored = pd.read_parquet(output)
        assert len(scored) == summary.rows_scored
        assert not scored[config.features.id].duplicated().any()
        assert np.isfinite(scored["log_likelihood"]).all()
        assert int(scored["is_anomaly"].sum()) == summary.rows_flagged == flagged_stored
        assert quarantined_stored == summary.rows_quarantined
        if summary.rows_quarantined:
            quarantined = pd.read_parquet(quarantine_output)
            assert len(quarantined) == summary.rows_quarantined
            assert (quarantined["reason"] != "").all()
        else:
            assert not quarantine_output.exists()
            quarantined = pd.DataFrame({"reason": []})
        expected = sum(case["quarantined"].values()) if case["quarantined"] else 0
        assert summary.rows_quarantined == expected or len(case["quarantined"]) > 1
        for text, n in case["quarantined"].items():
            assert count_containing(quarantined["reason"], text) == n, text
        reasons = scored.loc[scored["is_anomaly"], "reason"]
        for text, n in case["flagged"].items():
            assert count_containing(reasons, text) == n, text
        assert (inbox / "processed" / path.name).is_file()

    # the batch left the inbox; nothing claimed is left behind
    assert not path.exists()
    assert not path.is_symlink()
    assert not [p for p in (inbox / ".claimed").rglob("*") if not p.is_dir()]
    # nothing written outside the inbox, this batch's outputs and the state folder's stores
    new_here = files_under(tmp_path) - before_here
    assert all(inbox in p.parents for p in new_here), new_here
    allowed = {output, quarantine_output}
    for new in files_under(config.home) - before_home:
        assert new in allowed or new.name.startswith("review.db") or "mlflow" in new.parts, new
    assert not any(Path(p).name.startswith(("pwned", "y")) for p in os.listdir(tmp_path))
    if case.get("symlink"):
        assert (outside / "secret.csv").is_file()  # the link target is neither read nor moved


@pytest.mark.slow
def test_corpus_through_the_cli_prints_no_traceback(project, tmp_path):
    """All cases in one inbox, scored by ``anomaly score`` (the score flow): exit code 1 (some
    batches were rejected), no traceback, every batch moved to processed/ or rejected/ — except
    the names starting with a dot, which the inbox scan skips as hidden."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for case in CASES:
        deliver(case, project, inbox, tmp_path / "outside")
    config_path = write_config(project.root, inbox, home=str(project.config.home))
    env = {**os.environ, "ANOMALY_HOME": str(project.config.home), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "score", "--config", str(config_path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-3000:]
    assert done.returncode == 1, output[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    # when the per-case tests ran, they stored a link.csv pointing elsewhere: this link is then
    # a batch of its own (link@<hash>.csv); every other file has the same content as there
    outcomes = {
        re.sub(r"@[0-9a-f]{12}\.csv$", ".csv", s["batch_id"]): s["status"] for s in summaries
    }
    renamed = [s["batch_id"] for s in summaries if "@" in s["batch_id"]]
    assert all(re.fullmatch(r"link@[0-9a-f]{12}\.csv", r) for r in renamed), renamed
    names = {c.get("deliver_as", c["file"]): c["outcome"] for c in CASES}
    hidden = {name for name in names if name.startswith(".")}  # skipped, like writes in progress
    assert len(hidden) == 3
    assert hidden <= {p.name for p in inbox.iterdir()}
    expected = {batch_id_for(Path(n)): o for n, o in names.items() if n not in hidden}
    assert outcomes == expected
    rejected = [p for p in (inbox / "rejected").iterdir() if not p.name.endswith(".reason.txt")]
    assert len(rejected) == sum(o == "rejected" for o in expected.values())
    processed = list((inbox / "processed").iterdir())
    assert len(processed) == sum(o == "scored" for o in expected.values())
    engine = store_engine(project.config)
    for s in summaries:
        if s["status"] == "rejected":
            assert batch_counts(engine, s["batch_id"]) == (0, 0)
        else:
            assert s["rows_in"] == s["rows_scored"] + s["rows_quarantined"]
