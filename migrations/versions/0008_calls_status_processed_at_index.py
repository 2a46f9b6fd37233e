"""Index calls by (status, processed_at) instead of status alone.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

``callmood status`` counts the calls done and failed since midnight
(``worker.store.counts_processed_since``: status IN (done, failed), processed_at >= since).
With status alone indexed, that read every done and failed call ever stored, and a database
keeps months of them. With processed_at beside status the count reads today's entries of the
index and nothing else: ``python -m bench status [--postgres-url URL]``, 300,000 calls over 30
days (10,001 in the last 24 h), 2026-12-06, this 2-core machine: 151 -> 1.5 ms on SQLite,
45 -> 2.3 ms on a vacuumed PostgreSQL; the status-only index grows with the months kept, the new
one with the day's calls. Lookups by status alone (the failed calls ``retry --all-failed`` takes, recovery's
stuck calls) use the index's first column as they used the old one, which is dropped: a call
gets its status and processed_at in the same update, so the write cost stays one index.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_calls_status_processed_at", "calls", ["status", "processed_at"])
    op.drop_index("ix_calls_status", table_name="calls")


def downgrade() -> None:
    op.create_index("ix_calls_status", "calls", ["status"])
    op.drop_index("ix_calls_status_processed_at", table_name="calls")
