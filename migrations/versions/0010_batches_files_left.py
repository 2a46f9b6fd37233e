"""Record the files a scan left: ``batches.too_new_count``, ``ignored_count``, ``refused_count``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

A scan that found six files still being copied in reported "6 file(s) seen, 0 enqueued ...
6 modified in the last 60 s left for the next scan" once, from `callmood batch`, and
`callmood status` then showed the batch as "0 enqueued, 0 skipped", like a quiet night; a
nightly scan's only trace was the worker's log (a review). The batch now keeps the files it
left for the next scan, those of a suffix no recording has, and those it refused; 0 for every
batch before this one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("too_new_count", "ignored_count", "refused_count")


def upgrade() -> None:
    # batch mode, as 0006: SQLite's downgrade recreates the table
    with op.batch_alter_table("batches") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
