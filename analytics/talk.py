"""Talk metrics from utterance spans: pure functions over DataFrames, times in seconds.

Inputs are segment frames (``call, role, start_s, end_s``, one row per utterance) and
``durations_s`` (a Series call -> call length, s). One party's overlapping or touching
utterances count once (their union); "overtalk" is time when two or more parties speak at
once, "silence" time when none does, both within ``[0, duration_s]`` of the call.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPAN_COLUMNS: tuple[str, ...] = ("call", "role", "start_s", "end_s")


def merged_speech(segments: pd.DataFrame) -> pd.DataFrame:
    """Union of each party's utterances: ``call, role, start_s, end_s``, sorted, disjoint."""
    columns = list(SPAN_COLUMNS)
    if segments.empty:
        return pd.DataFrame(columns=columns)
    ordered = segments[columns].sort_values(["call", "role", "start_s", "end_s"],
                                            ignore_index=True)
    same_party = (ordered["call"].eq(ordered["call"].shift())
                  & ordered["role"].eq(ordered["role"].shift())).to_numpy()
    reach_s = ordered.groupby(["call", "role"], sort=False)["end_s"].cummax().to_numpy(dtype=float)
    start_s = ordered["start_s"].to_numpy(dtype=float)
    previous_reach_s = np.concatenate([[-np.inf], reach_s[:-1]])
    first = np.flatnonzero(~same_party | (start_s > previous_reach_s))
    return pd.DataFrame({
        "call": ordered["call"].to_numpy()[first],
        "role": ordered["role"].to_numpy()[first],
        "start_s": start_s[first],
        "end_s": np.maximum.reduceat(ordered["end_s"].to_numpy(dtype=float), first),
    })


def call_lengths_s(segments: pd.DataFrame, durations_s: pd.Series) -> pd.Series:
    """call -> length (s): the recorded duration, or the last utterance end when that is
    missing or shorter (so no speech falls outside the call)."""
    last_end_s = segments.groupby("call")["end_s"].max()
    known = durations_s.reindex(last_end_s.index).astype(float)
    return known.fillna(0.0).combine(last_end_s.astype(float), max).rename("duration_s")


def speaker_count_spans(segments: pd.DataFrame, durations_s: pd.Series) -> pd.DataFrame:
    """The call cut into elementary spans with how many parties speak in each.

    Columns ``call, start_s, end_s, speakers`` covering ``[0, duration_s]`` of every call
    that has segments; ``speakers`` 0 is silence, >= 2 is overtalk.
    """
    columns = ["call", "start_s", "end_s", "speakers"]
    if segments.empty:
        return pd.DataFrame(columns=columns)
    spans = merged_speech(segments)
    lengths_s = call_lengths_s(segments, durations_s)
    events = pd.concat([
        pd.DataFrame({"call": spans["call"], "t_s": spans["start_s"], "delta": 1}),
        pd.DataFrame({"call": spans["call"], "t_s": spans["end_s"], "delta": -1}),
        pd.DataFrame({"call": lengths_s.index, "t_s": 0.0, "delta": 0}),
        pd.DataFrame({"call": lengths_s.index, "t_s": lengths_s.to_numpy(), "delta": 0}),
    ], ignore_index=True)
    points = events.groupby(["call", "t_s"], sort=True)["delta"].sum().reset_index()
    points = points.assign(speakers=points.groupby("call")["delta"].cumsum(),
                           end_s=points.groupby("call")["t_s"].shift(-1))
    out = points[points["end_s"].notna() & (points["end_s"] > points["t_s"])]
    return (out.rename(columns={"t_s": "start_s"})
            .assign(end_s=lambda f: f["end_s"].astype(float),
                    speakers=lambda f: f["speakers"].astype(int))
            .reset_index(drop=True)[columns])


def turn_counts(segments: pd.DataFrame) -> pd.DataFrame:
    """Turns per party: ``call, role, turns``. A turn is a maximal run of one party's speech
    spans (in start order) not interrupted by another party starting to speak."""
    columns = ["call", "role", "turns"]
    if segments.empty:
        return pd.DataFrame(columns=columns)
    spans = merged_speech(segments).sort_values(["call", "start_s", "role"], ignore_index=True)
    same_call = spans["call"].eq(spans["call"].shift())
    new_turn = ~(same_call & spans["role"].eq(spans["role"].shift()))
    turns = spans[new_turn].groupby(["call", "role"], sort=True).size().rename("turns")
    return turns.reset_index()[columns]


def party_talk(segments: pd.DataFrame) -> pd.DataFrame:
    """Per party: ``call, role, talk_s`` (union of its utterances, s), ``utterances``, ``turns``."""
    columns = ["call", "role", "talk_s", "utterances", "turns"]
    if segments.empty:
        return pd.DataFrame(columns=columns)
    spans = merged_speech(segments)
    talk_s = (spans["end_s"] - spans["start_s"]).groupby([spans["call"], spans["role"]]).sum()
    utterances = segments.groupby(["call", "role"]).size()
    out = pd.DataFrame({"talk_s": talk_s.astype(float), "utterances": utterances}).reset_index()
    return out.merge(turn_counts(segments), on=["call", "role"], how="left")[columns]


def call_talk(segments: pd.DataFrame, durations_s: pd.Series) -> pd.DataFrame:
    """Per call: ``call, duration_s, silence_s, silence_share`` (0-1 of the call),
    ``overtalk_s`` (two or more parties at once)."""
    columns = ["call", "duration_s", "silence_s", "silence_share", "overtalk_s"]
    spans = speaker_count_spans(segments, durations_s)
    if spans.empty:
        return pd.DataFrame(columns=columns)
    length_s = spans["end_s"] - spans["start_s"]
    by_call = spans["call"]
    duration_s = length_s.groupby(by_call).sum()
    silence_s = length_s.where(spans["speakers"] == 0, 0.0).groupby(by_call).sum()
    overtalk_s = length_s.where(spans["speakers"] >= 2, 0.0).groupby(by_call).sum()
    out = pd.DataFrame({
        "duration_s": duration_s,
        "silence_s": silence_s,
        "silence_share": silence_s / duration_s.where(duration_s > 0, np.nan),
        "overtalk_s": overtalk_s,
    })
    return out.rename_axis("call").reset_index()[columns]


ROUNDING_S = 1e-9
"""Seconds of a span in a bin below this are float rounding at a bin edge, not speech (a
real piece lasts at least a sample, 1/8000 s, at the analysis rate)."""


def split_into_bins(spans: pd.DataFrame, bin_s: float) -> pd.DataFrame:
    """Each span repeated once per grid bin it touches, with ``bin`` (0-based index of the
    ``bin_s``-second bin) and ``in_bin_s`` (seconds of the span inside that bin).

    Other columns are carried unchanged, so probabilities can be weighted by ``in_bin_s``.
    """
    if bin_s <= 0:
        raise ValueError(f"bin_s={bin_s} must be positive")
    if spans.empty:
        return spans.assign(bin=pd.Series(dtype=int), in_bin_s=pd.Series(dtype=float))
    start_s = spans["start_s"].to_numpy(dtype=float)
    end_s = spans["end_s"].to_numpy(dtype=float)
    first = np.floor(start_s / bin_s).astype(int)
    last = np.maximum(np.ceil(end_s / bin_s).astype(int) - 1, first)
    repeats = last - first + 1
    rows = np.repeat(np.arange(len(spans)), repeats)
    offsets = np.arange(len(rows)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    bins = first[rows] + offsets
    inside_s = (np.minimum(end_s[rows], (bins + 1) * bin_s)
                - np.maximum(start_s[rows], bins * bin_s)).clip(min=0.0)
    # floor(0.3 / 0.1) is 2: a span starting on a bin edge also touches the bin before by a
    # rounding error (~1e-17 s), which would count as speech there
    inside_s = np.where(inside_s < ROUNDING_S, 0.0, inside_s)
    return spans.iloc[rows].reset_index(drop=True).assign(bin=bins, in_bin_s=inside_s)
