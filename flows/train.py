"""The ``train`` flow: the library's train job (:func:`anomaly.pipeline.train_and_store`) with
retries, logging and a Prefect artifact."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging.handlers import APILogHandler

from anomaly.config import Config
from anomaly.pipeline import Trained, train_and_store
from flows.tasks import markdown_table, read_config, read_reviews

#: the library's loggers whose INFO lines are training's progress: each fit (``auto``: each
#: candidate) with its seconds, then the sample check and the evaluation
PROGRESS_LOGGERS = ("anomaly.models", "anomaly.training")


def show_progress() -> None:
    """Show training's progress lines in this process (the command's, or the flow-run process
    of ``anomaly serve``), also without ``-v``: fitting the default model takes a while."""
    for name in PROGRESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


@contextlib.contextmanager
def progress_in_run_logs() -> Iterator[None]:
    """While it lasts, training's progress lines also go to the run's logs (the Prefect UI),
    through Prefect's API log handler; the console shows them once, as before."""
    handler = APILogHandler(level=logging.INFO)
    loggers = [logging.getLogger(name) for name in PROGRESS_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@task(name="train and register", cache_policy=NO_CACHE)
def train_and_register(config: Config, reviewed: pd.DataFrame) -> Trained:
    """Fit, calibrate, evaluate, log to MLflow and register as ``challenger`` (CPU-bound and
    not idempotent: no retries; MLflow's own calls retry)."""
    with progress_in_run_logs():
        return train_and_store(config, reviewed)


@flow(name="train")
def train_flow(config_path: str) -> dict[str, object]:
    """Train a detector on the config's normal data and register it as ``challenger``."""
    logger = get_run_logger()
    show_progress()
    config = read_config(config_path)
    reviewed = read_reviews(config)
    logger.info("training %s (%s), %d reviewed records", config.name, config.model.kind,
                len(reviewed))  # fmt: skip
    trained = train_and_register(config, reviewed)
    metrics = trained.result.metrics
    selection = trained.result.selection
    chosen = f" (auto chose `{selection['chosen']}`)" if selection else ""
    create_markdown_artifact(
        key="train-summary",
        markdown=(
            f"# Trained {config.name} v{trained.version}\n\n"
            f"Kind `{config.model.kind}`{chosen}, MLflow run `{trained.run_id}`, "
            f"{metrics['rows_train']:.0f} training rows ({len(reviewed)} reviewed records "
            f"in the store).\n\n"
            + markdown_table(["metric", "value"], [[k, f"{v:.6g}"] for k, v in metrics.items()])
        ),
        description=f"training run of {config.name}",
    )
    if selection:
        logger.info("auto chose %s: %s", selection["chosen"], selection["candidates"])
    logger.info("registered %s v%s", config.name, trained.version)
    return {
        "version": trained.version,
        "run_id": trained.run_id,
        "metrics": metrics,
        "selection": selection,
    }
