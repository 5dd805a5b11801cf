"""MLflow tracking, pyfunc and registry against a real MLflow (SQLite in a temp dir)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from anomaly import models, registry
from anomaly.config import load_config
from anomaly.demo_data import generate_normal, plant_anomalies
from anomaly.pipeline import score_batches, train_and_store
from anomaly.pyfunc import predict_explained
from anomaly.tracking import tracking_uri

FEATURES = {
    "id": "transaction_id",
    "timestamp": "timestamp",
    "numeric": ["amount", "hour", "distance_km", "tx_last_24h", "account_age_days"],
    "categorical": ["merchant_category", "channel"],
}


def batch_frame() -> pd.DataFrame:
    """The batch of these tests: 500 rows with planted anomalies."""
    batch, _ = plant_anomalies(generate_normal(500, seed=5), rate=0.04, seed=5)
    return batch


def write_config(folder: Path, **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    generate_normal(3000, seed=0).to_parquet(folder / "train.parquet")
    (folder / "inbox").mkdir(exist_ok=True)
    batch_frame().to_parquet(folder / "inbox" / "b1.parquet")
    config = {
        "name": "tx-test",
        "features": FEATURES,
        "data": {"train": "train.parquet", "inbox": "inbox"},
        "model": {"kind": "gaussian"},
        **extra,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two training runs on one registry: v1 (champion) and v2 (challenger)."""
    folder = tmp_path_factory.mktemp("mlflow")
    config = load_config(write_config(folder), home=folder / "home")
    first = train_and_store(config)
    second = train_and_store(config)
    return config, first, second


def test_training_run_is_tracked(trained):
    config, first, _ = trained
    c = MlflowClient(tracking_uri(config))
    run = c.get_run(first.run_id)
    for key in (
        "heldout_log_likelihood",
        "calibration_threshold",
        "heldout_fpr",
        "fit_seconds",
        "rows_train",
    ):
        assert np.isfinite(run.data.metrics[key]), key
    assert run.data.metrics["heldout_log_likelihood"] == pytest.approx(
        first.result.metrics["heldout_log_likelihood"]
    )
    assert json.loads(run.data.params["model.kind"]) == "gaussian"
    assert json.loads(run.data.params["calibration.alpha"]) == 0.01
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest
    assert json.loads(dataset.dataset.profile)["num_rows"] == 3000
    artifacts = {a.path for a in c.list_artifacts(first.run_id)}
    assert {"config.json", "plots"} <= artifacts
    png = Path(
        mlflow.artifacts.download_artifacts(
            run_id=first.run_id, artifact_path="plots", tracking_uri=tracking_uri(config)
        )
    )
    assert (png / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registry_aliases_and_history(trained):
    config, first, second = trained
    assert (first.version, second.version) == ("1", "2")
    assert registry.alias_version(config, "champion") == "1"  # first model promoted directly
    assert registry.alias_version(config, "challenger") == "2"
    events = registry.promote(config, "2", "better on held-out data")
    assert [(e.alias, e.version, e.replaced) for e in events] == [
        ("previous", "1", None),
        ("champion", "2", "1"),
    ]
    registry.rollback(config, "bad batch")
    assert registry.alias_version(config, "champion") == "1"
    assert registry.alias_version(config, "previous") == "2"
    history = registry.history(config)
    assert [(e.alias, e.version) for e in history] == [
        ("challenger", "1"),
        ("champion", "1"),
        ("challenger", "2"),
        ("previous", "1"),
        ("champion", "2"),
        ("previous", "2"),
        ("champion", "1"),
    ]
    assert history[-1].reason == "rollback: bad batch"
    assert all(e.by and e.at for e in history)
    tags = MlflowClient(tracking_uri(config)).get_model_version(config.name, "1").tags
    assert tags["alias.champion.reason"] == "rollback: bad batch"


def test_pyfunc_loads_without_pickle_and_matches_library(trained, monkeypatch):
    config, _first, _ = trained
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(config))
    champion = registry.alias_version(config, "champion")
    model = mlflow.pyfunc.load_model(f"models:/{config.name}@champion")
    batch = batch_frame()
    batch["amount"] = batch["amount"].astype(object)
    batch.loc[7, "amount"] = "N/A"  # quarantined, not a failed request
    got = model.predict(batch)
    detector, version = registry.load_detector(config)
    assert version == champion
    want = predict_explained(detector, batch)  # the scores plus the explanations
    assert len(got) == len(batch)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)
    assert got.loc[7, "quarantined"]
    assert "non-numeric value in amount" in got.loc[7, "reason"]
    assert model.metadata.signature is not None
    folder = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{config.name}@champion", tracking_uri=tracking_uri(config)
        )
    )
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.suffix not in {".pkl", ".pickle"}, path
            assert path.read_bytes()[:1] != b"\x80", f"pickle stream in {path}"


def test_crafted_pickle_is_refused(trained, tmp_path):
    config, _, _ = trained
    detector, _ = registry.load_detector(config)
    folder = detector.model.save(tmp_path / "model")
    np.savez(folder / "weights.npz", mean=np.array([object()], dtype=object))  # needs pickle
    with pytest.raises(ValueError, match="allow_pickle"):
        models.load(folder)


def test_score_uses_the_champion_and_errors_without_one(trained, tmp_path):
    config, _, _ = trained
    (summary,) = score_batches(config, [Path(config.data.inbox) / "b1.parquet"])
    assert summary.model_version == registry.alias_version(config, "champion")
    assert summary.rows_in == 500
    empty = config.model_copy(update={"name": "never-trained", "home": tmp_path})
    with pytest.raises(registry.RegistryError, match="no champion yet"):
        registry.load_detector(empty)


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_concurrent_training_processes_both_land(tmp_path, prefect_server):
    from prefect.settings import PREFECT_API_URL

    path = write_config(tmp_path)
    # both processes report to the session's Prefect server (no ephemeral server each)
    env = {
        **os.environ,
        "ANOMALY_HOME": str(tmp_path / "home"),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    procs = [_cli("train", "--config", str(path), env=env) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    config = load_config(path, home=tmp_path / "home")
    c = MlflowClient(tracking_uri(config))
    versions = sorted(str(v.version) for v in c.search_model_versions(f"name='{config.name}'"))
    assert versions == ["1", "2"]
    runs = c.search_runs([c.get_experiment_by_name(config.name).experiment_id])
    assert len(runs) == 2
    assert all(r.info.status == "FINISHED" for r in runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    pytest.fail(f"{url} not up after {timeout} s; server said:\n{(err or '')[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _bin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} not installed beside {sys.executable}"
    return found


@pytest.mark.slow
def test_training_against_an_mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [
            _bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root", (tmp_path / "server-artifacts").as_uri(),
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", server)
        uri = f"http://127.0.0.1:{port}"
        path = write_config(tmp_path / "cfg", mlflow={"tracking_uri": uri})
        config = load_config(path, home=tmp_path / "home")
        trained = train_and_store(config)
        run = MlflowClient(uri).get_run(trained.run_id)
        assert "heldout_log_likelihood" in run.data.metrics
        assert registry.alias_version(config, "champion") == trained.version
        detector, _ = registry.load_detector(config)
        assert detector.model.kind == "gaussian"
        assert not (tmp_path / "home" / "mlflow").exists()  # nothing went to the local default
    finally:
        _stop(server)


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(trained, tmp_path):
    config, _, _ = trained
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(config),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
    server = subprocess.Popen(
        [
            _bin("mlflow"), "models", "serve", "-m", f"models:/{config.name}@champion",
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", server)
        batch = batch_frame().head(20)
        batch["timestamp"] = batch["timestamp"].astype(str)
        body = json.dumps(
            {"dataframe_split": json.loads(batch.to_json(orient="split", index=False))}
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        rows = pd.DataFrame(answer["predictions"])
        assert len(rows) == 20
        detector, _ = registry.load_detector(config)
        want = detector.predict(batch)
        np.testing.assert_allclose(rows["log_likelihood"], want["log_likelihood"], rtol=1e-9)
        assert list(rows["is_anomaly"]) == list(want["is_anomaly"])
    finally:
        _stop(server)
