"""The analytics read edge: segments and calls out of the database as DataFrames.

Filtering happens in SQL, so a report reads only the rows it needs: calls by
``ix_calls_started_at`` (or ``ix_calls_agent_id_started_at`` when an agent is given), their
segments by ``ix_segments_call_id_start_s``. Only calls that hold an analysis are reported,
each recording once (:func:`counted`). The caller owns the session.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import ColumnElement, Select, and_, create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.pool import NullPool

from worker.errors import ConfigError, TransientError
from worker.schema import PROBABILITY_COLUMNS, Call, Segment
from worker.settings import zone_for
from worker.store import in_chunks

SEGMENT_COLUMNS: tuple[str, ...] = (
    "call", "agent_id", "channel", "role", "start_s", "end_s", "emotion", "confidence",
    "model_version", *PROBABILITY_COLUMNS.values())

CALL_COLUMNS: tuple[str, ...] = (
    "call", "agent_id", "team", "queue", "started_at", "duration_s", "model_version")
"""Columns of :func:`load_calls` (``call`` is the external call id, ``started_at`` UTC)."""

_Query = TypeVar("_Query", bound="Select[*tuple[Any, ...]]")

SQLITE_READ_BUSY_TIMEOUT_MS = 30_000
"""As worker.db's writers: a reader waits this long only while a checkpoint holds the file."""


def analysed() -> ColumnElement[bool]:
    """The calls reports cover: those holding a stored analysis (``model_version`` is set
    only by ``worker.store.save_analysis``, with the segments, in one transaction).

    Whatever the call's current run: a call being re-analysed, or whose re-run failed (its
    recording archived since, a mistyped URI in the reprocess request), keeps its last good
    analysis in the reports until a new one replaces it, so a bulk reprocess after a model
    upgrade never empties the history, not even while it runs. Its status and
    ``failure_reason`` say what became of the re-run.
    """
    return Call.model_version.is_not(None)


def counted() -> ColumnElement[bool]:
    """The calls reports count: :func:`analysed`, less those with a content id whose
    recording a producer's call holds too (the inbox scan's analysis of a file the
    call-centre system then sent under its own id was counted twice in every report, a
    review): ``worker.store.settle_recording`` marks them, and the report says how many it
    leaves out (:func:`same_recording_calls`)."""
    return and_(analysed(), Call.same_recording_as.is_(None))


@dataclass(frozen=True)
class ReportFilter:
    """Which calls a report covers. ``None`` means no restriction on that field.

    ``date_from``/``date_to`` are calendar days of ``timezone`` (an IANA name, the site's
    CALLMOOD_TIMEZONE; default UTC), both inclusive (a datetime is used as an exact bound
    instead: ``>= date_from`` and ``< date_to``; a naive one is UTC). A date filter leaves
    out calls without ``started_at``.
    """

    date_from: date | datetime | None = None
    date_to: date | datetime | None = None
    agent: str | None = None
    team: str | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        zone_for(self.timezone, "timezone")

    def started_bounds(self) -> tuple[datetime | None, datetime | None]:
        """``[lower, upper)`` bounds on ``calls.started_at`` as aware UTC datetimes."""
        zone = zone_for(self.timezone, "timezone")
        return (_day_start(self.date_from, zone, 0),
                _day_start(self.date_to, zone, 1))


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _day_start(value: date | datetime | None, zone: tzinfo, days_after: int
               ) -> datetime | None:
    """The UTC instant of the local midnight ``days_after`` days after the day ``value`` (a
    datetime: itself)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return _as_utc(value)
    try:
        return datetime.combine(value + timedelta(days=days_after), time(0), tzinfo=zone
                                ).astimezone(UTC)
    except OverflowError:
        # a day at the calendar's end (--to 9999-12-31, --from 0001-01-01 east of UTC): no
        # call lies beyond it, so it bounds nothing (it raised a traceback)
        return None


def _filtered(query: _Query, where: ReportFilter, calls: ColumnElement[bool] | None = None
              ) -> _Query:
    """``query`` restricted to ``where`` and to ``calls`` (default :func:`counted`)."""
    lower, upper = where.started_bounds()
    query = query.where(counted() if calls is None else calls)
    if lower is not None:
        query = query.where(Call.started_at >= lower)
    if upper is not None:
        query = query.where(Call.started_at < upper)
    if where.agent is not None:
        query = query.where(Call.agent_id == where.agent)
    if where.team is not None:
        query = query.where(Call.team == where.team)
    return query


READ_CHUNK_ROWS = 50_000
"""Rows fetched per round trip by :func:`read_frame` (a server-side cursor on PostgreSQL)."""


def _shared_strings(column: pd.Series, shared: dict[str, str]) -> pd.Series:
    """``column`` (strings, object or str dtype) with each string replaced by one object per
    distinct value, its dtype kept: a driver returns a new str for every row, and a call's
    id, agent, role, emotion and model version repeat on each of its segments."""
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    if not all(isinstance(u, str) for u in uniques):
        return column
    # code -1 (a NULL) takes the last entry: the column's own missing value
    missing = None if column.dtype == object else column.dtype.na_value
    values = np.array([*(shared.setdefault(u, u) for u in uniques), missing], dtype=object)
    return pd.Series(pd.array(values[codes], dtype=column.dtype), index=column.index,
                     name=column.name)


def _frame_parts(session: Session, query: Select[*tuple[Any, ...]], columns: Sequence[str],
                 shared: dict[str, str]) -> list[pd.DataFrame]:
    """The rows of ``query``, a frame per :data:`READ_CHUNK_ROWS`, strings held once in
    ``shared``."""
    parts = []
    # Core, not ORM, execution: plain rows, without the ORM's per-chunk row processing
    result = session.connection().execute(query.execution_options(yield_per=READ_CHUNK_ROWS))
    for partition in result.partitions():
        part = pd.DataFrame([tuple(r) for r in partition], columns=list(columns))
        parts.append(part.assign(**{c: _shared_strings(part[c], shared)
                                    for c in part.columns
                                    if pd.api.types.is_string_dtype(part[c].dtype)}))
    return parts


def _joined(parts: Sequence[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    """The parts as one frame, typed as one read of all their rows would be: a column that
    is NULL on every row of a part is inferred there as object (None), where the column's
    values elsewhere make it str (NaN) or a number (a review), so it takes their dtype first
    (integers: float64, as NULLs among integers make one read)."""
    if not parts:
        return pd.DataFrame([], columns=list(columns))
    if len(parts) == 1:
        return parts[0]
    target: dict[str, Any] = {}
    for part in parts:
        for c in part.columns:
            if c not in target and part[c].notna().any():
                dtype = part[c].dtype
                target[c] = np.dtype(np.float64) if pd.api.types.is_integer_dtype(dtype) else dtype
    typed = [part.astype({c: target[c] for c in part.columns
                          if c in target and not part[c].notna().any()})
             for part in parts]
    return pd.concat(typed, ignore_index=True)


def read_frame(session: Session, query: Select[*tuple[Any, ...]], columns: Sequence[str]
               ) -> pd.DataFrame:
    """The rows of ``query`` as a DataFrame with ``columns``, as one read would type it,
    read :data:`READ_CHUNK_ROWS` at a time with repeated strings held once. Reading every
    row first (Row objects, then tuples, then the frame) peaked at 2.5 GB for a month's 1.6 M
    segments and held a string per value (a review); each chunk now becomes a frame of its
    own, and the chunks are joined."""
    return _joined(_frame_parts(session, query, columns, {}), columns)


def load_segments(session: Session, call_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Segments (one row per utterance) of analysed calls (all, or those of ``call_ids``,
    read :data:`worker.store.LOOKUP_CHUNK` ids per statement) joined with their call's
    external id and agent, by call, start and channel."""
    prob_columns = [getattr(Segment, c) for c in PROBABILITY_COLUMNS.values()]
    query = (select(Call.external_call_id.label("call"), Call.agent_id, Segment.channel,
                    Segment.role, Segment.start_s, Segment.end_s, Segment.emotion,
                    Segment.confidence, Segment.model_version, *prob_columns)
             .join(Call, Call.id == Segment.call_id)
             .where(analysed())
             .order_by(Call.external_call_id, Segment.start_s, Segment.channel))
    if call_ids is None:
        return read_frame(session, query, SEGMENT_COLUMNS)
    ids = sorted(set(call_ids))
    # in slices, as worker.store's lookups: PostgreSQL refuses a statement with over
    # 65,535 bound parameters, and psycopg's error read as "database unavailable" after
    # `callmood run` had analysed every one of that many calls (a review)
    shared: dict[str, str] = {}
    parts = [part for chunk in in_chunks(ids)
             for part in _frame_parts(session, query.where(Segment.call_id.in_(chunk)),
                                      SEGMENT_COLUMNS, shared)]
    frame = _joined(parts, SEGMENT_COLUMNS)
    # each slice comes ordered; the slices together are ordered again by the same keys
    return frame.sort_values(["call", "start_s", "channel"], kind="stable", ignore_index=True)


def load_calls(session: Session, where: ReportFilter) -> pd.DataFrame:
    """Analysed calls matching ``where``, one row each (:data:`CALL_COLUMNS`), oldest first,
    calls without a start time last."""
    query = _filtered(select(Call.external_call_id.label("call"), Call.agent_id, Call.team,
                             Call.queue, Call.started_at, Call.duration_s, Call.model_version),
                      where).order_by(Call.started_at.is_(None), Call.started_at,
                                      Call.external_call_id)  # unknown starts last everywhere
    frame = read_frame(session, query, CALL_COLUMNS)
    return frame.assign(started_at=pd.to_datetime(frame["started_at"], utc=True),
                        duration_s=frame["duration_s"].astype(float))


def undated_calls(session: Session, where: ReportFilter) -> int:
    """How many analysed calls of ``where``'s agent and team have no ``started_at``, so that
    its days leave them out (calls registered by the inbox scan, ``callmood analyze`` or
    ``callmood run`` carry none); 0 when its days bound nothing."""
    if where.started_bounds() == (None, None):
        return 0
    query = _filtered(select(func.count()).select_from(Call),
                      replace(where, date_from=None, date_to=None)
                      ).where(Call.started_at.is_(None))
    return int(session.execute(query).scalar_one())


def same_recording_calls(session: Session, where: ReportFilter) -> int:
    """How many analysed calls matching ``where`` its report leaves out because another call
    holds an analysis of the same recording (:func:`counted`)."""
    query = _filtered(select(func.count()).select_from(Call), where,
                      and_(analysed(), Call.same_recording_as.is_not(None)))
    return int(session.execute(query).scalar_one())


def unanalysed_calls(session: Session, where: ReportFilter) -> dict[str, int]:
    """Calls matching ``where`` that hold no analysis, so that its report leaves them out,
    by status (``failed``: the recording could not be analysed; ``pending``/``processing``:
    not yet). A failed call vanished from the agents report without a word, and the agent
    seemed to have taken one call fewer (a review)."""
    query = _filtered(select(Call.status, func.count()).select_from(Call), where,
                      ~analysed()).group_by(Call.status)
    return {status: int(n) for status, n in session.execute(query)}


def label_known(session: Session, column: str, value: str) -> bool:
    """Whether any call (analysed or not) has ``value`` in ``column`` (``agent_id`` or
    ``team``): a report for an agent id that matches no call is a typo, not a quiet day."""
    field = {"agent_id": Call.agent_id, "team": Call.team}[column]
    return session.execute(select(field).where(field == value).limit(1)).first() is not None


def counted_as(session: Session, call_ids: Sequence[int]) -> dict[int, str]:
    """For those of ``call_ids`` (``calls.id``) that reports leave out as the same recording
    as another call (:func:`counted`), the external id of the call they count instead."""
    counted_call = aliased(Call)
    return {i: external for chunk in in_chunks(sorted(set(call_ids)))
            for i, external in session.execute(
                select(Call.id, counted_call.external_call_id)
                .join(counted_call, counted_call.id == Call.same_recording_as)
                .where(Call.id.in_(chunk), analysed()))}


def filtered_segments_query(where: ReportFilter) -> Select[*tuple[Any, ...]]:
    """The query of :func:`load_filtered_segments` (``python -m bench plans`` times it)."""
    prob_columns = [getattr(Segment, c) for c in PROBABILITY_COLUMNS.values()]
    return _filtered(
        select(Call.external_call_id.label("call"), Call.agent_id, Segment.channel,
               Segment.role, Segment.start_s, Segment.end_s, Segment.emotion,
               Segment.confidence, Segment.model_version, *prob_columns)
        .join(Call, Call.id == Segment.call_id), where,
    ).order_by(Call.external_call_id, Segment.start_s, Segment.channel)


def load_filtered_segments(session: Session, where: ReportFilter) -> pd.DataFrame:
    """Segments of the calls matching ``where`` (:data:`SEGMENT_COLUMNS`), by call and time."""
    return read_frame(session, filtered_segments_query(where), SEGMENT_COLUMNS)


@contextmanager
def report_session(database_url: str) -> Iterator[Session]:
    """A read-only session for reports.

    On SQLite it starts a plain (deferred) ``BEGIN`` with ``PRAGMA query_only``: in WAL mode
    a reader sees one snapshot and never blocks the workers, whereas ``worker.db.session_scope``
    begins ``IMMEDIATE`` and would hold the write lock for the whole report. On PostgreSQL
    the transaction is ``REPEATABLE READ`` and read-only: the report's reads (calls, then
    their segments) see one snapshot, so a call reprocessed between them is not listed
    without its segments, and readers still do not block writers.
    """
    from worker.db import configure_sqlite, require_sqlite_file, session_scope

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        with session_scope(database_url) as session:
            if url.get_backend_name() == "postgresql":
                # before any statement: the options apply to the transaction it begins
                session.connection(execution_options={"isolation_level": "REPEATABLE READ",
                                                      "postgresql_readonly": True})
            yield session
        return
    require_sqlite_file(database_url)
    database = url.database or ""
    engine = create_engine(url, poolclass=NullPool)
    configure_sqlite(engine, (f"busy_timeout = {SQLITE_READ_BUSY_TIMEOUT_MS}", "query_only = ON"),
                     "BEGIN")
    session = Session(engine)
    try:
        yield session
    except OperationalError as e:
        if "no such table" in str(e.orig):  # a file that was never migrated: set-up, exit 2
            raise ConfigError(f"database {database} has no callmood tables (run: callmood db "
                              "upgrade)") from e
        # locked or unreadable: may pass, the CLI reports it, exit 1
        raise TransientError(f"database unavailable ({database}): {e.orig}") from e
    finally:
        session.close()
        engine.dispose()
