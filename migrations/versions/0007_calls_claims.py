"""Count every claim of a call, never reset: ``calls.claims``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

``attempts`` counts the claims of the current run and starts again at 0 with each new run
(a reprocess, ``callmood run``), so two runs of one call could hold the same attempt number.
A run that stores its analysis after a newer run stored its own must not replace it; the
claim that a run took is what tells them apart (``store.superseded_by_newer_run``). Rows
before this revision start at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode, as 0006: an ALTER TABLE ADD COLUMN on both; SQLite's downgrade recreates
    # the table
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("claims", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("claims")
