from __future__ import annotations

import math

import pandas as pd
import pytest

from analytics.timeline import SILENT, TIMELINE_COLUMNS, mood_shift, timeline
from tests.analytics.frames import ESCALATING, frame, one_hot

CALL = frame(
    one_hot("c", "agent", 0.0, 4.0, "neutral"),
    one_hot("c", "customer", 3.0, 8.0, "angry"),
    one_hot("c", "customer", 12.0, 14.0, "sad"),
    one_hot("c", "agent", 12.0, 15.0, "happy"),
)


def test_grid_marks_speech_overlap_silence_and_dominant_per_party() -> None:
    grid = timeline(CALL, pd.Series({"c": 17.0}), bin_s=5.0)
    assert list(grid.columns) == list(TIMELINE_COLUMNS)
    customer = grid[grid["role"] == "customer"]
    assert customer["bin_start_s"].tolist() == [0.0, 5.0, 10.0, 15.0]
    assert customer["bin_end_s"].tolist() == [5.0, 10.0, 15.0, 17.0]
    assert customer["speech_s"].tolist() == [2.0, 3.0, 2.0, 0.0]
    assert customer["dominant"].tolist() == ["angry", "angry", "sad", SILENT]
    assert customer["stress"].tolist()[:3] == [100.0, 100.0, 40.0]
    assert math.isnan(customer["stress"].iloc[3])
    agent = grid[grid["role"] == "agent"]
    assert agent["dominant"].tolist() == ["neutral", SILENT, "happy", SILENT]
    assert agent["speech_s"].tolist() == [4.0, 0.0, 3.0, 0.0]
    # call-level marks, the same on both parties' rows
    assert customer["overlap_s"].tolist() == [1.0, 0.0, 2.0, 0.0]
    assert agent["silence_s"].tolist() == [0.0, 2.0, 2.0, 2.0]


def test_probabilities_are_weighted_by_seconds_inside_the_bin() -> None:
    mixed = frame(one_hot("m", "customer", 0.0, 2.0, "angry"),
                  one_hot("m", "customer", 2.0, 5.0, "neutral"),
                  one_hot("m", "customer", 5.0, 6.0, "angry"))
    grid = timeline(mixed, pd.Series({"m": 6.0}), bin_s=5.0)
    first = grid.iloc[0]
    assert first["p_angry"] == pytest.approx(0.4)
    assert first["p_neutral"] == pytest.approx(0.6)
    assert first["dominant"] == "neutral"
    assert first["stress"] == pytest.approx(40.0)
    assert grid["dominant"].tolist() == ["neutral", "angry"]


def test_a_frame_with_repeated_row_labels_gives_the_same_grid() -> None:
    mono = frame(one_hot("m", "unknown", 0.0, 4.0, "angry"))
    durations_s = pd.Series({"a": 30.0, "m": 4.0})
    joined = pd.concat([ESCALATING, mono])  # labels 0.. repeat
    clean = pd.concat([ESCALATING, mono], ignore_index=True)
    out = timeline(joined, durations_s, bin_s=10.0)
    pd.testing.assert_frame_equal(out, timeline(clean, durations_s, bin_s=10.0))
    assert len(out) == 2 * 3 + 1  # two parties x three 10 s bins, one party x one bin


def test_a_segment_starting_on_a_bin_edge_leaves_the_bin_before_silent() -> None:
    """0.3 / 0.1 is 2.9999999999999996 in floats: the segment must not leak ~1e-17 s of
    speech, an emotion and a stress score into the bin 0.2-0.3 s."""
    grid = timeline(frame(one_hot("c", "customer", 0.3, 0.5, "angry")), pd.Series({"c": 0.6}),
                    bin_s=0.1)
    assert grid["dominant"].tolist() == [SILENT, SILENT, SILENT, "angry", "angry", SILENT]
    assert grid["speech_s"].round(9).tolist() == [0.0, 0.0, 0.0, 0.1, 0.1, 0.0]
    assert grid["stress"].isna().tolist() == [True, True, True, False, False, True]


def test_a_call_a_whole_number_of_bins_long_gets_no_empty_last_bin() -> None:
    """2.1 / 0.3 is 7.000000000000001 in floats: 7 bins, not an 8th of zero length."""
    grid = timeline(frame(one_hot("c", "customer", 0.0, 2.1, "angry")), pd.Series({"c": 2.1}),
                    bin_s=0.3)
    assert len(grid) == 7 and grid["bin_end_s"].iloc[-1] == pytest.approx(2.1)
    assert (grid["bin_end_s"] > grid["bin_start_s"]).all()
    assert (grid["dominant"] == "angry").all()


def test_bin_size_is_configurable() -> None:
    grid = timeline(CALL, pd.Series({"c": 17.0}), bin_s=10.0)
    assert grid[grid["role"] == "customer"]["speech_s"].tolist() == [5.0, 2.0]
    with pytest.raises(ValueError):
        timeline(CALL, pd.Series({"c": 17.0}), bin_s=0.0)


def test_empty_timeline_has_the_columns() -> None:
    assert list(timeline(CALL.iloc[0:0], pd.Series(dtype=float)).columns) == list(TIMELINE_COLUMNS)


def test_mood_shift_compares_first_and_last_third() -> None:
    shift = mood_shift(ESCALATING, pd.Series({"a": 30.0})).set_index("role")
    assert shift.loc["customer", "start_stress"] == 0.0
    assert shift.loc["customer", "end_stress"] == 100.0
    assert shift.loc["customer", "stress_shift"] == 100.0
    assert shift.loc["customer", "start_dominant"] == "neutral"
    assert shift.loc["customer", "end_dominant"] == "angry"
    # the agent speaks only in the first and middle thirds
    assert shift.loc["agent", "start_dominant"] == "neutral"
    assert math.isnan(shift.loc["agent", "stress_shift"])


def test_mood_shift_when_a_third_has_no_speech_at_all() -> None:
    middle_only = frame(one_hot("m", "customer", 4.0, 8.0, "angry"))
    shift = mood_shift(middle_only, pd.Series({"m": 12.0})).iloc[0]
    assert math.isnan(shift["start_stress"]) and math.isnan(shift["stress_shift"])
    assert pd.isna(shift["end_dominant"])
