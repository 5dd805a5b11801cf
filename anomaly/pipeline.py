"""The library-level pipeline steps the CLI (and later the flows) call: train, score, sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from anomaly import registry
from anomaly.config import Config
from anomaly.io import SUFFIXES, read_table
from anomaly.scoring import BatchSummary, batch_id_for, output_paths, score_file
from anomaly.tracking import log_training
from anomaly.training import TrainResult, train


@dataclass(frozen=True)
class Trained:
    """A training run's result, its MLflow run and the registered version."""

    result: TrainResult
    version: str
    run_id: str


def train_and_store(config: Config) -> Trained:
    """Train on ``config.data.train``, log the run to MLflow and register the model as
    ``challenger``; the first version of a model becomes ``champion`` directly."""
    data = read_table(config.data.train)
    result = train(config, data)
    run_id, model_id = log_training(config, result, data, source=config.data.train)
    version = registry.register(config, model_id, run_id)
    if registry.alias_version(config, registry.CHAMPION) is None:
        registry.promote(config, version, "first model: no champion to compare with")
    return Trained(result, version, run_id)


def scored_dir(config: Config) -> Path:
    """Where scored batch outputs of this config go."""
    return config.home / "scored" / config.name


def pending_batches(config: Config) -> list[Path]:
    """Complete batch files in the inbox that have no scored output yet.

    Hidden files and names ending in ``.tmp``/``.part`` (writes in progress) are skipped.
    """
    if not config.data.inbox:
        msg = f"config {config.name!r} names no data.inbox; pass --batch PATH instead"
        raise ValueError(msg)
    inbox = Path(config.data.inbox)
    if not inbox.is_dir():
        msg = f"inbox folder {inbox} does not exist"
        raise FileNotFoundError(msg)
    done = scored_dir(config)
    return [
        p
        for p in sorted(inbox.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in SUFFIXES
        and not output_paths(done, batch_id_for(p))[0].exists()
    ]


def score_batches(
    config: Config, batches: list[Path], version: str | None = None
) -> list[BatchSummary]:
    """Score each batch file with the champion (or the given registered version)."""
    detector, version = registry.load_detector(config, version)
    return [
        score_file(detector, path, scored_dir(config), config.scoring.chunk_rows, version)
        for path in batches
    ]


def sample(config: Config, n: int, seed: int = 0, version: str | None = None) -> pd.DataFrame:
    """``n`` synthetic records in raw feature space from the champion (or ``version``)."""
    detector, _ = registry.load_detector(config, version)
    X = detector.model.sample(n, seed=seed)
    return detector.preprocessor.inverse_transform(X)
