"""Every model kind × every record schema, through the doors a user walks through.

One cell = one kind (small, fast settings) and one schema variant: numeric columns only;
numeric + categorical + timestamp; the same plus a context column (for the kinds that model a
conditional density). Per cell: ``anomaly train`` → ``anomaly score --json`` → ``anomaly
explain`` → ``anomaly sample``, run by the CLI in a subprocess (tests/cli_run.py; two
subprocesses share the cells, so imports are paid twice, not once per command). Then, here,
the champion loads with ``mlflow.pyfunc.load_model`` with pickle forbidden and predicts what
``score`` wrote, and the dashboard's page of one flagged record renders. One context cell also
answers through ``mlflow models serve``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import free_port
from fastapi.testclient import TestClient

from anomaly.config import Config, load_config
from anomaly.dashboard import create_app
from anomaly.demo_data import generate_normal, plant_anomalies
from anomaly.models import KINDS, context_kinds
from anomaly.tracking import active, tracking_uri

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

HERE = Path(__file__).parent
ID = "transaction_id"
VARIANTS: dict[str, dict[str, Any]] = {
    "numeric": {"numeric": ["amount", "hour", "distance_km"]},
    "mixed": {
        "numeric": ["amount", "hour", "distance_km"],
        "categorical": ["merchant_category"],
        "timestamp": "timestamp",
    },
    "context": {
        "numeric": ["amount", "hour", "distance_km"],
        "categorical": ["merchant_category"],
        "timestamp": "timestamp",
        "context": ["channel"],
    },
}
_TORCH = {"max_epochs": 5, "max_steps": 100, "batch_size": 128, "progress": False, "n_threads": 1}
SMALL: dict[str, dict[str, Any]] = {
    "flow": {**_TORCH, "transforms": 2, "hidden": [16, 16]},
    "vae": {**_TORCH, "hidden": [16], "importance_samples": 8},
    "autoregressive": {**_TORCH, "hidden": [16, 16], "components": 2, "orders": 1},
    "gmm": {"max_components": 3},
}
CELLS = [
    pytest.param(kind, variant, id=f"{kind}-{variant}")
    for kind in sorted(KINDS)
    for variant in VARIANTS
    if variant != "context" or kind in context_kinds()
]


#: subprocesses that run the cells' commands side by side (each runs its share in turn)
WORKERS = 2


def write_project(root: Path, kind: str, variant: str) -> Path:
    """Training rows, one batch with planted anomalies, and the cell's config."""
    root.mkdir(parents=True)
    generate_normal(800, seed=1).to_parquet(root / "train.parquet", index=False)
    batch, _ = plant_anomalies(generate_normal(200, seed=2), rate=0.1, seed=2)
    batch.to_parquet(root / f"{kind}-{variant}.parquet", index=False)  # a batch id per cell
    settings = {
        "name": f"matrix-{kind}-{variant}",
        "features": {"id": ID, **VARIANTS[variant]},
        "data": {"train": "train.parquet"},
        "model": {"kind": kind, "params": SMALL.get(kind, {})},
        "calibration": {"alpha": 0.05},
        "dashboard": {"open_reads": True},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def commands(root: Path, kind: str, variant: str) -> list[list[str]]:
    """A cell's commands: train → score → explain → sample, as a user types them."""
    config, batch = str(root / "config.yaml"), str(root / f"{kind}-{variant}.parquet")
    context = ["--context", "channel=online"] if variant == "context" else []
    out = str(root / "samples.csv")
    return [
        ["train", "--config", config],
        ["score", "--config", config, "--batch", batch, "--json"],
        ["explain", "--config", config, "--input", batch],
        ["sample", "--config", config, "-n", "50", "--out", out, *context],
    ]


@dataclass(frozen=True)
class Matrix:
    """The cells' projects, their commands' results, and the shared state directory."""

    home: Path
    roots: dict[str, Path]
    results: dict[str, list[dict[str, Any]]]
    stderr: str


@pytest.fixture(scope="module")
def matrix(request, tmp_path_factory) -> Matrix:
    """Every selected cell's commands, run by WORKERS subprocesses against one state
    directory (MLflow's database is created once) and the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    selected = [
        item.callspec.id
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_cell" and item.module is request.module
    ]
    top = tmp_path_factory.mktemp("matrix")
    home = top / "home"
    roots: dict[str, Path] = {}
    for cell in selected:
        kind, variant = cell.rsplit("-", 1)
        roots[cell] = top / cell
        write_project(roots[cell], kind, variant)
    env = {**os.environ, "ANOMALY_HOME": str(home), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = []
    for worker in range(WORKERS):
        share = {c: commands(roots[c], *c.rsplit("-", 1)) for c in selected[worker::WORKERS]}
        if not share:
            continue
        todo, done = top / f"commands-{worker}.json", top / f"results-{worker}.json"
        todo.write_text(json.dumps(share))
        log = (top / f"stderr-{worker}.txt").open("w")
        procs.append((subprocess.Popen(
            [sys.executable, str(HERE / "cli_run.py"), str(todo), str(done)],
            env=env, cwd=top, stdout=log, stderr=subprocess.STDOUT,
        ), done, log))  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {}
    for proc, done, log in procs:
        proc.wait(timeout=1800)
        log.close()
        if done.exists():
            results |= json.loads(done.read_text())
    stderr = "\n".join(p.read_text() for p in sorted(top.glob("stderr-*.txt")))
    return Matrix(home, roots, results, stderr)


@pytest.mark.parametrize(("kind", "variant"), CELLS)
def test_cell(kind: str, variant: str, matrix: Matrix, monkeypatch) -> None:
    cell = f"{kind}-{variant}"
    steps = matrix.results.get(cell)
    assert steps, f"the CLI process died before {cell}:\n{matrix.stderr[-4000:]}"
    last = steps[-1]
    assert last["code"] == 0, (
        f"`anomaly {' '.join(last['args'])}` exited {last['code']}:\n"
        f"{last['stdout'][-2000:]}\n{matrix.stderr[-4000:]}"
    )
    train, score, explain, _ = steps
    root = matrix.roots[cell]
    config = load_config(root / "config.yaml", home=matrix.home)
    assert f"{config.name} v1 ({kind})" in " ".join(train["stdout"].split())
    if kind == "auto":
        assert "auto chose" in train["stdout"]

    (summary,) = [json.loads(line) for line in score["stdout"].splitlines()]
    assert summary["status"] == "scored"
    assert summary["rows_in"] == 200 == summary["rows_scored"] + summary["rows_quarantined"]
    assert summary["rows_flagged"] > 0
    scored = pd.read_parquet(summary["output"])
    flagged_ids = set(scored.loc[scored["is_anomaly"], ID])

    explained = [json.loads(line) for line in explain["stdout"].splitlines()]
    assert {r[ID] for r in explained} == flagged_ids
    assert all(r["contributions"] for r in explained)

    samples = pd.read_csv(root / "samples.csv")
    assert len(samples) == 50
    assert set(VARIANTS[variant]["numeric"]) <= set(samples.columns)
    if variant == "context":
        assert set(samples["channel"]) == {"online"}

    batch = pd.read_parquet(root / f"{cell}.parquet")
    check_pyfunc(config, batch, scored, monkeypatch)
    check_record_page(config, batch, summary["batch_id"], scored)
    if (kind, variant) == ("gaussian", "context"):
        check_served(config, batch, scored)


def check_pyfunc(
    config: Config, batch: pd.DataFrame, scored: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The champion from the registry, pickle forbidden, predicts what ``score`` wrote."""
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with active(config):
        model = mlflow.pyfunc.load_model(f"models:/{config.name}@champion")
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == list(model.input_example.columns)  # the record's columns, all of them
    if config.features.context:
        assert set(config.features.context) <= set(inputs)
    frame = batch.copy()
    if config.features.timestamp:
        frame[config.features.timestamp] = frame[config.features.timestamp].astype(str)
    predicted = model.predict(frame[inputs])
    assert len(predicted) == len(batch)
    want = scored.set_index(ID).loc[predicted[ID]]
    np.testing.assert_allclose(predicted["log_likelihood"], want["log_likelihood"], rtol=1e-9)
    assert list(predicted["is_anomaly"]) == list(want["is_anomaly"])


def check_record_page(
    config: Config, batch: pd.DataFrame, batch_id: str, scored: pd.DataFrame
) -> None:
    """The dashboard page of the most improbable flagged record shows its values."""
    worst = scored.loc[scored["is_anomaly"]].sort_values("log_likelihood").iloc[0]
    record_id = str(worst[ID])
    with TestClient(create_app(config)) as client:
        page = client.get(f"/records/{batch_id}/{record_id}")
        assert page.status_code == 200, page.text[:2000]
        assert record_id in page.text
        row = batch.set_index(ID).loc[record_id]
        for col in [*config.features.categorical, *config.features.context]:
            assert f">{row[col]}<" in page.text, col
        assert "Why it was flagged" in page.text
        if config.model.kind == "auto":
            model_page = client.get("/model")
            assert "chose" in model_page.text, model_page.text[:2000]


def check_served(config: Config, batch: pd.DataFrame, scored: pd.DataFrame) -> None:
    """``mlflow models serve`` of the champion answers ``/invocations`` like ``score``."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(config),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
    server = subprocess.Popen(
        [
            str(Path(bin_dir) / "mlflow"), "models", "serve", "-m",
            f"models:/{config.name}@champion", "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(port),
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", server)
        rows = batch.head(30).copy()
        rows["timestamp"] = rows["timestamp"].astype(str)
        body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split"))})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = pd.DataFrame(json.loads(response.read())["predictions"])
        want = scored.set_index(ID).loc[rows[ID]]
        np.testing.assert_allclose(answer["log_likelihood"], want["log_likelihood"], rtol=1e-9)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``url`` answers (the server failing first fails the test)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} not up after {timeout} s")
