"""The database edge: engines, session scopes and Alembic migrations.

The embedded default is one SQLite file written by a Celery worker process and the CLI at
the same time, so every SQLite connection runs in WAL mode with a busy timeout, and every
transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock up front instead of
failing with SQLITE_BUSY when a read upgrades to a write).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DatabaseError,
    DBAPIError,
    DisconnectionError,
    OperationalError,
    ProgrammingError,
    TimeoutError,
)
from sqlalchemy.orm import Session

from worker.errors import ConfigError, TransientError
from worker.settings import PACKAGE_DIR, Settings, redact_url

log = logging.getLogger(__name__)
# Alembic announces every plugin it loads at INFO; the CLI logs at INFO by default.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another process's write lock before giving up."""

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _forget_engines_in_child() -> None:
    # A forked child (Celery prefork) must not use, nor close, the parent's pooled connections:
    # drop them without closing (SQLAlchemy's guidance for os.fork) and build new engines lazily.
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


os.register_at_fork(after_in_child=_forget_engines_in_child)


WRITER_PRAGMAS: tuple[str, ...] = (
    f"busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}", "foreign_keys = ON", "journal_mode = WAL",
    "synchronous = NORMAL")
"""PRAGMAs of every connection of the worker's SQLite engines."""


def configure_sqlite(engine: Engine, pragmas: Sequence[str], begin_sql: str) -> None:
    """Run ``PRAGMA p`` for each of ``pragmas`` on every new connection of ``engine``, and
    start its transactions with ``begin_sql`` (``BEGIN IMMEDIATE`` for writers, ``BEGIN``
    for read-only report sessions)."""
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, emit BEGIN (pysqlite's implicit BEGIN breaks SAVEPOINT).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(f"PRAGMA {pragma}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin_sql)


def make_engine(url: str) -> Engine:
    """The process's engine for ``url``: created on first use, rebuilt after a fork."""
    engine = _engines.get(url)
    if engine is not None:
        return engine
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create_engine(url)
            _engines[url] = engine
    return engine


POSTGRES_CONNECT_TIMEOUT_S = 10
"""Seconds libpq waits for a connection before the attempt is an outage (TransientError)."""


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        configure_sqlite(engine, WRITER_PRAGMAS, "BEGIN IMMEDIATE")
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            # psycopg 3 is the driver we ship; SQLAlchemy's bare default is psycopg2.
            parsed = parsed.set(drivername="postgresql+psycopg")
        # a host that drops packets: libpq would wait 130 s to connect, past a short call's
        # soft time limit (120 s + duration / 20), which no handler catches as an outage
        return create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=2,
                             connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S})
    raise ConfigError(f"database URL {redact_url(url)!r}: use sqlite:/// or postgresql://")


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests, clean shutdown)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _url_of(target: Settings | str) -> str:
    return target if isinstance(target, str) else target.database_url


@contextmanager
def session_scope(target: Settings | str) -> Iterator[Session]:
    """A session whose transaction commits when the block succeeds and rolls back otherwise.

    A database that cannot be reached, is locked, dropped the connection or refuses writes
    for now (:func:`is_transient_sqlstate`) raises :class:`TransientError` (retry later);
    every other error propagates unchanged.
    """
    url = _url_of(target)
    session = Session(make_engine(url), expire_on_commit=False)
    try:
        yield session
        session.commit()
    except (OperationalError, DisconnectionError, TimeoutError) as e:
        session.rollback()
        raise _unavailable(url, e) from e
    except DBAPIError as e:
        session.rollback()
        if e.connection_invalidated:
            raise TransientError(f"database connection lost ({redact_url(url)}): "
                                 f"{_first_line(e)}") from e
        if is_transient_sqlstate(getattr(e.orig, "sqlstate", None)):
            raise _unavailable(url, e) from e
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


TRANSIENT_SQLSTATES: frozenset[str] = frozenset({"25006"})
"""PostgreSQL error codes that say the server cannot take the work now, not that the work is
wrong, whatever exception class the driver gives them: 25006 read_only_sql_transaction (a hot
standby, or a failover whose address still points at the old primary; psycopg raises it as
InternalError, which escaped the task, and Celery acked the message: a call sent with
send_task was lost, a review)."""
TRANSIENT_SQLSTATE_CLASSES: frozenset[str] = frozenset({"08", "53", "57"})
"""Classes of such codes: 08 connection exception, 53 insufficient resources (too many
connections, disk full, out of memory), 57 operator intervention (admin or crash shutdown,
cannot connect now)."""


def is_transient_sqlstate(sqlstate: str | None) -> bool:
    """Whether a PostgreSQL SQLSTATE is one to retry later (:data:`TRANSIENT_SQLSTATES`)."""
    return bool(sqlstate) and (sqlstate in TRANSIENT_SQLSTATES
                               or str(sqlstate)[:2] in TRANSIENT_SQLSTATE_CLASSES)


CONFLICT_SQLSTATES: frozenset[str] = frozenset({"40P01", "40001"})
"""PostgreSQL's deadlock_detected and serialization_failure: the database is there, and
another transaction won; transient like the rest (a task retries it), but not called
"unavailable"."""


REFUSED_FOR_GOOD = re.compile(
    r'FATAL:\s+(?:database ".*" does not exist|role ".*" does not exist'
    r"|.*authentication failed|no pg_hba\.conf entry)")
"""PostgreSQL's refusals of a connection that no wait mends (libpq passes no SQLSTATE for a
refused connection, only the server's message, in English unless lc_messages says
otherwise: a translated one is taken for an outage, as before)."""


INSUFFICIENT_PRIVILEGE = "42501"


def _not_connected(url: str, error: BaseException) -> ConfigError | TransientError:
    """For the checks and the migration that connect before any work: a connection
    :data:`REFUSED_FOR_GOOD` is a ConfigError (a misspelt database or role, a wrong password:
    a worker started anyway, as if the server were down, and retried every task it took for
    a day, a review); anything else :func:`_unavailable`'s TransientError."""
    if REFUSED_FOR_GOOD.search(str(error)):
        return ConfigError(f"database {redact_url(url)} refused the connection: "
                           f"{_first_line(error)}; check CALLMOOD_DATABASE_URL (database, "
                           "role, password): retrying cannot help")
    return _unavailable(url, error)


def _unavailable(url: str, error: BaseException) -> TransientError:
    """The TransientError for a database at ``url`` that cannot take the work now."""
    if getattr(getattr(error, "orig", None), "sqlstate", None) in CONFLICT_SQLSTATES:
        return TransientError(f"database conflict with another transaction (a deadlock or "
                              f"serialization failure: try again; {redact_url(url)}): "
                              f"{_first_line(error)}")
    return TransientError(f"database unavailable ({redact_url(url)}): {_first_line(error)}")


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def migrations_dir() -> Path:
    """The Alembic script directory: ``migrations/`` beside the ``worker`` package."""
    candidate = PACKAGE_DIR.parent / "migrations"
    if (candidate / "env.py").is_file():
        return candidate
    raise ConfigError(f"Alembic migrations not found at {candidate}; reinstall callmood")


def alembic_config(url: str) -> Any:
    """An Alembic Config for ``url`` that needs no alembic.ini (URL from the argument)."""
    from alembic.config import Config

    # today's stdout: Config's default is the sys.stdout of the moment alembic.config was
    # first imported, which a test's capture (or a closed pipe) may have closed since
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser interpolates '%': a password holding one must be escaped.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (Alembic ``upgrade``)."""
    from alembic import command

    log.info("migrating %s to %s", redact_url(url), revision)
    try:
        command.upgrade(alembic_config(url), revision)
    except (OperationalError, DisconnectionError) as e:
        raise _not_connected(url, e) from e
    except ProgrammingError as e:
        if getattr(e.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        # PostgreSQL 15 lets only the owner create tables in schema public: a database made
        # by the postgres account failed the upgrade with a 93-line traceback (a review)
        raise ConfigError(f"database {redact_url(url)}: {_first_line(e)}; the account in "
                          "CALLMOOD_DATABASE_URL must own the database (createdb -O ROLE "
                          "NAME) or hold CREATE on schema public") from e


def print_upgrade_sql(url: str, from_revision: str | None = None) -> None:
    """Print the SQL that upgrades a database of ``url``'s dialect from ``from_revision``
    (None: an empty one) to head, for a DBA to review and run (Alembic's offline mode;
    nothing connects). PostgreSQL only from 0003 on (ConfigError for another dialect)."""
    from alembic import command

    backend = make_url(url).get_backend_name()
    if backend != "postgresql":
        # SQLite's table rebuilds reflect the live table, and 0003 hashes with a SQL function
        raise ConfigError(f"upgrade SQL is written for PostgreSQL, not {backend}: upgrade "
                          "this database with `callmood db upgrade`")
    if from_revision is not None and from_revision not in release_revisions():
        # Alembic's CommandError was a 63-line traceback (a review)
        raise ConfigError(f"--from {from_revision}: not a revision of this release; use one of "
                          f"{', '.join(sorted(release_revisions()))}")
    span = f"{from_revision}:head" if from_revision else "head"
    command.upgrade(alembic_config(url), span, sql=True)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``base`` drops every table)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def _scripts() -> Any:
    """The Alembic script directory of this release (``migrations/versions``); no database."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str | None:
    """The newest Alembic revision this release ships."""
    head: str | None = _scripts().get_current_head()
    return head


def release_revisions() -> frozenset[str]:
    """Every Alembic revision this release ships."""
    return frozenset(r.revision for r in _scripts().walk_revisions())


def missing_columns(url: str) -> list[str]:
    """``table.column`` of worker/schema.py that the database at ``url`` lacks."""
    from sqlalchemy import inspect

    from worker.schema import Base

    inspector = inspect(make_engine(url))
    tables = set(inspector.get_table_names())
    missing: list[str] = []
    for name, table in Base.metadata.tables.items():
        have = ({c["name"] for c in inspector.get_columns(name)} if name in tables else set())
        missing += [f"{name}.{c.name}" for c in table.columns if c.name not in have]
    return missing


def require_sqlite_file(url: str) -> None:
    """ConfigError when ``url`` is a SQLite file that does not exist: connecting would create
    it empty (and its folders), and the command then fail on the missing tables as if the
    database were down."""
    parsed = make_url(url)
    database = parsed.database or ""
    if (parsed.get_backend_name() == "sqlite" and database and database != ":memory:"
            and not database.startswith("file:") and not Path(database).expanduser().is_file()):
        raise ConfigError(f"database {database} does not exist (run: callmood db upgrade)")


def require_database(url: str) -> None:
    """For a command that reads or writes calls without migrating: :func:`require_sqlite_file`,
    then :func:`require_head` (ConfigError, exit 2, for a database never migrated or behind
    this release; TransientError if it cannot be reached)."""
    require_sqlite_file(url)
    require_head(url)


def require_head(url: str) -> None:
    """ConfigError when the database at ``url`` is behind :func:`head_revision`: never
    migrated, or at an older revision of this release (a worker on it fails every call it
    takes, each after two minutes of retries as if the database were down). A revision this
    release does not know is a newer release's (a rolling deploy, a rollback): upgrading
    cannot help there, so the worker starts, with a warning. TransientError if it cannot be
    reached."""
    try:
        current = current_revision(url)
    except DatabaseError as e:
        # not an outage: a file that is not SQLite, an account without rights to read it
        raise ConfigError(f"database {redact_url(url)} cannot be read: {_first_line(e)}; check "
                          "CALLMOOD_DATABASE_URL and the account's rights") from e
    head = head_revision()
    if current == head:
        return
    if current is not None and current not in release_revisions():
        missing = missing_columns(url)
        if missing:   # not callmood's schema, or a newer one that dropped what this uses
            raise ConfigError(f"database {redact_url(url)} is at schema revision {current}, "
                              f"which this release does not know, and lacks "
                              f"{', '.join(missing[:5])}: check CALLMOOD_DATABASE_URL, or run "
                              "the release that migrated it")
        log.warning("database %s is at schema revision %s, newer than this release's %s "
                    "(a newer release migrated it)", redact_url(url), current, head)
        return
    raise ConfigError(f"database {redact_url(url)} is at schema revision {current or 'none'}, "
                      f"this release needs {head}: run callmood db upgrade first")


def current_revision(url: str) -> str | None:
    """The Alembic revision the database at ``url`` is at (None before the first upgrade);
    TransientError when it cannot be reached (a driver traceback of a hundred lines from
    ``callmood db current``, a review)."""
    from alembic.runtime.migration import MigrationContext

    try:
        with make_engine(url).connect() as connection:
            revision: str | None = MigrationContext.configure(connection).get_current_revision()
            return revision
    except (OperationalError, DisconnectionError) as e:
        raise _not_connected(url, e) from e


def prepare_database(url: str) -> None:
    """For the commands that run the pipeline themselves (``analyze``, ``run``, ``demo``):
    the embedded SQLite database is migrated (a fresh machine's first command needs no
    other step), any other is only checked (:func:`require_database`), since a production
    database is migrated by its operator (``callmood db upgrade``, or ``db sql`` for a
    DBA) while its workers are stopped, not by whoever runs a file through it."""
    if make_url(url).get_backend_name() == "sqlite":
        upgrade(url)
    else:
        require_database(url)
