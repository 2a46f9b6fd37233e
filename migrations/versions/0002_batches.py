"""Nightly batches: the batches table; calls.batch_id, enqueued_at and source_uri_sha256.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Hand-written to match worker/schema.py (tests/worker/test_migrations.py compares the two).
Batch mode on SQLite: adding a foreign key to an existing table needs a table copy there.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scanned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enqueued_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("skipped_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("done_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed_count", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint("enqueued_count >= 0 AND skipped_count >= 0 AND done_count >= 0 "
                           "AND failed_count >= 0", name=op.f("ck_batches_counts_nonnegative")),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
    )
    op.create_index("ix_batches_started_at", "batches", ["started_at"])
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("batch_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("source_uri_sha256", sa.String(length=64), nullable=True))
        batch.create_foreign_key("fk_calls_batch_id_batches", "batches", ["batch_id"], ["id"],
                                 ondelete="SET NULL")
        batch.create_index("ix_calls_batch_id", ["batch_id"])
        batch.create_index("ix_calls_source_uri_sha", ["source_uri_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_source_uri_sha")
        batch.drop_index("ix_calls_batch_id")
        batch.drop_constraint("fk_calls_batch_id_batches", type_="foreignkey")
        batch.drop_column("source_uri_sha256")
        batch.drop_column("enqueued_at")
        batch.drop_column("batch_id")
    op.drop_index("ix_batches_started_at", table_name="batches")
    op.drop_table("batches")
