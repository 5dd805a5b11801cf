"""The ``promote`` flow: the challenger replaces the champion only if it passes the gate."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from anomaly import registry
from anomaly.config import Config
from anomaly.promotion import Decision, decide, evaluation_data, measure
from anomaly.tracking import client
from flows.tasks import IO, read_config, read_reviews


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_version(config: Config, version: str, labelled: object) -> dict[str, float]:
    """Metrics of one registered version on the shared labelled data."""
    detector, _ = registry.load_detector(config, version)
    return measure(detector, labelled)


@task(name="move aliases", **IO)
def apply(config: Config, version: str, decision: Decision) -> None:
    """Promote (champion → previous) and tag the version with the decision."""
    registry.promote(config, version, decision.summary())


@task(name="record decision", **IO)
def record(config: Config, version: str, decision: Decision, dry_run: bool) -> None:
    """Tag the challenger version with the decision and its numbers."""
    if dry_run:
        return
    c = client(config)
    c.set_model_version_tag(config.name, version, "promotion.decision", decision.summary())
    for key, value in decision.challenger.items():
        c.set_model_version_tag(config.name, version, f"promotion.{key}", f"{value:.6g}")


@flow(name="promote")
def promote_flow(config_path: str, dry_run: bool = False) -> dict[str, object]:
    """Compare ``challenger`` with ``champion`` on the same labelled data; move the aliases
    only if the config's rules hold (``dry_run``: decide, move nothing)."""
    logger = get_run_logger()
    config = read_config(config_path)
    challenger = registry.alias_version(config, registry.CHALLENGER)
    champion = registry.alias_version(config, registry.CHAMPION)
    if challenger is None:
        msg = f"model {config.name!r} has no challenger: run the train flow first"
        raise registry.RegistryError(msg)
    if challenger == champion:
        decision = Decision(False, [f"v{challenger} is already the champion"])
    elif champion is None:
        decision = decide(config, {}, None)
    else:
        labelled = evaluation_data(config, read_reviews(config))
        decision = decide(
            config,
            evaluate_version(config, challenger, labelled),
            evaluate_version(config, champion, labelled),
        )
    if decision.promote and not dry_run:
        apply(config, challenger, decision)
    record(config, challenger, decision, dry_run)
    moved = decision.promote and not dry_run
    lines = [f"| {k} | {decision.challenger.get(k, float('nan')):.4f} | "
             f"{decision.champion.get(k, float('nan')):.4f} |"
             for k in sorted(set(decision.challenger) | set(decision.champion))]  # fmt: skip
    create_markdown_artifact(
        key="promotion-decision",
        markdown=(
            f"# Promotion of {config.name}: challenger v{challenger} vs champion "
            f"v{champion or '—'}\n\n**{decision.summary()}**"
            f"{' (dry run: nothing moved)' if dry_run else ''}\n\n"
            "| metric | challenger | champion |\n|---|---:|---:|\n" + "\n".join(lines) + "\n"
        ),
        description="promotion gate decision",
    )
    logger.info("%s%s", decision.summary(), " (dry run)" if dry_run else "")
    return {
        "challenger": challenger,
        "champion": registry.alias_version(config, registry.CHAMPION),
        "promoted": moved,
        "decision": decision.summary(),
        "challenger_metrics": decision.challenger,
        "champion_metrics": decision.champion,
    }
