"""Tasks shared by the flows. Each is a small library call; those touching I/O retry."""

from __future__ import annotations

import os

import pandas as pd
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from anomaly.config import Config, load_config
from anomaly.processes import die_with_parent_now
from anomaly.store import model_labels
from flows.errors import USER_ERRORS

#: set by ``anomaly serve`` to its process id, for the flow-run processes it starts
SERVE_PID = "ANOMALY_SERVE_PID"


def _transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry unless the failure is the user's to fix (missing file, bad data, no model)."""
    return not isinstance(state.result(raise_on_failure=False), USER_ERRORS)


#: I/O tasks retry twice on transient errors, two seconds apart; nothing is cached (the
#: inputs are large objects)
IO = {
    "retries": 2,
    "retry_delay_seconds": 2,
    "retry_condition_fn": _transient,
    "cache_policy": NO_CACHE,
}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table for a report artifact: first column left-aligned, the others (numbers)
    right-aligned. (A bare table goes to ``create_table_artifact``, as the score flow's; the
    train and promote reports are headed text with a table, so they are markdown.)"""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@task(name="load config", **IO)
def read_config(config_path: str) -> Config:
    """The validated config. A flow run that ``anomaly serve`` started in a process of its own
    also ties that process to serve here, so that it ends with serve even after ``kill -9``."""
    if os.environ.get(SERVE_PID) == str(os.getppid()):
        die_with_parent_now()
    return load_config(config_path)


@task(name="read reviews", **IO)
def read_reviews(config: Config) -> pd.DataFrame:
    """Latest label of every record the config's model flagged and an analyst reviewed
    (maybe no rows; :func:`anomaly.store.model_labels`)."""
    return model_labels(config)
