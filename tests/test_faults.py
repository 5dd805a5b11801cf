"""Fault injection with real process kills: a child process scores an inbox (or trains) and is
killed with ``os._exit`` at a seeded point — while scoring a chunk, between the two output files,
inside the store transaction, just before and after its commit, between the store and MLflow,
between MLflow and marking the batch done, or after a random delay. A re-run must then leave the
store, the outputs and the inbox exactly as one clean run does: no record lost, none twice.
The same holds when the Parquet batches are scored in parts and merged (the split-file path of
the Dask runner, here with the parts run in the child), killed also in a part or in the merge:
the re-run, split too, must leave what one clean unsplit run leaves.
A training run killed the same way must never leave an alias on a half-registered version."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from reliability_support import make_inbox, snapshot, trained_champion, write_config

from anomaly import registry
from anomaly.config import Config, load_config
from anomaly.demo_data import generate_normal
from anomaly.inbox import pending_batches
from anomaly.pipeline import score_batches, train_and_store

KILLED = 86  # the child's exit code when a fault fired

#: the child: patch the chosen point to exit the process on its n-th pass, then run the work
CHILD = textwrap.dedent(
    """
    import os, random, sys, threading, time
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session
    import anomaly.inbox as inbox, anomaly.pipeline as pipeline, anomaly.scoring as scoring
    from anomaly.config import load_config
    from anomaly.detector import Detector
    from mlflow.tracking import MlflowClient

    point, nth = os.environ["FAULT_POINT"], int(os.environ["FAULT_NTH"])
    seen = {}

    def reach(name):
        if name == point:
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == nth:
                os._exit(int(os.environ["FAULT_EXIT"]))

    def wrap(owner, attr, before=None, after=None):
        original = getattr(owner, attr)
        def wrapper(*args, **kwargs):
            before and reach(before)
            result = original(*args, **kwargs)
            after and reach(after)
            return result
        setattr(owner, attr, wrapper)

    wrap(pipeline, "claim", after="claimed")
    wrap(Detector, "score", before="scoring_chunk")
    wrap(scoring, "score_part", before="scoring_part")
    wrap(scoring, "merge_parts", before="before_merge")
    wrap(scoring, "_write_flags", before="before_output", after="between_outputs")
    wrap(pipeline, "write_batch", before="before_store")
    def statement(conn, cursor, text, *args):  # the store's writes, inside its transaction
        words = text.lstrip().split(None, 3)
        if words[0] in ("DELETE", "INSERT", "UPDATE") and any(
            table in text for table in ("flagged", "quarantined", "batches")
        ):
            reach("in_transaction")
    event.listen(Engine, "before_cursor_execute", statement)
    event.listen(Session, "before_commit", lambda session: reach("before_commit"))
    event.listen(Session, "after_commit", lambda session: reach("after_commit"))
    wrap(pipeline, "log_batch", after="before_mark_done")
    wrap(pipeline, "mark_done", after="after_mark_done")
    wrap(pipeline, "log_training", after="after_log_training")
    wrap(MlflowClient, "create_model_version", after="after_create_version")
    wrap(MlflowClient, "set_registered_model_alias", after="after_set_alias")
    wrap(pipeline.registry, "register", after="after_register")
    if point == "timer":
        threading.Timer(nth / 1000, os._exit, (int(os.environ["FAULT_EXIT"]),)).start()

    config = load_config(sys.argv[2])
    if sys.argv[1] == "score":
        split = map if config.scoring.split_rows else None
        pipeline.score_batches(config, inbox.pending_batches(config), map_parts=split)
    else:
        pipeline.train_and_store(config)
    """
)

SCORE_POINTS = [
    "claimed",
    "scoring_chunk",
    "before_output",
    "between_outputs",
    "before_store",
    "in_transaction",
    "before_commit",
    "after_commit",
    "before_mark_done",
    "after_mark_done",
    "timer",
]
#: where a split-file run can also be killed: in a part, and before its merge
SPLIT_POINTS = [*SCORE_POINTS, "scoring_part", "before_merge"]
#: the split path's own points: in a chunk and a part, before the merge, around its outputs, in
#: its store transaction and at a random moment
SPLIT_KILLS = [
    "scoring_chunk",
    "scoring_part",
    "before_merge",
    "before_output",
    "between_outputs",
    "in_transaction",
    "timer",
]
#: Parquet batches of 400 rows in parts of 150 (chunks of CHUNK_ROWS): 3 parts each
SPLIT_ROWS = 150
TRAIN_POINTS = [
    "after_log_training",
    "after_create_version",
    "after_set_alias",
    "after_register",
    "timer",
]


def run_child(work: str, config_path: Path, point: str, nth: int) -> int:
    env = {**os.environ, "FAULT_POINT": point, "FAULT_NTH": str(nth), "FAULT_EXIT": str(KILLED)}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, work, str(config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode in (0, KILLED), done.stderr[-3000:]
    return done.returncode


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, str]:
    """Training data and one registered champion, shared by every trial (a shared MLflow)."""
    return trained_champion(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def clean(base) -> tuple[dict[str, object], float]:
    """The state one uninterrupted run leaves, and how long the run took."""
    top, uri = base
    root = top / "clean"
    config = load_config(write_config(root, uri, top / "train.parquet"))
    make_inbox(root / "inbox")
    start = time.perf_counter()
    score_batches(config, pending_batches(config))
    return snapshot(config, root), time.perf_counter() - start


def kill_and_rerun(
    base, clean, seed: int, point: str | None = None, split: bool = False
) -> tuple[str, bool]:
    """Kill a scoring child at a seeded point (or ``point``), re-run, compare with clean; with
    ``split``, both runs score the Parquet batches in parts."""
    top, uri = base
    expected, seconds = clean
    rng = random.Random(seed)
    point = point or rng.choice(SPLIT_POINTS if split else SCORE_POINTS)
    nth = {
        "scoring_chunk": rng.randint(1, 9),
        "scoring_part": rng.randint(1, 7),
        "in_transaction": rng.randint(1, 15),
        "timer": rng.randint(1, int(4000 + seconds * 1000)),
    }.get(point, rng.randint(1, 3))
    root = top / f"trial-{seed}"
    split_rows = SPLIT_ROWS if split else None
    config_path = write_config(root, uri, top / "train.parquet", split_rows=split_rows)
    make_inbox(root / "inbox")
    killed = run_child("score", config_path, point, nth) == KILLED
    config = load_config(config_path)
    score_batches(config, pending_batches(config), map_parts=map if split else None)  # re-run
    assert snapshot(config, root) == expected, f"seed {seed}: killed at {point} #{nth}"
    shutil.rmtree(root)
    return point, killed


def test_clean_run_leaves_no_claims_and_every_record(clean):
    state, _ = clean
    assert state["processed"] == ["batch_1.parquet", "batch_2.parquet", "batch_csv.csv"]
    assert state["inbox"] == state["claimed"] == state["rejected"] == []
    assert not [k for k in state if k.startswith("out/.")]  # no scratch files left
    rows = {b["batch_id"]: b for b in state["batches"]}
    assert rows["batch_csv.csv"]["rows_quarantined"] == 3
    assert sum(b["rows_in"] for b in rows.values()) == 1200


def test_one_kill_inside_the_store_transaction(base, clean):
    point, killed = kill_and_rerun(base, clean, seed=5, point="in_transaction")
    assert (point, killed) == ("in_transaction", True)


@pytest.mark.parametrize(("point", "seed"), [("scoring_part", 7), ("before_merge", 8)])
def test_one_kill_in_a_split_file_part_or_merge(base, clean, point, seed):
    # a seed of its own: a trial's folder (and the store engine cached for it) is not reused
    assert kill_and_rerun(base, clean, seed=seed, point=point, split=True) == (point, True)


@pytest.mark.slow
def test_split_file_kills_at_seeded_points_lose_and_duplicate_nothing(base, clean, capsys):
    # each point of a split run, once (at a seeded pass), but those that run the same code as
    # an unsplit run (claim, commit, MLflow, marking done), killed at random in the test below
    trials = [
        kill_and_rerun(base, clean, seed, point, split=True)
        for seed, point in enumerate(SPLIT_KILLS, start=200)
    ]
    killed = [t for t in trials if t[1]]
    with capsys.disabled():
        points = sorted({p for p, _ in killed})
        print(f"\nsplit-file fault injection: {len(trials)} trials, {len(killed)} killed at "
              f"{points}; all re-runs equal the clean unsplit run")  # fmt: skip
    assert len(killed) >= len(SPLIT_KILLS) - 1  # the timer may fire after the run ended


@pytest.mark.slow
def test_kills_at_seeded_points_lose_and_duplicate_nothing(base, clean, capsys):
    trials = [kill_and_rerun(base, clean, seed) for seed in range(100, 124)]
    killed = [t for t in trials if t[1]]
    with capsys.disabled():
        points = sorted({p for p, _ in killed})
        print(f"\nfault injection: {len(trials)} trials, {len(killed)} killed at {points}; all "
              "re-runs equal the clean run")  # fmt: skip
    assert len(trials) >= 20
    assert len(killed) >= 16  # a few timers may fire after the run ended
    assert len({p for p, _ in killed}) >= 8


# ---------------------------------------------------------------------------- training
def check_aliases(config: Config) -> dict[str, str]:
    """Every alias points to a complete version: READY, and its detector loads and scores."""
    client = registry.client(config)
    found = {}
    for alias in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS):
        version = registry.alias_version(config, alias)
        if version is None:
            continue
        assert client.get_model_version(config.name, version).status == "READY"
        detector, _ = registry.load_detector(config, version)
        scored = detector.score(generate_normal(50, seed=9))
        assert np.isfinite(scored.scored["log_likelihood"]).all()
        found[alias] = version
    return found


@pytest.mark.slow
def test_training_killed_midway_never_aliases_a_half_registered_model(tmp_path, base, capsys):
    top, _ = base
    outcomes = []
    for seed in range(8):
        rng = random.Random(seed)
        point = rng.choice(TRAIN_POINTS)
        nth = rng.randint(500, 15_000) if point == "timer" else 1
        root = tmp_path / f"train-{seed}"
        uri = f"sqlite:///{root / 'mlflow.db'}?timeout=30"
        config_path = write_config(root, uri, top / "train.parquet", f"faults-train-{seed}")
        config = load_config(config_path)
        with_champion = seed % 2 == 1
        if with_champion:
            train_and_store(config)
        killed = run_child("train", config_path, point, nth) == KILLED
        before = check_aliases(config)
        if with_champion:
            assert before[registry.CHAMPION] == "1"  # a killed challenger never takes over
        after = check_aliases(config) if train_and_store(config) else {}
        assert registry.CHAMPION in after
        assert registry.CHALLENGER in after
        outcomes.append((point, killed))
    with capsys.disabled():
        print(
            f"\ntraining kills: {sum(k for _, k in outcomes)} of {len(outcomes)} killed at "
            f"{sorted({p for p, k in outcomes if k})}; every alias on a complete version"
        )
    assert sum(k for _, k in outcomes) >= 6
