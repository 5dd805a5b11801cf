"""The library-level pipeline steps the CLI (and later the flows) call: train, score, sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from anomaly.config import Config
from anomaly.io import SUFFIXES
from anomaly.local_models import load_version, save_version
from anomaly.scoring import BatchSummary, batch_id_for, score_file
from anomaly.training import TrainResult, train


@dataclass(frozen=True)
class Trained:
    """A training run's result and the version it was stored as."""

    result: TrainResult
    version: int


def train_and_store(config: Config) -> Trained:
    """Train on ``config.data.train`` and store the detector as a new version."""
    result = train(config)
    version = save_version(result.detector, config.home, config.name)
    return Trained(result, version)


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
        and not (done / f"{batch_id_for(p)}.parquet").exists()
    ]


def score_batches(
    config: Config, batches: list[Path], version: int | None = None
) -> list[BatchSummary]:
    """Score each batch file with the stored detector (newest version unless given)."""
    detector, version = load_version(config.home, config.name, version)
    return [
        score_file(detector, path, scored_dir(config), config.scoring.chunk_rows, str(version))
        for path in batches
    ]


def sample(config: Config, n: int, seed: int = 0, version: int | None = None) -> pd.DataFrame:
    """``n`` synthetic records in raw feature space from the stored model."""
    detector, _ = load_version(config.home, config.name, version)
    X = detector.model.sample(n, seed=seed)
    return detector.preprocessor.inverse_transform(X)
