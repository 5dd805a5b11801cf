"""Where the time of split-file scoring goes (issue 18, item 5): each phase timed, wall and CPU.

    nice -n 5 python benchmarks/split_phases.py [--rows 10000000] [--split-rows 1000000]
        [--workers 1 2] [--work DIR] [--whole]

Scores one file (``benchmarks/scale_out.py``'s batch, written there if missing) with
:func:`anomaly.scoring.score_file` directly, without Prefect: its parts on a ``LocalCluster``
of N single-threaded workers, the merge in this process, then the file's content hash and the
store transaction as :func:`anomaly.pipeline.process_batch` does them. Prints, per worker
count, the wall and CPU seconds of planning, of every part (CPU summed over the parts, as the
workers measured it), of the merge, of the content hash and of the store write, the serial
fraction (CPU outside the parts / all CPU) and the speed-up it allows on N workers (Amdahl),
which holds whatever else loads the machine. ``--whole`` also scores the file whole in this
process (the thread runner's work) for reference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import scale_out


def timed(function, *args):
    """(result, wall seconds, CPU seconds of this process) of a call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


class TimedParts:
    """A ``map_parts`` on a Dask client that records each part's wall and CPU seconds."""

    def __init__(self, client) -> None:
        self.client = client
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.wall = 0.0  # from the first part sent to the last one received
        self.beside = 0.0  # CPU seconds of this process (the merge's copies) meanwhile

    def __call__(self, function, items):
        """The parts in order, each as soon as it is done (as ``flows.score.on_workers``)."""
        start, cpu_start = time.perf_counter(), time.process_time()
        for future in self.client.map(timed, [function] * len(items), items, pure=False):
            part, wall, cpu = future.result()
            self.walls.append(wall)
            self.cpus.append(cpu)
            # the last part is in: what this process did so far ran beside the parts
            self.wall = time.perf_counter() - start
            self.beside = time.process_time() - cpu_start
            yield part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--split-rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work", type=Path, default=Path(".anomaly/bench-scale-out"))
    parser.add_argument("--whole", action="store_true")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    from anomaly.config import load_config
    from anomaly.inbox import content_hash
    from anomaly.pipeline import scored_dir
    from anomaly.scoring import plan_parts, score_file
    from anomaly.store import connect, write_batch
    from anomaly.training import train

    work = args.work.resolve()
    mixing = scale_out.mixing_matrix(20, 0)
    (path,) = scale_out.write_batches(work / "batches", 1, args.rows, 100_000, mixing, 0)
    config = load_config(scale_out.write_project(work, 20, mixing, 0))
    detector = train(config).detector
    chunk_rows = config.scoring.chunk_rows
    out_dir = scored_dir(config) / "phases"
    id_col = detector.preprocessor.features.id
    print(f"{args.rows:,} rows, parts of {args.split_rows:,}; load: {scale_out.uptime()}")

    def store(summary) -> None:
        db = work / "phases.db"
        db.unlink(missing_ok=True)
        engine = connect(f"sqlite:///{db}")
        empty = pd.DataFrame()
        quarantined = empty if summary.quarantined is None else summary.quarantined
        write_batch(engine, summary, "m", summary.flagged_rows.frame(), quarantined, id_col)
        engine.dispose()

    rows = []
    if args.whole:
        summary, wall, cpu = timed(
            lambda: score_file(detector, path, out_dir, chunk_rows, batch_id="b")
        )
        rows.append(("whole, this process", "score_file", wall, cpu))
    for n in args.workers:
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(scale_out.warm_up)
            plan, plan_wall, plan_cpu = timed(plan_parts, path, chunk_rows, args.split_rows)
            parts = TimedParts(client)
            wall, cpu = time.perf_counter(), time.process_time()
            summary = score_file(
                detector, path, out_dir, chunk_rows, batch_id="b",
                split_rows=args.split_rows, map_parts=parts,
            )  # fmt: skip
            total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
        merge_wall = total_wall - parts.wall - plan_wall
        merge_cpu = total_cpu - plan_cpu - parts.beside
        _, hash_wall, hash_cpu = timed(content_hash, path)
        _, store_wall, store_cpu = timed(store, summary)
        label = f"{n} worker(s), {len(plan)} parts"
        rows += [
            (label, "plan", plan_wall, plan_cpu),
            (
                label,
                f"parts (wall: all; CPU: summed; longest {max(parts.walls):.1f} s)",
                parts.wall,
                sum(parts.cpus),
            ),
            (label, "merge: copies beside the parts (this process)", float("nan"), parts.beside),
            (label, "merge: after the last part (+ explain)", merge_wall, merge_cpu),
            (label, "content hash", hash_wall, hash_cpu),
            (label, f"store write ({summary.rows_flagged:,} flagged)", store_wall, store_cpu),
        ]
        serial = plan_cpu + merge_cpu + hash_cpu + store_cpu
        fraction = serial / (serial + sum(parts.cpus) + parts.beside)
        amdahl = {k: 1 / (fraction + (1 - fraction) / k) for k in (2, 4, 8)}
        rows.append(
            (
                label,
                f"serial fraction {fraction:.1%}; Amdahl: "
                + ", ".join(f"{k} workers {s:.2f}×" for k, s in amdahl.items()),
                float("nan"),
                float("nan"),
            )
        )
        shutil.rmtree(out_dir, ignore_errors=True)
        for run, phase, wall, cpu in rows[-7:]:
            print(f"| {run} | {phase} | {wall:.1f} | {cpu:.1f} |", flush=True)
    print(f"load after: {scale_out.uptime()}\n")
    print("| run | phase | wall (s) | CPU (s) |\n|---|---|---:|---:|")
    for run, phase, wall, cpu in rows:
        print(f"| {run} | {phase} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
