"""A real review site for the dashboard tests: a trained, registered model (MLflow on SQLite), a
batch scored by the pipeline, and synthetic flagged batches with contributions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import update
from store_data import fill

from anomaly import store
from anomaly.config import Config, load_config
from anomaly.dashboard.auth import hash_password, hash_token
from anomaly.demo_data import generate_normal, plant_anomalies
from anomaly.pipeline import score_batches, train_and_store
from anomaly.store import store_engine

PASSWORD = "correct horse battery"
TOKEN = "test-token-0123456789abcdef"
FEATURES = {
    "id": "transaction_id",
    "timestamp": "timestamp",
    "numeric": ["amount", "hour", "distance_km", "tx_last_24h", "account_age_days"],
    "categorical": ["merchant_category", "channel"],
}


def site_settings(**dashboard: Any) -> dict[str, Any]:
    """The ``dashboard:`` section: reviewer ann (password), bot (token), plus ``dashboard``."""
    return {
        "users": {"ann": hash_password(PASSWORD, iterations=1000)},
        "tokens": {"bot": hash_token(TOKEN)},
        **dashboard,
    }


def write_config(folder: Path, **dashboard: Any) -> Path:
    """A config for generated transactions, with the reviewers of :func:`site_settings`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    config = {
        "name": "tx-dash",
        "features": FEATURES,
        "data": {"train": "train.parquet", "inbox": "inbox"},
        "model": {"kind": "gaussian"},
        "home": "home",
        "dashboard": site_settings(**dashboard),
    }
    path.write_text(yaml.safe_dump(config))
    return path


def build_site(folder: Path) -> Config:
    """Train v1 (champion), score one real batch, add three synthetic batches scored on the
    three days before (so the overview has days)."""
    path = write_config(folder)
    generate_normal(3000, seed=0).to_parquet(folder / "train.parquet")
    (folder / "inbox").mkdir(exist_ok=True)
    batch, _ = plant_anomalies(generate_normal(500, seed=5), rate=0.04, seed=5)
    batch.to_parquet(folder / "inbox" / "real.parquet")
    config = load_config(path)
    train_and_store(config)
    score_batches(config, [folder / "inbox" / "real.parquet"])
    engine = store_engine(config)
    written = fill(engine, batches=3, per_batch=30, version="1")
    today = datetime.now(UTC)
    with engine.begin() as conn:
        for days_ago, s in zip((3, 2, 1), written, strict=True):
            for table in (store.Batch, store.Flagged):
                conn.execute(
                    update(table)
                    .where(table.batch_id == s.batch_id)
                    .values(scored_at=today - timedelta(days=days_ago))
                )
    return config
