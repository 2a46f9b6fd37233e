"""One row of metrics per call (stress, escalation, mood shift, talk) and aggregates of them.

Pure functions: ``calls`` is the frame of :func:`analytics.queries.load_calls` (``call,
agent_id, team, queue, started_at, duration_s, model_version``), ``segments`` the utterances
of those calls (``call, role, start_s, end_s, p_<class>...``). Stress is 0-100
(:mod:`analytics.stress`), times are seconds from the start of the call.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from analytics.options import GroupBy, Period
from analytics.stress import (
    ESCALATION_MIN_SPEECH_S,
    MOOD_THIRDS,
    escalation_flags,
    high_stress_runs,
    mood_shift,
    party_stress,
)
from analytics.talk import call_lengths_s, call_talk, party_talk
from worker.constants import ROLE_AGENT, ROLE_CUSTOMER

CALL_METRIC_COLUMNS: Final[tuple[str, ...]] = (
    "call", "agent_id", "team", "queue", "started_at", "duration_s", "model_version",
    "customer_stress", "customer_peak_stress", "customer_peak_at_s",
    "customer_start_stress", "customer_end_stress", "customer_stress_shift",
    "customer_start_mood", "customer_end_mood",
    "agent_stress", "agent_peak_stress", "agent_stress_shift", "agent_start_mood",
    "agent_end_mood",
    "longest_high_stress_s", "escalated", "escalation_reason", "escalation_at_s",
    "agent_talk_s", "customer_talk_s", "agent_turns", "customer_turns",
    "silence_s", "silence_share", "overtalk_s",
)
"""Columns of :func:`call_metrics` (documented in docs/analytics.md)."""

AGGREGATE_COLUMNS: Final[tuple[str, ...]] = (
    "group", "period_start", "calls", "calls_with_customer", "escalated_calls",
    "escalated_share",
    "mean_customer_stress", "max_customer_stress", "mean_customer_stress_shift",
    "mean_agent_stress", "mean_duration_s", "mean_silence_share", "total_overtalk_s",
    "total_duration_s", "total_agent_talk_s", "total_customer_talk_s", "total_silence_s",
    "model_versions",
)
"""Columns of :func:`aggregate_calls`; ``group`` is the agent id or the team."""

VERSION_SEPARATOR: Final[str] = "; "
"""Between the model versions of an aggregate row (``model_versions``)."""


def _per_role(frame: pd.DataFrame, role: str, columns: dict[str, str]) -> pd.DataFrame:
    """``frame`` rows of ``role`` indexed by call, columns renamed by ``columns``."""
    part = frame[frame["role"] == role].set_index("call")
    return part[list(columns)].rename(columns=columns)


def escalation_moments(segments: pd.DataFrame) -> pd.DataFrame:
    """Per call (index): ``longest_high_stress_s`` (the most customer speech in one
    high-stress run, s; 0 when none, NaN for a call without a customer party),
    ``sustained_at_s`` (start of the first run holding >= ESCALATION_MIN_SPEECH_S of it; NaN
    when none)."""
    calls = pd.Index(segments["call"].unique(), name="call")
    with_customer = calls.isin(segments.loc[segments["role"] == ROLE_CUSTOMER, "call"])
    none_s = pd.Series(np.where(with_customer, 0.0, np.nan), index=calls)
    runs = high_stress_runs(segments, role=ROLE_CUSTOMER)
    if runs.empty:
        return pd.DataFrame({"longest_high_stress_s": none_s, "sustained_at_s": np.nan},
                            index=calls)
    longest = runs.groupby("call")["speech_s"].max().astype(float)
    sustained = runs[runs["speech_s"] >= ESCALATION_MIN_SPEECH_S].groupby("call")["start_s"].min()
    return pd.DataFrame({
        "longest_high_stress_s": longest.reindex(calls).fillna(none_s),
        "sustained_at_s": sustained.reindex(calls).astype(float),
    })


def call_metrics(calls: pd.DataFrame, segments: pd.DataFrame) -> pd.DataFrame:
    """One row per call of ``calls`` (same order), columns :data:`CALL_METRIC_COLUMNS`.

    Party columns are NaN for a call without that party (a mono call has role ``unknown``
    only). ``escalation_at_s`` is the start of the first sustained high-stress run, or for a
    steep rise alone the start of the call's last third.
    """
    columns = list(CALL_METRIC_COLUMNS)
    base = calls.set_index("call")
    durations_s = base["duration_s"]
    if segments.empty:
        return _finish(_silent_calls(base.reset_index().reindex(columns=columns)))
    lengths_s = call_lengths_s(segments, durations_s)
    stress = party_stress(segments)
    shift = mood_shift(segments, durations_s)
    talk = party_talk(segments)
    moments = escalation_moments(segments)
    customer_shift = _per_role(shift, ROLE_CUSTOMER, {"stress_shift": "customer_stress_shift"})
    flags = escalation_flags(moments["longest_high_stress_s"],
                             customer_shift["customer_stress_shift"].reindex(moments.index))
    last_third_s = lengths_s * (MOOD_THIRDS - 1) / MOOD_THIRDS
    escalation_at_s = moments["sustained_at_s"].where(
        moments["sustained_at_s"].notna(), last_third_s.reindex(moments.index)
    ).where(flags["escalated"])
    out = base.assign(duration_s=durations_s.fillna(lengths_s.reindex(base.index))).join([
        _per_role(stress, ROLE_CUSTOMER, {"stress": "customer_stress",
                                          "peak_stress": "customer_peak_stress",
                                          "peak_at_s": "customer_peak_at_s"}),
        _per_role(shift, ROLE_CUSTOMER, {"start_stress": "customer_start_stress",
                                         "end_stress": "customer_end_stress",
                                         "stress_shift": "customer_stress_shift",
                                         "start_dominant": "customer_start_mood",
                                         "end_dominant": "customer_end_mood"}),
        _per_role(stress, ROLE_AGENT, {"stress": "agent_stress",
                                       "peak_stress": "agent_peak_stress"}),
        _per_role(shift, ROLE_AGENT, {"stress_shift": "agent_stress_shift",
                                      "start_dominant": "agent_start_mood",
                                      "end_dominant": "agent_end_mood"}),
        moments[["longest_high_stress_s"]],
        flags,
        escalation_at_s.rename("escalation_at_s").to_frame(),
        _per_role(talk, ROLE_AGENT, {"talk_s": "agent_talk_s", "turns": "agent_turns"}),
        _per_role(talk, ROLE_CUSTOMER, {"talk_s": "customer_talk_s", "turns": "customer_turns"}),
        call_talk(segments, durations_s).set_index("call")[
            ["silence_s", "silence_share", "overtalk_s"]],
    ])
    return _finish(_silent_calls(out.reset_index()[columns]))


def _silent_calls(metrics: pd.DataFrame) -> pd.DataFrame:
    """Talk figures of analysed calls in which nobody spoke (no segments): the whole call is
    silence and nothing overlaps; the dead-air call a supervisor most wants to see."""
    silent = metrics["silence_s"].isna() & metrics["duration_s"].notna()
    duration_s = metrics["duration_s"].astype(float)
    return metrics.assign(
        silence_s=metrics["silence_s"].astype(float).mask(silent, duration_s),
        silence_share=metrics["silence_share"].astype(float).mask(
            silent & (duration_s > 0), 1.0),
        overtalk_s=metrics["overtalk_s"].astype(float).mask(silent, 0.0))


def _finish(metrics: pd.DataFrame) -> pd.DataFrame:
    """Types that survive a call without segments or parties: bool flag, "" reason, Int64
    turn counts (a mono call has no agent turns, which is not 0.0 turns)."""
    return metrics.assign(
        escalated=metrics["escalated"].astype("boolean").fillna(False).astype(bool),
        escalation_reason=metrics["escalation_reason"].astype(object).fillna(""),
        agent_turns=metrics["agent_turns"].astype("Int64"),
        customer_turns=metrics["customer_turns"].astype("Int64"))


def rank_by_customer_stress(metrics: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` sorted most-stressed customer first (calls without a customer last)."""
    return metrics.sort_values(["customer_stress", "call"], ascending=[False, True],
                               na_position="last", ignore_index=True)


def calls_to_draw(ranked: pd.DataFrame, segments: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The first ``limit`` rows of ``ranked`` (call metrics, most stressed first) among calls
    with segments: a call nobody spoke in has no picture, so it must not take a slot from a
    mono call with speech ranked after it (both sort last, by call id)."""
    return ranked[ranked["call"].isin(segments["call"])].head(max(limit, 0))


def period_start(started_at: pd.Series, period: Period, timezone: str = "UTC") -> pd.Series:
    """The calendar day, or the Monday of the ISO week, of each start in ``timezone`` (an IANA
    name: the site's days, not UTC's), as naive midnights of that day; NaT for ``all`` or an
    unknown start."""
    if period == "all":
        return pd.Series(pd.NaT, index=started_at.index, dtype="datetime64[ns]")
    # wall-clock dates: a week that crosses a DST change still starts on its Monday
    day = (pd.to_datetime(started_at, utc=True).dt.tz_convert(timezone).dt.tz_localize(None)
           .dt.normalize())
    if period == "day":
        return day
    return day - pd.to_timedelta(day.dt.day_of_week, unit="D")


def _versions(versions: pd.Series) -> str:
    """The distinct model versions of a group's calls, sorted, as one cell."""
    return VERSION_SEPARATOR.join(sorted(versions.dropna().astype(str).unique()))


def aggregate_calls(metrics: pd.DataFrame, by: GroupBy = "agent",
                    period: Period = "all", timezone: str = "UTC") -> pd.DataFrame:
    """Per agent (or team) and day/week/all (days of ``timezone``): :data:`AGGREGATE_COLUMNS`.

    Means skip calls without the party; ``escalated_share`` is escalated calls / calls in which
    the customer spoke (0-1; empty without any): only those can be flagged, so mono or one-way
    calls neither dilute it nor read as a perfect 0. ``mean_silence_share`` is the group's
    silent time over its call time: the calls' shares weighted by their length (a 20 s
    dropped call weighs 20 s, not as much as an hour's call). ``model_versions`` lists the
    versions that scored the group's calls, sorted: more than one (a reprocess after an
    upgrade, half done) says its figures mix two models, which score differently.
    """
    columns = list(AGGREGATE_COLUMNS)
    if metrics.empty:
        return pd.DataFrame(columns=columns)
    keyed = metrics.assign(group=metrics["agent_id" if by == "agent" else "team"],
                           period_start=period_start(metrics["started_at"], period, timezone),
                           escalated=metrics["escalated"].astype(bool),
                           # the time of the calls whose silence is known: the share's base
                           timed_s=metrics["duration_s"].astype(float).where(
                               metrics["silence_s"].notna()))
    grouped = keyed.groupby(["group", "period_start"], dropna=False, sort=True)
    out = grouped.agg(
        calls=("call", "size"),
        calls_with_customer=("customer_stress", "count"),
        escalated_calls=("escalated", "sum"),
        mean_customer_stress=("customer_stress", "mean"),
        max_customer_stress=("customer_stress", "max"),
        mean_customer_stress_shift=("customer_stress_shift", "mean"),
        mean_agent_stress=("agent_stress", "mean"),
        mean_duration_s=("duration_s", "mean"),
        silence_s=("silence_s", "sum"),
        timed_s=("timed_s", "sum"),
        total_overtalk_s=("overtalk_s", "sum"),
        model_versions=("model_version", _versions),
    ).reset_index()
    # totals a supervisor reconciles with the calls report: only the means and the overtalk
    # were there (a review); min_count keeps a group with none of it empty (the built-in
    # sum: a lambda per group cost 0.9 s a million calls)
    totals = grouped[["duration_s", "agent_talk_s", "customer_talk_s"]].sum(min_count=1)
    out = out.assign(**{f"total_{c}": totals[c].to_numpy() for c in totals.columns})
    measurable = out["calls_with_customer"].where(out["calls_with_customer"] > 0)
    # the column keeps its name (spreadsheets read it); it is now a mean weighted by length
    return out.assign(escalated_share=out["escalated_calls"] / measurable,
                      mean_silence_share=out["silence_s"] / out["timed_s"].where(
                          out["timed_s"] > 0),
                      total_silence_s=out["silence_s"].where(out["timed_s"] > 0))[columns]
