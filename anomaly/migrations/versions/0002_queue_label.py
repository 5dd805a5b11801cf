"""The queue: a copy of each record's current label on ``flagged``, filled from the review log,
and composite indexes for paging by score overall and within a batch, model version or label.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

QUEUE_KEY = ["log_likelihood", "batch_id", "record_id"]


def upgrade() -> None:
    with op.batch_alter_table("flagged") as batch:
        batch.add_column(sa.Column("label", sa.String(20), nullable=True))
    op.drop_index("ix_flagged_log_likelihood", table_name="flagged")
    op.create_index("ix_flagged_queue", "flagged", QUEUE_KEY)
    op.create_index(
        "ix_flagged_batch_queue", "flagged", ["batch_id", "log_likelihood", "record_id"]
    )
    op.create_index("ix_flagged_version_queue", "flagged", ["model_version", *QUEUE_KEY])
    op.create_index("ix_flagged_label_queue", "flagged", ["label", *QUEUE_KEY])
    op.create_index("ix_reviews_record_log", "reviews", ["batch_id", "record_id", "id"])
    op.execute(
        "UPDATE flagged SET label = (SELECT r.label FROM reviews r"
        " WHERE r.batch_id = flagged.batch_id AND r.record_id = flagged.record_id"
        " ORDER BY r.id DESC LIMIT 1)"
    )


def downgrade() -> None:
    op.drop_index("ix_reviews_record_log", table_name="reviews")
    for name in ("label", "version", "batch"):
        op.drop_index(f"ix_flagged_{name}_queue", table_name="flagged")
    op.drop_index("ix_flagged_queue", table_name="flagged")
    op.create_index("ix_flagged_log_likelihood", "flagged", ["log_likelihood"])
    with op.batch_alter_table("flagged") as batch:
        batch.drop_column("label")
