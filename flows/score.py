"""The ``score`` flow: new inbox batches → champion scores → outputs + review store → done."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from uuid import UUID

from prefect import Flow, flow, get_run_logger, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.task_runners import ThreadPoolTaskRunner

from anomaly import registry
from anomaly.config import Config
from anomaly.detector import Detector
from anomaly.inbox import pending_batches
from anomaly.pipeline import process_batch
from anomaly.store import store_engine
from flows.tasks import IO, read_config

#: the key of the artifact that lists a score run's batches
SUMMARY = "score-summary"

T = TypeVar("T")
R = TypeVar("R")


@task(name="find new batches", **IO)
def find_batches(config: Config) -> list[Path]:
    """Complete batch files waiting in the inbox."""
    return pending_batches(config)


@task(name="load model", **IO)
def load_model(config: Config, version: str | None) -> tuple[Detector, str]:
    """The champion's detector (or the given version's)."""
    return registry.load_detector(config, version)


@task(name="score batch", **IO)
def score_batch(
    path: Path, config: Config, detector: Detector, version: str
) -> dict[str, object] | None:
    """Score, store (one transaction), log to MLflow and mark one batch done; None when
    another run claimed the batch first. On Dask with ``scoring.split_rows`` set, a large
    Parquet file is scored in parts on the cluster's workers and merged here."""
    split = config.scoring.dask_address and config.scoring.split_rows
    engine = store_engine(config)
    summary = process_batch(config, detector, version, path, engine, on_workers if split else None)
    if summary is None:
        get_run_logger().info("%s: claimed by another run, skipped", path.name)
        return None
    if summary.error:
        get_run_logger().warning("%s rejected: %s", summary.batch_id, summary.error)
    get_run_logger().info(
        "%s: %s, %d rows, %d flagged, %d quarantined%s",
        summary.batch_id,
        summary.status,
        summary.rows_in,
        summary.rows_flagged,
        summary.rows_quarantined,
        ", SHIFT ALARM" if summary.shift_alarm else "",
    )
    return summary.to_dict()


def on_workers(function: Callable[[T], R], items: list[T]) -> Iterator[R]:
    """``function`` over ``items`` as tasks of the Dask cluster this task runs on, results in
    order, each as soon as it and those before it are done (the merge copies a part while the
    next ones are scored). The calling task leaves its worker's thread pool while it waits, so
    that its own worker scores parts too (no deadlock on a cluster of one single-threaded
    worker)."""
    from distributed import worker_client

    with worker_client() as client:
        for future in client.map(function, items, pure=False):
            yield future.result()


#: batches scored at once by one flow run (threads): scoring is CPU-bound, and each batch holds
#: a connection of MLflow's and the store's pools (15 each) while it finishes; unbounded, a
#: full inbox exhausted them ("QueuePool limit ... reached")
BATCH_THREADS = 4


@flow(name="score", task_runner=ThreadPoolTaskRunner(max_workers=BATCH_THREADS))
def score_flow(
    config_path: str, batches: list[str] | None = None, model_version: str | None = None
) -> list[dict[str, object]]:
    """Score the given batch files, or every new file in the inbox, with the champion."""
    config = read_config(config_path)
    paths = [Path(b) for b in batches] if batches else find_batches(config)
    if not paths:
        get_run_logger().info("no new batches in %s", config.data.inbox)
        create_table_artifact(key=SUMMARY, table=[], description="no new batches")
        return []
    detector, version = load_model(config, model_version)
    futures = score_batch.map(
        paths,
        config=unmapped(config),
        detector=unmapped(detector),
        version=unmapped(version),
    )
    summaries = [s for f in futures if (s := f.result()) is not None]
    columns = ["batch_id", "status", "rows_in", "rows_scored", "rows_quarantined",
               "rows_flagged", "flag_rate", "shift_alarm", "model_version", "error"]  # fmt: skip
    create_table_artifact(
        key=SUMMARY,
        table=[{c: s[c] for c in columns} for s in summaries],
        description=f"{len(summaries)} batch(es) scored with {config.name} v{version}",
    )
    return summaries


def batches_of_run(flow_run_id: UUID) -> list[dict[str, object]]:
    """The batches a finished score run handled, as its ``score-summary`` artifact lists them
    (``anomaly run score`` prints them: the run's state alone says nothing of rejections)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[SUMMARY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    rows: list[dict[str, object]] = []
    for artifact in found:
        data = artifact.data
        rows += json.loads(data) if isinstance(data, str) else list(data or [])
    return rows


def score_flow_for(config: Config) -> Flow:
    """The score flow with the config's task runner: threads, or the Dask cluster at
    ``scoring.dask_address`` (needs the ``dask`` extra), where each batch runs on a worker."""
    if not config.scoring.dask_address:
        return score_flow
    from prefect_dask import DaskTaskRunner

    return score_flow.with_options(task_runner=DaskTaskRunner(address=config.scoring.dask_address))
