"""Concurrency: two scoring runs started at once on the same inbox process each batch once (the
claim lock), and reviews posted while batches are being (re)stored are never lost."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from reliability_support import make_inbox, snapshot, trained_champion, write_config
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from anomaly import registry
from anomaly.config import load_config
from anomaly.inbox import claim, pending_batches, recover_claims
from anomaly.pipeline import process_batch, score_batches
from anomaly.store import Flagged, Review, add_review, connect

#: a child: wait for the start signal, then score the inbox (library call or the Prefect flow)
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    how, config_path, start = sys.argv[1:4]
    if how == "flow":
        from flows.score import score_flow
    from anomaly.config import load_config
    from anomaly.inbox import pending_batches
    from anomaly.pipeline import score_batches
    while not Path(start).exists():
        time.sleep(0.005)
    if how == "flow":
        done = [s["batch_id"] for s in score_flow(config_path)]
    else:
        config = load_config(config_path)
        done = [s.batch_id for s in score_batches(config, pending_batches(config))]
    print(json.dumps(done))
    """
)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, str]:
    return trained_champion(tmp_path_factory.mktemp("concurrency"))


def run_at_once(base, name: str, how: str, env: dict[str, str] | None = None) -> list[list[str]]:
    """Two children score the same inbox, released by one signal; what each processed."""
    top, uri = base
    root = top / name
    config_path = write_config(root, uri, top / "train.parquet")
    make_inbox(root / "inbox", n_parquet=8)
    start = root / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, how, str(config_path), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        for _ in range(2)
    ]
    time.sleep(8 if how == "library" else 20)  # both children have imported everything
    start.touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def single_run(base) -> dict[str, object]:
    top, uri = base
    root = top / "single"
    if not root.exists():
        config = load_config(write_config(root, uri, top / "train.parquet"))
        make_inbox(root / "inbox", n_parquet=8)
        score_batches(config, pending_batches(config))
    return snapshot(load_config(root / "config.yaml"), root)


def check_each_once(base, name: str, results: list[list[str]]) -> None:
    first, second = results
    assert not set(first) & set(second), "a batch was processed by both runs"
    assert sorted(first + second) == sorted(single_run(base)["processed"])
    top, _ = base
    state = snapshot(load_config(top / name / "config.yaml"), top / name)
    assert state == single_run(base)


def test_two_runs_at_once_process_each_batch_once(base):
    results = run_at_once(base, "two-processes", "library")
    check_each_once(base, "two-processes", results)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_two_score_flows_at_once_process_each_batch_once(base):
    from prefect.settings import PREFECT_API_URL

    results = run_at_once(base, "two-flows", "flow", {"PREFECT_API_URL": PREFECT_API_URL.value()})
    check_each_once(base, "two-flows", results)


def test_a_claim_of_a_dead_run_is_recovered_and_a_live_one_is_not(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_text("x\n")
    (inbox / "b.csv").write_text("x\n")
    mine = claim(inbox, inbox / "a.csv")
    assert mine is not None
    assert claim(inbox, inbox / "a.csv") is None  # already claimed
    dead = inbox / ".claimed" / f"{os.uname().nodename}@999999999@12345"
    dead.mkdir()
    os.rename(inbox / "b.csv", dead / "b.csv")
    remote = inbox / ".claimed" / "other-host@1@1"
    remote.mkdir()
    (remote / "c.csv").write_text("x\n")
    assert recover_claims(inbox) == [inbox / "b.csv"]  # a live owner's claim stays
    assert mine.is_file()
    assert not dead.exists()
    assert (remote / "c.csv").is_file()  # another host: only after the timeout
    assert recover_claims(inbox, stale_seconds=0) == [inbox / "c.csv"]


# ---------------------------------------------------------------------------- reviews
def reviews_while_scoring(base, store_url: str, name: str) -> None:
    """Reviewers post labels on batch A's flagged records while a scorer re-stores A (a re-run)
    and stores new batches; every review is kept and every label is the latest review's."""
    top, uri = base
    root = top / name
    config = load_config(write_config(root, uri, top / "train.parquet", store_url=store_url))
    make_inbox(root / "inbox", n_parquet=6)
    engine = connect(store_url)
    detector, version = registry.load_detector(config)
    inbox = root / "inbox"
    first = process_batch(config, detector, version, inbox / "batch_1.parquet", engine)
    records = first.flagged_rows.frame()[config.features.id].tolist()
    assert len(records) >= 5
    stop, errors, posted = threading.Event(), [], []
    labels = ("confirmed", "false_positive", "unsure")

    def review(worker: int) -> None:
        i = 0
        while not stop.is_set() or i < 10:
            record = records[(i * 7 + worker) % len(records)]
            label = labels[(i + worker) % 3]
            try:
                add_review(engine, first.batch_id, record, label, f"analyst-{worker}")
                posted.append((record, label))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            i += 1

    def score() -> None:
        try:
            for path in sorted(inbox.glob("batch_*")):
                process_batch(config, detector, version, path, engine)
                shutil.copy(inbox / "processed" / "batch_1.parquet", inbox / "batch_1.parquet")
                process_batch(config, detector, version, inbox / "batch_1.parquet", engine)
        except Exception as exc:
            errors.append(f"scoring: {type(exc).__name__}: {exc}")
        finally:
            stop.set()

    threads = [threading.Thread(target=review, args=(w,)) for w in range(4)]
    threads.append(threading.Thread(target=score))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:5]
    with Session(engine) as session:
        stored = session.scalar(select(func.count()).select_from(Review))
        assert stored == len(posted) >= 40
        for record in set(records):
            latest = session.scalars(
                select(Review.label)
                .where(Review.batch_id == first.batch_id, Review.record_id == record)
                .order_by(Review.id.desc())
                .limit(1)
            ).first()
            current = session.get(Flagged, (first.batch_id, record))
            assert current is not None
            assert getattr(current, "label", latest) == latest
    engine.dispose()


def test_reviews_posted_while_scoring_are_kept_sqlite(base):
    top, _ = base
    reviews_while_scoring(base, f"sqlite:///{top / 'reviews.db'}", "reviews-sqlite")


@pytest.mark.postgres
def test_reviews_posted_while_scoring_are_kept_postgresql(base, postgres_server):
    database = f"reviews{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {database}")
    try:
        reviews_while_scoring(base, f"{postgres_server}/{database}", "reviews-postgresql")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {database} WITH (FORCE)")
        admin.dispose()


# ---------------------------------------------------------------------------- dashboard load
def _load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "load.py"
    spec = importlib.util.spec_from_file_location("load_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dashboard_under_load_answers_every_request_and_keeps_every_review(tmp_path, capsys):
    """20 clients for 8 s against a real uvicorn server (benchmarks/load.py runs 30 s)."""
    load = _load_benchmark()
    stats, stored = load.benchmark(tmp_path, clients=20, seconds=8, write_share=0.2)
    with capsys.disabled():
        print("\n" + load.table(stats, 8, 20))
    assert stats.n_errors == 0, stats.errors
    assert stats.accepted_reviews >= 20
    assert stored == stats.accepted_reviews
    assert set(stats.latencies) == {"post review", "read queue", "read record", "read batches"}
