"""Triage: who a record is assigned to (an append-only assignment log, its latest entry copied to
``flagged.assignee``), an append-only comment thread per record, and indexes for finding records
by id, paging by time and by assignee.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

QUEUE_KEY = ["log_likelihood", "batch_id", "record_id"]


def upgrade() -> None:
    with op.batch_alter_table("flagged") as batch:
        batch.add_column(sa.Column("assignee", sa.String(200), nullable=True))
    op.create_index("ix_flagged_assignee_queue", "flagged", ["assignee", *QUEUE_KEY])
    op.create_index("ix_flagged_time_queue", "flagged", ["scored_at", "batch_id", "record_id"])
    op.create_index("ix_flagged_record_id", "flagged", ["record_id"])
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(300), nullable=False),
        sa.Column("record_id", sa.String(300), nullable=False),
        sa.Column("assignee", sa.String(200), nullable=True),
        sa.Column("assigned_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_assignments_record_log", "assignments", ["batch_id", "record_id", "id"])
    op.create_table(
        "comments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(300), nullable=False),
        sa.Column("record_id", sa.String(300), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_comments_record_log", "comments", ["batch_id", "record_id", "id"])


def downgrade() -> None:
    op.drop_table("comments")
    op.drop_table("assignments")
    for name in ("ix_flagged_record_id", "ix_flagged_time_queue", "ix_flagged_assignee_queue"):
        op.drop_index(name, table_name="flagged")
    with op.batch_alter_table("flagged") as batch:
        batch.drop_column("assignee")
