"""Count each recording once: ``calls.same_recording_as``.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

The inbox scan analysed a file under its content id; the next day the call-centre system
sent the same file under its own call id, and every report counted the call twice (a
review). A call with an id callmood gave it (by content, ``sha256-``, or for a file of at most
8 KiB by path, ``path-``) whose recording (``content_sha256``) a producer's call holds an
analysis of too now names that call, the one reports count (``worker.store.settle_recording``
keeps it as analyses are saved); a content id of a recording no producer sent names the first
content id holding it. Calls with a producer's id, and path ids without one, always count.
This migration sets it for the calls stored before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The rule of worker.store.settle_recording, as SQL both databases run. An id callmood gave
# a file is "sha256-" or "path-" and 64 characters of hash (worker.store.is_own_id, written
# out: a migration must not change with the code; substr, not LIKE, which ignores case on
# SQLite). Such a call names the recording's first producer call; without one, a content id
# names the first content id (itself: cleared below), and a path id nothing.
OWN = ("((substr({t}.external_call_id, 1, 7) = 'sha256-' AND length({t}.external_call_id) = 71)"
       " OR (substr({t}.external_call_id, 1, 5) = 'path-' AND length({t}.external_call_id) = 69))")
CONTENT = ("(substr({t}.external_call_id, 1, 7) = 'sha256-' "
           "AND length({t}.external_call_id) = 71)")
SAME = ("w.content_sha256 = calls.content_sha256 AND w.model_version IS NOT NULL")
BACKFILL = f"""
UPDATE calls SET same_recording_as = COALESCE(
    (SELECT w.id FROM calls AS w WHERE {SAME} AND NOT {OWN.format(t="w")}
     ORDER BY w.id LIMIT 1),
    CASE WHEN {CONTENT.format(t="calls")} THEN
        (SELECT w.id FROM calls AS w WHERE {SAME} AND {CONTENT.format(t="w")}
         ORDER BY w.id LIMIT 1) END)
WHERE model_version IS NOT NULL AND content_sha256 IS NOT NULL AND {OWN.format(t="calls")}
"""


def upgrade() -> None:
    # batch mode, as 0002: SQLite adds a foreign key by recreating the table
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("same_recording_as", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_calls_same_recording_as_calls", "calls",
                                 ["same_recording_as"], ["id"], ondelete="SET NULL")
        # the foreign key's ON DELETE looks the deleted call up here: without an index each
        # deleted call scanned every call (2,000 deletes of 200,000 calls: 81 s, a review)
        batch.create_index("ix_calls_same_recording_as", ["same_recording_as"])
    op.execute(BACKFILL)
    # the counted call itself got its own id: it counts, NULL
    op.execute("UPDATE calls SET same_recording_as = NULL WHERE same_recording_as = id")


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_same_recording_as")
        batch.drop_constraint("fk_calls_same_recording_as_calls", type_="foreignkey")
        batch.drop_column("same_recording_as")
