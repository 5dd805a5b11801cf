"""Two indexes of ``flagged`` that others begin with go: ``ix_flagged_model_version``
(``ix_flagged_version_queue`` starts with the model version) and ``ix_flagged_scored_at``
(``ix_flagged_time_queue`` starts with the time). Every stored row updated both; a lookup by
version or time uses the longer index as well (issue 18, item 5: the store's batch write).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DROPPED = {"ix_flagged_model_version": ["model_version"], "ix_flagged_scored_at": ["scored_at"]}


def upgrade() -> None:
    for name in DROPPED:
        op.drop_index(name, table_name="flagged")


def downgrade() -> None:
    for name, columns in DROPPED.items():
        op.create_index(name, "flagged", columns)
