"""Record why a batch's scan or send stopped: ``batches.scan_error``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

A scan or manifest whose send failed (the broker unreachable, a time limit while hashing)
closed its batch with what it had sent, and ``callmood status`` showed it like one that
had sent everything: "finished: 0 enqueued" for a manifest that sent nothing (a review).
The batch now keeps the error that stopped it; NULL for every batch before this one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode, as 0002: an ALTER TABLE ADD COLUMN on both; SQLite's downgrade recreates
    # the table, which its ALTER TABLE cannot drop a column from before 3.35
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("scan_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("scan_error")
