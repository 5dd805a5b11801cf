"""Alembic migrations of the review store; :func:`upgrade` brings any database to the latest
revision (``anomaly.store.connect`` calls it).

A database made before the migrations existed (by ``create_all``, with exactly the first
revision's schema) is stamped with that revision, then upgraded like any other.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from anomaly.processes import file_lock

HERE = Path(__file__).parent
#: the revision whose schema ``create_all`` made before the migrations existed
INITIAL = "0001"
#: PostgreSQL advisory lock key: one migrating process at a time
_PG_LOCK = 0x616E6F6D


def alembic_config() -> Config:
    """Alembic's configuration for the store's migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


def head() -> str:
    """The latest revision."""
    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def current(engine: Engine) -> str | None:
    """The database's revision (None: not under Alembic yet)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _file_lock(engine: Engine) -> contextlib.AbstractContextManager[None]:
    """Serialise migrations of one SQLite file across processes (no-op for other databases)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return contextlib.nullcontext()
    return file_lock(Path(f"{database}.migrate.lock"))


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision``, stamping a pre-Alembic database first."""
    if revision == "head" and current(engine) == head():
        return
    config = alembic_config()
    with _file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK})")
        config.attributes["connection"] = conn
        has_version = MigrationContext.configure(conn).get_current_revision() is not None
        if not has_version and inspect(conn).has_table("flagged"):
            command.stamp(config, INITIAL)
        command.upgrade(config, revision)
