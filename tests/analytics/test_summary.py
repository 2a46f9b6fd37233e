from __future__ import annotations

import pandas as pd
import pytest

from analytics.summary import emotion_runs, format_clock, party_summary
from worker.constants import EMOTIONS


def seg(call: str, role: str, start_s: float, end_s: float, emotion: str, p: float) -> dict[str, object]:
    probs = {f"p_{e}": (p if e == emotion else (1 - p) / 6) for e in EMOTIONS}
    return {"call": call, "role": role, "start_s": start_s, "end_s": end_s,
            "emotion": emotion, "confidence": p, **probs}


SEGMENTS = pd.DataFrame([
    seg("c1", "customer", 0.0, 2.0, "neutral", 0.7),
    seg("c1", "customer", 3.0, 9.0, "angry", 0.9),
    seg("c1", "customer", 10.0, 12.0, "angry", 0.5),
    seg("c1", "agent", 2.0, 3.0, "neutral", 0.8),
])


def test_party_summary_weights_by_talk_time() -> None:
    out = party_summary(SEGMENTS).set_index("role")
    assert out.loc["customer", "utterances"] == 3
    assert out.loc["customer", "talk_s"] == 10.0
    # p_angry weighted by duration: (2*0.05 + 6*0.9 + 2*0.5) / 10
    assert out.loc["customer", "share_angry"] == pytest.approx((2 * 0.05 + 6 * 0.9 + 2 * 0.5) / 10, abs=1e-3)
    assert out.loc["customer", "dominant"] == "angry"
    assert out.loc["agent", "dominant"] == "neutral"
    assert out.loc["customer", "mean_confidence"] == pytest.approx(0.7)


def test_runs_merge_consecutive_labels_per_party() -> None:
    runs = emotion_runs(SEGMENTS)
    customer = runs[runs["role"] == "customer"]
    assert customer[["start_s", "end_s", "emotion", "utterances"]].values.tolist() == [
        [0.0, 2.0, "neutral", 1], [3.0, 12.0, "angry", 2]]


def test_empty_frames_keep_their_columns() -> None:
    empty = SEGMENTS.iloc[0:0]
    assert list(party_summary(empty).columns) == list(party_summary(SEGMENTS).columns)
    assert emotion_runs(empty).empty
    assert list(emotion_runs(empty).columns) == list(emotion_runs(SEGMENTS).columns)


def test_a_party_without_talk_time_has_no_dominant_mood() -> None:
    """Zero-length segments only: every share is 0, and the first class ("angry") is no
    mood of theirs."""
    silent = pd.DataFrame([seg("c2", "agent", 4.0, 4.0, "neutral", 0.9)])
    out = party_summary(pd.concat([SEGMENTS, silent], ignore_index=True)).set_index(
        ["call", "role"])
    assert out.loc[("c2", "agent"), "talk_s"] == 0.0
    assert pd.isna(out.loc[("c2", "agent"), "dominant"])
    assert out.loc[("c1", "customer"), "dominant"] == "angry"


def test_format_clock() -> None:
    assert format_clock(83.4) == "1:23"
    assert format_clock(5) == "0:05"
