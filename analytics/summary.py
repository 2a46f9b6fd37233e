"""Per-call, per-party emotion summaries: pure functions over the segments DataFrame.

The segments frame has one row per utterance with at least the columns
``call, role, start_s, end_s, emotion, confidence`` and one ``p_<label>`` column per class.
"""

from __future__ import annotations

import pandas as pd

from worker.constants import EMOTIONS, PROB_COLUMNS


def with_duration(segments: pd.DataFrame) -> pd.DataFrame:
    """Add ``duration_s`` (end_s - start_s) to a segments frame."""
    return segments.assign(duration_s=segments["end_s"] - segments["start_s"])


def party_summary(segments: pd.DataFrame) -> pd.DataFrame:
    """One row per (call, role): utterances, talk time, time-weighted emotion shares.

    ``dominant`` is the class with the largest talk-time-weighted mean probability,
    which is steadier than counting argmax labels when utterances differ in length.
    """
    columns = ["call", "role", "utterances", "talk_s", "dominant", "mean_confidence",
               *(f"share_{e}" for e in EMOTIONS)]
    if segments.empty:
        return pd.DataFrame(columns=columns)
    framed = segments.pipe(with_duration)
    weighted = framed.assign(**{c: framed[c] * framed["duration_s"] for c in PROB_COLUMNS})
    grouped = weighted.groupby(["call", "role"], sort=True)
    talk_s = grouped["duration_s"].sum()
    shares = grouped[list(PROB_COLUMNS)].sum().div(talk_s.where(talk_s > 0, 1.0), axis=0)
    out = pd.DataFrame({
        "utterances": grouped.size(),
        "talk_s": talk_s.round(1),
        # no talk time, no mood (idxmax of all-zero shares would say the first class)
        "dominant": shares.idxmax(axis=1).str.removeprefix("p_").where(talk_s > 0),
        "mean_confidence": grouped["confidence"].mean().round(3),
    }).join(shares.round(3).rename(columns=lambda c: "share_" + c.removeprefix("p_")))
    return out.reset_index()[columns]


def emotion_runs(segments: pd.DataFrame) -> pd.DataFrame:
    """Consecutive utterances of one party with the same label merged into runs.

    Returns columns ``call, role, start_s, end_s, emotion, utterances`` in time order:
    the compact timeline a person reads ("0:00 neutral, 0:12 angry ...").
    """
    columns = ["call", "role", "start_s", "end_s", "emotion", "utterances"]
    if segments.empty:
        return pd.DataFrame(columns=columns)
    ordered = segments.sort_values(["call", "role", "start_s"])
    keys = ordered[["call", "role", "emotion"]]
    new_run = (keys != keys.shift()).any(axis=1)
    runs = ordered.assign(run=new_run.cumsum()).groupby("run", sort=True).agg(
        call=("call", "first"), role=("role", "first"), start_s=("start_s", "min"),
        end_s=("end_s", "max"), emotion=("emotion", "first"), utterances=("emotion", "size"))
    return runs.reset_index(drop=True)[columns]


def format_clock(seconds: float) -> str:
    """``83.4`` -> ``"1:23"`` (minutes:seconds, as a call timer shows it)."""
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"
