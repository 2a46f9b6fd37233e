from __future__ import annotations

import math

import pandas as pd
import pytest

from analytics.callreport import (
    AGGREGATE_COLUMNS,
    CALL_METRIC_COLUMNS,
    aggregate_calls,
    call_metrics,
    calls_to_draw,
    period_start,
    rank_by_customer_stress,
)
from tests.analytics.frames import ESCALATING, frame, one_hot

CALLS = pd.DataFrame({
    "call": ["a", "b", "m"],
    "agent_id": ["ana", "bob", "ana"],
    "team": ["t1", "t2", "t1"],
    "queue": [None, None, None],
    "started_at": pd.to_datetime(["2026-11-02T10:00Z", "2026-11-04T23:59Z", "2026-11-09T08:00Z"],
                                 utc=True),
    "duration_s": [30.0, None, None],
    "model_version": ["v1", "v1", "v1"],
})
CALM = frame(one_hot("b", "agent", 0.0, 5.0, "neutral"),
             one_hot("b", "customer", 6.0, 10.0, "sad"),
             one_hot("b", "customer", 10.0, 12.0, "neutral"))
MONO = frame(one_hot("m", "unknown", 0.0, 4.0, "angry"))
SEGMENTS = pd.concat([ESCALATING, CALM, MONO], ignore_index=True)


def test_call_metrics_of_an_escalating_call() -> None:
    metrics = call_metrics(CALLS, SEGMENTS)
    assert list(metrics.columns) == list(CALL_METRIC_COLUMNS)
    assert metrics["call"].tolist() == ["a", "b", "m"]
    a = metrics.iloc[0]
    assert a["customer_stress"] == pytest.approx(100 * 18 / 23)
    assert a["customer_peak_stress"] == 100.0
    assert a["customer_peak_at_s"] == 10.0
    assert a["customer_stress_shift"] == 100.0
    assert (a["customer_start_mood"], a["customer_end_mood"]) == ("neutral", "angry")
    assert a["agent_stress"] == 0.0
    assert a["longest_high_stress_s"] == 18.0   # the customer's 8 + 8 + 2 s of the 20 s run
    assert bool(a["escalated"]) is True
    assert a["escalation_reason"] == "sustained+rise"
    assert a["escalation_at_s"] == 10.0
    assert (a["agent_talk_s"], a["customer_talk_s"]) == (5.0, 23.0)
    assert (a["agent_turns"], a["customer_turns"]) == (2, 2)
    assert a["silence_s"] == 3.0  # 8-10, 27-28, and nothing after 30
    assert a["silence_share"] == pytest.approx(0.1)
    assert a["overtalk_s"] == 1.0


def test_calm_call_and_mono_call() -> None:
    metrics = call_metrics(CALLS, SEGMENTS).set_index("call")
    b = metrics.loc["b"]
    assert b["duration_s"] == 12.0  # unknown duration: the last utterance end
    assert b["customer_stress"] == pytest.approx(40 * 4 / 6)
    assert bool(b["escalated"]) is False and b["escalation_reason"] == ""
    assert math.isnan(b["escalation_at_s"])
    m = metrics.loc["m"]
    assert math.isnan(m["customer_stress"]) and pd.isna(m["agent_turns"])
    assert math.isnan(m["longest_high_stress_s"])  # no customer party: empty, not 0 s
    assert bool(m["escalated"]) is False
    assert b["longest_high_stress_s"] == 0.0


def test_rise_alone_escalates_at_the_last_third() -> None:
    rising = frame(one_hot("r", "customer", 0.0, 5.0, "neutral"),
                   one_hot("r", "customer", 25.0, 29.0, "angry"))
    calls = CALLS.iloc[:1].assign(call="r")
    row = call_metrics(calls, rising).iloc[0]
    assert row["escalation_reason"] == "rise"
    assert row["escalation_at_s"] == 20.0  # 2/3 of 30 s


def test_calls_without_segments_still_get_a_row() -> None:
    metrics = call_metrics(CALLS, SEGMENTS.iloc[0:0])
    assert metrics["call"].tolist() == ["a", "b", "m"]
    assert metrics["escalated"].tolist() == [False, False, False]
    # an analysed 30 s call in which nobody spoke is 30 s of silence, not an empty cell
    assert metrics[["silence_s", "silence_share", "overtalk_s"]].iloc[0].tolist() == [
        30.0, 1.0, 0.0]
    assert metrics["silence_s"].iloc[1:].isna().all()  # unknown length: unknown silence


def test_a_silent_call_beside_calls_with_speech_is_all_silence() -> None:
    calls = pd.concat([CALLS, CALLS.iloc[:1].assign(call="s", duration_s=45.0)],
                      ignore_index=True)
    silent = call_metrics(calls, SEGMENTS).set_index("call").loc["s"]
    assert (silent["silence_s"], silent["silence_share"], silent["overtalk_s"]) == (
        45.0, 1.0, 0.0)
    assert math.isnan(silent["customer_stress"]) and bool(silent["escalated"]) is False


def test_ranking_puts_the_most_stressed_customer_first_and_mono_last() -> None:
    ranked = rank_by_customer_stress(call_metrics(CALLS, SEGMENTS))
    assert ranked["call"].tolist() == ["a", "b", "m"]


def test_period_start_day_and_iso_week() -> None:
    stamps = pd.Series(pd.to_datetime(["2026-11-04T23:59Z", "2026-11-08T00:01Z"], utc=True))
    assert period_start(stamps, "day").dt.strftime("%Y-%m-%d").tolist() == [
        "2026-11-04", "2026-11-08"]
    assert period_start(stamps, "week").dt.strftime("%Y-%m-%d").tolist() == [
        "2026-11-02", "2026-11-02"]  # the Monday of each ISO week
    assert period_start(stamps, "all").isna().all()
    # the site's days: 02:30 UTC on Monday 2 November is Sunday evening in New York, in the
    # ISO week that began on 26 October (the US left summer time on 1 November)
    evening = pd.Series(pd.to_datetime(["2026-11-02T02:30Z"], utc=True))
    assert period_start(evening, "day", "America/New_York").dt.strftime(
        "%Y-%m-%d").tolist() == ["2026-11-01"]
    assert period_start(evening, "week", "America/New_York").dt.strftime(
        "%Y-%m-%d").tolist() == ["2026-10-26"]
    assert period_start(evening, "week").dt.strftime("%Y-%m-%d").tolist() == ["2026-11-02"]


def test_aggregate_per_agent_and_week() -> None:
    metrics = call_metrics(CALLS, SEGMENTS)
    out = aggregate_calls(metrics, by="agent", period="week")
    assert list(out.columns) == list(AGGREGATE_COLUMNS)
    assert out[["group", "calls", "escalated_calls"]].values.tolist() == [
        ["ana", 1, 1], ["ana", 1, 0], ["bob", 1, 0]]
    # ana's week with only the mono call has no call that could be flagged: no share, not 0
    assert pd.isna(out["escalated_share"].iloc[1])
    assert out["calls_with_customer"].tolist() == [1, 0, 1]
    overall = aggregate_calls(metrics, by="agent").set_index("group")
    assert overall.loc["ana", "calls"] == 2
    # of the calls in which the customer spoke: the mono one can never be flagged
    assert overall.loc["ana", "escalated_share"] == 1.0
    assert overall.loc["bob", "escalated_share"] == 0.0
    assert overall.loc["ana", "mean_customer_stress"] == pytest.approx(100 * 18 / 23)  # mono skipped
    teams = aggregate_calls(metrics, by="team").set_index("group")
    assert teams.loc["t2", "max_customer_stress"] == pytest.approx(40 * 4 / 6)
    assert aggregate_calls(metrics.iloc[0:0]).empty
    # totals that add up to the calls report's rows (only means and overtalk were there, a
    # review): ana's 30 s call and 4 s mono call (whose talk has no role)
    totals = ["total_duration_s", "total_agent_talk_s", "total_customer_talk_s",
              "total_silence_s", "total_overtalk_s"]
    assert overall.loc["ana", totals].tolist() == [34.0, 5.0, 23.0, 3.0, 1.0]
    by_call = metrics.groupby("agent_id")[["duration_s", "agent_talk_s", "customer_talk_s",
                                           "silence_s", "overtalk_s"]].sum()
    assert overall[totals].to_numpy().tolist() == by_call.to_numpy().tolist()


def test_an_agents_silence_share_weighs_each_call_by_its_length() -> None:
    """A 300 s call with 30 s of silence and a 20 s dead-air call: 50 s of 320 s were silent
    (0.156), not the mean of the two calls' shares (0.55), which a few dropped calls would
    dominate. A call of unknown length adds nothing to either sum."""
    long = frame(one_hot("l", "agent", 0.0, 150.0, "neutral"),
                 one_hot("l", "customer", 150.0, 270.0, "neutral"))
    calls = pd.DataFrame({
        "call": ["l", "d", "u"], "agent_id": ["ana"] * 3, "team": ["t1"] * 3,
        "queue": [None] * 3,
        "started_at": pd.to_datetime(["2026-11-02T10:00Z"] * 3, utc=True),
        "duration_s": [300.0, 20.0, None], "model_version": ["v1"] * 3})
    metrics = call_metrics(calls, long)
    assert metrics.set_index("call")["silence_share"].loc[["l", "d"]].tolist() == [
        pytest.approx(0.1), 1.0]
    ana = aggregate_calls(metrics).set_index("group").loc["ana"]
    assert ana["mean_silence_share"] == pytest.approx(50 / 320)
    assert ana["calls"] == 3


def test_silent_calls_take_no_picture_slot() -> None:
    """Silent calls "a1", "a2" sort with the mono call "m" after the customer calls (no
    customer stress, by call id): with a limit of 3, the mono call with speech is drawn."""
    calls = pd.concat([CALLS, CALLS.iloc[:2].assign(call=["a1", "a2"], duration_s=20.0)],
                      ignore_index=True)
    ranked = rank_by_customer_stress(call_metrics(calls, SEGMENTS))
    assert ranked["call"].tolist() == ["a", "b", "a1", "a2", "m"]
    assert calls_to_draw(ranked, SEGMENTS, 3)["call"].tolist() == ["a", "b", "m"]
    assert calls_to_draw(ranked, SEGMENTS, -1).empty


def test_an_aggregate_row_names_the_model_versions_it_mixes() -> None:
    """A reprocess after a model upgrade, half done, left an agent's day averaging calls of
    two models (which score differently) with nothing in the row to say so."""
    upgraded = CALLS.assign(model_version=["emotion-v1.8.0", "emotion-v1.9.0", "emotion-v1.9.0"])
    rows = aggregate_calls(call_metrics(upgraded, SEGMENTS)).set_index("group")
    assert rows.loc["ana", "model_versions"] == "emotion-v1.8.0; emotion-v1.9.0"
    assert rows.loc["bob", "model_versions"] == "emotion-v1.9.0"
