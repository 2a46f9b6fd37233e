"""Bounded-memory analysis of long recordings: two streamed passes over the file.

    pass 1: stream_blocks -> per channel VadStream -> decisions -> smooth -> utterances
    pass 2: stream_blocks again -> UtteranceCutter -> (channel, span, samples) per utterance

Pass 1 keeps one bool and one float32 level per 10 ms frame and channel (2 h stereo:
7.2 MB); segmentation and the crosstalk gate (:mod:`worker.crosstalk`) then run unchanged
on the whole-channel scores and levels, because its decisions are not local (gaps are
bridged and long speech split into equal windows over the whole region). Pass 2 decodes the
file a second time and hands each utterance's samples out as soon as its end has been
decoded, so only the utterance being cut (<= ``max_utterance_s``) and one block are held.

Decoding twice rather than seeking to each utterance: the second pass yields the very
samples the first pass and :func:`worker.audio.load_recording` see (one soxr stream per
file, no restart at a seek point, and exact positions in compressed formats whose seeking
is approximate), so a streamed run gives the same segments and labels as a whole-file run,
bit for bit. Its cost is a second decode, small next to VAD and the model
(docs/streaming.md has the figures).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from worker.audio import (
    ChannelPairEnergy,
    StreamInfo,
    check_decode_complete,
    stream_blocks,
)
from worker.constants import ANALYSIS_SAMPLE_RATE
from worker.crosstalk import CrosstalkConfig, without_crosstalk
from worker.errors import AudioDecodeError
from worker.segmentation import SegmentationConfig, Span, utterances
from worker.vad import VadConfig, VadStream, smooth

Audio = npt.NDArray[np.float32]

STREAMING_MIN_DURATION_S: Final[float] = 600.0
"""Recordings longer than this (s, from the header) are analysed in two streamed passes;
shorter ones are decoded whole. 10 min: below it the whole-file path costs ~75 MB at
8 kHz stereo (up to ~370 MB at 48 kHz: the decoded source, a channel's copy for the
resampler and the 8 kHz channels; docs/streaming.md) and
decodes the file once; above it,
its ~440 MB per hour soon passes the pool's per-child memory limit. Both paths give
identical segments (tests/worker/test_stream.py), so this only trades a second decode
(docs/streaming.md: 0-10 % more CPU at 8 kHz, ~20 % at 44.1 kHz) for memory."""


WHOLE_DECODE_MAX_BYTES: Final[int] = int(STREAMING_MIN_DURATION_S) * 48_000 * 2 * 4
"""Largest decoded source (float32 frames x channels, bytes) the whole-file path takes on:
10 min of 48 kHz stereo, ~230 MB, the most the figures above allow it. The header's
duration alone let a short recording at a high rate through whole (10 min of 384 kHz stereo
decodes to 1.8 GB, and the checks on it copy that), past the pool's per-child limit."""


def should_stream(stream: StreamInfo) -> bool:
    """True when ``stream`` is to be analysed in streamed passes: possibly longer than
    STREAMING_MIN_DURATION_S or decoding to more than WHOLE_DECODE_MAX_BYTES at its own rate
    (by :attr:`StreamInfo.most_frames`: an MP3's header length is only an estimate, so its
    size bounds it), or of unknown length (the whole decode could not be bounded)."""
    frames = stream.most_frames
    decoded_bytes = frames * stream.n_channels * np.dtype(np.float32).itemsize
    return (frames == 0 or frames / stream.source_sample_rate > STREAMING_MIN_DURATION_S
            or decoded_bytes > WHOLE_DECODE_MAX_BYTES)


@dataclass(frozen=True)
class StreamedSpans:
    """Pass 1's result: the utterances of every channel and the decoded length."""

    spans: tuple[tuple[Span, ...], ...]
    """Per channel, sorted utterance spans (s), as :func:`worker.pipeline.channel_spans`."""
    n_samples: int
    """Samples per channel at ANALYSIS_SAMPLE_RATE."""
    source_frames: int
    """Frames decoded from the file at its own rate."""
    dual_mono: bool = False
    """Two channels that carry one signal over the whole recording
    (:class:`worker.audio.ChannelPairEnergy`, summed block by block, the rule the whole-file
    path applies): the second's spans are left out, and the file is analysed as mono."""


def streamed_spans(stream: StreamInfo, max_duration_s: float, vad: VadConfig,
                   segmentation: SegmentationConfig,
                   crosstalk: CrosstalkConfig | None = None) -> StreamedSpans:
    """Pass 1: utterance spans of every channel of ``stream``, decoding it block by block.

    Equal to :func:`worker.pipeline.channel_spans` on each channel of the whole decoded
    file: the samples are identical (see :func:`worker.audio.stream_blocks`) and so are the
    VAD decisions and levels (:class:`worker.vad.VadStream`), and ``crosstalk`` (None: no
gate) drops the same spans. Memory: one block plus 5 bytes per frame and channel.
    """
    detectors = [VadStream(vad) for _ in range(stream.n_channels)]
    source_frames = 0
    pair = ChannelPairEnergy()
    for block in stream_blocks(stream, max_duration_s):
        for channel, detector in enumerate(detectors):
            detector.push(block.samples[:, channel])
        if stream.n_channels == 2:
            pair = pair + ChannelPairEnergy.of(block.samples[:, 0], block.samples[:, 1])
        source_frames = block.source_frames
    dual_mono = stream.n_channels == 2 and pair.same_signal
    # once per call: the second pass must decode these same frames (or fails, changed while
    # read), so walking the MP3's frames again there would only repeat this
    check_decode_complete(stream.path, stream.format, stream.header_frames, source_frames,
                          stream.source_sample_rate)
    n_samples = detectors[0].n_samples
    duration_s = n_samples / ANALYSIS_SAMPLE_RATE
    spans = tuple(
        tuple(utterances(smooth(detector.finish(), vad.smoothing_frames), vad.frame_ms / 1000.0,
                         duration_s, segmentation)) if not (dual_mono and channel == 1) else ()
        for channel, detector in enumerate(detectors))
    if crosstalk is not None and not dual_mono:
        spans = without_crosstalk(spans, [d.levels_db() for d in detectors], vad.frame_s,
                                  crosstalk)
    return StreamedSpans(spans=spans, n_samples=n_samples, source_frames=source_frames,
                         dual_mono=dual_mono)


def span_samples(span: Span) -> tuple[int, int]:
    """[lo, hi) sample indices at ANALYSIS_SAMPLE_RATE of ``span``, rounded as the
    whole-file path slices them."""
    return round(span.start_s * ANALYSIS_SAMPLE_RATE), round(span.end_s * ANALYSIS_SAMPLE_RATE)


class UtteranceCutter:
    """Cuts the samples of given spans out of one channel pushed in pieces.

    Keeps only the samples from the start of the next span not yet handed out: at most
    one span (<= max_utterance_s) plus one pushed piece.
    """

    def __init__(self, spans: Sequence[Span]) -> None:
        self._todo = deque(sorted(spans, key=span_samples))
        self._buffer: Audio = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # sample index of self._buffer[0]
        self._end = 0  # samples pushed so far

    def push(self, samples: Audio) -> list[tuple[Span, Audio]]:
        """Append mono samples, shape (n,); return the spans whose end is now decoded."""
        x = np.asarray(samples, dtype=np.float32)
        self._end += x.size
        keep_from = span_samples(self._todo[0])[0] if self._todo else self._end
        if self._buffer_start + self._buffer.size + x.size <= keep_from:
            # silence before the next span: nothing to keep
            self._buffer = np.zeros(0, dtype=np.float32)
            self._buffer_start = self._end
            return []
        self._buffer = np.concatenate([self._buffer, x])
        return self._ready(final=False)

    def finish(self) -> list[tuple[Span, Audio]]:
        """The spans left, cut off at the end of the channel (as slicing does)."""
        return self._ready(final=True)

    def _ready(self, final: bool) -> list[tuple[Span, Audio]]:
        out = []
        while self._todo and (final or span_samples(self._todo[0])[1] <= self._end):
            span = self._todo.popleft()
            lo, hi = span_samples(span)
            lo, hi = max(lo, self._buffer_start), min(hi, self._end)
            out.append((span, self._buffer[lo - self._buffer_start:max(lo, hi) - self._buffer_start]
                        .copy()))
        keep_from = span_samples(self._todo[0])[0] if self._todo else self._end
        drop = min(max(0, keep_from - self._buffer_start), self._buffer.size)
        if drop:
            # a copy, so the dropped head is freed rather than kept alive by a view
            self._buffer = self._buffer[drop:].copy()
            self._buffer_start += drop
        return out


def streamed_utterances(stream: StreamInfo, max_duration_s: float,
                        found: StreamedSpans) -> Iterator[tuple[int, Span, Audio]]:
    """Pass 2: (channel, span, samples at ANALYSIS_SAMPLE_RATE) of every span in ``found``,
    each as soon as its end has been decoded (so in order of end, not of start).

    The samples equal ``channel_audio[lo:hi]`` of the whole decoded channel. Raises
    AudioDecodeError if the file no longer decodes to the length pass 1 saw (changed or
    replaced between the passes).
    """
    cutters = [UtteranceCutter(spans) for spans in found.spans]
    n_samples = 0
    for block in stream_blocks(stream, max_duration_s):
        n_samples += block.samples.shape[0]
        for channel, cutter in enumerate(cutters):
            for span, samples in cutter.push(block.samples[:, channel]):
                yield channel, span, samples
    if n_samples != found.n_samples:
        raise AudioDecodeError(f"{stream.path.name} decoded to {n_samples} samples on the second "
                               f"pass and {found.n_samples} on the first: changed while read?")
    for channel, cutter in enumerate(cutters):
        for span, samples in cutter.finish():
            yield channel, span, samples
