"""The review store: scored batches, flagged and quarantined records, and an append-only review
log. SQLAlchemy 2; SQLite (WAL, busy timeout) under ANOMALY_HOME by default, any URL otherwise.

One module per thing stored; the public names are re-exported here (``from anomaly.store
import write_batch``):

- :mod:`~anomaly.store.tables`: the tables and the labels a review may give;
- :mod:`~anomaly.store.engine`: opening a store (migrated by :mod:`anomaly.migrations`), one
  engine per URL and process;
- :mod:`~anomaly.store.scored_batches`: batch ids, batch writes (one transaction each) and the
  stored batches;
- :mod:`~anomaly.store.reviews`: the review log, bulk labels, assignments and comments;
- :mod:`~anomaly.store.review_queue`: the queue and search, keyset-paged, and their cursors;
- :mod:`~anomaly.store.export`: reviewed records as CSV or Parquet;
- :mod:`~anomaly.store.sessions`: dashboard logins;
- :mod:`~anomaly.store.daily`: the per-day overview.

Reviews are never updated or deleted; a record's current label is its latest review, copied
into ``flagged.label`` in the review's own transaction so the queue filters and pages by label
through an index. A reviewed record is never deleted: re-storing its batch keeps it, and the
database refuses the deletion (a trigger, migration 0003) as the ORM does.
"""

from anomaly.store.daily import Day, overview
from anomaly.store.engine import connect, default_url, engine_for, store_engine
from anomaly.store.export import (
    EXPORT_COLUMNS,
    FORMULA_STARTS,
    csv_safe,
    csv_text,
    reviewed_records,
    write_export,
)
from anomaly.store.review_queue import (
    SORTS,
    FeatureFilter,
    Key,
    Order,
    Page,
    QueueFilter,
    Search,
    Sort,
    decode_cursor,
    decode_key,
    encode_cursor,
    encode_key,
    filter_choices,
    get_record,
    key_of,
    queue,
    queue_count,
    search,
    search_count,
    search_key,
)
from anomaly.store.reviews import (
    BULK_LIMIT,
    add_comment,
    add_review,
    add_reviews,
    assign,
    comments_of,
    current_labels,
    model_labels,
    reviewers_assigned,
    reviews_of,
)
from anomaly.store.scored_batches import (
    SCORING,
    SHORT_HASH,
    BatchConflictError,
    batch_counts,
    batches,
    get_batch,
    quarantined_rows,
    reserve_batch,
    with_hash,
    write_batch,
)
from anomaly.store.sessions import (
    end_session,
    end_sessions,
    live_session,
    live_sessions,
    start_session,
)
from anomaly.store.tables import (
    LABELS,
    UNREVIEWED,
    Assignment,
    Base,
    Batch,
    Comment,
    Flagged,
    Label,
    LoginSession,
    Quarantined,
    Review,
    ReviewedRecordError,
)

__all__ = [
    "BULK_LIMIT", "EXPORT_COLUMNS", "FORMULA_STARTS", "LABELS", "SCORING",
    "SHORT_HASH", "SORTS", "UNREVIEWED", "Assignment", "Base", "Batch", "BatchConflictError",
    "Comment", "Day", "FeatureFilter", "Flagged", "Key", "Label", "LoginSession", "Order", "Page",
    "Quarantined", "QueueFilter", "Review", "ReviewedRecordError", "Search", "Sort",
    "add_comment", "add_review", "add_reviews", "assign", "batch_counts", "batches",
    "comments_of", "connect", "csv_safe", "csv_text", "current_labels", "decode_cursor",
    "decode_key", "default_url", "encode_cursor", "encode_key", "end_session", "end_sessions",
    "engine_for", "filter_choices", "get_batch", "get_record", "key_of", "live_session",
    "live_sessions", "model_labels", "overview", "quarantined_rows", "queue", "queue_count",
    "reserve_batch", "reviewed_records", "reviewers_assigned", "reviews_of", "search",
    "search_count", "search_key", "start_session", "store_engine", "with_hash", "write_batch",
    "write_export",
]  # fmt: skip
