"""The library-level jobs the flows call, and tests and benchmarks call too: train and
register (:func:`train_and_store`), score and store (:func:`score_batches`,
:func:`process_batch`). The inbox (discovery, claims, done-marking) is :mod:`anomaly.inbox`;
the promotion gate is :func:`anomaly.promotion.run_gate`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine

from anomaly import registry
from anomaly.config import Config
from anomaly.detector import Detector
from anomaly.inbox import claim, content_hash, in_inbox, mark_done, release
from anomaly.io import read_table, shown
from anomaly.promotion import REVIEW_LABELS, decide, evaluation_data
from anomaly.scoring import BatchSummary, MapParts, batch_id_for, score_file
from anomaly.store import model_labels, reserve_batch, store_engine, write_batch
from anomaly.tracking import log_batch, log_training
from anomaly.training import TrainResult, train


@dataclass(frozen=True)
class Trained:
    """A training run's result, its MLflow run and the registered version."""

    result: TrainResult
    version: str
    run_id: str


def training_data(config: Config, reviewed: pd.DataFrame | None) -> pd.DataFrame:
    """``data.train``, plus rows reviewed as false positives when the config says so (their
    stored values, in the training data's columns)."""
    data = read_table(config.data.train)
    if reviewed is None or not config.training.include_false_positives:
        return data
    false_positives = reviewed[reviewed["label"] == "false_positive"]
    if not len(false_positives):
        return data
    # a value missing from a stored record (an older feature spec) quarantines that row
    extra = pd.DataFrame(list(false_positives["values"])).reindex(columns=data.columns)
    return pd.concat([data, extra], ignore_index=True)


def labelled_data(config: Config, reviewed: pd.DataFrame | None) -> pd.DataFrame | None:
    """Labelled rows to evaluate on: ``data.evaluation`` plus reviewed records (confirmed
    anomalies and false positives); None when there are none."""
    has_labels = reviewed is not None and reviewed["label"].isin(REVIEW_LABELS).any()
    if not config.data.evaluation and not has_labels:
        return None
    return evaluation_data(config, reviewed)


def train_and_store(config: Config, reviewed: pd.DataFrame | None = None) -> Trained:
    """The train job, as every door runs it: ``data.train`` plus reviewed false positives
    (:func:`training_data`), fitted and evaluated on :func:`labelled_data`, logged to MLflow
    and registered (:func:`register_result`).

    ``reviewed``: the model's current labels (:func:`anomaly.store.model_labels`), read from
    the store if None.
    """
    reviewed = model_labels(config) if reviewed is None else reviewed
    data = training_data(config, reviewed)
    return register_result(config, train(config, data, labelled_data(config, reviewed)), data)


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


def process_batch(
    config: Config,
    detector: Detector,
    version: str,
    path: Path,
    engine: Engine,
    map_parts: MapParts | None = None,
) -> BatchSummary | None:
    """Score one batch, store it (one transaction), log its numbers to MLflow, then mark it
    done — in that order, so a crash at any point leaves the file in the inbox (or in a claim
    that the next run puts back) and a re-run redoes it: the store replaces the batch's rows
    and the outputs are rewritten atomically.

    The batch's id is its file name, reserved in the store with the file's content hash; a
    file with other content under a used name gets ``name@<hash>`` (see
    :func:`anomaly.store.reserve_batch`), so it never replaces a stored batch or its outputs.

    An inbox batch is claimed first (see :func:`claim`); None means another run claimed it.

    With ``map_parts`` (e.g. the Dask workers' map), a Parquet file of more than
    ``scoring.split_rows`` rows is scored in parts that it runs, merged into one batch here
    (see :func:`anomaly.scoring.score_file`); without, a file is scored whole.
    """
    inbox = in_inbox(config, path)
    if inbox is None:
        if not path.is_file():
            msg = f"batch file {path} is gone (moved by another run?)"
            raise FileNotFoundError(msg)
        work: Path | None = path
    else:
        work = claim(inbox, path)
        if work is None:
            return None
    try:
        digest = content_hash(work)
        batch_id = reserve_batch(
            engine, batch_id_for(work), digest, work.suffix, shown(path, full=True), config.name
        )
        summary = _score(config, detector, version, work, batch_id, map_parts)
        source = shown(path, full=True)
        summary = dataclasses.replace(summary, source=source, content_hash=digest)
        empty = pd.DataFrame()
        # read by the store in slices, one chunk's rows at a time from the spill file
        flagged = summary.flagged_rows if summary.flagged_rows is not None else empty
        quarantined = summary.quarantined if summary.quarantined is not None else empty
        write_batch(
            engine, summary, config.name, flagged, quarantined, detector.preprocessor.features.id
        )
        log_batch(config, summary)
        mark_done(config, work, summary)
    except BaseException:
        if inbox is not None:
            release(inbox, work)
        raise
    return summary


def _score(
    config: Config,
    detector: Detector,
    version: str,
    path: Path,
    batch_id: str,
    map_parts: MapParts | None,
) -> BatchSummary:
    """Score a batch file; a symbolic link is rejected (it could point outside the inbox)."""
    if path.is_symlink():
        msg = f"{shown(path)} is a symbolic link; put the batch file itself in the inbox"
        return BatchSummary(batch_id, str(path), "rejected", error=msg)
    return score_file(
        detector,
        path,
        scored_dir(config),
        config.scoring.chunk_rows,
        version,
        explain_rows=config.scoring.explain_rows,
        batch_id=batch_id,
        passthrough=config.scoring.passthrough,
        split_rows=None if map_parts is None else config.scoring.split_rows,
        map_parts=map_parts or map,
    )


def score_batches(
    config: Config,
    batches: list[Path],
    version: str | None = None,
    map_parts: MapParts | None = None,
) -> list[BatchSummary]:
    """Score, store and mark done each batch with the champion (or the given version); batches
    claimed by another run are left to it. ``map_parts``: see :func:`process_batch`."""
    detector, version = registry.load_detector(config, version)
    engine = store_engine(config)
    summaries = (
        process_batch(config, detector, version, path, engine, map_parts) for path in batches
    )
    return [s for s in summaries if s is not None]
