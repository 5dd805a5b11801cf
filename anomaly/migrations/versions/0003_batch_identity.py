"""Batch identity and kept reviews: each batch's content hash, and triggers that make the
database refuse to delete a reviewed record (``flagged.label`` set) or any review.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FLAGGED_MESSAGE = "a reviewed record is never deleted"
REVIEWS_MESSAGE = "the review log is append-only: a review is never deleted"

SQLITE = [
    "CREATE TRIGGER flagged_keep_reviewed BEFORE DELETE ON flagged"
    f" WHEN OLD.label IS NOT NULL BEGIN SELECT RAISE(ABORT, '{FLAGGED_MESSAGE}'); END",
    "CREATE TRIGGER reviews_append_only BEFORE DELETE ON reviews"
    f" BEGIN SELECT RAISE(ABORT, '{REVIEWS_MESSAGE}'); END",
]
POSTGRESQL = [
    "CREATE FUNCTION anomaly_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation';"
    " END $$",
    "CREATE TRIGGER flagged_keep_reviewed BEFORE DELETE ON flagged FOR EACH ROW"
    f" WHEN (OLD.label IS NOT NULL) EXECUTE FUNCTION anomaly_refuse_delete('{FLAGGED_MESSAGE}')",
    "CREATE TRIGGER reviews_append_only BEFORE DELETE ON reviews FOR EACH ROW"
    f" EXECUTE FUNCTION anomaly_refuse_delete('{REVIEWS_MESSAGE}')",
]


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE, "postgresql": POSTGRESQL}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS reviews_append_only" + _on("reviews"))
    op.execute("DROP TRIGGER IF EXISTS flagged_keep_reviewed" + _on("flagged"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS anomaly_refuse_delete()")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("content_hash")


def _on(table: str) -> str:
    return f" ON {table}" if op.get_bind().dialect.name == "postgresql" else ""
