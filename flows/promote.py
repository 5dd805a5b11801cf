"""The ``promote`` flow: the library's promotion gate (:func:`anomaly.promotion.run_gate`)
with retries, logging and a Prefect artifact."""

from __future__ import annotations

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from anomaly.config import Config
from anomaly.promotion import GateResult, run_gate
from flows.tasks import IO, markdown_table, read_config, read_reviews


@task(name="run the gate", **IO)
def gate(config: Config, reviewed: pd.DataFrame, dry_run: bool) -> GateResult:
    """Evaluate challenger and champion, decide, move the aliases if the rules hold."""
    return run_gate(config, reviewed, dry_run=dry_run)


@flow(name="promote")
def promote_flow(config_path: str, dry_run: bool = False) -> dict[str, object]:
    """Compare ``challenger`` with ``champion`` on the same labelled data; move the aliases
    only if the config's rules hold (``dry_run``: decide, move nothing)."""
    logger = get_run_logger()
    config = read_config(config_path)
    result = gate(config, read_reviews(config), dry_run)
    decision = result.decision
    rows = [[k, f"{decision.challenger.get(k, float('nan')):.4f}",
             f"{decision.champion.get(k, float('nan')):.4f}"]
            for k in sorted(set(decision.challenger) | set(decision.champion))]  # fmt: skip
    create_markdown_artifact(
        key="promotion-decision",
        markdown=(
            f"# Promotion of {config.name}: challenger v{result.challenger} vs champion "
            f"v{result.champion or '—'}\n\n**{decision.summary()}**"
            f"{' (dry run: nothing moved)' if dry_run else ''}\n\n"
            + markdown_table(["metric", "challenger", "champion"], rows)
        ),
        description="promotion gate decision",
    )
    logger.info("%s%s", decision.summary(), " (dry run)" if dry_run else "")
    return {
        "challenger": result.challenger,
        "champion": result.challenger if result.promoted else result.champion,
        "promoted": result.promoted,
        "decision": decision.summary(),
        "challenger_metrics": decision.challenger,
        "champion_metrics": decision.champion,
    }
