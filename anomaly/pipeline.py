"""The library-level pipeline steps the flows call: train and register, score and store,
mark done, sample."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine

from anomaly import registry
from anomaly.config import Config
from anomaly.detector import Detector
from anomaly.io import SUFFIXES, read_table
from anomaly.promotion import decide
from anomaly.scoring import BatchSummary, score_file
from anomaly.store import connect, default_url, write_batch
from anomaly.tracking import log_batch, log_training
from anomaly.training import TrainResult, train


@dataclass(frozen=True)
class Trained:
    """A training run's result, its MLflow run and the registered version."""

    result: TrainResult
    version: str
    run_id: str


def training_data(config: Config, reviewed: pd.DataFrame | None) -> pd.DataFrame:
    """``data.train``, plus rows reviewed as false positives when the config says so."""
    data = read_table(config.data.train)
    if reviewed is None or not config.training.include_false_positives:
        return data
    false_positives = reviewed[reviewed["label"] == "false_positive"]
    if not len(false_positives):
        return data
    extra = pd.DataFrame(list(false_positives["values"]))[list(data.columns)]
    return pd.concat([data, extra], ignore_index=True)


def train_and_store(
    config: Config, data: pd.DataFrame | None = None, labelled: pd.DataFrame | None = None
) -> Trained:
    """Train, log the run to MLflow and register the model (see :func:`register_result`)."""
    data = read_table(config.data.train) if data is None else data
    return register_result(config, train(config, data, labelled), data)


def register_result(config: Config, result: TrainResult, data: pd.DataFrame) -> Trained:
    """Log a training result to MLflow and register it as ``challenger``; the first version of
    a model becomes ``champion`` directly (there is nothing to compare it with)."""
    run_id, model_id = log_training(config, result, data, source=config.data.train)
    version = registry.register(config, model_id, run_id)
    if registry.alias_version(config, registry.CHAMPION) is None:  # the gate's first-model rule
        registry.promote(config, version, decide(config, result.metrics, None).summary())
    return Trained(result, version, run_id)


def scored_dir(config: Config) -> Path:
    """Where scored batch outputs of this config go."""
    return config.home / "scored" / config.name


def pending_batches(config: Config) -> list[Path]:
    """Batch files waiting in the inbox (a batch leaves it for ``processed/`` once stored).

    Only ``*.parquet``/``*.pq``/``*.csv`` files count: hidden files and names ending in
    ``.tmp`` or ``.part`` (writes in progress) are skipped.
    """
    if not config.data.inbox:
        msg = f"config {config.name!r} names no data.inbox; pass --batch PATH instead"
        raise ValueError(msg)
    inbox = Path(config.data.inbox)
    if not inbox.is_dir():
        msg = f"inbox folder {inbox} does not exist"
        raise FileNotFoundError(msg)
    return [
        p
        for p in sorted(inbox.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES
    ]


def mark_done(config: Config, path: Path, summary: BatchSummary) -> Path | None:
    """Move a stored inbox batch to ``processed/`` (rejected ones to ``rejected/``, with the
    reason beside it); files from elsewhere stay where they are."""
    if not config.data.inbox or path.parent.resolve() != Path(config.data.inbox).resolve():
        return None
    folder = path.parent / ("processed" if summary.status == "scored" else "rejected")
    folder.mkdir(exist_ok=True)
    if summary.error:
        (folder / f"{path.name}.reason.txt").write_text(summary.error + "\n")
    target = folder / path.name
    os.replace(path, target)
    return target


def store_engine(config: Config) -> Engine:
    """The review store of ``config`` (one engine per URL and process)."""
    return _engine(config.store.url or default_url(config.home))


@functools.cache
def _engine(url: str) -> Engine:
    return connect(url)


def process_batch(
    config: Config, detector: Detector, version: str, path: Path, engine: Engine
) -> BatchSummary:
    """Score one batch, store it (one transaction), log its numbers to MLflow, then mark it
    done — in that order, so a crash at any point leaves the file in the inbox and a re-run
    redoes it: the store replaces the batch's rows and the outputs are rewritten atomically."""
    if not path.is_file():
        msg = f"batch file {path} is gone (moved by another run?)"
        raise FileNotFoundError(msg)
    summary = score_file(detector, path, scored_dir(config), config.scoring.chunk_rows, version)
    empty = pd.DataFrame()
    flagged = summary.flagged if summary.flagged is not None else empty
    quarantined = summary.quarantined if summary.quarantined is not None else empty
    write_batch(
        engine, summary, config.name, flagged, quarantined, detector.preprocessor.features.id
    )
    log_batch(config, summary)
    mark_done(config, path, summary)
    return summary


def score_batches(
    config: Config, batches: list[Path], version: str | None = None
) -> list[BatchSummary]:
    """Score, store and mark done each batch with the champion (or the given version)."""
    detector, version = registry.load_detector(config, version)
    engine = store_engine(config)
    return [process_batch(config, detector, version, path, engine) for path in batches]


def sample(config: Config, n: int, seed: int = 0, version: str | None = None) -> pd.DataFrame:
    """``n`` synthetic records in raw feature space from the champion (or ``version``)."""
    detector, _ = registry.load_detector(config, version)
    X = detector.model.sample(n, seed=seed)
    return detector.preprocessor.inverse_transform(X)
