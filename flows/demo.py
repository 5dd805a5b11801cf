"""``anomaly demo`` as a flow: generate data, then train → promote → score through the flows."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from anomaly.config import load_config
from anomaly.demo import DemoReport, compare_with_labels, write_demo_config
from anomaly.demo_data import write_demo
from flows.promote import promote_flow
from flows.score import score_flow
from flows.train import train_flow


@flow(name="demo")
def demo_flow(home: str, kind: str | None = None, seed: int = 0) -> dict[str, object]:
    """Write demo data under ``home/demo``, then run the three flows on it."""
    home_path = Path(home)
    config_path = str(write_demo_config(home_path, kind))
    write_demo(home_path / "demo", seed=seed)
    trained = train_flow(config_path)
    promoted = promote_flow(config_path)
    summaries = score_flow(config_path)
    return {
        "config": config_path,
        "train": trained,
        "promote": promoted,
        "batches": summaries,
    }


def demo_report(result: dict[str, object], home: Path) -> DemoReport:
    """Compare the demo's flagged records with the planted labels."""
    config = load_config(str(result["config"]), home=home)
    outputs = [s["output"] for s in result["batches"] if s["output"]]  # type: ignore[union-attr]
    return compare_with_labels(config, outputs)
