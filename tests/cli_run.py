"""Run several ``anomaly`` commands in one process, each as the console script runs it.

    python tests/cli_run.py '[["train", "--config", "c.yaml"], ["score", "--config", ...]]'

prints one JSON list of ``{"args", "code", "stdout", "seconds"}`` (stderr passes through) and stops at the
first command that fails. tests/test_matrix.py uses it so that one cell of the matrix pays
Python's, torch's, MLflow's and Prefect's import time once instead of once per command.
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
    """One command: its exit code and what it printed on stdout."""
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
    results = []
    for args in json.loads(sys.argv[1]):
        results.append(run(args))
        if results[-1]["code"]:
            break
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
