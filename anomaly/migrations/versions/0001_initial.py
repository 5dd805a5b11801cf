"""The store's first schema: batches, flagged, quarantined and the review log (the schema
``create_all`` made before the migrations existed).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("batch_id", sa.String(300), primary_key=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(50), nullable=False),
        sa.Column("rows_in", sa.Integer(), nullable=False),
        sa.Column("rows_scored", sa.Integer(), nullable=False),
        sa.Column("rows_quarantined", sa.Integer(), nullable=False),
        sa.Column("rows_flagged", sa.Integer(), nullable=False),
        sa.Column("flag_rate", sa.Float(), nullable=False),
        sa.Column("expected_rate", sa.Float(), nullable=False),
        sa.Column("shift_p_value", sa.Float(), nullable=False),
        sa.Column("shift_alarm", sa.Boolean(), nullable=False),
        sa.Column("mean_log_likelihood", sa.Float(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_batches_scored_at", "batches", ["scored_at"])
    op.create_table(
        "flagged",
        sa.Column("batch_id", sa.String(300), primary_key=True),
        sa.Column("record_id", sa.String(300), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(50), nullable=False),
        sa.Column("log_likelihood", sa.Float(), nullable=False),
        sa.Column("p_value", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("contributions", sa.JSON(), nullable=True),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_flagged_log_likelihood", "flagged", ["log_likelihood"])
    op.create_index("ix_flagged_model_version", "flagged", ["model_version"])
    op.create_index("ix_flagged_scored_at", "flagged", ["scored_at"])
    op.create_table(
        "quarantined",
        sa.Column("batch_id", sa.String(300), primary_key=True),
        sa.Column("row", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("record_id", sa.String(300), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(300), nullable=False),
        sa.Column("record_id", sa.String(300), nullable=False),
        sa.Column("label", sa.String(20), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_reviews_batch_id", "reviews", ["batch_id"])
    op.create_index("ix_reviews_record_id", "reviews", ["record_id"])


def downgrade() -> None:
    for table in ("reviews", "quarantined", "flagged", "batches"):
        op.drop_table(table)
