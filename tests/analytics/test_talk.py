from __future__ import annotations

import pandas as pd
import pytest

from analytics.talk import (
    call_lengths_s,
    call_talk,
    merged_speech,
    party_talk,
    speaker_count_spans,
    split_into_bins,
)

SPANS = pd.DataFrame({
    "call": ["a"] * 5,
    "role": ["agent", "customer", "customer", "agent", "customer"],
    "start_s": [0.0, 3.0, 5.0, 12.0, 13.0],
    "end_s": [4.0, 6.0, 8.0, 15.0, 14.0],
})
DURATIONS_S = pd.Series({"a": 20.0})


def test_merged_speech_unions_one_partys_overlapping_utterances() -> None:
    merged = merged_speech(SPANS)
    assert merged.values.tolist() == [
        ["a", "agent", 0.0, 4.0], ["a", "agent", 12.0, 15.0],
        ["a", "customer", 3.0, 8.0], ["a", "customer", 13.0, 14.0]]


def test_speaker_counts_cover_the_call_with_silence_and_overtalk() -> None:
    spans = speaker_count_spans(SPANS, DURATIONS_S)
    assert spans[["start_s", "end_s", "speakers"]].values.tolist() == [
        [0.0, 3.0, 1], [3.0, 4.0, 2], [4.0, 8.0, 1], [8.0, 12.0, 0], [12.0, 13.0, 1],
        [13.0, 14.0, 2], [14.0, 15.0, 1], [15.0, 20.0, 0]]


def test_party_talk_counts_talk_time_utterances_and_turns() -> None:
    talk = party_talk(SPANS).set_index("role")
    assert talk.loc["agent", "talk_s"] == 7.0
    assert talk.loc["customer", "talk_s"] == 6.0  # 3-8 counted once, plus 13-14
    assert talk.loc["customer", "utterances"] == 3
    assert talk.loc["agent", "turns"] == 2
    assert talk.loc["customer", "turns"] == 2


def test_turns_merge_consecutive_utterances_of_one_party() -> None:
    spans = pd.DataFrame({"call": ["a"] * 4, "role": ["agent", "agent", "customer", "agent"],
                          "start_s": [0.0, 2.0, 4.0, 6.0], "end_s": [1.0, 3.0, 5.0, 7.0]})
    turns = party_talk(spans).set_index("role")["turns"]
    assert turns.to_dict() == {"agent": 2, "customer": 1}


def test_call_talk_silence_share_and_overtalk() -> None:
    row = call_talk(SPANS, DURATIONS_S).iloc[0]
    assert row["duration_s"] == 20.0
    assert row["silence_s"] == 9.0
    assert row["silence_share"] == pytest.approx(0.45)
    assert row["overtalk_s"] == 2.0


def test_missing_or_short_duration_uses_the_last_utterance_end() -> None:
    lengths = call_lengths_s(SPANS, pd.Series({"a": 10.0}))
    assert lengths["a"] == 15.0
    assert call_lengths_s(SPANS, pd.Series(dtype=float))["a"] == 15.0


def test_split_into_bins_gives_seconds_inside_each_bin() -> None:
    pieces = split_into_bins(pd.DataFrame({"start_s": [3.0, 10.0], "end_s": [12.5, 10.0]}), 5.0)
    assert pieces[["bin", "in_bin_s"]].values.tolist() == [
        [0, 2.0], [1, 5.0], [2, 2.5], [2, 0.0]]
    with pytest.raises(ValueError):
        split_into_bins(pieces, 0.0)


def test_empty_inputs_keep_columns() -> None:
    empty = SPANS.iloc[0:0]
    assert list(party_talk(empty).columns) == ["call", "role", "talk_s", "utterances", "turns"]
    assert call_talk(empty, DURATIONS_S).empty
    assert merged_speech(empty).empty
