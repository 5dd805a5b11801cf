"""Scale-out scoring: a multi-file Parquet batch through the score flow, threads vs Dask.

    nice -n 10 python benchmarks/scale_out.py [--files 10] [--rows-per-file 1000000]
        [--row-group 100000] [--features 20] [--workers 2] [--work DIR]

Writes ``--files`` Parquet files of ``--rows-per-file`` rows × ``--features`` numeric
columns (seeded, written one row group at a time, so memory stays low; kept in ``--work`` and
reused by the next run), trains a ``gaussian`` detector on 100,000 normal rows with the train
flow, then scores every file with the score flow twice: the thread runner, and a
``dask.distributed`` ``LocalCluster`` of ``--workers`` single-threaded worker processes
(``scoring.dask_address``). One partition is also scored alone in this process, with nothing
else running, to measure the per-partition cost. RSS of this process and of every child
process is sampled every 0.2 s (psutil). Prints markdown tables, checks that both runners
wrote identical outputs and counts, and estimates rows/hour on N workers.

With ``--split-rows N`` it measures the split-file path instead (issue 18): one file of
``--rows-per-file`` rows (``--files`` is taken as 1) is scored with the thread runner (the file
whole) and then on ``LocalCluster``s of 1 and ``--workers`` workers with ``scoring.split_rows``
N, so that its parts run on different workers and are merged into one batch. It prints the
wall times, the speed-up, and whether every output (read row group by row group) and count
equals the thread runner's:

    nice -n 5 python benchmarks/scale_out.py --rows-per-file 10000000 --split-rows 1000000

Runs against Prefect's ephemeral server (``PREFECT_HOME`` under ``--work``) unless
``PREFECT_API_URL`` is set; MLflow and the review store are SQLite files under ``--work``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

TRAIN_ROWS = 100_000
ANOMALY_RATE = 0.001  # rows shifted far from the normal cloud


def feature_names(n: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n)]


def mixing_matrix(n_features: int, seed: int) -> np.ndarray:
    """A fixed random linear map: normal rows are correlated Gaussians."""
    rng = np.random.default_rng([seed, 0])
    return rng.normal(size=(n_features, n_features)) / np.sqrt(n_features)


def normal_rows(rng: np.random.Generator, n: int, mixing: np.ndarray) -> np.ndarray:
    return rng.standard_normal((n, mixing.shape[0])) @ mixing


def row_group(
    file_index: int, group: int, rows: int, start: int, mixing: np.ndarray, seed: int
) -> pa.Table:
    """One row group of a batch file: ids, correlated Gaussian rows, a few shifted ones."""
    rng = np.random.default_rng([seed, 1, file_index, group])
    values = normal_rows(rng, rows, mixing)
    shifted = rng.random(rows) < ANOMALY_RATE
    values[shifted, rng.integers(0, values.shape[1])] += 8.0
    ids = pa.array([f"r{file_index:03d}-{start + i:08d}" for i in range(rows)])
    columns = {"record_id": ids}
    for j, name in enumerate(feature_names(values.shape[1])):
        columns[name] = pa.array(values[:, j])
    return pa.table(columns)


def write_batches(
    folder: Path, files: int, rows_per_file: int, group_rows: int, mixing: np.ndarray, seed: int
) -> list[Path]:
    """The batch files (reused when they exist with the same shape)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"part-{i:03d}.parquet" for i in range(files)]
    n_columns = 1 + mixing.shape[0]
    groups = -(-rows_per_file // group_rows)
    todo = [
        (i, p)
        for i, p in enumerate(paths)
        if not (
            p.is_file()
            and pq.ParquetFile(p).metadata.num_rows == rows_per_file
            and pq.ParquetFile(p).metadata.num_columns == n_columns
            and pq.ParquetFile(p).metadata.num_row_groups == groups
        )
    ]
    with tqdm(total=len(todo) * groups, desc="writing batch files", unit="row group") as bar:
        for i, path in todo:
            tmp = path.with_suffix(".tmp")
            with pq.ParquetWriter(tmp, row_group(i, 0, 1, 0, mixing, seed).schema) as writer:
                for g in range(groups):
                    start = g * group_rows
                    n = min(group_rows, rows_per_file - start)
                    writer.write_table(row_group(i, g, n, start, mixing, seed))
                    bar.update()
            os.replace(tmp, path)
    return paths


def write_project(work: Path, n_features: int, mixing: np.ndarray, seed: int) -> Path:
    """Training rows and the config of the benchmark pipeline."""
    rng = np.random.default_rng([seed, 2])
    train = pd.DataFrame(normal_rows(rng, TRAIN_ROWS, mixing), columns=feature_names(n_features))
    train.insert(0, "record_id", [f"t-{i:08d}" for i in range(TRAIN_ROWS)])
    train.to_parquet(work / "train.parquet")
    (work / "inbox").mkdir(exist_ok=True)
    settings = {
        "name": "scale-out",
        "home": "home",
        "features": {
            "id": "record_id",
            "numeric": feature_names(n_features),
            "numeric_transform": "none",
        },
        "data": {"train": "train.parquet", "inbox": "inbox"},
        "model": {"kind": "gaussian", "seed": seed},
        "scoring": {"chunk_rows": 100_000},
        "schedule": {"score": None, "train": None},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


class PeakRss:
    """Peak RSS of this process and each of its descendants (but those of session
    ``skip_session``, the Prefect server), sampled in a thread."""

    def __init__(self, skip_session: int | None = None, interval: float = 0.2) -> None:
        self.skip_session = skip_session
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for proc in [me, *me.children(recursive=True)]:
                try:
                    if self.skip_session and os.getsid(proc.pid) == self.skip_session:
                        continue
                    rss = proc.memory_info().rss
                    if proc.pid not in self.names:
                        self.names[proc.pid] = describe(proc)
                except (psutil.Error, OSError):
                    continue
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), rss)
            self._stop.wait(self.interval)


def describe(proc: psutil.Process) -> str:
    """A short label of a process from its command line."""
    if proc.pid == os.getpid():
        return "main (flow + thread runner)"
    line = " ".join(proc.cmdline())
    for needle, label in (
        ("prefect", "Prefect ephemeral server"),
        ("uvicorn", "Prefect ephemeral server"),
        ("multiprocessing.resource_tracker", "resource tracker"),
        ("multiprocessing.forkserver", "forkserver"),
        ("spawn_main", "Dask worker process"),
    ):
        if needle in line:
            return label
    return line[:60]


def rss_rows(monitor: PeakRss, runner: str, labels: dict[int, str]) -> list[str]:
    rows = []
    for pid, peak in sorted(monitor.peaks.items()):
        name = labels.get(pid) or monitor.names.get(pid, "?")
        if name in ("resource tracker", "forkserver"):
            continue
        rows.append(f"| {runner} | {name} (pid {pid}) | {peak / 2**20:,.0f} |")
    return rows


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[subprocess.Popen | None]:
    """A ``prefect server start`` on a free local port (PREFECT_API_URL set for this process
    and the Dask workers it starts), unless PREFECT_API_URL is already set. Without it every
    Dask worker would start its own temporary server."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(Path(sys.executable).parent / "prefect"), "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    home.mkdir(parents=True, exist_ok=True)
    with (home / "server.log").open("w") as log:
        server = subprocess.Popen(
            command,
            env={**os.environ, "PREFECT_HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    msg = f"the Prefect server did not start; see {home / 'server.log'}"
                    raise RuntimeError(msg) from None
                time.sleep(1)
        os.environ["PREFECT_API_URL"] = url
        yield server
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn child
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def warm_up() -> None:
    """Import what scoring a batch needs (torch, MLflow, Prefect, the package)."""
    import flows.score  # noqa: F401


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def compare(threads: list[dict], dask: list[dict], thread_dir: Path) -> list[str]:
    """Differences between the two runs' counts and outputs (empty: identical)."""
    problems = []
    by_threads = {s["batch_id"]: s for s in threads}
    by_dask = {s["batch_id"]: s for s in dask}
    if by_threads.keys() != by_dask.keys():
        return [f"batches differ: {sorted(by_threads)} vs {sorted(by_dask)}"]
    for batch_id, s in by_dask.items():
        t = by_threads[batch_id]
        for key in ("rows_in", "rows_scored", "rows_quarantined", "rows_flagged"):
            if s[key] != t[key]:
                problems.append(f"{batch_id} {key}: threads {t[key]}, dask {s[key]}")
        threads_out = thread_dir / Path(t["output"]).name
        try:
            pd.testing.assert_frame_equal(
                pd.read_parquet(threads_out), pd.read_parquet(s["output"])
            )
        except AssertionError as exc:
            problems.append(f"{batch_id} output differs: {str(exc).splitlines()[0]}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--rows-per-file", type=int, default=1_000_000)
    parser.add_argument("--row-group", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(".anomaly/bench-scale-out"))
    parser.add_argument("--split-rows", type=int, default=None)
    args = parser.parse_args()
    if args.split_rows:
        args.files = 1

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    load_before = uptime()

    mixing = mixing_matrix(args.features, args.seed)
    paths = write_batches(
        work / "batches", args.files, args.rows_per_file, args.row_group, mixing, args.seed
    )
    config_path = write_project(work, args.features, mixing, args.seed)
    shutil.rmtree(work / "home", ignore_errors=True)
    with prefect_server(work / "prefect-server") as server:
        measure = run_split if args.split_rows else run
        measure(args, work, paths, config_path, load_before, server.pid if server else None)


def run(
    args: argparse.Namespace,
    work: Path,
    paths: list[Path],
    config_path: Path,
    load_before: str,
    skip: int | None,
) -> None:
    """Train, score with both runners and one partition alone, print the tables."""
    n_rows = args.files * args.rows_per_file
    # imported after the environment is set: Prefect reads its settings on import
    from distributed import Client, LocalCluster

    from anomaly import registry
    from anomaly.config import load_config
    from anomaly.pipeline import process_batch, scored_dir
    from anomaly.store import store_engine
    from flows.score import score_flow, score_flow_for
    from flows.train import train_flow

    print(f"training a gaussian detector on {TRAIN_ROWS:,} rows …", flush=True)
    train_flow(str(config_path))
    config = load_config(config_path)
    batches = [str(p) for p in paths]
    out_dir = scored_dir(config)

    print(f"scoring {n_rows:,} rows in {len(paths)} files with threads …", flush=True)
    with PeakRss(skip) as thread_rss:
        start = time.perf_counter()
        by_threads = score_flow(str(config_path), batches=batches)
        thread_wall = time.perf_counter() - start
    thread_dir = work / "scored-threads"
    shutil.rmtree(thread_dir, ignore_errors=True)
    os.replace(out_dir, thread_dir)

    print(f"starting a LocalCluster of {args.workers} workers …", flush=True)
    start = time.perf_counter()
    cluster = LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    client.run(warm_up)  # imports a long-lived worker has done once, before its first batch
    cluster_start = time.perf_counter() - start
    worker_pids = client.run(os.getpid)
    labels = {pid: f"Dask worker {i + 1}" for i, pid in enumerate(sorted(worker_pids.values()))}
    dask_config = dict(yaml.safe_load(config_path.read_text()))
    dask_config["scoring"] = {**dask_config["scoring"], "dask_address": cluster.scheduler_address}
    dask_config_path = work / "config-dask.yaml"
    dask_config_path.write_text(yaml.safe_dump(dask_config, sort_keys=False))
    runner_flow = score_flow_for(load_config(dask_config_path))
    print(f"scoring {n_rows:,} rows on the cluster …", flush=True)
    try:
        with PeakRss(skip) as dask_rss:
            start = time.perf_counter()
            by_dask = runner_flow(str(dask_config_path), batches=batches)
            dask_wall = time.perf_counter() - start
    finally:
        client.close()
        cluster.close()

    problems = compare(by_threads, by_dask, thread_dir)
    print("scoring one partition alone in this process …", flush=True)
    detector, version = registry.load_detector(config, None)
    with PeakRss(skip) as one_rss:
        start = time.perf_counter()
        process_batch(config, detector, version, paths[0], store_engine(config))
        one_wall = time.perf_counter() - start
    load_after = uptime()
    flagged = sum(int(s["rows_flagged"]) for s in by_dask)
    print()
    print(f"batch: {len(paths)} files × {args.rows_per_file:,} rows × {args.features} "
          f"features ({n_rows:,} rows), row groups of {args.row_group:,}; "
          f"{flagged:,} rows flagged")  # fmt: skip
    print(f"machine: {psutil.cpu_count()} cores; before: {load_before}; after: {load_after}")
    print()
    print("| runner | wall (s) | rows/s |\n|---|---:|---:|")
    print(f"| threads (one process) | {thread_wall:.1f} | {n_rows / thread_wall:,.0f} |")
    print(f"| Dask LocalCluster, {args.workers} workers × 1 thread | {dask_wall:.1f} | "
          f"{n_rows / dask_wall:,.0f} |")  # fmt: skip
    print(f"| one partition alone ({args.rows_per_file:,} rows) | {one_wall:.1f} | "
          f"{args.rows_per_file / one_wall:,.0f} |")  # fmt: skip
    print(f"\n(not included above: cluster start-up and worker imports, once per worker: "
          f"{cluster_start:.1f} s)")  # fmt: skip
    print("\n| runner | process | peak RSS (MiB) |\n|---|---|---:|")
    for line in (
        rss_rows(thread_rss, "threads", {})
        + rss_rows(dask_rss, "Dask", labels)
        + rss_rows(one_rss, "one partition", {})
    ):
        print(line)
    print(f"\nidentical results (counts and every output file): {'yes' if not problems else 'NO'}")
    for problem in problems:
        print(f"  {problem}")

    rate = args.rows_per_file / one_wall  # rows/s of one single-threaded worker
    efficiency = (one_wall * len(paths) / args.workers) / dask_wall
    ideal = one_wall * len(paths) / args.workers
    print(f"\nper-partition cost: {one_wall:.1f} s for {args.rows_per_file:,} rows "
          f"({rate:,.0f} rows/s on one worker); measured {args.workers}-worker efficiency "
          f"{efficiency:.0%} (ideal time {ideal:.1f} s)")  # fmt: skip
    print("\n| workers | rows/hour (ideal) | rows/hour (at the measured efficiency) |")
    print("|---:|---:|---:|")
    for n in (1, 2, 4, 8, 16, 32):
        print(f"| {n} | {n * rate * 3600:,.0f} | {n * rate * 3600 * min(efficiency, 1):,.0f} |")


def same_parquet(a: Path, b: Path) -> bool:
    """Whether two Parquet files hold equal tables, compared a million rows at a time."""
    with pq.ParquetFile(a) as left, pq.ParquetFile(b) as right:
        if left.schema_arrow != right.schema_arrow:
            return False
        if left.metadata.num_rows != right.metadata.num_rows:
            return False
        size = 1_000_000
        return all(
            x.equals(y)
            for x, y in zip(
                left.iter_batches(batch_size=size), right.iter_batches(batch_size=size), strict=True
            )
        )


def run_split(
    args: argparse.Namespace,
    work: Path,
    paths: list[Path],
    config_path: Path,
    load_before: str,
    skip: int | None,
) -> None:
    """One file: threads (whole), then split on clusters of 1 and ``--workers`` workers."""
    from distributed import Client, LocalCluster

    from anomaly.config import load_config
    from anomaly.pipeline import scored_dir
    from flows.score import score_flow, score_flow_for
    from flows.train import train_flow

    print(f"training a gaussian detector on {TRAIN_ROWS:,} rows …", flush=True)
    train_flow(str(config_path))
    config = load_config(config_path)
    out_dir = scored_dir(config)
    batches = [str(paths[0])]
    print(f"scoring {args.rows_per_file:,} rows in one file with threads …", flush=True)
    start = time.perf_counter()
    (by_threads,) = score_flow(str(config_path), batches=batches)
    walls = {"threads (one process, the file whole)": time.perf_counter() - start}
    thread_dir = work / "scored-threads"
    shutil.rmtree(thread_dir, ignore_errors=True)
    os.replace(out_dir, thread_dir)
    problems, loads = [], [f"before: {load_before}"]
    counts = ("rows_in", "rows_scored", "rows_quarantined", "rows_flagged", "flag_rate")
    for n_workers in sorted({1, args.workers}):
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
        client.run(warm_up)
        settings = dict(yaml.safe_load(config_path.read_text()))
        settings["scoring"] = {
            **settings["scoring"],
            "dask_address": cluster.scheduler_address,
            "split_rows": args.split_rows,
        }
        path = work / f"config-split-{n_workers}.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        label = f"Dask, {n_workers} worker(s) × 1 thread, split"
        print(f"scoring it on {n_workers} worker(s), in parts of {args.split_rows:,} …", flush=True)
        try:
            start = time.perf_counter()
            (summary,) = score_flow_for(load_config(path))(str(path), batches=batches)
            walls[label] = time.perf_counter() - start
        finally:
            client.close()
            cluster.close()
        loads.append(f"after {n_workers} worker(s): {uptime()}")
        problems += [
            f"{label} {key}: threads {by_threads[key]}, split {summary[key]}"
            for key in counts
            if summary[key] != by_threads[key]
        ]
        for key in ("output", "quarantine_output"):
            if (summary[key] is None) != (by_threads[key] is None) or (
                summary[key]
                and not same_parquet(Path(summary[key]), thread_dir / Path(by_threads[key]).name)
            ):
                problems.append(f"{label}: {key} differs from the thread runner's")
        shutil.rmtree(out_dir, ignore_errors=True)

    print()
    print(f"batch: one file of {args.rows_per_file:,} rows × {args.features} features, row "
          f"groups of {args.row_group:,}; parts of {args.split_rows:,} rows; "
          f"{by_threads['rows_flagged']:,} rows flagged")  # fmt: skip
    print(f"machine: {psutil.cpu_count()} cores; load " + "; ".join(loads))
    print()
    print("| runner | wall (s) | rows/s |\n|---|---:|---:|")
    for label, wall in walls.items():
        print(f"| {label} | {wall:.1f} | {args.rows_per_file / wall:,.0f} |")
    one = walls["Dask, 1 worker(s) × 1 thread, split"]
    many = walls[f"Dask, {args.workers} worker(s) × 1 thread, split"]
    print(f"\nspeed-up of {args.workers} workers over 1: {one / many:.2f}×")
    print(f"identical to the thread runner (counts, every output): {'no' if problems else 'yes'}")
    for problem in problems:
        print(f"  {problem}")


if __name__ == "__main__":
    main()
