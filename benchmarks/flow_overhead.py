"""Wall time of each flow on the demo data, and the per-task overhead Prefect adds.

    python benchmarks/flow_overhead.py [--kind knn] [--tasks 50]

Runs in one process against Prefect's ephemeral server (its start-up is timed separately by
a first trivial flow). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from prefect import flow, task


@task
def noop(i: int) -> int:
    return i


@flow
def empty_flow() -> None:
    return None


@flow
def many_tasks(n: int) -> int:
    return sum(noop(i) for i in range(n))


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="knn")
    parser.add_argument("--tasks", type=int, default=50)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp())
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    (home / "prefect").mkdir(parents=True)

    from anomaly.demo import write_demo_config
    from anomaly.demo_data import write_demo
    from flows.promote import promote_flow
    from flows.score import score_flow
    from flows.train import train_flow

    startup = timed(empty_flow)
    empty = timed(empty_flow)
    with_tasks = timed(lambda: many_tasks(args.tasks))
    per_task = (with_tasks - empty) / args.tasks
    print("| Prefect cost | seconds |\n|---|---:|")
    print(f"| ephemeral server start + first flow | {startup:.2f} |")
    print(f"| empty flow run | {empty:.3f} |")
    print(f"| per task (mean of {args.tasks} sequential no-op tasks) | {per_task:.4f} |\n")

    config = str(write_demo_config(home, args.kind))
    write_demo(home / "demo")
    print(f"| flow on the demo data ({args.kind}) | seconds |\n|---|---:|")
    print(f"| train (20,000 rows) | {timed(lambda: train_flow(config)):.2f} |")
    print(f"| promote | {timed(lambda: promote_flow(config)):.2f} |")
    print(f"| score (3 batches × 5,000 rows) | {timed(lambda: score_flow(config)):.2f} |")


if __name__ == "__main__":
    main()
