"""``anomaly demo``: generate card transactions, train, score the inbox, compare with the truth."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from anomaly.config import Config, ModelSpec, load_config
from anomaly.demo_data import ID, write_demo
from anomaly.io import read_table
from anomaly.pipeline import Trained, pending_batches, score_batches, train_and_store
from anomaly.scoring import BatchSummary


@dataclass(frozen=True)
class DemoReport:
    """Everything the demo did, and how well it found the planted anomalies."""

    config: Config
    trained: Trained
    batches: list[BatchSummary]
    flagged: pd.DataFrame  #: flagged rows joined with their true label and kind
    precision: float
    recall: float
    recall_by_kind: dict[str, float]


def demo_config_path() -> Path:
    """The packaged demo config (``configs/demo.yaml`` in the repository)."""
    return Path(str(resources.files("anomaly") / "demo.yaml"))


def run_demo(home: Path, kind: str | None = None, seed: int = 0) -> DemoReport:
    """Write demo data under ``home/demo``, train, score every batch, evaluate."""
    config = load_config(demo_config_path(), home=home)
    if kind is not None:
        model = ModelSpec(**{**config.model.model_dump(), "kind": kind})  # validates the kind
        config = config.model_copy(update={"model": model})
    write_demo(home / "demo", seed=seed)
    trained = train_and_store(config)
    summaries = score_batches(config, pending_batches(config), trained.version)
    scored = pd.concat(
        [pd.read_parquet(s.output) for s in summaries if s.output],
        ignore_index=True,
    )
    labels = read_table(config.data.labels)
    joined = scored.merge(labels, on=ID, how="left", validate="one_to_one")
    truth = joined["is_anomaly_y"].fillna(False).astype(bool)
    flag = joined["is_anomaly_x"].astype(bool)
    hits = int((truth & flag).sum())
    precision = hits / max(int(flag.sum()), 1)
    recall = hits / max(int(truth.sum()), 1)
    by_kind = {
        k: float(flag[joined["kind"] == k].mean())
        for k in sorted(joined.loc[truth, "kind"].unique())
    }
    flagged = joined.loc[flag].rename(
        columns={"is_anomaly_x": "is_anomaly", "is_anomaly_y": "true_anomaly"}
    )
    flagged = flagged.sort_values("log_likelihood")
    return DemoReport(config, trained, summaries, flagged, precision, recall, by_kind)
