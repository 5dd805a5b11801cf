"""Wall time of each flow on the demo data, the per-task overhead Prefect adds, and the wall
time of the ``anomaly`` commands as a user runs them, with and without the local server.

    python benchmarks/flow_overhead.py [--kind knn] [--tasks 50] [--runs 3] [--part all]

``flows`` runs in one process against Prefect's temporary server (its start-up is timed
separately by a first trivial flow). ``commands`` runs ``anomaly`` subprocesses on a fresh
ANOMALY_HOME: ``score --batch`` of a 10-row file with no server up (each command starts a
temporary one) and with ``anomaly serve``'s server up, ``history`` (no flow), a config error,
and the time from dropping a file into the inbox of ``serve`` (schedule: every minute) until it
is processed. CPU time (user + system) is printed beside wall time: on a busy machine it is the
better guess of the wall time on an idle one. The commands run with PYTHONDONTWRITEBYTECODE
unset, so they use the compiled modules the first one caches, as a user's do. Prints markdown
tables.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ANOMALY = [sys.executable, "-m", "flows.cli"]


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def flows_part(home: Path, kind: str, tasks: int) -> None:
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    (home / "prefect").mkdir(parents=True)
    from prefect import flow, task

    from anomaly.demo import write_demo_config
    from anomaly.demo_data import write_demo
    from flows.promote import promote_flow
    from flows.score import score_flow
    from flows.train import train_flow

    @task
    def noop(i: int) -> int:
        return i

    @flow
    def empty_flow() -> None:
        return None

    @flow
    def many_tasks(n: int) -> int:
        return sum(noop(i) for i in range(n))

    startup = timed(empty_flow)
    empty = timed(empty_flow)
    with_tasks = timed(lambda: many_tasks(tasks))
    per_task = (with_tasks - empty) / tasks
    print("| Prefect cost | seconds |\n|---|---:|")
    print(f"| temporary server start + first flow | {startup:.2f} |")
    print(f"| empty flow run | {empty:.3f} |")
    print(f"| per task (mean of {tasks} sequential no-op tasks) | {per_task:.4f} |\n")

    config = str(write_demo_config(home, kind))
    write_demo(home / "demo")
    print(f"| flow on the demo data ({kind}) | seconds |\n|---|---:|")
    print(f"| train (20,000 rows) | {timed(lambda: train_flow(config)):.2f} |")
    print(f"| promote | {timed(lambda: promote_flow(config)):.2f} |")
    print(f"| score (3 batches × 5,000 rows) | {timed(lambda: score_flow(config)):.2f} |\n")


def commands_part(home: Path, kind: str, runs: int) -> None:
    from anomaly.demo import write_demo_config
    from anomaly.demo_data import write_demo

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACK"))}
    env["ANOMALY_HOME"] = str(home)
    # as on a user's machine, compiled modules are cached (the first command, train, writes
    # them); with PYTHONDONTWRITEBYTECODE set every command recompiled the project's modules
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    config = write_demo_config(home, kind)
    settings = yaml.safe_load(config.read_text())
    settings["schedule"] = {"score": "* * * * *", "train": None}
    config.write_text(yaml.safe_dump(settings))
    typo = home / "typo.yaml"
    typo.write_text(yaml.safe_dump({**settings, "scoring": {"chunk_row": 10}}))
    files = write_demo(home / "demo", n_train=5_000, n_batches=0)
    batches = home / "batches"
    batches.mkdir()
    import pandas as pd

    rows = pd.read_parquet(files.evaluation).head(10 * (2 * runs + 1))

    def anomaly(*args: object, expect: int = 0) -> tuple[float, float]:
        """Wall time and CPU time (user + system) of one command."""
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        done = subprocess.run([*ANOMALY, *map(str, args)], env=env, capture_output=True, text=True)
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        assert done.returncode == expect, done.stderr[-2000:]
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def score_one(i: int) -> tuple[float, float]:
        path = batches / f"b{i}.parquet"
        rows.iloc[10 * i : 10 * (i + 1)].to_parquet(path, index=False)
        return anomaly("score", "-c", config, "--batch", path)

    anomaly("train", "-c", config)
    table = {
        "score --batch (10 rows), no server up": [score_one(i) for i in range(runs)],
        "history (no flow)": [anomaly("history", "-c", config) for _ in range(runs)],
        "config error": [anomaly("score", "-c", typo, expect=2) for _ in range(runs)],
    }
    err = home / "serve.err"
    with err.open("w") as log:
        serve = subprocess.Popen(
            [*ANOMALY, "serve", "-c", config], env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    start = time.perf_counter()
    while "serving" not in err.read_text():
        assert serve.poll() is None, err.read_text()
        time.sleep(0.2)
    up = time.perf_counter() - start
    try:
        table["score --batch (10 rows), serve's server up"] = [
            score_one(runs + i) for i in range(runs)
        ]
        inbox = Path(settings["data"]["inbox"])
        rows.iloc[-10:].to_parquet(inbox / ".dropped.part", index=False)
        (inbox / ".dropped.part").rename(inbox / "dropped.parquet")
        start = time.perf_counter()
        while not (inbox / "processed" / "dropped.parquet").exists():
            time.sleep(0.2)
        dropped = time.perf_counter() - start
    finally:
        serve.send_signal(signal.SIGTERM)
        start = time.perf_counter()
        serve.wait()
        stop = time.perf_counter() - start
    load = os.getloadavg()[0]
    print(f"| command ({kind}; median of {runs}; load average {load:.1f} on {os.cpu_count()} "
          "cores) | wall s | min wall s | CPU s |\n|---|---:|---:|---:|")  # fmt: skip
    for name, times in table.items():
        wall, cpu = zip(*times, strict=True)
        print(f"| {name} | {statistics.median(wall):.2f} | {min(wall):.2f} | "
              f"{statistics.median(cpu):.2f} |")  # fmt: skip
    print(f"| serve: start until serving | {up:.2f} | | |")
    print(f"| serve: file dropped until processed (schedule: every minute) | {dropped:.2f} | | |")
    print(f"| serve: SIGTERM until exit | {stop:.2f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="knn")
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part", choices=["all", "flows", "commands"], default="all")
    args = parser.parse_args()
    if args.part in ("all", "commands"):
        commands_part(Path(tempfile.mkdtemp()), args.kind, args.runs)
    if args.part in ("all", "flows"):
        flows_part(Path(tempfile.mkdtemp()), args.kind, args.tasks)


if __name__ == "__main__":
    main()
