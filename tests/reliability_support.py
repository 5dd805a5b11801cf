"""Shared by the reliability tests (faults, concurrency): a small project, an inbox of batches,
and a snapshot of everything a scoring run leaves behind, to compare runs exactly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from anomaly.config import Config, load_config
from anomaly.demo_data import generate_normal, plant_anomalies
from anomaly.pipeline import scored_dir, train_and_store
from anomaly.store import Batch, Flagged, Quarantined, connect

CHUNK_ROWS = 150


def make_inbox(inbox: Path, n_parquet: int = 2) -> None:
    """``n_parquet`` clean Parquet batches and a CSV with quarantined rows and a duplicate id
    across chunks."""
    inbox.mkdir(parents=True)
    for seed in range(1, n_parquet + 1):
        frame, _ = plant_anomalies(generate_normal(400, seed=seed), 0.05, seed)
        frame.to_parquet(inbox / f"batch_{seed}.parquet")
    frame, _ = plant_anomalies(generate_normal(400, seed=99), 0.05, 99)
    frame = frame.astype({"amount": object})
    frame.loc[[5, 6], "amount"] = "n/a"
    frame.loc[300, "transaction_id"] = frame.loc[10, "transaction_id"]
    frame.to_csv(inbox / "batch_csv.csv", index=False)


def write_config(
    root: Path,
    mlflow_uri: str,
    train: Path,
    name: str = "faults",
    store_url: str | None = None,
    split_rows: int | None = None,
) -> Path:
    """A config under ``root`` (inbox, home) sharing ``mlflow_uri`` and the training file;
    ``split_rows``: Parquet batches of more rows are scored in parts when a map is given."""
    settings: dict[str, object] = {
        "name": name,
        "features": {
            "id": "transaction_id",
            "timestamp": "timestamp",
            "numeric": ["amount", "hour", "distance_km", "tx_last_24h", "account_age_days"],
            "categorical": ["merchant_category", "channel"],
        },
        "data": {"train": str(train), "inbox": str(root / "inbox")},
        "model": {"kind": "gaussian"},
        "scoring": {"chunk_rows": CHUNK_ROWS, "split_rows": split_rows},
        "mlflow": {"tracking_uri": mlflow_uri},
        "home": str(root / "home"),
    }
    if store_url:
        settings["store"] = {"url": store_url}
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def trained_champion(top: Path) -> tuple[Path, str]:
    """Training data under ``top`` and one registered champion in a shared SQLite MLflow;
    returns (top, the MLflow URI)."""
    generate_normal(3000, seed=0).to_parquet(top / "train.parquet")
    uri = f"sqlite:///{top / 'mlflow.db'}?timeout=30"
    train_and_store(load_config(write_config(top / "setup", uri, top / "train.parquet")))
    return top, uri


def snapshot(config: Config, root: Path) -> dict[str, object]:
    """Everything a scoring run leaves: store rows, output files (content), inbox folders."""
    engine = connect(f"sqlite:///{config.home / 'review.db'}")
    keep = {
        Batch: lambda r: {**_cols(r, "scored_at"), "source": _rel(r.source, root),
                          "output": _rel(r.output, root)},
        Flagged: lambda r: _cols(r, "scored_at"),
        Quarantined: lambda r: _cols(r),
    }  # fmt: skip
    state: dict[str, object] = {}
    with Session(engine) as session:
        for table, row in keep.items():
            rows = [row(r) for r in session.scalars(select(table))]
            state[table.__tablename__] = sorted(rows, key=repr)
    engine.dispose()
    out_dir = scored_dir(config)
    for path in sorted(out_dir.iterdir()):  # hidden leftovers count too
        state[f"out/{path.name}"] = (
            pd.read_parquet(path).to_dict("list") if path.is_file() else "not a file"
        )
    inbox = root / "inbox"
    for folder in ("processed", "rejected"):
        state[folder] = sorted(p.name for p in (inbox / folder).glob("*"))
    state["inbox"] = sorted(p.name for p in inbox.iterdir() if p.is_file())
    state["claimed"] = sorted(p.name for p in (inbox / ".claimed").rglob("*") if p.is_file())
    return state


def _cols(row: object, *skip: str) -> dict[str, object]:
    return {c.name: getattr(row, c.name) for c in row.__table__.c if c.name not in skip}


def _rel(path: str | None, root: Path) -> str | None:
    return None if path is None else path.replace(str(root), "<root>")
