"""MLflow tracking: where runs go, and what a training run logs.

Default (nothing configured): a SQLite file ``<home>/mlflow/mlflow.db`` (WAL journal, 30 s busy
timeout, so concurrent writers wait instead of failing) with artifacts in
``<home>/mlflow/artifacts``. ``mlflow.tracking_uri`` in the config or ``MLFLOW_TRACKING_URI``
points at a server instead.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from anomaly.config import Config
from anomaly.training import TrainResult


def tracking_uri(config: Config) -> str:
    """The MLflow tracking URI for ``config`` (server, env var, or local SQLite)."""
    if config.mlflow.tracking_uri:
        return config.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = config.home / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    if not db.exists():
        with sqlite3.connect(db) as conn:  # WAL persists in the file for every later connection
            conn.execute("PRAGMA journal_mode=WAL")
    return f"sqlite:///{db}?timeout=30"


def client(config: Config) -> MlflowClient:
    """An MLflow client on the config's tracking and registry URI."""
    uri = tracking_uri(config)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(config: Config) -> str:
    """The config's experiment, created (with artifacts under ``home``) on first use."""
    c = client(config)
    name = config.mlflow.experiment or config.name
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri(config).startswith("sqlite:"):
        location = (config.home / "mlflow" / "artifacts").as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        return c.get_experiment_by_name(name).experiment_id


def flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"a.b": "value"}`` strings for ``mlflow.log_params``."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = json.dumps(value, default=str)[:6000]
    return flat


def score_histogram(result: TrainResult, path: Path) -> Path:
    """PNG of held-out normal scores (−log-likelihood) with the flag threshold drawn."""
    scores = -result.heldout_log_likelihood
    threshold = result.detector.calibrator.threshold_
    fig = Figure(figsize=(7, 4))  # no pyplot: no GUI backend, no global state
    ax = fig.subplots()
    finite = scores[np.isfinite(scores)]
    ax.hist(finite, bins=60, color="#4477aa", alpha=0.8, label="held-out normal rows")
    if np.isfinite(threshold):
        label = f"threshold (α={result.detector.calibrator.alpha})"
        ax.axvline(threshold, color="#cc3311", lw=2, label=label)
    ax.set_xlabel("anomaly score = −log-likelihood (nats)")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def log_training(
    config: Config, result: TrainResult, data: pd.DataFrame, source: str
) -> tuple[str, str]:
    """Log a training run and its pyfunc model; returns (run id, model URI)."""
    from anomaly.pyfunc import log_detector

    mlflow.set_tracking_uri(tracking_uri(config))
    mlflow.set_registry_uri(tracking_uri(config))
    with mlflow.start_run(experiment_id=experiment_id(config)) as run:
        config_json = config.model_dump(mode="json")
        mlflow.log_params(flat_params(config_json))
        mlflow.log_dict(config_json, "config.json")
        with warnings.catch_warnings():  # MLflow registers its local source class twice
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(data, source=source, name=f"{config.name}-train")
        mlflow.log_input(dataset, context="training")
        mlflow.log_metrics(result.metrics)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(score_histogram(result, Path(tmp) / "scores.png")), "plots")
        model_info = log_detector(result.detector, data)
        return run.info.run_id, model_info.model_uri
