"""The database edge: which errors are an outage to retry later (TransientError)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from worker import db, store
from worker.errors import ConfigError, TransientError


@pytest.mark.parametrize(("sqlstate", "transient"), [
    ("25006", True),    # read_only_sql_transaction: a standby, or a stale failover address
    ("57P01", True),    # admin_shutdown
    ("57P03", True),    # cannot_connect_now (starting up)
    ("53300", True),    # too_many_connections
    ("53100", True),    # disk_full
    ("08006", True),    # connection_failure
    ("23505", False),   # unique_violation: the work is wrong, not the server
    ("22001", False),   # string_data_right_truncation
    ("42P01", False),   # undefined_table: a schema behind the release, not an outage
    (None, False), ("", False),
])
def test_sqlstates_that_mean_retry_later(sqlstate: str | None, transient: bool) -> None:
    assert db.is_transient_sqlstate(sqlstate) is transient


@pytest.mark.postgres
def test_a_database_that_refuses_writes_is_an_outage_not_a_lost_call(
        postgres_url: str, postgres_admin_url: str) -> None:
    """A read-only PostgreSQL (a hot standby, a failover whose address still points at the
    old primary) raised InternalError: it escaped the task as an unexpected error and Celery
    acked the message, so a call sent with plain send_task left no trace but a traceback (a
    review). It is a TransientError: the task retries, the message is kept."""
    from worker.jobs import process_call
    from worker.settings import Settings

    db.upgrade(postgres_url)
    name = make_url(postgres_url).database
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
        db.dispose_engines()   # new connections take the setting
        request = store.CallRequest(uri="/recordings/ro.wav", external_call_id="RO-1")
        settings = Settings.from_env().replace(database_url=postgres_url)
        with pytest.raises(TransientError, match="read-only transaction"):
            process_call(request, settings)
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off'))
        db.dispose_engines()
        with db.session_scope(postgres_url) as session:
            assert store.find_call(session, "RO-1") is None   # nothing half-written
    finally:
        admin.dispose()


@pytest.mark.parametrize(("sqlstate", "says"), [
    ("40P01", "database conflict with another transaction"),
    ("40001", "database conflict with another transaction"),
    ("08006", "database unavailable"),
])
def test_a_deadlock_is_a_retried_conflict_not_an_unavailable_database(
        tmp_path: Path, sqlstate: str, says: str) -> None:
    """A deadlock PostgreSQL resolved was reported as "database unavailable" (a review)."""
    from sqlalchemy.exc import OperationalError

    class DriverError(Exception):
        def __init__(self) -> None:
            super().__init__("deadlock detected")
            self.sqlstate = sqlstate

    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    with pytest.raises(TransientError, match=says):
        with db.session_scope(url):
            raise OperationalError("UPDATE calls ...", {}, DriverError())


@pytest.mark.postgres
def test_a_misspelt_database_or_role_is_a_configuration_error_not_an_outage(
        postgres_url: str) -> None:
    """A worker pointed at a database that does not exist took it for an outage, warned and
    started, and would retry every task it took for a day (a review). A refusal no wait
    mends stops the check with the setting to fix; a server that is down is still an
    outage."""
    url = make_url(postgres_url)
    for wrong in (url.set(database=f"{url.database}_typo"), url.set(username="nobody_here")):
        with pytest.raises(ConfigError, match=r"refused the connection: .* check "
                                              r"CALLMOOD_DATABASE_URL"):
            db.require_head(wrong.render_as_string(hide_password=False))
    with pytest.raises(TransientError, match="database unavailable"):
        db.current_revision(url.set(port=1).render_as_string(hide_password=False))
    db.dispose_engines()


@pytest.mark.postgres
def test_an_upgrade_without_create_rights_says_who_must_own_the_database(
        postgres_url: str, postgres_admin_url: str) -> None:
    """PostgreSQL 15 lets only the owner create tables in schema public: `callmood db upgrade`
    as a role that does not own the database was a 93-line traceback (a review)."""
    import uuid

    role = f"callmood_guest_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        guest = make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
        with pytest.raises(ConfigError, match=r"permission denied .* must own the database "
                                              r"\(createdb -O ROLE NAME\)"):
            db.upgrade(guest)
    finally:
        db.dispose_engines()
        with admin.connect() as c:
            c.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
