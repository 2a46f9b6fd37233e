"""Per-frame speech scores -> utterance spans: pure functions, no I/O, no model.

    utterances = split_long(pad(drop_short(merge_gaps(speech_regions(p >= threshold)))))

All times are seconds from the start of the channel. Defaults were chosen on the train
split with ``python -m training.vad_eval --tune`` and are reported on the test split in
docs/vad.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from worker.errors import ConfigError


@dataclass(frozen=True)
class Span:
    """One utterance: [start_s, end_s) in seconds from the start of the channel."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class SegmentationConfig:
    """Named thresholds of the decision chain (see module docstring for the order)."""

    threshold: float = 0.5
    """A frame is speech if its score >= this. 0.5 on the 3-frame average of worker.vad
    (majority vote); 0.3 / 0.5 / 0.7 gave the same best F1 on the tuning grids (+-0.001)."""

    min_silence_ms: int = 400
    """Gaps shorter than this are bridged (ms). 400: best of 150/200/300/400/600 on the
    tuning grids (F1 0.869 at 200 -> 0.873 at 400; 600 no better): pauses inside one
    sentence of the corpora clips stay inside one utterance."""

    min_speech_ms: int = 100
    """Regions shorter than this after bridging are dropped (ms). 100: best of
    60/100/150/200/300 (all within 0.002 F1); noise blips are mostly 1-5 frames."""

    pad_ms: int = 30
    """Each utterance is widened by this much on both sides (ms), clipped to the channel
    and to the middle of the gap to its neighbour. 30: best of 0/30/60/100/150/300 on the
    tuning grids (F1 0.872/0.873/0.869/0.864/0.861/0.825); it gives back soft onsets and
    decays WebRTC's mode 3 cuts, and more padding only adds silence to the utterance."""

    max_utterance_s: float = 8.0
    """Longer speech is split into equal windows no longer than this (s). 8: inside the
    6-10 s the emotion model handles well (not measured here: no long utterances in the
    corpora, whose clips are 1-6 s)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"SegmentationConfig.threshold={self.threshold!r}: use (0, 1]")
        for name in ("min_silence_ms", "min_speech_ms", "pad_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SegmentationConfig.{name}={getattr(self, name)!r}: "
                                  "must be >= 0")
        if not self.max_utterance_s > 0:
            raise ConfigError(f"SegmentationConfig.max_utterance_s={self.max_utterance_s!r}: "
                              "must be > 0")


def speech_regions(is_speech: Sequence[bool] | npt.NDArray[np.bool_], frame_s: float,
                   duration_s: float) -> list[Span]:
    """Runs of True frames as spans; frame i is [i * frame_s, (i + 1) * frame_s), ends
    clipped to ``duration_s`` (the last frame may be partial)."""
    flags = np.asarray(is_speech, dtype=np.bool_)
    if flags.ndim != 1:
        raise ValueError(f"expected one flag per frame (1-D), got shape {flags.shape}")
    if flags.size == 0:
        return []
    edges = np.diff(np.concatenate(([False], flags, [False])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    spans = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        start_s = min(a * frame_s, duration_s)
        end_s = min(b * frame_s, duration_s)
        if end_s > start_s:
            spans.append(Span(start_s, end_s))
    return spans


EDGE_TOLERANCE_S = 1e-9
"""Float slack for the length comparisons: span edges are frame indices times the frame
length (0.12 - 0.02 = 0.09999999999999999), so without it a run or gap of exactly the
threshold was kept or dropped depending on where in the call it sat."""


def merge_gaps(spans: Sequence[Span], min_silence_s: float) -> list[Span]:
    """Join neighbours whose gap is shorter than ``min_silence_s`` (sorted input)."""
    merged: list[Span] = []
    for span in spans:
        if merged and span.start_s - merged[-1].end_s < min_silence_s - EDGE_TOLERANCE_S:
            merged[-1] = Span(merged[-1].start_s, max(merged[-1].end_s, span.end_s))
        else:
            merged.append(span)
    return merged


def drop_short(spans: Sequence[Span], min_speech_s: float) -> list[Span]:
    """Drop spans shorter than ``min_speech_s``."""
    return [s for s in spans if s.duration_s >= min_speech_s - EDGE_TOLERANCE_S]


def pad(spans: Sequence[Span], pad_s: float, duration_s: float) -> list[Span]:
    """Widen each span by ``pad_s`` per side, clipped to [0, duration_s]; where padding
    would make neighbours overlap they meet in the middle of the original gap."""
    out: list[Span] = []
    for i, span in enumerate(spans):
        start_s = max(0.0, span.start_s - pad_s)
        end_s = min(duration_s, span.end_s + pad_s)
        if i > 0:
            start_s = max(start_s, (spans[i - 1].end_s + span.start_s) / 2.0)
        if i + 1 < len(spans):
            end_s = min(end_s, (span.end_s + spans[i + 1].start_s) / 2.0)
        out.append(Span(start_s, end_s))
    return out


def split_long(spans: Sequence[Span], max_utterance_s: float) -> list[Span]:
    """Split each span longer than ``max_utterance_s`` into the fewest equal windows
    that are all <= max_utterance_s (so no short tail is left over)."""
    out: list[Span] = []
    for span in spans:
        # a span of exactly k * max (up to float error) stays k windows, not k + 1
        n = max(1, math.ceil(span.duration_s / max_utterance_s - EDGE_TOLERANCE_S))
        step_s = span.duration_s / n
        for k in range(n):
            end_s = span.end_s if k == n - 1 else span.start_s + (k + 1) * step_s
            out.append(Span(span.start_s + k * step_s, end_s))
    return out


def utterances(probabilities: Sequence[float] | npt.NDArray[np.floating],
               frame_s: float, duration_s: float, config: SegmentationConfig) -> list[Span]:
    """Utterance spans of one channel from its per-frame speech scores.

    ``probabilities``: shape (n_frames,), frame i covering [i * frame_s, (i + 1) * frame_s);
    ``duration_s``: length of the channel (spans never pass it). Returns sorted,
    non-overlapping spans, each <= ``config.max_utterance_s``.
    """
    if not frame_s > 0:
        raise ValueError(f"frame_s={frame_s!r}: must be > 0")
    if duration_s < 0:
        raise ValueError(f"duration_s={duration_s!r}: must be >= 0")
    p = np.asarray(probabilities, dtype=np.float64)
    regions = speech_regions(p >= config.threshold, frame_s, duration_s)
    regions = merge_gaps(regions, config.min_silence_ms / 1000.0)
    regions = drop_short(regions, config.min_speech_ms / 1000.0)
    regions = pad(regions, config.pad_ms / 1000.0, duration_s)
    return split_long(regions, config.max_utterance_s)
