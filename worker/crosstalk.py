"""Crosstalk gate: drop one party's utterances that are only the other party's voice.

A stereo call carries each party on its own channel, but the agent's voice leaks onto the
customer's channel (headset bleed, line echo) 30-50 dB down. Over digital silence or a
quiet line the VAD's level front end lifts that leak into speech (docs/vad.md), and each
leaked stretch became a customer utterance scored on the agent's voice. A leak is the other
channel's signal, delayed and filtered: its frame-level envelope follows the other
channel's, at a lag of 0-300 ms, far under it. A party talking over the other (overtalk)
has an envelope of its own. So an utterance is dropped when both hold, at the lag that
matches best:

- its frame levels (dB) correlate with the other channel's at ``min_correlation`` or more;
- the other channel is ``min_gap_db`` or more louder over its loud frames (median).

Pure functions over frame levels; :func:`worker.vad.VadStream` measures the levels as it
decides, so the whole-file and streamed paths gate the same spans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from worker.errors import ConfigError
from worker.segmentation import Span
from worker.vad import Levels


@dataclass(frozen=True)
class CrosstalkConfig:
    """Thresholds of the gate (``CALLMOOD_CROSSTALK_<FIELD>``).

    Chosen on the train split with ``python -m training.crosstalk_eval --split train --grid``
    (an agent channel and a customer channel holding the agent's band-passed leak at -30,
    -40 and -50 dB with delays of 0, 40 and 150 ms, over digital silence or -70 dBFS noise,
    with no customer speech or the customer's own at 0 and -22 dB; docs/vad.md#crosstalk):
    of the correlation / gap pairs 0.8, 0.85, 0.9 x 15, 20, 25 dB, 0.85 / 25 dB is the
    one that dropped none of the 1,650 utterances carried by the customer's own speech and
    kept the fewest leaks (115 of 862; 0.8 / 15 dB kept 67 but dropped 9 of the customer's).
    On the test split it keeps 48 of 1,091 leaks and all 1,422 of the customer's own.
    """

    enabled: bool = True
    """False keeps every utterance (the behaviour before 2026-12-06)."""
    min_correlation: float = 0.85
    """Pearson correlation of the two channels' frame levels (dB) over the utterance, at the
    best lag. Train split: leaks onto a channel with no speech of its own correlate at 0.78 or
    more (95 % of them), the customer's own utterances at 0.69 or less (95 %)."""
    min_gap_db: float = 25.0
    """How much louder (dB, median over the utterance's loud frames) the other channel must
    be. Leaks measured 30-52 dB down (5th-95th percentile, train split); a quiet customer
    talking over a loud agent is up to ~20-30 dB down, and a few of those correlated at
    0.8-0.9 by chance."""
    max_lag_ms: int = 300
    """Longest delay of the leak behind its source that is searched (line echo: tens to a
    few hundred ms)."""

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_correlation <= 1.0:
            raise ConfigError(f"CrosstalkConfig.min_correlation={self.min_correlation!r}: "
                              "use -1 to 1")
        # NaN or infinity would pass a plain < 0 test and keep every leak (a review)
        if not (math.isfinite(self.min_gap_db) and self.min_gap_db >= 0.0):
            raise ConfigError(f"CrosstalkConfig.min_gap_db={self.min_gap_db!r}: use a finite 0 dB or more")
        if not 0 <= self.max_lag_ms <= 2000:
            raise ConfigError(f"CrosstalkConfig.max_lag_ms={self.max_lag_ms!r}: use 0 to 2000")


# Frames within this many dB of the utterance's loudest stand for its speech (the gap is
# their median); levels are floored this far under each stretch's peak before correlating,
# so digital silence (-120 dB) does not dominate the correlation.
_LOUD_RANGE_DB = 20.0
_FLOOR_RANGE_DB = 50.0
# Span edges within this many frames of a frame boundary are on it (float noise only: a
# half-frame edge, 30 ms of padding on 20 ms frames, still takes the partly covered frame).
_EDGE_FRAMES = 1e-6


@dataclass(frozen=True)
class Evidence:
    """How much an utterance looks like the other channel's leak."""

    correlation: float
    """Best Pearson correlation of the frame levels over the lags searched."""
    gap_db: float
    """Median (other - this) over this utterance's loud frames, at that lag (dB)."""
    lag_ms: int
    """The lag of the best correlation (this channel behind the other)."""


def _frame_range(span: Span, frame_s: float, n_frames: int) -> tuple[int, int]:
    """The frames [first, last) ``span`` covers, partly covered ones included. Span edges are
    frame counts times the frame length in floats (0.36 - 0.03 = 0.32999..., frame 32.99...),
    so a hair's tolerance keeps an edge on a frame boundary on that frame: plain int() and
    ceil() put a third of the edges one frame out (a review)."""
    first = max(int(np.floor(span.start_s / frame_s + _EDGE_FRAMES)), 0)
    last = min(int(np.ceil(span.end_s / frame_s - _EDGE_FRAMES)), n_frames)
    return first, last


def _correlations(this_centred: npt.NDArray[np.float64], others: npt.NDArray[np.float64]
                  ) -> npt.NDArray[np.float64]:
    """Pearson correlation of centred floored levels (n,) with each row of ``others``
    (rows, n), each row floored under its own peak first; 0 where either is constant."""
    floored = np.maximum(others, others.max(axis=1, keepdims=True) - _FLOOR_RANGE_DB)
    centred = floored - floored.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=1) * (this_centred**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0.0, centred @ this_centred / norms, 0.0)


def evidence(span: Span, this_db: Levels, other_db: Levels, frame_s: float,
             max_lag_ms: int) -> Evidence:
    """Compare ``span`` of one channel with the other channel at lags 0..max_lag_ms.

    ``this_db``, ``other_db``: :func:`worker.vad.frame_levels_db` of the two channels, shape (n_frames,).
    """
    first, last = _frame_range(span, frame_s, min(this_db.size, other_db.size))
    this = this_db[first:last].astype(np.float64)
    if this.size < 2:
        return Evidence(0.0, 0.0, 0)
    loud = this >= this.max() - _LOUD_RANGE_DB
    this_floored = np.maximum(this, this.max() - _FLOOR_RANGE_DB)
    if this_floored.std() == 0.0:
        return Evidence(0.0, 0.0, 0)  # a constant stretch follows nothing
    max_lag = round(max_lag_ms / 1000.0 / frame_s)
    n_lags = min(max_lag, first) + 1
    # row k: the other channel k frames earlier (lag k), all lags at once
    window = other_db[first - n_lags + 1:last].astype(np.float64)
    others = np.lib.stride_tricks.sliding_window_view(window, this.size)[::-1]
    correlations = _correlations(this_floored - this_floored.mean(), others)
    lag = int(np.argmax(correlations))
    best = Evidence(float(correlations[lag]), float(np.median((others[lag] - this)[loud])),
                    round(lag * frame_s * 1000.0))
    # An utterance within max_lag_ms of the call's start: at lags reaching before frame 0 the
    # other channel has no frame for its first (lag - first) frames, so only the frames that
    # overlap are compared, while they are at least half the utterance. Without these lags an
    # agent talking from the first instant leaked onto the customer channel whole (a review).
    for k in range(n_lags, max_lag + 1):
        skip = k - first
        if 2 * (this.size - skip) < this.size:
            break
        part = this_floored[skip:]
        other = other_db[0:last - k].astype(np.float64)
        correlation = float(_correlations(part - part.mean(), other[None, :])[0])
        if correlation > best.correlation and loud[skip:].any():
            best = Evidence(correlation, float(np.median((other - this[skip:])[loud[skip:]])),
                            round(k * frame_s * 1000.0))
    return best


def is_leak(found: Evidence, config: CrosstalkConfig) -> bool:
    """The decision: correlated with the other channel and far under it."""
    return found.correlation >= config.min_correlation and found.gap_db >= config.min_gap_db


def without_crosstalk(spans: Sequence[Sequence[Span]], levels_db: Sequence[Levels],
                      frame_s: float, config: CrosstalkConfig
                      ) -> tuple[tuple[Span, ...], ...]:
    """Each channel's spans less those that are the other channel's leak.

    Only a two-channel call is gated (each channel against the other); any other count, or
    ``config.enabled`` False, returns the spans as they are.
    """
    kept = tuple(tuple(channel) for channel in spans)
    if not config.enabled or len(kept) != 2 or len(levels_db) != 2:
        return kept
    return tuple(
        tuple(span for span in kept[channel]
              if not is_leak(evidence(span, levels_db[channel], levels_db[1 - channel],
                                      frame_s, config.max_lag_ms), config))
        for channel in (0, 1))
