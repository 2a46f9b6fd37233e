"""Supervisor reports as DataFrames: ``build_report`` (reads) and ``report_from_frames`` (pure).

The ``callmood report`` command (:mod:`analytics.cli`) writes them as CSV (columns in
docs/analytics.md):

* ``calls``: one row per analysed call, oldest first, every metric of
  :data:`analytics.callreport.CALL_METRIC_COLUMNS` and the start in the site's zone;
* ``stress``: the same calls ranked by customer stress (most stressed first) with the
  escalation and talk columns a supervisor triages by;
* ``timeline``: per call and party, one row per ``--bin-s`` seconds (default 5);
* ``agents``: per agent (``--by team``: per team) and ``--period all|day|week``.

Times are ISO-8601 UTC (``started_local``: in CALLMOOD_TIMEZONE, with its offset), numbers
rounded for reading, text cells formula-safe; an empty result is a CSV with the header only.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Final

import pandas as pd
from sqlalchemy.orm import Session

from analytics.callreport import (
    AGGREGATE_COLUMNS,
    CALL_METRIC_COLUMNS,
    aggregate_calls,
    call_metrics,
    rank_by_customer_stress,
)
from analytics.options import DEFAULT_BIN_S, REPORT_KINDS, GroupBy, Period, ReportKind
from analytics.queries import ReportFilter, load_calls, load_filtered_segments
from analytics.stress import SECONDS_DECIMALS, STRESS_DECIMALS
from analytics.timeline import TIMELINE_COLUMNS, timeline

__all__ = ["REPORT_COLUMNS", "REPORT_KINDS", "ReportKind", "build_report", "report_from_frames",
           "round_for_export"]

STRESS_REPORT_COLUMNS: Final[tuple[str, ...]] = (
    "rank", "call", "agent_id", "team", "started_at", "started_local", "duration_s",
    "model_version", "customer_stress", "customer_peak_stress", "customer_peak_at_s",
    "customer_stress_shift", "longest_high_stress_s", "escalated", "escalation_reason", "escalation_at_s",
    "agent_stress", "agent_talk_s", "customer_talk_s", "agent_turns", "customer_turns",
    "silence_share", "overtalk_s",
)
TIMELINE_REPORT_COLUMNS: Final[tuple[str, ...]] = (
    "call", "agent_id", "team", "started_at", "started_local", "model_version",
    *TIMELINE_COLUMNS[1:])
CALLS_REPORT_COLUMNS: Final[tuple[str, ...]] = (
    *CALL_METRIC_COLUMNS[:CALL_METRIC_COLUMNS.index("started_at") + 1], "started_local",
    *CALL_METRIC_COLUMNS[CALL_METRIC_COLUMNS.index("started_at") + 1:])
AGENT_REPORT_COLUMNS: Final[tuple[str, ...]] = AGGREGATE_COLUMNS

REPORT_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "calls": CALLS_REPORT_COLUMNS, "stress": STRESS_REPORT_COLUMNS,
    "timeline": TIMELINE_REPORT_COLUMNS, "agents": AGENT_REPORT_COLUMNS,
}
"""Report kind -> its CSV columns, in order (stable; documented in docs/analytics.md)."""

# Rounding for reading: finer would be noise next to the model's own uncertainty. Seconds
# (SECONDS_DECIMALS) and stress points (STRESS_DECIMALS) come from analytics.stress, whose
# thresholds compare at the same precision, so a figure shown and the flag beside it agree.
SHARE_DECIMALS: Final[int] = 3
"""Probabilities and shares (0-1) to 0.001 (the same as analytics.summary)."""

def round_for_export(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with numbers rounded by column name (``*_s`` seconds, ``*stress*`` points,
    ``p_*``/``*_share`` fractions) and datetimes as ISO-8601 UTC text (``...Z``)."""
    changes: dict[str, Any] = {}
    for column in frame.columns:
        values = frame[column]
        if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(
                values.dtype):
            stamps = pd.to_datetime(values, utc=True)
            text = (stamps.dt.strftime("%Y-%m-%d") if column == "period_start"
                    else stamps.dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
            changes[column] = text.astype(object).where(stamps.notna(), None)
        elif pd.api.types.is_float_dtype(values.dtype):
            if column.endswith("_s"):  # first: longest_high_stress_s is seconds
                changes[column] = values.round(SECONDS_DECIMALS)
            elif "stress" in column:
                changes[column] = values.round(STRESS_DECIMALS)
            elif column.startswith("p_") or column.endswith("_share"):
                changes[column] = values.round(SHARE_DECIMALS)
    return frame.assign(**changes)


def local_start(started_at: pd.Series, timezone: str) -> pd.Series:
    """Call starts as text in the site's zone with its UTC offset
    (``2026-11-02T23:50:00-05:00``; None when unknown): the day a supervisor's pivot of the
    CSV puts a call on is then the day ``--from``/``--to`` and ``agents --period day`` count
    it in (``started_at`` is UTC, which moves a late call to the next day)."""
    stamps = pd.to_datetime(started_at, utc=True).dt.tz_convert(timezone)
    text = stamps.map(lambda t: t.isoformat(timespec="seconds"), na_action="ignore")
    return text.astype(object).where(stamps.notna(), None)


def report_from_frames(kind: str, calls: pd.DataFrame, segments: pd.DataFrame, *,
                       bin_s: float = DEFAULT_BIN_S, period: Period = "all",
                       by: GroupBy = "agent", timezone: str = "UTC") -> pd.DataFrame:
    """The ``kind`` report (pure) from the frames of ``load_calls`` / ``load_filtered_segments``:
    unrounded, columns :data:`REPORT_COLUMNS` ``[kind]`` (``agents`` periods are days of
    ``timezone``). Raise ValueError for an unknown kind."""
    if kind not in REPORT_KINDS:
        raise ValueError(f"unknown report {kind!r}; use one of {', '.join(REPORT_KINDS)}")
    columns = list(REPORT_COLUMNS[kind])
    # Only segments of the listed calls (on PostgreSQL a call may finish between two reads).
    segments = segments[segments["call"].isin(calls["call"])]
    if kind == "timeline":
        grid = timeline(segments, calls.set_index("call")["duration_s"], bin_s=bin_s)
        info = calls[["call", "agent_id", "team", "started_at", "model_version"]].assign(
            started_local=lambda f: local_start(f["started_at"], timezone))
        return grid.merge(info, on="call", how="left")[columns]
    metrics = call_metrics(calls, segments).assign(
        started_local=lambda f: local_start(f["started_at"], timezone))
    if kind == "calls":
        return metrics[columns]
    if kind == "stress":
        ranked = rank_by_customer_stress(metrics)
        return ranked.assign(rank=range(1, len(ranked) + 1))[columns]
    return aggregate_calls(metrics, by=by, period=period, timezone=timezone)[columns]


def build_report(kind: str, session: Session, date_from: date | datetime | None = None,
                 date_to: date | datetime | None = None, agent: str | None = None,
                 team: str | None = None, *, bin_s: float = DEFAULT_BIN_S,
                 period: Period = "all", by: GroupBy = "agent",
                 timezone: str = "UTC") -> pd.DataFrame:
    """The ``kind`` report over analysed calls started between the days ``date_from`` and
    ``date_to`` (inclusive) of ``timezone`` (the site's zone, CALLMOOD_TIMEZONE in the CLI),
    of ``agent`` / ``team`` when given: unrounded, columns :data:`REPORT_COLUMNS` ``[kind]``.
    Raise ValueError for an unknown kind."""
    if kind not in REPORT_KINDS:
        raise ValueError(f"unknown report {kind!r}; use one of {', '.join(REPORT_KINDS)}")
    where = ReportFilter(date_from=date_from, date_to=date_to, agent=agent, team=team,
                         timezone=timezone)
    return report_from_frames(kind, load_calls(session, where),
                              load_filtered_segments(session, where),
                              bin_s=bin_s, period=period, by=by, timezone=timezone)
