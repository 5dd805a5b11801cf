"""Alembic environment: runs on the connection :func:`anomaly.migrations.upgrade` passes in
(``alembic -x url=...`` from a shell works too)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from anomaly.store.tables import Base

config = context.config


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        msg = "pass the database URL: alembic -x url=sqlite:///path/review.db upgrade head"
        raise SystemExit(msg)
    with create_engine(url).begin() as conn:
        _run(conn)
