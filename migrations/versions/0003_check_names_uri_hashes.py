"""CHECK constraint names as worker/schema.py gives them; path hashes of calls from before 0002.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

0001 and 0002 named their CHECK constraints without ``op.f``, so Alembic applied the naming
convention to names that already followed it: ``ck_calls_ck_calls_status`` and so on (those
files now mark the names final, for new databases). On PostgreSQL the doubled names are
renamed here, so that a later migration can drop a constraint by its schema name. SQLite keeps
a CHECK constraint's name only in its table's CREATE text, where nothing refers to it (a
SQLite migration that changes a CHECK rebuilds the table from a full definition), so it is
left there.

``calls.source_uri_sha256`` came with 0002 but stayed empty for calls registered before it:
the inbox scan looks a path up by it, so it sent such a recording again under its content id
and the reports counted the call twice. The hash is ``worker.store.uri_sha256``'s, spelled out
so that this migration does not change with the application.

Downgrade leaves both as they are: 0002's schema holds either name and the hashes alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS: dict[str, tuple[str, ...]] = {
    "calls": ("ck_calls_status", "ck_calls_attempts_nonnegative"),
    "segments": ("ck_segments_role", "ck_segments_emotion", "ck_segments_span_ordered"),
    "batches": ("ck_batches_counts_nonnegative",),
}
"""The CHECK constraints of 0001 and 0002, by table, under their schema names."""


def upgrade() -> None:
    if context.is_offline_mode():
        _upgrade_offline()
        return
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table, names in CHECKS.items():
            for name in names:
                doubled = f"ck_{table}_{name}"
                found = bind.execute(sa.text(
                    "SELECT 1 FROM pg_constraint WHERE conname = :name "
                    "AND conrelid = CAST(:table AS regclass)"),
                    {"name": doubled, "table": table}).first()
                if found is not None:
                    op.execute(f'ALTER TABLE {table} RENAME CONSTRAINT "{doubled}" TO "{name}"')
    calls = sa.table("calls", sa.column("id", sa.Integer()),
                     sa.column("source_uri", sa.String()),
                     sa.column("source_uri_sha256", sa.String()),
                     sa.column("status", sa.String()), sa.column("attempts", sa.Integer()))
    # not a rejected payload (failed before any run: attempts 0), which is never hashed at
    # run time either, so the inbox scan still sends the file it names
    rejected = sa.and_(calls.c.status == "failed", calls.c.attempts == 0)
    rows = bind.execute(sa.select(calls.c.id, calls.c.source_uri)
                        .where(calls.c.source_uri_sha256.is_(None), sa.not_(rejected))).all()
    if rows:
        bind.execute(calls.update().where(calls.c.id == sa.bindparam("call_id"))
                     .values(source_uri_sha256=sa.bindparam("sha")),
                     [{"call_id": row.id,
                       "sha": hashlib.sha256(row.source_uri.encode("utf-8", "surrogateescape"))
                       .hexdigest()} for row in rows])


def _upgrade_offline() -> None:
    """``alembic upgrade --sql``: the same two steps as SQL for a DBA to review and run, on
    PostgreSQL (its ``sha256`` hashes the UTF-8 text as ``uri_sha256`` does). SQLite has no
    SHA-256 function: its databases are upgraded online (``callmood db upgrade``)."""
    dialect = context.get_context().dialect.name
    if dialect != "postgresql":
        raise NotImplementedError(f"0003 backfills path hashes, which offline SQL can do on "
                                  f"PostgreSQL only, not {dialect}: upgrade online with "
                                  "`callmood db upgrade`")
    for table, names in CHECKS.items():
        for name in names:
            doubled = f"ck_{table}_{name}"
            op.execute(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = "
                       f"'{doubled}' AND conrelid = CAST('{table}' AS regclass)) THEN "
                       f'ALTER TABLE {table} RENAME CONSTRAINT "{doubled}" TO "{name}"; '
                       "END IF; END $$")
    op.execute("UPDATE calls SET source_uri_sha256 = "
               "encode(sha256(convert_to(source_uri, 'UTF8')), 'hex') "
               "WHERE source_uri_sha256 IS NULL AND NOT (status = 'failed' AND attempts = 0)")


def downgrade() -> None:
    pass
