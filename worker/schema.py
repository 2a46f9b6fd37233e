"""The database schema as SQLAlchemy 2.x typed models.

Alembic owns the live schema (``migrations/versions``); these models must match it, which
``tests/worker/test_migrations.py`` checks with autogenerate's ``compare_metadata``. Only
portable types are used, so the same models serve SQLite (embedded) and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from worker.constants import EMOTIONS, MODEL_STAMP_CHARS, PROB_COLUMNS, ROLES

CALL_STATUSES: tuple[str, ...] = ("pending", "processing", "done", "failed")
"""Life cycle of a call row: registered -> claimed by a worker -> analysed or failed."""

FINAL_STATUSES: frozenset[str] = frozenset({"done", "failed"})

EXTERNAL_ID_MAX_CHARS = 128
LABEL_MAX_CHARS = 128
"""Limit of agent_id, team, queue and customer_ref."""
URI_MAX_CHARS = 4096
FAILURE_REASON_MAX_CHARS = 2000
BATCH_SOURCE_MAX_CHARS = 128

PROBABILITY_COLUMNS: dict[str, str] = dict(zip(EMOTIONS, PROB_COLUMNS, strict=True))
"""Emotion label -> its probability column on ``segments``."""

# Deterministic constraint/index names, so a migration can drop what it created on any backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC on every backend.

    SQLite has no time zone type and returns naive values; this type rejects naive input and
    hands back aware UTC datetimes from both SQLite and PostgreSQL.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; use an aware one (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Batch(Base):
    """One scan of the inbox folders (nightly or on demand) and what became of its calls.

    ``done_count``/``failed_count`` are recounted from ``calls`` (never incremented), so a
    redelivered task cannot count twice; ``finished_at`` is set once every call is final, and
    cleared while one of them is run again in it (``callmood retry``).
    """

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint("enqueued_count >= 0 AND skipped_count >= 0 AND done_count >= 0 "
                        "AND failed_count >= 0", name="counts_nonnegative"),
        Index("ix_batches_started_at", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(BATCH_SOURCE_MAX_CHARS))
    """What started it: ``nightly`` (beat), ``cli`` (callmood batch), ``manifest:NAME``."""
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    scanned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When the scan finished enqueueing (None while it runs or if it crashed)."""
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When the last of its calls became done or failed."""
    enqueued_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    skipped_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Files seen by the scan that were already registered (not enqueued again)."""
    done_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    scan_error: Mapped[str | None] = mapped_column(Text)
    """What went wrong with the scan or its send: an inbox folder not found, a send stopped
    before all it found was sent (the broker unreachable, a time limit); None when nothing
    did (migration 0006)."""
    too_new_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Inbox files the scan left for the next one: modified too recently (migration 0010)."""
    ignored_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Inbox files of a suffix no supported recording has (migration 0010)."""
    refused_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Inbox files the scan could not send at all, each logged with why (migration 0010)."""

    def __repr__(self) -> str:
        return (f"Batch(id={self.id!r}, source={self.source!r}, "
                f"enqueued={self.enqueued_count!r})")


class Call(Base):
    """One call recording and where it is in its life cycle."""

    __tablename__ = "calls"
    __table_args__ = (
        CheckConstraint(_in_list("status", CALL_STATUSES), name="status"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        Index("ix_calls_agent_id_started_at", "agent_id", "started_at"),
        # status lookups, and status's "done/failed since midnight" count (migration 0008)
        Index("ix_calls_status_processed_at", "status", "processed_at"),
        Index("ix_calls_started_at", "started_at"),
        # the batch recount's GROUP BY status reads this index alone (migration 0004)
        Index("ix_calls_batch_id_status", "batch_id", "status"),
        Index("ix_calls_source_uri_sha", "source_uri_sha256"),
        # the inbox scan's "analysed already, under any call id?" lookup (migration 0005)
        Index("ix_calls_content_sha256", "content_sha256"),
        # same_recording_as's ON DELETE SET NULL finds the rows naming a deleted call (0011)
        Index("ix_calls_same_recording_as", "same_recording_as"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_call_id: Mapped[str] = mapped_column(String(EXTERNAL_ID_MAX_CHARS), unique=True)
    source_uri: Mapped[str] = mapped_column(String(URI_MAX_CHARS))
    agent_id: Mapped[str | None] = mapped_column(String(LABEL_MAX_CHARS))
    team: Mapped[str | None] = mapped_column(String(LABEL_MAX_CHARS))
    queue: Mapped[str | None] = mapped_column(String(LABEL_MAX_CHARS))
    customer_ref: Mapped[str | None] = mapped_column(String(LABEL_MAX_CHARS))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_s: Mapped[float | None] = mapped_column(Float)
    channels: Mapped[int | None] = mapped_column(Integer)
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    """Sample rate of the source file (Hz)."""
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    failure_reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Claims of the call over all its runs, never reset (``attempts`` starts again with
    each run): the claim a run holds tells a newer run from it (migration 0007)."""
    model_version: Mapped[str | None] = mapped_column(String(MODEL_STAMP_CHARS))
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    # "metadata" is reserved on declarative classes, hence the attribute name.
    call_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow,
                                                 server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow,
                                                 server_default=func.now())
    batch_id: Mapped[int | None] = mapped_column(
        ForeignKey("batches.id", ondelete="SET NULL"))
    """The inbox scan that registered the call (None when enqueued directly)."""
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When its task was last handed to the broker; None while registered but never sent."""
    source_uri_sha256: Mapped[str | None] = mapped_column(String(64))
    """sha256 of ``source_uri``: the inbox scan's cheap "seen this path?" lookup (a 4096-char
    column is too wide for a portable index)."""
    same_recording_as: Mapped[int | None] = mapped_column(
        ForeignKey("calls.id", ondelete="SET NULL"))
    """Set on an analysed call whose recording (``content_sha256``) another call holds an
    analysis of too: that call's id, the one reports count (``worker.store.settle_recording``,
    migration 0011). NULL on every other call."""

    segments: Mapped[list[Segment]] = relationship(
        back_populates="call", order_by="(Segment.start_s, Segment.channel)",
        cascade="all, delete-orphan", passive_deletes=True)

    def __repr__(self) -> str:
        return (f"Call(id={self.id!r}, external_call_id={self.external_call_id!r}, "
                f"status={self.status!r})")


class Segment(Base):
    """One utterance of one party, with the model's probability for every class."""

    __tablename__ = "segments"
    __table_args__ = (
        CheckConstraint(_in_list("role", ROLES), name="role"),
        CheckConstraint(_in_list("emotion", EMOTIONS), name="emotion"),
        CheckConstraint("end_s >= start_s", name="span_ordered"),
        Index("ix_segments_call_id_start_s", "call_id", "start_s"),
    )

    # BIGINT on PostgreSQL (segments grow fastest); SQLite needs INTEGER for its rowid alias.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    channel: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    emotion: Mapped[str] = mapped_column(String(16))
    p_angry: Mapped[float] = mapped_column(Float)
    p_disgust: Mapped[float] = mapped_column(Float)
    p_fear: Mapped[float] = mapped_column(Float)
    p_happy: Mapped[float] = mapped_column(Float)
    p_neutral: Mapped[float] = mapped_column(Float)
    p_sad: Mapped[float] = mapped_column(Float)
    p_surprise: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(MODEL_STAMP_CHARS))

    call: Mapped[Call] = relationship(back_populates="segments")

    def probabilities(self) -> dict[str, float]:
        """Class -> probability, in the order of EMOTIONS."""
        return {label: float(getattr(self, column))
                for label, column in PROBABILITY_COLUMNS.items()}


_missing = set(PROBABILITY_COLUMNS.values()) - set(Segment.__table__.columns.keys())
if _missing:  # EMOTIONS changed without a schema change: fail at import, not at insert time.
    raise RuntimeError(f"segments lacks probability columns {sorted(_missing)}; add a migration")
