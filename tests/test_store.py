"""The review store against real databases: SQLite always, PostgreSQL 15 when its cluster tools
are installed (a throwaway cluster on a free port, dropped afterwards)."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from store_data import ID, fill, flagged_frame, quarantined_frame, summary

from anomaly import migrations, store
from anomaly.store import review_queue, scored_batches

# What `Base.metadata.create_all` made before the migrations existed (SQLite), verbatim.
OLD_SCHEMA = """
CREATE TABLE batches (
	batch_id VARCHAR(300) NOT NULL,
	source TEXT NOT NULL,
	status VARCHAR(20) NOT NULL,
	model_name VARCHAR(200) NOT NULL,
	model_version VARCHAR(50) NOT NULL,
	rows_in INTEGER NOT NULL,
	rows_scored INTEGER NOT NULL,
	rows_quarantined INTEGER NOT NULL,
	rows_flagged INTEGER NOT NULL,
	flag_rate FLOAT NOT NULL,
	expected_rate FLOAT NOT NULL,
	shift_p_value FLOAT NOT NULL,
	shift_alarm BOOLEAN NOT NULL,
	mean_log_likelihood FLOAT,
	output TEXT,
	error TEXT,
	scored_at DATETIME NOT NULL,
	PRIMARY KEY (batch_id)
);
CREATE TABLE flagged (
	batch_id VARCHAR(300) NOT NULL,
	record_id VARCHAR(300) NOT NULL,
	model_name VARCHAR(200) NOT NULL,
	model_version VARCHAR(50) NOT NULL,
	log_likelihood FLOAT NOT NULL,
	p_value FLOAT NOT NULL,
	reason TEXT NOT NULL,
	"values" JSON NOT NULL,
	contributions JSON,
	scored_at DATETIME NOT NULL,
	PRIMARY KEY (batch_id, record_id)
);
CREATE TABLE quarantined (
	batch_id VARCHAR(300) NOT NULL,
	"row" INTEGER NOT NULL,
	record_id VARCHAR(300),
	reason TEXT NOT NULL,
	"values" JSON NOT NULL,
	PRIMARY KEY (batch_id, "row")
);
CREATE TABLE reviews (
	id INTEGER NOT NULL,
	batch_id VARCHAR(300) NOT NULL,
	record_id VARCHAR(300) NOT NULL,
	label VARCHAR(20) NOT NULL,
	note TEXT NOT NULL,
	reviewer VARCHAR(200) NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_batches_scored_at ON batches (scored_at);
CREATE INDEX ix_flagged_log_likelihood ON flagged (log_likelihood);
CREATE INDEX ix_flagged_model_version ON flagged (model_version);
CREATE INDEX ix_flagged_scored_at ON flagged (scored_at);
CREATE INDEX ix_reviews_batch_id ON reviews (batch_id);
CREATE INDEX ix_reviews_record_id ON reviews (record_id)
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'review.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    database = f"t{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {database}")
    try:
        yield f"{server}/{database}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {database} WITH (FORCE)")
        admin.dispose()


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    e = store.connect(store_url)
    yield e
    e.dispose()


def _keys(rows: list[store.Flagged]) -> list[store.Key]:
    return [store.key_of(r) for r in rows]


def test_a_new_database_is_migrated_to_the_models_schema(engine: sa.Engine) -> None:
    assert migrations.current(engine) == migrations.head()
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), store.Base.metadata) == []


def test_a_create_all_database_is_stamped_then_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute(
            "INSERT INTO flagged VALUES ('b', 'r1', 'm', '1', -30.0, 0.001, '', '{\"x\": 1}',"
            " NULL, '2026-01-01 00:00:00')"
        )
        for label in ("unsure", "confirmed"):
            conn.execute(
                "INSERT INTO reviews (batch_id, record_id, label, note, reviewer, created_at)"
                " VALUES ('b', 'r1', ?, '', 'ann', '2026-01-02 00:00:00')",
                (label,),
            )
    engine = store.connect(f"sqlite:///{path}")
    assert migrations.current(engine) == migrations.head()
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), store.Base.metadata) == []
    record = store.get_record(engine, "b", "r1")
    assert record is not None
    assert record.label == "confirmed"  # the latest of the old reviews
    assert store.queue_count(engine, store.QueueFilter(label="confirmed")) == 1


def test_an_old_revision_with_data_upgrades_in_place(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    migrations.upgrade(engine, migrations.INITIAL)
    assert migrations.current(engine) == migrations.INITIAL
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO flagged (batch_id, record_id, model_name, model_version,"
                ' log_likelihood, p_value, reason, "values", scored_at)'
                " VALUES ('b', 'r1', 'm', '1', -30.0, 0.001, '', '{}', :t)"
            ),
            {"t": datetime(2026, 1, 1, tzinfo=UTC)},
        )
        conn.execute(
            sa.text(
                "INSERT INTO reviews (batch_id, record_id, label, note, reviewer, created_at)"
                " VALUES ('b', 'r1', 'false_positive', '', 'ann', :t)"
            ),
            {"t": datetime(2026, 1, 2, tzinfo=UTC)},
        )
    engine.dispose()
    upgraded = store.connect(store_url)
    assert migrations.current(upgraded) == migrations.head()
    assert store.get_record(upgraded, "b", "r1").label == "false_positive"
    with pytest.raises(sa.exc.DBAPIError, match="never deleted"), upgraded.begin() as conn:
        conn.execute(sa.text("DELETE FROM flagged"))  # reviewed before the upgrade: kept
    upgraded.dispose()


def test_concurrent_connects_migrate_a_new_sqlite_file_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'review.db'}"
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            store.connect(url).dispose()
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert migrations.current(sa.create_engine(url)) == migrations.head()


def test_rewriting_a_batch_replaces_its_rows_and_keeps_labels(engine: sa.Engine) -> None:
    fill(engine, batches=2, per_batch=20)
    rows, _ = store.queue(engine, store.QueueFilter(batch_id="batch-000.parquet"), limit=2)
    store.add_review(engine, rows[0].batch_id, rows[0].record_id, "confirmed", "ann", "card stolen")
    s = summary(0, 20)
    store.write_batch(engine, s, "demo", flagged_frame(0, 20), quarantined_frame(0), ID)
    assert store.batch_counts(engine, s.batch_id) == (20, 3)
    assert store.queue_count(engine, store.QueueFilter()) == 40
    again = store.get_record(engine, rows[0].batch_id, rows[0].record_id)
    assert again.label == "confirmed"
    assert store.get_record(engine, rows[1].batch_id, rows[1].record_id).label is None


def test_a_batch_is_stored_in_insert_slices(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scored_batches, "INSERT_ROWS", 4)  # 11 flagged rows: slices of 4, 4, 3
    s = summary(0, 11)
    flagged = flagged_frame(0, 11)
    store.write_batch(engine, s, "demo", flagged, quarantined_frame(0), ID)
    assert store.batch_counts(engine, s.batch_id) == (11, 3)
    rows, _ = store.queue(engine, store.QueueFilter(batch_id=s.batch_id), limit=50)
    assert sorted(r.record_id for r in rows) == sorted(flagged[ID])
    with sa.orm.Session(engine) as session:
        kept = session.query(store.Quarantined).order_by(store.Quarantined.row).all()
    assert [q.row for q in kept] == [0, 1, 2]
    assert [q.reason for q in kept] == quarantined_frame(0)["reason"].tolist()


def test_the_latest_review_is_the_label_and_the_log_keeps_all(engine: sa.Engine) -> None:
    fill(engine, batches=1, per_batch=5)
    b, r = "batch-000.parquet", "b0-r000003"
    for label, who in (("unsure", "ann"), ("confirmed", "bob"), ("false_positive", "ann")):
        store.add_review(engine, b, r, label, who)
    assert store.get_record(engine, b, r).label == "false_positive"
    log = store.reviews_of(engine, b, r)
    assert [(x.label, x.reviewer) for x in log] == [
        ("false_positive", "ann"), ("confirmed", "bob"), ("unsure", "ann")
    ]  # fmt: skip
    labels = store.current_labels(engine)
    assert labels[["record_id", "label"]].values.tolist() == [[r, "false_positive"]]


def test_reviews_of_bad_labels_or_unknown_records_are_refused(engine: sa.Engine) -> None:
    fill(engine, batches=1, per_batch=3)
    with pytest.raises(ValueError, match="label must be one of"):
        store.add_review(engine, "batch-000.parquet", "b0-r000000", "fraud", "ann")
    with pytest.raises(LookupError, match="no flagged record 'nope'"):
        store.add_review(engine, "batch-000.parquet", "nope", "confirmed", "ann")
    assert store.reviews_of(engine, "batch-000.parquet", "b0-r000000") == []


@pytest.mark.parametrize("order", ["score_desc", "score_asc"])
def test_queue_pages_cover_every_record_once_in_score_order(
    engine: sa.Engine, order: store.Order
) -> None:
    fill(engine, batches=3, per_batch=40)
    where = store.QueueFilter(order=order)
    seen: list[store.Key] = []
    after = None
    while True:
        rows, after = store.queue(engine, where, limit=7, after=after)
        seen += _keys(rows)
        if after is None:
            break
    assert len(seen) == len(set(seen)) == 120
    assert seen == sorted(seen, reverse=order == "score_asc")
    first = seen[0][0]
    lowest = min(k[0] for k in seen)
    assert (first == lowest) == (order == "score_desc")  # most anomalous = lowest first


def test_queue_filters(engine: sa.Engine) -> None:
    fill(engine, batches=3, per_batch=10)
    s = summary(9, 10, version="2")
    store.write_batch(engine, s, "demo", flagged_frame(9, 10), quarantined_frame(9), ID)
    store.add_review(engine, "batch-001.parquet", "b1-r000002", "confirmed", "ann")
    store.add_review(engine, "batch-002.parquet", "b2-r000004", "unsure", "ann")

    def count(**kw: object) -> int:
        where = store.QueueFilter(**kw)
        rows, _ = store.queue(engine, where, limit=100)
        assert len(rows) == store.queue_count(engine, where)
        return len(rows)

    assert count() == 40
    assert count(batch_id="batch-001.parquet") == 10
    assert count(model_version="2") == 10
    assert count(label="confirmed") == 1
    assert count(label="unreviewed") == 38
    assert count(label="confirmed", batch_id="batch-002.parquet") == 0
    now = datetime.now(UTC)
    assert count(since=now - timedelta(hours=1)) == 40
    assert count(since=now + timedelta(hours=1)) == 0
    assert count(until=now - timedelta(hours=1)) == 0
    with pytest.raises(ValueError, match="label filter must be one of"):
        store.QueueFilter(label="fraud")


def test_cursor_round_trip_and_garbage() -> None:
    key = (-31.123456789012345, "batch a.csv", "id/with/slash")
    assert store.decode_cursor(store.encode_cursor(key)) == key
    with pytest.raises(ValueError, match="invalid queue cursor"):
        store.decode_cursor("not-a-cursor")


def test_sqlite_queue_pages_come_from_indexes(tmp_path: Path) -> None:
    """No full sort for any queue order: each filter has an index in score order."""
    engine = store.connect(f"sqlite:///{tmp_path / 'review.db'}")
    filters = [
        store.QueueFilter(),
        store.QueueFilter(order="score_asc"),
        store.QueueFilter(batch_id="b"),
        store.QueueFilter(model_version="1"),
        store.QueueFilter(label="confirmed"),
        store.QueueFilter(label="unreviewed"),
    ]
    for where in filters:
        query = review_queue._filtered(sa.select(store.Flagged), where).order_by(
            store.Flagged.log_likelihood, store.Flagged.batch_id, store.Flagged.record_id
        )
        if where.order == "score_asc":
            query = query.order_by(None).order_by(
                store.Flagged.log_likelihood.desc(), store.Flagged.batch_id.desc(),
                store.Flagged.record_id.desc(),
            )  # fmt: skip
        compiled = query.limit(51).compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as conn:
            plan = " ".join(
                str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            )
        assert "TEMP B-TREE" not in plan, (where, plan)
        assert "USING INDEX" in plan, (where, plan)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_of_reviewed_records(engine: sa.Engine, tmp_path: Path, suffix: str) -> None:
    fill(engine, batches=1, per_batch=5)
    store.add_review(engine, "batch-000.parquet", "b0-r000001", "unsure", "ann")
    store.add_review(engine, "batch-000.parquet", "b0-r000001", "confirmed", "bob", "called")
    path = store.write_export(store.reviewed_records(engine), tmp_path / f"reviews{suffix}")
    back = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    assert len(back) == 1
    row = back.iloc[0]
    assert (row["label"], row["reviewer"], row["note"]) == ("confirmed", "bob", "called")
    assert row["value.merchant_category"] in ("grocery", "fuel", "travel", "online")
    with pytest.raises(ValueError, match=r"must end in \.csv or \.parquet"):
        store.write_export(store.reviewed_records(engine), tmp_path / "reviews.xlsx")


def test_export_with_no_reviews_has_the_columns(engine: sa.Engine) -> None:
    frame = store.reviewed_records(engine)
    assert frame.empty
    assert list(frame.columns) == store.EXPORT_COLUMNS


def test_queue_count_stops_at_its_limit(engine: sa.Engine) -> None:
    fill(engine, batches=1, per_batch=30)
    assert store.queue_count(engine, store.QueueFilter()) == 30
    assert store.queue_count(engine, store.QueueFilter(), limit=10) == 10
    assert store.queue_count(engine, store.QueueFilter(), limit=100) == 30


# ---------------------------------------------------------------------------- batch identity


def test_a_reviewed_record_and_the_review_log_cannot_be_deleted(engine: sa.Engine) -> None:
    fill(engine, batches=1, per_batch=5)
    rows, _ = store.queue(engine, store.QueueFilter(), limit=2)
    reviewed, other = rows
    store.add_review(engine, reviewed.batch_id, reviewed.record_id, "confirmed", "ann")
    where = {"b": reviewed.batch_id, "r": reviewed.record_id}
    # the database refuses, whatever the client (a trigger, migration 0003)
    for statement in (
        "DELETE FROM flagged WHERE batch_id = :b AND record_id = :r",
        "DELETE FROM flagged",
        "DELETE FROM reviews WHERE batch_id = :b AND record_id = :r",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="never deleted"), engine.begin() as conn:
            conn.execute(sa.text(statement), where)
    # the ORM refuses before the database is asked
    with sa.orm.Session(engine) as session:
        session.delete(session.get(store.Flagged, (reviewed.batch_id, reviewed.record_id)))
        with pytest.raises(store.ReviewedRecordError):
            session.flush()
    with sa.orm.Session(engine) as session:
        session.delete(session.scalars(sa.select(store.Review)).one())
        with pytest.raises(store.ReviewedRecordError):
            session.flush()
    assert store.get_record(engine, reviewed.batch_id, reviewed.record_id).label == "confirmed"
    assert len(store.reviews_of(engine, reviewed.batch_id, reviewed.record_id)) == 1
    with engine.begin() as conn:  # an unreviewed record can go
        conn.execute(sa.text("DELETE FROM flagged WHERE record_id = :r"), {"r": other.record_id})
    assert store.get_record(engine, other.batch_id, other.record_id) is None


def test_restoring_a_batch_keeps_reviewed_records_it_no_longer_flags(engine: sa.Engine) -> None:
    fill(engine, batches=1, per_batch=10)
    rows, _ = store.queue(engine, store.QueueFilter(), limit=10)
    gone = rows[-1]  # the new model does not flag this one
    store.add_review(engine, gone.batch_id, gone.record_id, "false_positive", "ann")
    flagged = flagged_frame(0, 10)
    flagged = flagged[flagged[ID] != gone.record_id]
    store.write_batch(engine, summary(0, 9, version="2"), "demo", flagged, pd.DataFrame(), ID)
    kept = store.get_record(engine, gone.batch_id, gone.record_id)
    assert kept.label == "false_positive"
    assert kept.model_version == "1"  # as it was reviewed
    assert store.batch_counts(engine, gone.batch_id) == (10, 0)


def test_a_batch_id_is_reserved_for_one_content(engine: sa.Engine) -> None:
    a, b, c = ("a" * 64, "b" * 64, "c" * 64)
    reserve = store.reserve_batch
    assert reserve(engine, "batch_001.csv", a, ".csv", "/in/batch_001.csv", "demo") == (
        "batch_001.csv"
    )
    assert store.get_batch(engine, "batch_001.csv").status == store.SCORING
    assert reserve(engine, "batch_001.csv", a, ".csv", "/in/batch_001.csv", "demo") == (
        "batch_001.csv"
    )  # the same content again: the same batch
    assert reserve(engine, "batch_001.csv", b, ".csv", "/in/batch_001.csv", "demo") == (
        f"batch_001@{'b' * 12}.csv"
    )
    assert reserve(engine, "my_b.csv-1234abcd", c, ".csv", "/in/my b.csv", "demo") == (
        "my_b.csv-1234abcd"
    )
    assert reserve(engine, "my_b.csv-1234abcd", b, ".csv", "/in/my b.csv", "demo") == (
        f"my_b.csv-1234abcd@{'b' * 12}"
    )
    # a batch stored before batches had a content hash counts as other content
    store.write_batch(engine, summary(7, 3), "demo", flagged_frame(7, 3), pd.DataFrame(), ID)
    assert reserve(engine, "batch-007.parquet", a, ".parquet", "/x", "demo") == (
        f"batch-007@{'a' * 12}.parquet"
    )
    # and a write of other content over a stored batch is refused, its rows untouched
    other = dataclasses.replace(summary(7, 1), content_hash=a)
    with pytest.raises(store.BatchConflictError, match="stored with other content"):
        store.write_batch(engine, other, "demo", flagged_frame(7, 1), pd.DataFrame(), ID)
    assert store.batch_counts(engine, "batch-007.parquet") == (3, 0)


def test_concurrent_reservations_of_one_name_get_one_id_per_content(engine: sa.Engine) -> None:
    hashes = [f"{i:x}" * 64 for i in range(1, 7)]
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def reserve(content: str) -> None:
        try:
            got[content] = store.reserve_batch(engine, "b.csv", content, ".csv", "/b.csv", "demo")
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=reserve, args=(h,)) for h in hashes * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(got.values())) == len(hashes)  # one id per content, none shared
    assert sum(v == "b.csv" for v in got.values()) == 1


def test_sessions_start_end_and_expire(engine: sa.Engine) -> None:
    hour = timedelta(hours=1)
    now = datetime.now(UTC)
    for key, user in (("a", "ann"), ("b", "ann"), ("c", "bob")):
        store.start_session(engine, key * 64, user, "fingerprint", now + hour)
    store.start_session(engine, "d" * 64, "bob", "fingerprint", now - hour)  # already expired
    assert store.live_session(engine, "a" * 64).user == "ann"
    assert store.live_session(engine, "d" * 64) is None
    assert store.end_session(engine, "a" * 64)
    assert not store.end_session(engine, "a" * 64)
    assert store.live_session(engine, "a" * 64) is None
    assert store.live_session(engine, "b" * 64) is not None  # ann's other login lives on
    assert store.end_sessions(engine, "ann") == 1
    assert [s.user for s in store.live_sessions(engine)] == ["bob"]
    store.start_session(engine, "e" * 64, "eve", "fingerprint", now + hour)  # drops "d"
    assert store.end_sessions(engine) == 2
    assert store.live_sessions(engine) == []


# ---------------------------------------------------------------------------- search and triage


def _dated(engine: sa.Engine, batch_id: str, at: datetime) -> None:
    """Date a stored batch (and its records) as if scored at ``at``."""
    with engine.begin() as conn:
        for table in (store.Batch, store.Flagged):
            conn.execute(sa.update(table).where(table.batch_id == batch_id).values(scored_at=at))


@pytest.mark.parametrize("sort", store.SORTS)
def test_search_pages_both_ways_cover_every_record_once(engine: sa.Engine, sort: str) -> None:
    fill(engine, batches=3, per_batch=20)
    _dated(engine, "batch-001.parquet", datetime(2024, 5, 1, 8, tzinfo=UTC))
    s = store.Search(sort=sort)
    pages, after = [], None
    while True:
        page = store.search(engine, s, limit=7, after=after)
        assert page.offset == 7 * len(pages)
        assert page.total == 60
        pages.append(page)
        if not page.has_next:
            break
        after = store.decode_key(store.encode_key(page.last), sort)  # through its cursor
    keys = [(r.batch_id, r.record_id) for p in pages for r in p.rows]
    assert len(keys) == len(set(keys)) == 60
    ordered = [store.search_key(r, s) for p in pages for r in p.rows]
    assert ordered == sorted(ordered, reverse=sort in ("score_asc", "time_desc"))
    for i in range(len(pages) - 1, 0, -1):  # and back again
        back = store.search(engine, s, limit=7, before=pages[i].first)
        assert [r.record_id for r in back.rows] == [r.record_id for r in pages[i - 1].rows]
        assert back.offset == 7 * (i - 1)
        assert back.has_previous == (i > 1)


def test_search_filters(engine: sa.Engine) -> None:
    fill(engine, batches=2, per_batch=30)
    assert len(store.search(engine, store.Search(record_id="b1-r00001")).rows) == 10
    exact = store.search(engine, store.Search(record_id="b1-r000011", exact=True)).rows
    assert [r.record_id for r in exact] == ["b1-r000011"]
    assert store.search(engine, store.Search(record_id="b1-r%")).rows == []  # no wildcards
    assert store.search(engine, store.Search(record_id="B1-R0")).rows == []  # case-sensitive
    scored = store.search(engine, store.Search(min_score=24, max_score=26), limit=100).rows
    assert scored
    assert all(24 <= -r.log_likelihood <= 26 for r in scored)
    rng = store.FeatureFilter("amount", low=30, high=90)
    ranged = store.search(engine, store.Search(features=(rng,)), limit=100).rows
    assert ranged
    assert all(30 <= r.values["amount"] <= 90 for r in ranged)
    fuel = store.FeatureFilter("merchant_category", equals="fuel")
    found = store.search(engine, store.Search(features=(fuel,)), limit=100).rows
    every = store.search(engine, store.Search(), limit=100).rows
    assert {r.record_id for r in found} == {
        r.record_id for r in every if r.values["merchant_category"] == "fuel"
    }
    odd = store.FeatureFilter('x"] OR 1=1 --', equals="fuel")  # a JSON path, bound: no match
    assert store.search(engine, store.Search(features=(odd,))).rows == []


def test_bulk_reviews_are_one_transaction_with_an_entry_each(engine: sa.Engine) -> None:
    fill(engine, batches=2, per_batch=10)
    keys = [("batch-000.parquet", f"b0-r{i:06d}") for i in range(6)]
    with pytest.raises(LookupError, match="no flagged record 'nope'"):
        store.add_reviews(engine, [*keys, ("batch-000.parquet", "nope")], "unsure", "ann")
    assert store.current_labels(engine).empty  # all or nothing
    assert store.add_reviews(engine, keys + keys[:2], "confirmed", "ann", "ring") == 6
    labels = store.current_labels(engine)
    assert sorted(labels["record_id"]) == [k[1] for k in keys]
    assert set(labels["label"]) == {"confirmed"}
    assert all(len(store.reviews_of(engine, *k)) == 1 for k in keys)
    found = store.search(engine, store.Search(where=store.QueueFilter(label="confirmed")))
    assert found.total == 6
    with pytest.raises(ValueError, match="label must be one of"):
        store.add_reviews(engine, keys, "fraud", "ann")
    with pytest.raises(ValueError, match="at least one"):
        store.add_reviews(engine, [], "unsure", "ann")


def test_assignments_filter_and_survive_a_rewrite(engine: sa.Engine) -> None:
    fill(engine, batches=1, per_batch=10)
    keys = [("batch-000.parquet", f"b0-r{i:06d}") for i in range(3)]
    assert store.assign(engine, keys, "ann", "bob") == 3
    store.assign(engine, keys[:1], None, "bob")
    assert store.search(engine, store.Search(assignee="ann")).total == 2
    assert store.search(engine, store.Search(unassigned=True)).total == 8
    assert store.reviewers_assigned(engine) == ["ann"]
    s = summary(0, 10)
    store.write_batch(engine, s, "demo", flagged_frame(0, 10), quarantined_frame(0), ID)
    assert store.search(engine, store.Search(assignee="ann")).total == 2


def test_comment_threads_are_append_only_and_ordered(engine: sa.Engine) -> None:
    fill(engine, batches=1, per_batch=3)
    for author, body in (("ann", "first"), ("bob", "second"), ("ann", "third")):
        store.add_comment(engine, "batch-000.parquet", "b0-r000001", author, body)
    thread = store.comments_of(engine, "batch-000.parquet", "b0-r000001")
    assert [(c.author, c.body) for c in thread] == [("ann", "first"), ("bob", "second"),
                                                    ("ann", "third")]  # fmt: skip
    with pytest.raises(ValueError, match="needs some text"):
        store.add_comment(engine, "batch-000.parquet", "b0-r000001", "ann", "  ")
    with pytest.raises(LookupError):
        store.add_comment(engine, "batch-000.parquet", "nope", "ann", "hello")


def test_overview_per_day_with_backlog(engine: sa.Engine) -> None:
    fill(engine, batches=3, per_batch=10)  # batch 2 has a shift alarm
    for b, day in enumerate((1, 1, 3)):
        _dated(engine, f"batch-{b:03d}.parquet", datetime(2024, 5, day, 8, tzinfo=UTC))
    keys = [("batch-000.parquet", f"b0-r{i:06d}") for i in range(4)]
    store.add_reviews(engine, keys, "confirmed", "ann")
    with engine.begin() as conn:  # reviewed on May 2nd
        conn.execute(sa.update(store.Review).values(created_at=datetime(2024, 5, 2, 9, tzinfo=UTC)))
    days = store.overview(engine)
    assert [d.day.day for d in days] == [1, 3]
    first, third = days
    assert (first.batches, first.rows_flagged, first.rows_scored) == (2, 20, 2000)
    assert first.flag_rate == pytest.approx(0.01)
    assert (first.alarms, third.alarms) == (0, 1)
    assert first.versions == ("1",)
    assert (first.backlog, third.backlog) == (20, 26)  # 20 flagged; −4 reviewed on the 2nd, +10
    assert [d.day.day for d in store.overview(engine, since=days[1].day)] == [3]


def test_sqlite_search_by_id_and_time_come_from_indexes(tmp_path: Path) -> None:
    """An id (or its start) is found through ix_flagged_record_id; time and assignee orders
    page through their own indexes without a sort."""
    engine = store.connect(f"sqlite:///{tmp_path / 'review.db'}")

    def plan(s: store.Search) -> str:
        columns, ascending = review_queue._sort_key(s.sort)
        query = review_queue._searched(sa.select(store.Flagged), s, "sqlite").order_by(
            *(c if ascending else c.desc() for c in columns)
        )
        compiled = query.limit(51).compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            return " ".join(str(row[-1]) for row in rows)

    assert "ix_flagged_record_id" in plan(store.Search(record_id="b4-r00"))
    assert "ix_flagged_record_id" in plan(store.Search(record_id="b4-r000001", exact=True))
    for s in (store.Search(sort="time_desc"), store.Search(unassigned=True),
              store.Search(assignee="ann"), store.Search(sort="batch")):  # fmt: skip
        assert "TEMP B-TREE" not in plan(s), (s, plan(s))
