"""Per-call emotion timeline on a regular grid, and start-vs-end mood per party.

:func:`timeline` turns utterances (``call, role, start_s, end_s, p_<class>...``) into one row
per (call, party, bin) of ``bin_s`` seconds: how long the party spoke in the bin, its
probabilities averaged over that speech (weighted by seconds inside the bin), the dominant
class (``"silent"`` when the party did not speak) and its stress; plus, for the whole call,
the seconds of the bin in which nobody spoke (``silence_s``) and in which both parties
spoke at once (``overlap_s``).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from analytics.options import DEFAULT_BIN_S
from analytics.stress import mood_shift, stress_of
from analytics.talk import call_lengths_s, merged_speech, speaker_count_spans, split_into_bins
from worker.constants import EMOTIONS, PROB_COLUMNS

__all__ = ["DEFAULT_BIN_S", "SILENT", "TIMELINE_COLUMNS", "mood_shift", "timeline"]

SILENT: Final[str] = "silent"
"""``dominant`` of a bin in which the party did not speak."""


TIMELINE_COLUMNS: Final[tuple[str, ...]] = (
    "call", "role", "bin_start_s", "bin_end_s", "speech_s", "overlap_s", "silence_s",
    "dominant", "stress", *PROB_COLUMNS)


def _seconds_per_bin(spans: pd.DataFrame, keys: list[str], bin_s: float) -> pd.Series:
    """Seconds of ``spans`` inside each bin, indexed by ``(*keys, "bin")``."""
    pieces = split_into_bins(spans, bin_s)
    return pieces.groupby([*keys, "bin"])["in_bin_s"].sum()


def timeline(segments: pd.DataFrame, durations_s: pd.Series,
             bin_s: float = DEFAULT_BIN_S) -> pd.DataFrame:
    """Rows ``TIMELINE_COLUMNS``, one per (call, role present in the call, bin).

    ``durations_s``: call -> call length (s); bins cover ``[0, length)``, the last one may be
    shorter (``bin_end_s`` is the call end). ``p_*`` and ``stress`` are NaN in silent bins.
    """
    if bin_s <= 0:
        raise ValueError(f"bin_s={bin_s} must be positive")
    columns = list(TIMELINE_COLUMNS)
    if segments.empty:
        return pd.DataFrame(columns=columns)
    lengths_s = call_lengths_s(segments, durations_s)
    # rounded first: 2.1 s / 0.3 s is 7.000000000000001 in floats, and ceil made an 8th,
    # zero-length bin
    n_bins = np.maximum(np.ceil((lengths_s / bin_s).round(9)).astype(int), 1)
    # positional repeat: a frame built by concatenation may repeat row labels
    parties = segments[["call", "role"]].drop_duplicates(ignore_index=True)
    grid = parties.assign(n=parties["call"].map(n_bins))
    grid = grid.iloc[np.repeat(np.arange(len(grid)), grid["n"].to_numpy())].reset_index(
        drop=True).assign(
        bin=lambda f: f.groupby(["call", "role"]).cumcount()).drop(columns="n")
    index = pd.MultiIndex.from_frame(grid[["call", "role", "bin"]])

    speech_s = _seconds_per_bin(merged_speech(segments), ["call", "role"], bin_s)
    pieces = split_into_bins(segments[["call", "role", "start_s", "end_s", *PROB_COLUMNS]], bin_s)
    weighted = pieces.assign(**{c: pieces[c] * pieces["in_bin_s"] for c in PROB_COLUMNS})
    sums = weighted.groupby(["call", "role", "bin"])[[*PROB_COLUMNS, "in_bin_s"]].sum()
    weight = sums["in_bin_s"].where(sums["in_bin_s"] > 0, np.nan)
    probabilities = sums[list(PROB_COLUMNS)].div(weight, axis=0).reindex(index)

    counted = speaker_count_spans(segments, durations_s)
    overlap_s = _seconds_per_bin(counted[counted["speakers"] >= 2], ["call"], bin_s)
    silence_s = _seconds_per_bin(counted[counted["speakers"] == 0], ["call"], bin_s)
    call_bins = pd.MultiIndex.from_frame(grid[["call", "bin"]])

    spoke = probabilities[PROB_COLUMNS[0]].notna().to_numpy()
    dominant = np.where(spoke, probabilities.fillna(-1.0).to_numpy().argmax(axis=1), -1)
    bin_start_s = grid["bin"].to_numpy() * bin_s
    out = pd.DataFrame({
        "call": grid["call"].to_numpy(),
        "role": grid["role"].to_numpy(),
        "bin_start_s": bin_start_s,
        "bin_end_s": np.minimum(bin_start_s + bin_s, grid["call"].map(lengths_s).to_numpy()),
        "speech_s": speech_s.reindex(index).fillna(0.0).to_numpy(),
        "overlap_s": overlap_s.reindex(call_bins).fillna(0.0).to_numpy(),
        "silence_s": silence_s.reindex(call_bins).fillna(0.0).to_numpy(),
        "dominant": np.where(spoke, np.asarray(EMOTIONS, dtype=object)[dominant], SILENT),
        "stress": stress_of(probabilities).to_numpy(),
        **{c: probabilities[c].to_numpy() for c in PROB_COLUMNS},
    })
    return out.sort_values(["call", "role", "bin_start_s"], ignore_index=True)[columns]
