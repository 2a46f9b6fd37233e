"""Alembic owns the schema: upgrade/downgrade work on SQLite and PostgreSQL, and the migrated
schema is exactly what worker/schema.py declares."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from worker import db
from worker.schema import Base

EXPECTED_INDEXES = {
    "calls": {"ix_calls_agent_id_started_at", "ix_calls_status_processed_at", "ix_calls_started_at",
              "ix_calls_batch_id_status", "ix_calls_source_uri_sha", "ix_calls_content_sha256",
              "ix_calls_same_recording_as"},
    "batches": {"ix_batches_started_at"},
    "segments": {"ix_segments_call_id_start_s"},
}


def _diff(url: str) -> list[object]:
    with db.make_engine(url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True,
                                                               "compare_server_default": False})
        return list(compare_metadata(context, Base.metadata))


def _check_round_trip(url: str) -> None:
    assert db.current_revision(url) is None
    db.upgrade(url)
    assert db.current_revision(url) == db.head_revision() == "0011"
    assert _diff(url) == [], "migrations/ and worker/schema.py disagree"
    inspector = inspect(db.make_engine(url))
    # autogenerate does not compare CHECK constraints: their names are checked here
    for table in ("calls", "segments", "batches"):
        assert ({c["name"] for c in inspector.get_check_constraints(table)}
                == _schema_check_names(table)), table
    for table, names in EXPECTED_INDEXES.items():
        assert names <= {ix["name"] for ix in inspector.get_indexes(table)}
    (fk,) = inspector.get_foreign_keys("segments")
    assert fk["referred_table"] == "calls"
    assert (fk.get("options") or {}).get("ondelete", "").upper() == "CASCADE"
    # a call's batch, and the call counted for its recording (0011): both cleared, not
    # cascaded, when the row they name is deleted
    assert {(fk["referred_table"], tuple(fk["constrained_columns"]),
             (fk.get("options") or {}).get("ondelete", "").upper())
            for fk in inspector.get_foreign_keys("calls")} == {
        ("batches", ("batch_id",), "SET NULL"), ("calls", ("same_recording_as",), "SET NULL")}
    assert {"uq_calls_external_call_id"} <= (
        {u["name"] for u in inspector.get_unique_constraints("calls")}
        | {ix["name"] for ix in inspector.get_indexes("calls") if ix.get("unique")})
    db.upgrade(url)  # a second upgrade is a no-op
    db.downgrade(url, "base")
    db.dispose_engines()
    assert db.current_revision(url) is None
    assert set(inspect(db.make_engine(url)).get_table_names()) <= {"alembic_version"}
    db.upgrade(url)  # and back up again after a full downgrade
    assert _diff(url) == []


def _schema_check_names(table: str) -> set[str]:
    """The CHECK constraint names worker/schema.py gives ``table`` (its naming convention)."""
    from sqlalchemy import CheckConstraint
    from sqlalchemy.schema import CreateTable

    from worker.schema import Base

    t = Base.metadata.tables[table]
    CreateTable(t).compile(dialect=db.make_engine("sqlite://").dialect)  # names the constraints
    return {str(c.name) for c in t.constraints if isinstance(c, CheckConstraint)}


def test_sqlite_upgrade_downgrade_matches_models(tmp_path: Path) -> None:
    _check_round_trip(f"sqlite:///{tmp_path / 'nested' / 'callmood.sqlite'}")


@pytest.mark.postgres
def test_postgres_upgrade_downgrade_matches_models(postgres_url: str) -> None:
    _check_round_trip(postgres_url)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_stored_results_survive_every_migration(backend: str, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    """A database at 0001 holding a call and its segment keeps both through the upgrade to
    head and the downgrade back (SQLite's batch migration rebuilds ``calls``; with foreign
    keys on, dropping the old table cascaded into every segment)."""
    from sqlalchemy import text

    url = (f"sqlite:///{tmp_path / 'old.sqlite'}" if backend == "sqlite"
           else str(request.getfixturevalue("postgres_url")))
    db.upgrade(url, "0001")
    probabilities = ", ".join(f"p_{e}" for e in
                              ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"))
    with db.make_engine(url).begin() as c:
        c.execute(text("INSERT INTO calls (id, external_call_id, source_uri, status, attempts, "
                       "metadata) VALUES (1, 'OLD-1', '/calls/a.wav', 'done', 1, '{}')"))
        c.execute(text(f"INSERT INTO segments (call_id, channel, role, start_s, end_s, emotion, "
                       f"{probabilities}, confidence, model_version) VALUES (1, 0, 'agent', 0.0, "
                       "1.5, 'angry', 0.7, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.7, 'v1')"))

    def counts() -> tuple[int, int]:
        with db.make_engine(url).connect() as c:
            return (int(c.execute(text("SELECT count(*) FROM calls")).scalar_one()),
                    int(c.execute(text("SELECT count(*) FROM segments")).scalar_one()))

    db.upgrade(url)
    assert counts() == (1, 1)
    db.downgrade(url, "0001")
    assert counts() == (1, 1)
    if backend == "sqlite":  # the app's connections still enforce foreign keys afterwards
        with db.make_engine(url).connect() as c:
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_0011_marks_each_recording_s_other_calls(backend: str, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    """Calls stored before 0011 that hold one recording: a content id gives way to the first
    producer's id, producers' ids all count; a lone call, a call never analysed and a call
    of no content keep NULL; of two content ids (a file replaced after its scan) the first."""
    from sqlalchemy import text

    url = (f"sqlite:///{tmp_path / 'old.sqlite'}" if backend == "sqlite"
           else str(request.getfixturevalue("postgres_url")))
    db.upgrade(url, "0010")
    a, b = "a" * 64, "b" * 64
    # 9: a producer's id in capitals is no content id (SQLite's LIKE would have said it is);
    # 10: a file of at most 8 KiB, keyed by its path, gives way to a producer's call; 11, 12:
    # two such files of the same bytes and no producer's call both count (dead air); 13: a
    # producer's id that starts like a path id is a producer's
    d = "d" * 64
    rows = [(1, f"sha256-{a}", a, "v1"), (2, "CC-1", a, "v1"), (3, "CC-2", a, "v1"),
            (4, "CC-3", a, None), (5, f"sha256-{b}", b, "v1"), (6, "CC-4", None, "v1"),
            (7, "CC-5", None, "v1"), (8, f"sha256-{'c' * 64}", b, "v1"), (9, "SHA256-9", a, "v1"),
            (10, f"path-{'1' * 64}", a, "v1"), (11, f"path-{'2' * 64}", d, "v1"),
            (12, f"path-{'3' * 64}", d, "v1"), (13, "path-2026-12-07-001", a, "v1")]
    with db.make_engine(url).begin() as c:
        for id_, external, digest, version in rows:
            c.execute(text("INSERT INTO calls (id, external_call_id, source_uri, status, "
                           "attempts, metadata, content_sha256, model_version) VALUES "
                           "(:id, :ext, '/calls/x.wav', 'done', 1, '{}', :digest, :version)"),
                      {"id": id_, "ext": external, "digest": digest, "version": version})
    db.upgrade(url)
    with db.make_engine(url).connect() as c:
        marks: dict[int, int | None] = dict(
            c.execute(text("SELECT id, same_recording_as FROM calls")).all())
    assert marks == {1: 2, 2: None, 3: None, 4: None, 5: None, 6: None, 7: None, 8: 5, 9: None,
                     10: 2, 11: None, 12: None, 13: None}
    db.downgrade(url, "0010")


def _database_from_before_0003(url: str, doubled_names: bool) -> None:
    """``url`` at 0002 with a call from 0001 (no path hash) and a rejected payload (failed
    before any run, not hashed at run time either); with ``doubled_names`` (PostgreSQL) the
    CHECK names 0001 and 0002 gave before op.f (ck_calls_ck_calls_status)."""
    from sqlalchemy import text

    db.upgrade(url, "0002")
    with db.make_engine(url).begin() as c:
        c.execute(text("INSERT INTO calls (id, external_call_id, source_uri, status, attempts, "
                       "metadata) VALUES (1, 'OLD-1', '/calls/caf\u00e9.wav', 'done', 1, '{}')"))
        c.execute(text("INSERT INTO calls (id, external_call_id, source_uri, status, attempts, "
                       "metadata) VALUES (2, 'BAD-1', '/calls/b.wav', 'failed', 0, '{}')"))
        for table in ("calls", "segments", "batches") if doubled_names else ():
            for name in _schema_check_names(table):
                c.execute(text(f'ALTER TABLE {table} RENAME CONSTRAINT "{name}" '
                               f'TO "ck_{table}_{name}"'))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_0003_hashes_old_paths_and_renames_doubled_check_names(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A database migrated before 0003: calls from 0001 have no path hash (the inbox scan sent
    their recordings again), and on PostgreSQL the CHECK constraints carry the doubled names
    0001 and 0002 gave them (ck_calls_ck_calls_status)."""
    from sqlalchemy import text

    from worker.store import uri_sha256

    url = (f"sqlite:///{tmp_path / 'old.sqlite'}" if backend == "sqlite"
           else str(request.getfixturevalue("postgres_url")))
    _database_from_before_0003(url, doubled_names=backend == "postgres")
    db.upgrade(url)
    with db.make_engine(url).connect() as c:
        sha = c.execute(text("SELECT source_uri_sha256 FROM calls WHERE id = 1")).scalar_one()
        rejected = c.execute(text("SELECT source_uri_sha256 FROM calls WHERE id = 2")).scalar_one()
    assert sha == uri_sha256("/calls/caf\u00e9.wav") and rejected is None
    inspector = inspect(db.make_engine(url))
    for table in ("calls", "segments", "batches"):
        assert ({c["name"] for c in inspector.get_check_constraints(table)}
                == _schema_check_names(table)), table


def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    with db.make_engine(url).connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    assert db.make_engine(url) is db.make_engine(url)


def test_migrations_ship_with_the_package() -> None:
    # pyproject's package-data must carry these, or `callmood db upgrade` breaks when installed.
    root = db.migrations_dir()
    assert (root / "env.py").is_file()
    assert (root / "script.py.mako").is_file()
    assert sorted(p.name for p in (root / "versions").glob("*.py")) == [
        "0001_initial.py", "0002_batches.py", "0003_check_names_uri_hashes.py",
        "0004_calls_batch_status_index.py", "0005_calls_content_sha256_index.py",
        "0006_batches_scan_error.py", "0007_calls_claims.py",
        "0008_calls_status_processed_at_index.py", "0009_segments_call_id_statistics.py",
        "0010_batches_files_left.py", "0011_calls_same_recording_as.py"]


@pytest.mark.postgres
def test_offline_sql_for_postgres_upgrades_like_the_online_path(
        postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`alembic upgrade --sql` (a script for a DBA to review and run): 0003 ran queries and
    broke offline generation; its SQL now renames the doubled CHECK names and hashes old paths
    as the online upgrade does. Generated from 0002, run on a 0002 database with such rows."""
    from alembic import command
    from sqlalchemy import text

    from worker.store import uri_sha256

    _database_from_before_0003(postgres_url, doubled_names=True)
    capsys.readouterr()
    command.upgrade(db.alembic_config(postgres_url), "0002:head", sql=True)
    script = capsys.readouterr().out
    assert "UPDATE calls SET source_uri_sha256" in script and "0003" in script
    with db.make_engine(postgres_url).begin() as c:
        c.exec_driver_sql(script)
    db.dispose_engines()
    assert db.current_revision(postgres_url) == db.head_revision()
    with db.make_engine(postgres_url).connect() as c:
        hashes = {int(i): h for i, h in c.execute(text("SELECT id, source_uri_sha256 FROM "
                                                         "calls")).all()}
    assert hashes == {1: uri_sha256("/calls/caf\u00e9.wav"), 2: None}
    inspector = inspect(db.make_engine(postgres_url))
    for table in ("calls", "segments", "batches"):
        assert ({c["name"] for c in inspector.get_check_constraints(table)}
                == _schema_check_names(table)), table
    assert _diff(postgres_url) == []
    # SQLite has no SHA-256 function: offline SQL stops at 0003 with what to do instead
    with pytest.raises(NotImplementedError, match="callmood db upgrade"):
        command.upgrade(db.alembic_config("sqlite:///offline.sqlite"), "0002:head", sql=True)


def test_the_batch_recount_reads_the_index_alone(tmp_path: Path) -> None:
    """Every finished call recounts its batch by status with the batch row locked; with
    the status in the batch index (0004) SQLite counts from the index without touching the
    table (python -m bench recount: 30 -> 9 ms on a 50,000-call batch)."""
    from sqlalchemy.dialects import sqlite

    from worker.store import batch_status_query

    url = f"sqlite:///{tmp_path / 'plan.sqlite'}"
    db.upgrade(url)
    query = batch_status_query(1).compile(dialect=sqlite.dialect(),
                                          compile_kwargs={"literal_binds": True})
    with db.make_engine(url).connect() as c:
        plan = " ".join(str(row[-1]) for row in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
    assert "COVERING INDEX ix_calls_batch_id_status" in plan, plan


def test_the_processed_today_count_reads_today_s_index_entries_alone(tmp_path: Path) -> None:
    """`callmood status` counts the calls done and failed since midnight; with processed_at
    beside status in the index (0008) SQLite seeks to today's entries of it instead of
    reading every done and failed call kept (python -m bench status: 151 -> 1.5 ms over
    300,000 calls)."""
    from datetime import UTC, datetime

    from sqlalchemy.dialects import sqlite

    from worker.store import counts_processed_since, processed_since_query

    url = f"sqlite:///{tmp_path / 'plan.sqlite'}"
    db.upgrade(url)
    since = datetime(2026, 12, 6, tzinfo=UTC)
    with db.session_scope(url) as session:
        assert counts_processed_since(session, since) == {"done": 0, "failed": 0}
    query = processed_since_query(since).compile(dialect=sqlite.dialect(),
                                                 compile_kwargs={"literal_binds": True})
    with db.make_engine(url).connect() as c:
        plan = " ".join(str(row[-1]) for row in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
    assert "COVERING INDEX ix_calls_status_processed_at (status=? AND processed_at>?)" in plan, plan


def test_two_upgrades_at_once_on_postgres_both_end_at_head(postgres_url: str) -> None:
    """A migrate step per worker container: two upgrades of a fresh database both created
    the tables, and one failed with DuplicateTable (a review). The advisory lock in
    migrations/env.py makes the second wait, then find head applied."""
    import subprocess
    import sys
    import time

    # imported first, then started together: each waits for the same moment
    script = ("import sys, time; from worker import db; import alembic.command\n"
              "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
              "db.upgrade(sys.argv[1])")
    start = str(time.time() + 4.0)
    runs = [subprocess.Popen([sys.executable, "-c", script, postgres_url, start],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for _ in range(3)]
    outputs = [run.communicate(timeout=120)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert db.current_revision(postgres_url) == db.head_revision()


def test_alembic_check_leaves_a_shared_database_brokers_tables_alone(tmp_path: Path) -> None:
    """With the database broker in the application's database, autogenerate proposed
    dropping kombu's tables and the messages queued in them (a review)."""
    from alembic import command
    from kombu.connection import Connection

    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    db.upgrade(url)
    with Connection(f"sqla+{url}") as broker:  # type: ignore[no-untyped-call]
        queue = broker.SimpleQueue("callmood")
        queue.put({"call_id": "C-1"})
        queue.close()
    assert "kombu_message" in inspect(db.make_engine(url)).get_table_names()
    command.check(db.alembic_config(url))  # raises AutogenerateDiffsDetected on any change


@pytest.mark.postgres
def test_postgres_samples_segments_call_id_with_a_larger_statistics_target(
        postgres_url: str) -> None:
    """A call's segments are stored together, so ANALYZE's default sample saw few calls and
    PostgreSQL took 20 M segments for ~95,000 calls where there were 1 M, and chose worse
    report plans (python -m bench plans). 0009 raises the column's target; its downgrade
    gives the default back."""
    from sqlalchemy import text

    def target() -> int:
        with db.make_engine(postgres_url).connect() as c:
            return int(c.execute(text(
                "SELECT attstattarget FROM pg_attribute WHERE attrelid = 'segments'::regclass "
                "AND attname = 'call_id'")).scalar_one() or -1)   # NULL: default (PG 17)

    db.upgrade(postgres_url)
    assert target() == 1000
    db.downgrade(postgres_url, "0008")
    assert target() == -1
    db.upgrade(postgres_url)
    assert target() == 1000
