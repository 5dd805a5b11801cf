"""MLflow tracking: where runs go, and what a training run logs.

Default (nothing configured): a SQLite file ``<home>/mlflow/mlflow.db`` (WAL journal, 30 s busy
timeout, so concurrent writers wait instead of failing) with artifacts in
``<home>/mlflow/artifacts``. ``mlflow.tracking_uri`` in the config or ``MLFLOW_TRACKING_URI``
points at a server instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.utils.time import get_current_time_millis as now_ms

from anomaly.config import Config
from anomaly.processes import file_lock

if TYPE_CHECKING:  # torch and scikit-learn load only when a model is trained or scored
    from anomaly.scoring import BatchSummary
    from anomaly.training import TrainResult

SCHEMA_READY = ".schema-ready"
#: MLflow's fluent API keeps its URI in process globals: one user at a time
_FLUENT = threading.RLock()


def tracking_uri(config: Config) -> str:
    """The MLflow tracking URI for ``config`` (server, env var, or local SQLite)."""
    if config.mlflow.tracking_uri:
        return config.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = config.home / "mlflow"
    uri = f"sqlite:///{folder / 'mlflow.db'}?timeout=30"
    if not (folder / SCHEMA_READY).exists():
        _create_schema(folder, uri)
    return uri


def _create_schema(folder: Path, uri: str) -> None:
    """Create the SQLite database once, under a file lock: two processes migrating a fresh
    database at the same time race in MLflow's migrations and fail (seen with MLflow 3.17.2),
    so the second waits for the first."""
    with file_lock(folder / ".schema.lock"):
        if (folder / SCHEMA_READY).exists():
            return
        with sqlite3.connect(folder / "mlflow.db") as conn:  # WAL persists in the file
            conn.execute("PRAGMA journal_mode=WAL")
        SqlAlchemyStore(uri, (folder / "artifacts").as_uri())  # runs MLflow's migrations
        (folder / SCHEMA_READY).touch()


@contextlib.contextmanager
def active(config: Config) -> Iterator[str]:
    """Point MLflow's global (fluent) API at the config's URI for a block, then restore it.

    Only for what MLflow resolves through its global URI: the fluent training run
    (``start_run``, ``mlflow.pyfunc.log_model``) and ``models:/`` URIs (downloads and the
    registration of a ``models:/<id>`` source: MLflow 3.17 builds an ``MlflowClient()`` inside
    and ignores a ``tracking_uri``/``registry_uri`` passed to ``download_artifacts``, which
    then answers "not found"); everything else takes :func:`client`.
    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` to the environment; left
    set, it would silently redirect every later config in this process and its children. MLflow
    has no public getter of the URI as set (``get_tracking_uri`` resolves a default), so the
    previous values are read from its modules to restore them exactly.
    """
    with _FLUENT:
        yield from _activated(config)


def _activated(config: Config) -> Iterator[str]:
    uri = tracking_uri(config)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(config: Config) -> MlflowClient:
    """The MLflow client bound to the config's tracking and registry URI (one per URI and
    process: every registry and tracking call of a config shares it)."""
    return _client(tracking_uri(config))


@functools.cache
def _client(uri: str) -> MlflowClient:
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
    except MlflowException:  # created meanwhile by a concurrent run
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
    from matplotlib.figure import Figure  # loads only when a training run logs a plot

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


def _retry(call: Callable[[], object], attempts: int = 5) -> None:
    """Retry an MLflow write that can lose a race on a unique key (two runs logging the same
    dataset at once: the loser's insert fails, its retry finds the row and links to it)."""
    for attempt in range(attempts):
        try:
            call()
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def log_training(
    config: Config, result: TrainResult, data: pd.DataFrame, source: str
) -> tuple[str, str]:
    """Log a training run and its pyfunc model; returns (run id, logged model id)."""
    from anomaly.pyfunc import log_detector

    tags = {"stage": "training"}
    with active(config), mlflow.start_run(experiment_id=experiment_id(config), tags=tags) as run:
        config_json = config.model_dump(mode="json")
        mlflow.log_params(flat_params(config_json))
        mlflow.log_dict(config_json, "config.json")
        with warnings.catch_warnings():  # MLflow registers its local source class twice
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(data, source=source, name=f"{config.name}-train")
        _retry(lambda: mlflow.log_input(dataset, context="training"))
        mlflow.log_metrics(result.metrics)
        if result.selection:
            log_selection(result.selection)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(score_histogram(result, Path(tmp) / "scores.png")), "plots")
        model_info = log_detector(result.detector, data)
        return run.info.run_id, model_info.model_id


#: MLflow param and tag naming the kind ``auto`` chose; the candidates' held-out
#: log-likelihoods are metrics ``auto.<kind>.heldout_log_likelihood``
AUTO_CHOSEN = "auto.chosen"


def log_selection(selection: dict[str, Any]) -> None:
    """Log what ``auto`` chose (the active run): param and tag :data:`AUTO_CHOSEN`, its rule,
    and per candidate its held-out log-likelihood and weight."""
    mlflow.log_param(AUTO_CHOSEN, selection["chosen"])
    mlflow.set_tag(AUTO_CHOSEN, selection["chosen"])
    mlflow.log_param("auto.rule", selection["rule"])
    scores = selection["candidates"]
    mlflow.log_metrics({auto_metric(kind): float(v) for kind, v in scores.items()})
    mlflow.log_metrics({f"auto.{k}.weight": float(w) for k, w in selection["weights"].items()})


def auto_metric(kind: str) -> str:
    """The MLflow metric holding candidate ``kind``'s held-out log-likelihood under ``auto``."""
    return f"auto.{kind}.heldout_log_likelihood"


def log_batch(config: Config, summary: BatchSummary) -> str:
    """Log a scored batch's numbers as an MLflow run (tagged ``stage=scoring``); its run id."""
    metrics = {
        "rows_in": summary.rows_in,
        "rows_scored": summary.rows_scored,
        "rows_quarantined": summary.rows_quarantined,
        "rows_flagged": summary.rows_flagged,
        "flag_rate": summary.flag_rate,
        "shift_p_value": summary.shift_p_value,
        "shift_alarm": float(summary.shift_alarm),
    }
    if summary.mean_log_likelihood is not None:
        metrics["mean_log_likelihood"] = summary.mean_log_likelihood
    tags = {
        "stage": "scoring",
        "batch_id": summary.batch_id,
        "status": summary.status,
        "model_version": summary.model_version,
    }
    c = client(config)  # the client API, not the fluent one: safe from many threads
    run = c.create_run(experiment_id(config), tags=tags, run_name=f"score {summary.batch_id}")
    c.log_batch(
        run.info.run_id, metrics=[Metric(k, float(v), now_ms(), 0) for k, v in metrics.items()]
    )
    c.set_terminated(run.info.run_id)
    return run.info.run_id
