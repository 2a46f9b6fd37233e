"""Initial schema: calls and their per-utterance emotion segments.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Hand-written to match worker/schema.py (tests/worker/test_migrations.py compares the two).
Literal lists are spelled out rather than imported: a migration must not change when the
application constants do later. CHECK names are final (``op.f``): without it Alembic applied
the naming convention to them again (ck_calls_ck_calls_status), until 0003 and this fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_call_id", sa.String(length=128), nullable=False),
        sa.Column("source_uri", sa.String(length=4096), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=True),
        sa.Column("team", sa.String(length=128), nullable=True),
        sa.Column("queue", sa.String(length=128), nullable=True),
        sa.Column("customer_ref", sa.String(length=128), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("channels", sa.Integer(), nullable=True),
        sa.Column("sample_rate", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("content_sha256", sa.String(length=64), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.CheckConstraint("status IN ('pending', 'processing', 'done', 'failed')",
                           name=op.f("ck_calls_status")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_calls_attempts_nonnegative")),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
        sa.UniqueConstraint("external_call_id", name="uq_calls_external_call_id"),
    )
    op.create_index("ix_calls_agent_id_started_at", "calls", ["agent_id", "started_at"])
    op.create_index("ix_calls_status", "calls", ["status"])
    op.create_index("ix_calls_started_at", "calls", ["started_at"])

    op.create_table(
        "segments",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("call_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("emotion", sa.String(length=16), nullable=False),
        sa.Column("p_angry", sa.Float(), nullable=False),
        sa.Column("p_disgust", sa.Float(), nullable=False),
        sa.Column("p_fear", sa.Float(), nullable=False),
        sa.Column("p_happy", sa.Float(), nullable=False),
        sa.Column("p_neutral", sa.Float(), nullable=False),
        sa.Column("p_sad", sa.Float(), nullable=False),
        sa.Column("p_surprise", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.CheckConstraint("role IN ('agent', 'customer', 'unknown')", name=op.f("ck_segments_role")),
        sa.CheckConstraint("emotion IN ('angry', 'disgust', 'fear', 'happy', 'neutral', 'sad', "
                           "'surprise')", name=op.f("ck_segments_emotion")),
        sa.CheckConstraint("end_s >= start_s", name=op.f("ck_segments_span_ordered")),
        sa.ForeignKeyConstraint(["call_id"], ["calls.id"], name="fk_segments_call_id_calls",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_segments"),
    )
    op.create_index("ix_segments_call_id_start_s", "segments", ["call_id", "start_s"])


def downgrade() -> None:
    op.drop_index("ix_segments_call_id_start_s", table_name="segments")
    op.drop_table("segments")
    op.drop_index("ix_calls_started_at", table_name="calls")
    op.drop_index("ix_calls_status", table_name="calls")
    op.drop_index("ix_calls_agent_id_started_at", table_name="calls")
    op.drop_table("calls")
