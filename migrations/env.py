"""Alembic environment: the URL comes from the Alembic config or CALLMOOD_DATABASE_URL.

``worker.db.upgrade(url)`` sets ``sqlalchemy.url`` on the config; the ``alembic`` command line
(with the repository's alembic.ini, which holds no URL) falls back to the callmood settings.
"""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy.engine import Connection

from worker.db import make_engine
from worker.schema import Base

config = context.config
if config.config_file_name is not None and config.get_main_option("configure_logging") == "true":
    from logging.config import fileConfig

    fileConfig(config.config_file_name, disable_existing_loggers=False)

log = logging.getLogger("alembic.env")
target_metadata = Base.metadata


MIGRATION_LOCK_ID = 0x63616C6C6D6F6F64  # "callmood" in ASCII: one lock key for every upgrade
"""PostgreSQL advisory lock an online upgrade holds for its transaction: two `callmood db
upgrade` at once (a migrate step per worker container) both created the tables, and one
failed with DuplicateTable (a review); the second now waits, then finds head applied."""


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Autogenerate compares callmood's own tables only: a kombu broker sharing the database
    (sqla+postgresql://) keeps its tables there, and a comparison proposed dropping them,
    queued messages with them (a review)."""
    return type_ != "table" or name in target_metadata.tables or name == "alembic_version"


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from worker.settings import Settings

    return Settings.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    # On the driver's connection, outside any transaction: SQLite ignores this pragma inside
    # one, and SQLAlchemy would begin one for its own execute.
    raw = connection.connection.dbapi_connection
    assert raw is not None
    raw.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")


def run_migrations_online() -> None:
    # Our engine, so SQLite gets the same pragmas (foreign keys, WAL, busy timeout) as the app.
    with make_engine(_database_url()).connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # A batch migration copies a table and drops the original; with foreign keys on,
            # dropping ``calls`` cascades into ``segments`` and every stored result is lost
            # (SQLite's documented procedure for altering tables turns them off, then checks).
            _sqlite_foreign_keys(connection, on=False)
        try:
            # SQLite does run DDL inside transactions: a failed migration then leaves no half
            # schema behind (Alembic assumes otherwise by default).
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_as_batch=sqlite, transactional_ddl=True if sqlite else None,
                              compare_type=True, include_name=include_name)
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    # released with the transaction; SQLite's BEGIN IMMEDIATE serialises it
                    connection.exec_driver_sql(
                        f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration left rows whose foreign keys point "
                                           f"nowhere (rolled back): {broken[:5]}")
        finally:
            if sqlite:
                _sqlite_foreign_keys(connection, on=True)  # the pooled connection goes back


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
