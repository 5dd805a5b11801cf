"""The ``train`` flow: data → fit → calibrate → evaluate → MLflow run → registry."""

from __future__ import annotations

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from anomaly.config import Config
from anomaly.pipeline import Trained, register_result, training_data
from anomaly.promotion import evaluation_data
from anomaly.training import TrainResult, train
from flows.tasks import IO, read_config, read_reviews


@task(name="read training data", **IO)
def read_data(config: Config, reviewed: pd.DataFrame | None) -> pd.DataFrame:
    """Normal rows, plus reviewed false positives when the config says so."""
    return training_data(config, reviewed)


@task(name="read labelled data", **IO)
def read_labelled(config: Config, reviewed: pd.DataFrame | None) -> pd.DataFrame | None:
    """Labelled evaluation rows from the config and the store, if there are any."""
    try:
        return evaluation_data(config, reviewed)
    except ValueError:
        return None


@task(name="fit and calibrate", cache_policy=NO_CACHE)
def fit(config: Config, data: pd.DataFrame, labelled: pd.DataFrame | None) -> TrainResult:
    """Split, fit the density model, calibrate, evaluate (CPU only: no retries)."""
    return train(config, data, labelled)


@task(name="log and register", **IO)
def register(config: Config, result: TrainResult, data: pd.DataFrame) -> Trained:
    """MLflow run + registry version with alias ``challenger``."""
    return register_result(config, result, data)


@flow(name="train")
def train_flow(config_path: str) -> dict[str, object]:
    """Train a detector on the config's normal data and register it as ``challenger``."""
    logger = get_run_logger()
    config = read_config(config_path)
    reviewed = read_reviews(config)
    data = read_data(config, reviewed)
    labelled = read_labelled(config, reviewed)
    logger.info("training %s (%s) on %d rows", config.name, config.model.kind, len(data))
    result = fit(config, data, labelled)
    trained = register(config, result, data)
    metrics = trained.result.metrics
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in metrics.items())
    create_markdown_artifact(
        key="train-summary",
        markdown=(
            f"# Trained {config.name} v{trained.version}\n\n"
            f"Kind `{config.model.kind}`, MLflow run `{trained.run_id}`, "
            f"{len(data)} rows ({0 if reviewed is None else len(reviewed)} reviewed records "
            f"in the store).\n\n| metric | value |\n|---|---:|\n{rows}\n"
        ),
        description=f"training run of {config.name}",
    )
    logger.info("registered %s v%s", config.name, trained.version)
    return {"version": trained.version, "run_id": trained.run_id, "metrics": metrics}
