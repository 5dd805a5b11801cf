"""The commands as the README tells a user to run them: real ``anomaly`` subprocesses on one
ANOMALY_HOME and no Prefect fixture. Each finds the local Prefect server ``anomaly serve``
runs, or starts a temporary one of its own; nothing a command starts may outlive it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomaly.config import MODEL_KINDS
from anomaly.demo_data import generate_normal, plant_anomalies
from anomaly.processes import alive

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("anomaly")
ANOMALY = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "flows.cli"]


@dataclass(frozen=True)
class Project:
    home: Path
    config: Path
    inbox: Path
    env: dict[str, str]


def anomaly(project: Project, *args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ANOMALY, *map(str, args)],
        env=project.env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def start(project: Project, *args: object, log: Path) -> subprocess.Popen:
    """``anomaly ARGS`` in the background; stdout to ``log``.out, stderr to ``log``.err."""
    return subprocess.Popen(
        [*ANOMALY, *map(str, args)],
        env=project.env,
        stdout=log.with_suffix(".out").open("w"),
        stderr=log.with_suffix(".err").open("w"),
    )


def wait_until_serving(serve: subprocess.Popen, err: Path, deadline: float) -> None:
    """Wait for ``serve``'s "serving" line in ``err``; it must not exit or pass ``deadline``."""
    while "serving" not in err.read_text():
        assert serve.poll() is None, err.read_text()
        assert time.monotonic() < deadline, err.read_text()
        time.sleep(0.5)


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (children, their children, ...)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def survivors(pids: set[int], within: float = 10.0) -> set[int]:
    """The ``pids`` still alive after waiting up to ``within`` seconds for them to end."""
    deadline = time.monotonic() + within
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def summaries(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def drop(frame: pd.DataFrame, inbox: Path, name: str) -> None:
    """Write a batch the way a producer should: a hidden file, then a rename."""
    partial = inbox / f".{name}.part"
    frame.to_parquet(partial, index=False)
    partial.rename(inbox / name)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """A trained model on a fresh ANOMALY_HOME, with a score schedule of every minute."""
    root = tmp_path_factory.mktemp("serve")
    home, inbox = root / "home", root / "inbox"
    inbox.mkdir()
    generate_normal(2_000, seed=1).to_parquet(root / "train.parquet", index=False)
    settings = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    settings.update(
        name="served",
        home=str(home),
        model={"kind": "gaussian"},
        data={"train": str(root / "train.parquet"), "inbox": str(inbox)},
        schedule={"score": "* * * * *", "train": None},
    )
    config = root / "served.yaml"
    config.write_text(yaml.safe_dump(settings))
    drop_keys = ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI", "ANOMALY_HOME")
    env = {k: v for k, v in os.environ.items() if k not in drop_keys}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    project = Project(home, config, inbox, env)
    trained = anomaly(project, "train", "-c", config)
    assert trained.returncode == 0, trained.stderr
    return project


def batch(rows: int, seed: int) -> pd.DataFrame:
    frame, _ = plant_anomalies(generate_normal(rows, seed=seed), rate=0.02, seed=seed)
    return frame


def test_config_kinds_match_the_models():
    from anomaly.models import KINDS

    assert set(MODEL_KINDS) == set(KINDS)


def test_user_errors_are_one_line_without_prefect(project, tmp_path):
    """Each mistake: exit 2, one line on stderr, no traceback, nothing retried."""
    typo = tmp_path / "typo.yaml"
    settings = yaml.safe_load(project.config.read_text())
    settings["scoring"] = {"chunk_row": 10}
    typo.write_text(yaml.safe_dump(settings))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    batch(10, 1).to_parquet(tmp_path / "a" / "x.parquet")
    batch(10, 2).to_parquet(tmp_path / "b" / "x.parquet")
    score = ("score", "-c", project.config, "--batch")
    cases = {
        "config": (("score", "-c", typo), "chunk_row"),
        "missing batch": ((*score, tmp_path / "nope.parquet"), "no such file"),
        "directory batch": ((*score, tmp_path / "a"), "is a directory"),
        "same name": ((*score, tmp_path / "a/x.parquet", "--batch", tmp_path / "b/x.parquet"),
                      "same file name"),
    }  # fmt: skip
    for what, (args, fragment) in cases.items():
        result = anomaly(project, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (what, result.stderr)
        assert len(lines) == 1, (what, result.stderr)
        assert fragment in lines[0], (what, lines)
        assert "Traceback" not in result.stderr, what
    verbose = anomaly(project, "-v", "score", "-c", typo)
    assert verbose.returncode == 2
    assert "Traceback" in verbose.stderr


def test_corrupt_weights_fail_once_in_one_line(project, tmp_path):
    (weights,) = project.home.glob("mlflow/artifacts/**/detector/model/weights.npz")
    original = weights.read_bytes()
    batch(10, 3).to_parquet(tmp_path / "ok.parquet")
    try:
        weights.write_bytes(original[: len(original) // 2])
        result = anomaly(project, "score", "-c", project.config, "--batch", tmp_path / "ok.parquet")
    finally:
        weights.write_bytes(original)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    # the registry's integrity check names the file before anything reads it
    assert "weights.npz" in lines[0]
    assert "SHA-256" in lines[0]


def test_commands_without_a_flow_load_no_prefect(project):
    """``history`` imports neither Prefect, torch nor scikit-learn (and so starts no server)."""
    code = (
        "import sys\nfrom flows.cli import app\n"
        "try:\n    app(['history', '-c', sys.argv[1]])\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'sklearn', 'torch'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(project.config)],
        env=project.env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_kill_9_mid_batch_leaves_nothing_and_the_rerun_stores_a_clean_run(project, tmp_path):
    frame = batch(200_000, 4)
    drop(frame, project.inbox, "killed.parquet")
    process = start(project, "score", "-c", project.config, "--json", log=tmp_path / "killed")
    children: set[int] = set()
    claimed: list[Path] = []
    while process.poll() is None and not claimed:  # scoring has begun once the batch is claimed
        children |= descendants(process.pid)
        claimed = list(project.inbox.glob(".claimed/*/killed.parquet"))
        time.sleep(0.02)
    assert claimed, (tmp_path / "killed.err").read_text()
    children |= descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert children, "the command started no Prefect server"
    assert survivors(children) == set()

    rerun = anomaly(project, "score", "-c", project.config, "--json")
    assert rerun.returncode == 0, rerun.stderr
    (again,) = summaries(rerun.stdout)
    assert (project.inbox / "processed" / "killed.parquet").is_file()
    assert not list(project.inbox.glob(".claimed/*/*"))
    drop(frame, project.inbox, "clean.parquet")
    clean = anomaly(project, "score", "-c", project.config, "--json")
    assert clean.returncode == 0, clean.stderr
    (reference,) = summaries(clean.stdout)
    keys = ("status", "rows_in", "rows_scored", "rows_quarantined", "rows_flagged", "flag_rate")
    assert {k: again[k] for k in keys} == {k: reference[k] for k in keys}
    assert again["rows_in"] == len(frame)
    scored = [pd.read_parquet(s["output"]) for s in (again, reference)]
    pd.testing.assert_series_equal(scored[0]["log_likelihood"], scored[1]["log_likelihood"])


@pytest.mark.slow
@pytest.mark.parametrize("offset", [0, 1, 6])
def test_two_commands_at_any_offset_both_succeed(project, tmp_path, offset):
    names = [f"c{offset}_{i}.parquet" for i in range(3)]
    for i, name in enumerate(names):
        drop(batch(2_000, 10 + i), project.inbox, name)
    first = start(project, "score", "-c", project.config, "--json", log=tmp_path / "first")
    time.sleep(offset)
    second = start(project, "score", "-c", project.config, "--json", log=tmp_path / "second")
    assert first.wait(timeout=600) == 0, (tmp_path / "first.err").read_text()
    assert second.wait(timeout=600) == 0, (tmp_path / "second.err").read_text()
    done = [
        s["batch_id"]
        for log in ("first", "second")
        for s in summaries((tmp_path / f"{log}.out").read_text())
    ]
    assert len(done) == len(set(done)) == len(names)  # each batch scored once, by one of them
    assert all((project.inbox / "processed" / n).is_file() for n in names)


@pytest.mark.slow
def test_serve_fires_its_schedule_runs_on_demand_and_stops_cleanly(project, tmp_path):
    state = project.home / "prefect" / "server.json"
    serve = start(project, "serve", "-c", project.config, log=tmp_path / "serve")
    err = tmp_path / "serve.err"
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        wait_until_serving(serve, err, deadline)
        assert "Prefect UI: http://127.0.0.1:" in (tmp_path / "serve.out").read_text()
        server = json.loads(state.read_text())["pid"]
        pids |= descendants(serve.pid)
        assert server in pids

        drop(batch(100, 20), project.inbox, "served.parquet")
        deadline = time.monotonic() + 150  # two schedule periods, and a little
        while not (project.inbox / "processed" / "served.parquet").exists():
            assert time.monotonic() < deadline, err.read_text()
            pids |= descendants(serve.pid)
            time.sleep(0.5)

        now = anomaly(project, "run", "score", "-c", project.config)
        assert now.returncode == 0, now.stderr
        assert "score/served-score" in now.stdout
        assert "Completed" in now.stdout
        pids |= descendants(serve.pid)
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=120)
    assert code == 0, err.read_text()
    for bad in ("Traceback", "Warning", "never awaited"):
        assert bad not in err.read_text()
    assert survivors(pids) == set()
    assert not state.exists()


@pytest.mark.slow
def test_serve_stopped_as_a_run_starts_sends_its_last_logs_first(project, tmp_path):
    """SIGTERM while a flow run starts: the runner cancels it and logs so; those logs reach the
    server before serve stops it (they were retried against the stopped server at exit, ~70 s,
    ending in "Error logging to API")."""
    serve = start(project, "serve", "-c", project.config, log=tmp_path / "serve")
    err = tmp_path / "serve.err"
    try:
        deadline = time.monotonic() + 300
        wait_until_serving(serve, err, deadline)
        queued = anomaly(project, "run", "score", "-c", project.config, "--no-wait")
        assert queued.returncode == 0, queued.stderr
        while "Downloading flow code" not in err.read_text():
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        time.sleep(1)
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=300)
    assert code == 0, err.read_text()
    assert "Cancelled flow run" in err.read_text()
    assert "Error logging to API" not in err.read_text()


@pytest.mark.slow
def test_a_training_run_under_serve_shows_its_progress(project, tmp_path):
    """The flow-run process of ``serve`` prints each fit too (was silent for the whole fit)."""
    serve = start(project, "serve", "-c", project.config, log=tmp_path / "serve")
    err = tmp_path / "serve.err"
    try:
        deadline = time.monotonic() + 300
        wait_until_serving(serve, err, deadline)
        trained = anomaly(project, "run", "train", "-c", project.config)
        assert trained.returncode == 0, trained.stderr
        assert "Completed" in trained.stdout
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=300)
    assert code == 0, err.read_text()
    assert "fitting gaussian on" in err.read_text()
    assert "fitted gaussian in" in err.read_text()


def test_run_without_serve_says_so(project):
    result = anomaly(project, "run", "score", "-c", project.config)
    assert result.returncode == 2
    assert "anomaly serve" in result.stderr
