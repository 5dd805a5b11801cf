"""The ``anomaly`` command line: runs the Prefect flows on the local Prefect server
(``flows/server.py``); commands that run no flow never import Prefect."""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anomaly.config import Config, ConfigError, ModelSpec, anomaly_home, load_config

# Everything heavier (torch, MLflow, Prefect) is imported inside the commands: `--help` and
# user errors stay fast, and Prefect reads the settings `_prefect_defaults` and `_prefect` put
# in the environment (PREFECT_API_URL among them) when it is first imported.

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


#: ``-v``: user errors print their traceback too
_verbose = False

#: young-object collections happen after this many allocations (Python's default: 700). A
#: command imports thousands of modules whose objects all live to the end, and the default
#: rescans them over and over: ~1 s of CPU per command (docs/benchmarks.md, issue 14)
GC_THRESHOLD = 50_000

#: ``explain``: rows explained, then printed, at a time (the default `auto`: ~8 s per 200 rows
#: of the demo data on one core)
EXPLAIN_PART = 200
#: ``explain``: quarantined rows named with their reason (the rest are counted)
QUARANTINE_SHOWN = 10


def _fail(message: str) -> typer.Exit:
    """One line on stderr and exit code 2 (with ``-v``, the traceback being handled first)."""
    if _verbose and sys.exc_info()[0] is not None:
        console.print(traceback.format_exc(), highlight=False, markup=False)
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    console.print(f"[bold red]error:[/] {escape(line)}", highlight=False)
    return typer.Exit(code=2)


def _config(path: Path) -> Config:
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    _prefect_defaults(config.home)
    return config


def _prefect_defaults(home: Path) -> None:
    """Prefect settings for a machine with no server: state under ANOMALY_HOME, no telemetry,
    a start-up timeout long enough for a fresh database (Prefect 3.8.8's temporary API took
    10–20 s to migrate a fresh state database and could time out at its default). Set before
    Prefect is imported; variables already set win."""
    (home / "prefect").mkdir(parents=True, exist_ok=True)  # Prefect creates only the leaf
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def _prefect(home: Path) -> Iterator[None]:
    """Run flows against PREFECT_API_URL, else the local server ``anomaly serve`` runs, else a
    temporary server of this command's own (stopped on exit; it dies with us even on kill -9)."""
    from flows.server import ServerError, api_for_command

    _prefect_defaults(home)
    try:
        with api_for_command(home), _no_heartbeats():
            yield
    except ServerError as exc:
        raise _fail(str(exc)) from exc


@contextlib.contextmanager
def _no_heartbeats() -> Iterator[None]:
    """The flow runs of a one-shot command send no heartbeats (unless
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set): Prefect's heartbeat thread sleeps in one-second
    steps and a finished run waits for it, up to a second per run (issue 14). Heartbeats feed
    only a zombie-run automation, which nothing here sets up; a killed command's batches are
    recovered by the inbox claims."""
    with _uncollected():  # all of Prefect loads here
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _files(option: str, paths: list[Path]) -> None:
    """Every path names an existing file, and no two the same file name (batches are known by
    their file name)."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            msg = f"{option} {path} is a directory, not a file"
            raise _fail(msg)
        if not path.is_file():
            msg = f"{option} {path}: no such file"
            raise _fail(msg)
        if path.name in seen:
            msg = f"{option} {seen[path.name]} and {path} have the same file name {path.name!r}"
            raise _fail(msg)
        seen[path.name] = path


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log more; print tracebacks of errors.")
    ] = False,
) -> None:
    """Generative anomaly detection for tabular data."""
    global _verbose
    _verbose = verbose
    _fewer_collections()
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    logging.getLogger("mlflow").setLevel(level)  # MLflow logs INFO chatter by default


def _fewer_collections() -> None:
    """Collect garbage less often while the command runs, and not at all on the way out: at
    exit, every object still alive is frozen, so that the interpreter's final collections
    (another ~1 s of CPU after torch, MLflow and Prefect are imported) skip them; the process
    ends and its memory goes back to the system anyway."""
    threshold, *older = gc.get_threshold()
    if threshold < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, *older)
        atexit.register(gc.freeze)  # registered first, so run last: after Prefect's flushes


@contextlib.contextmanager
def _uncollected() -> Iterator[None]:
    """No garbage collection inside the block, and what is alive after it frozen (never
    scanned again): for the imports of MLflow, Prefect and a model's kind, millions of objects
    that all live until exit and that collections rescanned for nothing, ~0.4 s of CPU of a
    ``score`` (issue 14). Only around imports and a model's loading: no long-running work."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _check(call: Any, *args: Any) -> None:
    """Catch a user's mistake before a flow starts (a flow would log its traceback)."""
    _run(call, *args)


def _run(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a flow or a library call; user errors become one line and exit code 2."""
    from flows.errors import USER_ERRORS

    try:
        return call(*args, **kwargs)
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from exc


@app.command()
def demo(
    home: Annotated[
        Path | None, typer.Option(help="State directory (default $ANOMALY_HOME).")
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="Model kind, e.g. knn, gmm, flow (default: knn).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated data.")] = 0,
) -> None:
    """Generate demo transactions, then train → promote → score through the flows."""
    home = (home or anomaly_home()).resolve()
    _prefect_defaults(home)
    if kind is not None:
        _check(lambda: ModelSpec(kind=kind))
    start = time.perf_counter()
    console.print(f"demo: writing data, training, promoting and scoring under [bold]{home}[/]")
    with _prefect(home):
        from flows.demo import demo_flow, demo_report

        result = _run(demo_flow, str(home), kind=kind, seed=seed)
        report = _run(demo_report, result, home)
    _print_batches(result["batches"])
    cols = ["transaction_id", "log_likelihood", "p_value", "reason", "true_anomaly", "kind"]
    table = Table(title=f"Most improbable of {len(report.flagged)} flagged records")
    for c in cols:
        table.add_column(c)
    for _, row in report.flagged.head(10).iterrows():
        table.add_row(*[_fmt(row[c]) for c in cols])
    out.print(table)
    m = result["train"]["metrics"]
    out.print(
        f"model v{result['train']['version']}: held-out log-likelihood "
        f"{m['heldout_log_likelihood']:.3f} nats/record, held-out FPR {m['heldout_fpr']:.4f}; "
        f"promotion: {result['promote']['decision']}"
    )
    out.print(
        f"precision [bold]{report.precision:.3f}[/], recall [bold]{report.recall:.3f}[/] "
        "against the planted labels; recall by kind: "
        + ", ".join(f"{k} {v:.2f}" for k, v in report.recall_by_kind.items())
    )
    out.print(f"config: {result['config']}")
    out.print(f"scored batches: {home / 'scored'}; review store: {home / 'review.db'}")
    out.print(f"MLflow: mlflow ui --backend-store-uri sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    from anomaly.demo import DEMO_REVIEWER

    out.print(
        f"dashboard: anomaly dashboard --config {result['config']}  "
        f"(log in as {DEMO_REVIEWER[0]!r}, password {DEMO_REVIEWER[1]!r}, to review)"
    )
    out.print(f"done in {time.perf_counter() - start:.1f} s")


#: ``anomaly train --help``: one line per paragraph (rich keeps a docstring's line breaks);
#: a backslash before ``[`` keeps the bracket from being read as rich markup
TRAIN_HELP = (
    "Train a detector and register it as challenger (the first one becomes champion).\n\n"
    "The model is the config's model.kind, by default auto: the consensus of gmm, kde, knn and "
    "flow. It fits four models (each fit is shown as it runs) and is slower to fit, score and "
    "explain than one kind. The earlier, faster default is model.params "
    "{candidates: \\[kde, knn], rule: mean}. See docs/models.md."
)


@app.command(help=TRAIN_HELP)
def train(config: ConfigOption) -> None:
    """Train a detector and register it as challenger (the first one becomes champion)."""
    cfg = _config(config)
    from anomaly.training import check_training_files, model_for

    _check(model_for, cfg)  # a bad model parameter, before the flow would log its traceback
    _check(check_training_files, cfg)  # so are missing files and columns
    with _prefect(cfg.home):
        from flows.train import train_flow

        result = _run(train_flow, str(config))
    title = f"{cfg.name} v{result['version']} ({cfg.model.kind}), MLflow run {result['run_id']}"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result["metrics"].items():
        table.add_row(key, f"{value:.6g}")
    out.print(table)
    if result["selection"]:  # kind auto: what it chose, and why
        scores, weights = result["selection"]["candidates"], result["selection"]["weights"]
        mix = ", ".join(f"{k} {w:.3g}" for k, w in weights.items()) if len(weights) > 1 else ""
        out.print(
            f"auto chose {result['selection']['chosen']}"
            + (f" (weights: {mix})" if mix else "")
            + "; held-out log-likelihood per candidate: "
            + ", ".join(f"{k} {v:.6g}" for k, v in scores.items())
        )


@app.command()
def promote(
    config: ConfigOption,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide, move nothing.")] = False,
) -> None:
    """Run the promotion gate: challenger vs champion on the same labelled data."""
    cfg = _config(config)
    from anomaly import registry

    _check(registry.resolve_version, cfg, registry.CHALLENGER)
    with _prefect(cfg.home):
        from flows.promote import promote_flow

        result = _run(promote_flow, str(config), dry_run=dry_run)
    table = Table(title=f"challenger v{result['challenger']} vs champion")
    for col in ("metric", "challenger", "champion"):
        table.add_column(col)
    challenger, champion = result["challenger_metrics"], result["champion_metrics"]
    for key in sorted(set(challenger) | set(champion)):
        table.add_row(key, _fmt(challenger.get(key, "")), _fmt(champion.get(key, "")))
    out.print(table)
    verdict = "promoted" if result["promoted"] else "not promoted"
    out.print(f"{verdict}{' (dry run)' if dry_run else ''}: {result['decision']}")


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
    """Score batch files with the champion; store flagged and quarantined rows."""
    _files("--batch", batch or [])
    cfg = _config(config)
    with _uncollected():  # MLflow and the model's kind load here
        from anomaly import registry
        from anomaly.inbox import pending_batches

        if not batch and not _run(pending_batches, cfg):
            console.print("no new batches")
            return
        _check(registry.load_detector, cfg, model_version)  # a corrupt model fails here, once
    batches = [str(b) for b in batch] if batch else None
    with _prefect(cfg.home):
        from flows.score import score_flow_for

        summaries = _run(
            score_flow_for(cfg), str(config), batches=batches, model_version=model_version
        )
    if as_json:
        for s in summaries:
            out.print_json(json.dumps(s), indent=None)
    elif summaries:
        _print_batches(summaries)
    else:
        console.print("no new batches")
    if any(s["status"] == "rejected" for s in summaries):
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
    context: Annotated[
        list[str] | None,
        typer.Option(
            "--context",
            help="col=value for each features.context column (repeat): draw from p(x | context).",
        ),
    ] = None,
) -> None:
    """Draw synthetic normal records from the champion (or a version)."""
    from anomaly.io import write_table
    from anomaly.registry import sample as draw

    cfg = _config(config)
    values = {}
    for item in context or []:
        col, sep, value = item.partition("=")
        if not sep or not col:
            msg = f"--context expects col=value, got {item!r}"
            raise _fail(msg)
        values[col] = value
    frame = _run(draw, cfg, n, seed=seed, version=model_version, context=values or None)
    write_table(frame, output)
    console.print(f"wrote {len(frame)} samples to {output}")


@app.command()
def explain(
    config: ConfigOption,
    input_file: Annotated[
        Path, typer.Option("--input", "-i", help="CSV/Parquet file of records to explain.")
    ],
    top: Annotated[int, typer.Option(min=1, help="Features per record.")] = 5,
    all_rows: Annotated[
        bool, typer.Option("--all", help="Explain every scored row, not only flagged ones.")
    ] = False,
    model_version: VersionOption = None,
) -> None:
    """Print why records are improbable: per record (JSON lines) the features most to blame,
    with their contribution in nats, the value and a typical value (docs/explanations.md)."""
    from anomaly.explain import explain as explain_rows
    from anomaly.io import read_table
    from anomaly.registry import load_detector

    _files("--input", [input_file])
    cfg = _config(config)
    detector, _ = _run(load_detector, cfg, model_version)
    df = _run(read_table, input_file)
    scored = _run(detector.predict, df)  # a missing column is the user's to fix
    quarantined = scored["quarantined"].to_numpy(bool)
    keep = ~quarantined
    if not all_rows:
        keep &= scored["is_anomaly"].to_numpy(bool)
    rows = [int(i) for i in keep.nonzero()[0]]
    id_col = detector.preprocessor.features.id
    # in parts, each printed when done: the output streams and shows the progress (a row's
    # explanation does not depend on the rows explained with it, up to float rounding)
    for start in range(0, len(rows), EXPLAIN_PART):
        part = rows[start : start + EXPLAIN_PART]
        explained = explain_rows(detector, df.iloc[part].reset_index(drop=True), top=top)
        for i, contributions in zip(part, explained, strict=True):
            record = {
                id_col: str(scored[id_col].iat[i]),
                "log_likelihood": float(scored["log_likelihood"].iat[i]),
                "p_value": float(scored["p_value"].iat[i]),
                "is_anomaly": bool(scored["is_anomaly"].iat[i]),
                "reason": str(scored["reason"].iat[i]),
                "contributions": contributions,
            }
            typer.echo(json.dumps(record))  # one line per record, never wrapped
        if start + len(part) < len(rows):
            console.print(f"explained {start + len(part)} of {len(rows)} records so far")
    console.print(f"explained {len(rows)} of {len(df)} records")
    if quarantined.any():  # not scored, so not explained: say which and why
        for i in quarantined.nonzero()[0][:QUARANTINE_SHOWN].tolist():
            console.print(
                f"quarantined {scored[id_col].iat[i]}: {scored['reason'].iat[i]}",
                highlight=False,
                markup=False,
            )
        console.print(f"{int(quarantined.sum())} quarantined row(s), not explained")


@app.command()
def history(config: ConfigOption) -> None:
    """Print every alias change of the config's registered model: who, when, why."""
    with _uncollected():
        from anomaly.registry import history as events

    cfg = _config(config)
    rows = _run(events, cfg)
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
    for e in _run(roll_back, cfg, reason):
        out.print(f"{e.alias} → v{e.version} (was v{e.replaced})")


@app.command()
def serve(config: ConfigOption) -> None:
    """Serve the flows as deployments with the config's schedules on the local Prefect server
    (started here, with its scheduler and UI, unless one is up); Ctrl-C or SIGTERM stops."""
    cfg = _config(config)
    from flows.server import ServerError, configured_api, local_server

    with contextlib.ExitStack() as stack:
        if not configured_api():
            console.print(f"starting the local Prefect server (state: {cfg.home / 'prefect'})")
            try:
                server, started = stack.enter_context(local_server(cfg.home))
            except ServerError as exc:
                raise _fail(str(exc)) from exc
            os.environ["PREFECT_API_URL"] = server.api_url
            typer.echo(f"Prefect UI: {server.ui_url}" + ("" if started else " (already running)"))
        from flows.deployments import deployments, serve_deployments

        runnable = _run(deployments, config)
        for d in runnable:
            kind = d.name.removeprefix(f"{cfg.name}-")
            when = ", ".join(s.schedule.cron for s in d.schedules) or "on demand"
            typer.echo(f"  {d.flow_name}/{d.name}  ({when}); now: anomaly run {kind} -c {config}")
        console.print(f"serving; new files in {cfg.data.inbox} are scored on schedule; "
                      "Ctrl-C or SIGTERM stops")  # fmt: skip
        serve_deployments(runnable)
    console.print("stopped")


@app.command("run")
def run_now(
    kind: Annotated[str, typer.Argument(help="score, retrain, train or promote.")],
    config: ConfigOption,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish.")] = True,
) -> None:
    """Run a served deployment now, on the ``anomaly serve`` that runs this config."""
    cfg = _config(config)
    if kind not in ("score", "retrain", "train", "promote"):
        msg = f"no deployment {kind!r}: choose score, retrain, train or promote"
        raise _fail(msg)
    from flows.server import configured_api, running

    if not configured_api():
        if (server := running(cfg.home)) is None:
            msg = f"no `anomaly serve` runs for {cfg.home}: start `anomaly serve -c {config}`"
            raise _fail(msg)
        os.environ["PREFECT_API_URL"] = server.api_url
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_UI_URL

    name = f"{kind}/{cfg.name}-{kind}"
    try:
        flow_run = run_deployment(
            name, timeout=None if wait else 0, poll_interval=1, as_subflow=False
        )
    except ObjectNotFound as exc:
        msg = f"no deployment {name}: is `anomaly serve -c {config}` running?"
        raise _fail(msg) from exc
    state = flow_run.state.name if flow_run.state else "Scheduled"
    ui = f"{PREFECT_UI_URL.value()}/runs/flow-run/{flow_run.id}"
    typer.echo(f"{name}: flow run {flow_run.name!r} {state}  {ui}")
    if kind == "score" and flow_run.state and flow_run.state.is_completed():
        from flows.score import batches_of_run

        for b in batches_of_run(flow_run.id):
            typer.echo(
                f"  {b['batch_id']}: {b['status']}, {b['rows_in']} rows, {b['rows_flagged']} "
                f"flagged, {b['rows_quarantined']} quarantined"
                + (f" ({b['error']})" if b.get("error") else "")
            )
    if wait and not (flow_run.state and flow_run.state.is_completed()):
        raise typer.Exit(code=1)


@app.command()
def dashboard(
    config: ConfigOption,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the review dashboard (queue, records, batches, model; JSON API under /api)."""
    import uvicorn

    from anomaly.dashboard import create_app

    cfg = _config(config)
    for key, value in {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }.items():
        os.environ.setdefault(key, value)  # an unreachable MLflow server degrades pages quickly
    try:
        application = create_app(cfg)
    except ValueError as exc:  # a bad users/tokens environment variable
        raise _fail(str(exc)) from exc
    if not (cfg.dashboard.users or cfg.dashboard.tokens or os.environ.get(cfg.dashboard.users_env)):
        console.print("no reviewers configured: nobody can review; see `anomaly hash-password`")
    console.print(f"dashboard of {cfg.name}: http://{host}:{port}/  (API docs: /docs)")
    uvicorn.run(application, host=host, port=port, log_level="warning")


@app.command()
def export(
    config: ConfigOption,
    output: Annotated[Path, typer.Option("--out", help="CSV or Parquet file to write.")],
) -> None:
    """Write every reviewed record (current label, note, reviewer, scores, values) to a file."""
    from anomaly.store import reviewed_records, store_engine, write_export

    cfg = _config(config)
    if output.suffix.lower() not in (".csv", ".parquet", ".pq"):
        msg = f"--out must end in .csv or .parquet, got {output.name!r}"
        raise _fail(msg)
    frame = reviewed_records(store_engine(cfg))
    write_export(frame, output)
    console.print(f"wrote {len(frame)} reviewed records to {output}")


@app.command("hash-password")
def hash_password(
    token: Annotated[
        bool, typer.Option("--token", help="Make a random API token and print it with its hash.")
    ] = False,
) -> None:
    """Hash a reviewer's password (asked for, never echoed) or make an API token, for the
    config's ``dashboard.users`` / ``dashboard.tokens``."""
    from anomaly.dashboard.auth import hash_password as hashed
    from anomaly.dashboard.auth import hash_token, new_token

    if token:
        secret = new_token()
        typer.echo(f"token (give it to the reviewer; shown once): {secret}")
        typer.echo(f"hash (put it under dashboard.tokens): {hash_token(secret)}")
        return
    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise _fail("use at least 8 characters")
    typer.echo(hashed(password))  # plain: no line wrapping inside the hash


@app.command("verify-model")
def verify_model(
    config: ConfigOption,
    model_version: VersionOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Keep the verified copy here (serve it with `mlflow models serve -m DIR`).",
        ),
    ] = None,
) -> None:
    """Check every file of a registered model against the SHA-256 recorded at registration."""
    from anomaly.registry import CHAMPION, download_verified, resolve_version

    cfg = _config(config)
    version = _run(resolve_version, cfg, model_version or CHAMPION)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    local = _run(download_verified, cfg, version, out_dir)
    out.print(f"model {cfg.name} version {version}: every file matches its registered SHA-256")
    if out_dir is not None:
        out.print(f"verified copy: {local}")


sessions_app = typer.Typer(help="Dashboard logins: list them, end them.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")


@sessions_app.command("list")
def sessions_list(config: ConfigOption) -> None:
    """Print the dashboard logins that have not ended or expired."""
    from anomaly.store import live_sessions, store_engine

    table = Table(title="Dashboard logins")
    for col in ("user", "since", "expires"):
        table.add_column(col)
    for s in live_sessions(store_engine(_config(config))):
        table.add_row(s.user, f"{s.created_at:%Y-%m-%d %H:%M}", f"{s.expires_at:%Y-%m-%d %H:%M}")
    out.print(table)


@sessions_app.command("revoke")
def sessions_revoke(
    config: ConfigOption,
    user: Annotated[str | None, typer.Argument(help="Reviewer whose logins end.")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="End everyone's logins.")] = False,
) -> None:
    """End a reviewer's dashboard logins (or everyone's) at once: a stolen cookie stops working.
    API tokens are not sessions: remove a token's hash from the config to revoke it."""
    from anomaly.store import end_sessions, store_engine

    if (user is None) == (not all_users):
        raise _fail("name one reviewer or pass --all")
    ended = end_sessions(store_engine(_config(config)), user)
    console.print(f"ended {ended} login(s) of {'everyone' if user is None else repr(user)}")


def _print_batches(summaries: list[dict[str, Any]]) -> None:
    table = Table(title="Batches")
    width = max(len(s["batch_id"]) for s in summaries)
    table.add_column("batch", no_wrap=True, min_width=width)
    for header in ("status", "in", "scored", "quarantined", "flagged", "flag rate", "shift"):
        table.add_column(header)
    for s in summaries:
        table.add_row(
            s["batch_id"],
            s["status"],
            str(s["rows_in"]),
            str(s["rows_scored"]),
            str(s["rows_quarantined"]),
            str(s["rows_flagged"]),
            f"{s['flag_rate']:.4f}",
            "[red]alarm[/]" if s["shift_alarm"] else "no",
        )
        if s["error"]:
            table.add_row(s["batch_id"], f"[red]{s['error']}[/]")
    out.print(table)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    sys.exit(app())
