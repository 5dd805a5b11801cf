"""The demo: a config for generated card transactions, and how well flagging found the truth."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from anomaly.config import Config, ModelSpec, load_config
from anomaly.demo_data import ID
from anomaly.io import read_table

#: the reviewer whose password hash demo.yaml holds (a local demo only: replace it for real use)
DEMO_REVIEWER = ("demo", "demo-review")


@dataclass(frozen=True)
class DemoReport:
    """The flagged rows of the scored batches against the planted labels."""

    flagged: pd.DataFrame  #: flagged rows joined with their true label and kind
    precision: float
    recall: float
    recall_by_kind: dict[str, float]


def demo_config_path() -> Path:
    """The packaged demo config (``configs/demo.yaml`` in the repository)."""
    return Path(str(resources.files("anomaly") / "demo.yaml"))


def write_demo_config(home: Path, kind: str | None = None) -> Path:
    """The demo config with ``home`` filled in (and the model kind, if given), written to
    ``home/demo/config.yaml``, so later commands can use it as it is, whatever
    ``$ANOMALY_HOME`` says then."""
    settings = {"home": str(home), **yaml.safe_load(demo_config_path().read_text())}
    if kind is not None:
        settings["model"] = ModelSpec(**{**settings["model"], "kind": kind}).model_dump()
    path = home / "demo" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(settings, sort_keys=False).replace("${ANOMALY_HOME}", str(home))
    path.write_text(text)
    load_config(path)  # fail here, not in a flow, if something is wrong
    return path


def compare_with_labels(config: Config, outputs: list[str]) -> DemoReport:
    """Precision and recall of the scored outputs against ``data.labels``."""
    scored = pd.concat([pd.read_parquet(p) for p in outputs], ignore_index=True)
    labels = read_table(config.data.labels)
    joined = scored.merge(labels, on=ID, how="left", validate="one_to_one")
    truth = joined["is_anomaly_y"].fillna(False).astype(bool)
    flag = joined["is_anomaly_x"].astype(bool)
    hits = int((truth & flag).sum())
    by_kind = {
        k: float(flag[joined["kind"] == k].mean())
        for k in sorted(joined.loc[truth, "kind"].unique())
    }
    flagged = joined.loc[flag].rename(
        columns={"is_anomaly_x": "is_anomaly", "is_anomaly_y": "true_anomaly"}
    )
    return DemoReport(
        flagged=flagged.sort_values("log_likelihood"),
        precision=hits / max(int(flag.sum()), 1),
        recall=hits / max(int(truth.sum()), 1),
        recall_by_kind=by_kind,
    )
