"""Opening the store: the engine of a URL with its schema migrated (:func:`connect`), one per URL
and process (:func:`engine_for`, :func:`store_engine`).

The schema is created and upgraded by the Alembic migrations in :mod:`anomaly.migrations`;
:func:`connect` runs them. (The migrations' ``env.py`` reads the tables from
:mod:`anomaly.store.tables`, never this module, so opening a store is not a loop.)
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Engine,
    create_engine,
    event,
)
from sqlalchemy.exc import OperationalError

if TYPE_CHECKING:
    from anomaly.config import Config


def default_url(home: Path) -> str:
    """SQLite file under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'review.db'}"


#: tries at migrating a SQLite file that another connection holds
MIGRATE_ATTEMPTS = 5


def connect(url: str) -> Engine:
    """An engine with the schema migrated to the latest revision; SQLite gets WAL and a 30 s
    busy timeout."""
    # Alembic loads only when a store is opened (~1 s of imports the dashboard and CLI skip
    # until then); the migrations read the tables from anomaly.store.tables, not from here
    from anomaly.migrations import upgrade

    is_sqlite = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {})
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA busy_timeout=30000")

    for attempt in range(MIGRATE_ATTEMPTS):
        try:
            upgrade(engine)
            break
        except OperationalError as exc:
            # a new SQLite file: another process's or thread's first connection may hold the
            # file (turning it to WAL, migrating) past the busy handler; the migration is one
            # transaction under a file lock and checks the revision first, so trying again is safe
            if not is_sqlite or "locked" not in str(exc) or attempt == MIGRATE_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return engine


def store_engine(config: Config) -> Engine:
    """The review store of ``config`` (one engine per URL and process)."""
    return engine_for(config.store.url or default_url(config.home))


@functools.cache
def engine_for(url: str) -> Engine:
    """The engine of ``url``, connected (and migrated) once per process."""
    return connect(url)
