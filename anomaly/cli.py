"""The ``anomaly`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from anomaly.config import Config, ConfigError, anomaly_home, load_config
from anomaly.io import DataError, write_parquet_atomic
from anomaly.models import KINDS
from anomaly.registry import RegistryError
from anomaly.scoring import BatchSummary

app = typer.Typer(
    help="Generative anomaly detection: learn p(x) of normal records, flag the improbable.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)
out = Console()

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
VersionOption = Annotated[
    str | None,
    typer.Option("--model-version", help="Registered model version (default: the champion)."),
]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def _config(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Generative anomaly detection for tabular data."""
    for var in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):  # offline-friendly defaults
        os.environ.setdefault(var, "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    logging.getLogger("mlflow").setLevel(level)  # MLflow logs INFO chatter by default


@app.command()
def demo(
    home: Annotated[
        Path | None, typer.Option(help="State directory (default $ANOMALY_HOME).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help=f"Model kind: {', '.join(KINDS)}.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated data.")] = 0,
) -> None:
    """Generate demo transactions, train, score the demo batches, report precision/recall."""
    from anomaly.demo import run_demo

    home = (home or anomaly_home()).resolve()
    start = time.perf_counter()
    console.print(f"demo: writing data, training and scoring under [bold]{home}[/]")
    try:
        report = run_demo(home, kind=kind, seed=seed)
    except (ValueError, RegistryError) as exc:
        raise _fail(str(exc)) from exc
    _print_batches(report.batches)
    cols = ["transaction_id", "log_likelihood", "p_value", "reason", "true_anomaly", "kind"]
    table = Table(title=f"Most improbable of {len(report.flagged)} flagged records")
    for c in cols:
        table.add_column(c)
    for _, row in report.flagged.head(10).iterrows():
        table.add_row(*[_fmt(row[c]) for c in cols])
    out.print(table)
    m = report.trained.result.metrics
    out.print(
        f"model [bold]{report.config.name}[/] v{report.trained.version} "
        f"({report.trained.result.detector.metadata['kind']}): held-out log-likelihood "
        f"{m['heldout_log_likelihood']:.3f} nats/record, held-out FPR {m['heldout_fpr']:.4f} "
        f"at alpha {report.config.calibration.alpha}"
    )
    out.print(
        f"precision [bold]{report.precision:.3f}[/], recall [bold]{report.recall:.3f}[/] "
        "against the planted labels; recall by kind: "
        + ", ".join(f"{k} {v:.2f}" for k, v in report.recall_by_kind.items())
    )
    out.print(f"scored batches: {home / 'scored' / report.config.name}")
    out.print(
        f"champion: models:/{report.config.name}@champion in MLflow at {home / 'mlflow'} "
        f"(mlflow ui --backend-store-uri sqlite:///{home / 'mlflow' / 'mlflow.db'})"
    )
    out.print(f"done in {time.perf_counter() - start:.1f} s")


@app.command()
def train(config: ConfigOption) -> None:
    """Train a detector on the config's normal data and store it as a new version."""
    from anomaly.pipeline import train_and_store

    cfg = _config(config)
    try:
        trained = train_and_store(cfg)
    except (DataError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    title = f"{cfg.name} v{trained.version} ({cfg.model.kind}), MLflow run {trained.run_id}"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in trained.result.metrics.items():
        table.add_row(key, f"{value:.6g}")
    out.print(table)


@app.command()
def score(
    config: ConfigOption,
    batch: Annotated[
        list[Path] | None,
        typer.Option(help="Batch file(s) to score (default: the inbox's new files)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per batch.")] = False,
    model_version: VersionOption = None,
) -> None:
    """Score batch files; write scored Parquet and quarantined rows under ANOMALY_HOME."""
    from anomaly.pipeline import pending_batches, score_batches

    cfg = _config(config)
    try:
        batches = batch or pending_batches(cfg)
        summaries = score_batches(cfg, batches, model_version)
    except (FileNotFoundError, ValueError, RegistryError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        for s in summaries:
            out.print_json(json.dumps(s.to_dict()), indent=None)
    elif summaries:
        _print_batches(summaries)
    else:
        console.print("no new batches")
    if any(s.status == "rejected" for s in summaries):
        raise typer.Exit(code=1)


@app.command()
def sample(
    config: ConfigOption,
    n: Annotated[int, typer.Option("-n", min=1, help="Number of records.")] = 1000,
    output: Annotated[Path, typer.Option("--out", help="Parquet or CSV file to write.")] = Path(
        "samples.parquet"
    ),
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    model_version: VersionOption = None,
) -> None:
    """Draw synthetic normal records from the trained model."""
    from anomaly.pipeline import sample as draw

    cfg = _config(config)
    try:
        frame = draw(cfg, n, seed=seed, version=model_version)
    except RegistryError as exc:
        raise _fail(str(exc)) from exc
    if output.suffix.lower() == ".csv":
        frame.to_csv(output, index=False)
    else:
        write_parquet_atomic(frame, output)
    console.print(f"wrote {len(frame)} samples to {output}")


@app.command()
def history(config: ConfigOption) -> None:
    """Print every alias change of the config's registered model: who, when, why."""
    from anomaly.registry import history as events

    cfg = _config(config)
    try:
        rows = events(cfg)
    except RegistryError as exc:
        raise _fail(str(exc)) from exc
    table = Table(title=f"Alias history of {cfg.name}")
    for col in ("at", "alias", "version", "replaced", "by", "reason"):
        table.add_column(col)
    for e in rows:
        table.add_row(e.at, e.alias, e.version, e.replaced or "", e.by, e.reason)
    out.print(table)


@app.command()
def rollback(
    config: ConfigOption,
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")] = "manual",
) -> None:
    """Put the ``previous`` version back as champion."""
    from anomaly.registry import rollback as roll_back

    cfg = _config(config)
    try:
        events = roll_back(cfg, reason)
    except RegistryError as exc:
        raise _fail(str(exc)) from exc
    for e in events:
        out.print(f"{e.alias} → v{e.version} (was v{e.replaced})")


def _print_batches(summaries: list[BatchSummary]) -> None:
    table = Table(title="Batches")
    width = max(len(s.batch_id) for s in summaries)
    table.add_column("batch", no_wrap=True, min_width=width)
    for header in ("status", "in", "scored", "quarantined", "flagged", "flag rate", "shift"):
        table.add_column(header)
    for s in summaries:
        table.add_row(
            s.batch_id,
            s.status,
            str(s.rows_in),
            str(s.rows_scored),
            str(s.rows_quarantined),
            str(s.rows_flagged),
            f"{s.flag_rate:.4f}",
            "[red]alarm[/]" if s.shift_alarm else "no",
        )
        if s.error:
            table.add_row(s.batch_id, f"[red]{s.error}[/]")
    out.print(table)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    sys.exit(app())
