"""Run groups of ``anomaly`` commands in one process, each command as the console script runs it.

    python tests/cli_run.py COMMANDS.json RESULTS.json

COMMANDS.json maps a group name to its commands (``{"cell-a": [["train", "--config",
"a.yaml"], ["score", ...]], ...}``); RESULTS.json gets per group a list of ``{"args",
"code", "stdout", "seconds"}``. A group stops at its first failing command; the next group
still runs. stderr passes through.
tests/test_matrix.py uses it so that its cells pay Python's, torch's, MLflow's and Prefect's
import time once, not once per command.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import traceback

from flows.cli import app


def run(args: list[str]) -> dict[str, object]:
    """One command: its exit code, what it printed on stdout, and how long it took."""
    stdout = io.StringIO()
    code, start = 0, time.perf_counter()
    with contextlib.redirect_stdout(stdout):
        try:
            app(args, prog_name="anomaly")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # a crash the CLI did not turn into a message
            traceback.print_exc()
            code = 1
    seconds = time.perf_counter() - start
    return {"args": args, "code": code, "stdout": stdout.getvalue(), "seconds": seconds}


def main() -> None:
    results: dict[str, list[dict[str, object]]] = {}
    with open(sys.argv[1]) as handle:
        groups = json.load(handle)
    for group, commands in groups.items():
        done = results.setdefault(group, [])
        for args in commands:
            done.append(run(args))
            if done[-1]["code"]:
                break
    with open(sys.argv[2], "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
