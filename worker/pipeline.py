"""The analysis pipeline: a recording in, per-utterance emotions out. No database, no Celery.

    resolve_input -> load_recording -> per channel: speech_probabilities -> utterances
                  -> extract_features -> EmotionModel.predict_proba -> decide

Recordings longer than ``STREAMING_MIN_DURATION_S`` go through :mod:`worker.stream`
instead of ``load_recording``: the same steps in two streamed passes over the file, with
the same result in bounded memory (docs/streaming.md).

Everything here is called the same way from the CLI (in-process) and from the Celery task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worker.audio import (
    Recording,
    StreamInfo,
    load_recording,
    open_stream,
    recording_sha256,
    resolve_input,
    same_signal,
)
from worker.constants import ANALYSIS_SAMPLE_RATE, EMOTIONS
from worker.crosstalk import without_crosstalk
from worker.emotion import EmotionModel, decide, load_model
from worker.errors import ModelError
from worker.features import extract_features
from worker.segmentation import SegmentationConfig, Span, utterances
from worker.settings import Settings
from worker.stream import should_stream, span_samples, streamed_spans, streamed_utterances
from worker.vad import VadConfig, channel_activity, speech_probabilities


@dataclass(frozen=True)
class SegmentEmotion:
    """One utterance of one party and the model's view of it."""

    channel: int
    role: str
    start_s: float
    end_s: float
    emotion: str
    probabilities: Mapping[str, float]
    confidence: float
    model_version: str


@dataclass(frozen=True)
class RecordingAnalysis:
    """Everything the store needs to record one processed recording."""

    path: Path
    duration_s: float
    channels: int
    source_sample_rate: int
    """Sample rate of the source file (Hz; the calls table's ``sample_rate``); analysis always
    runs at ANALYSIS_SAMPLE_RATE."""
    content_sha256: str
    model_version: str
    segments: tuple[SegmentEmotion, ...]


def channel_spans(audio: np.ndarray, vad: VadConfig, segmentation: SegmentationConfig) -> list[Span]:
    """Utterance spans (seconds) of one channel at ANALYSIS_SAMPLE_RATE."""
    probabilities = speech_probabilities(audio, vad)
    duration_s = audio.size / ANALYSIS_SAMPLE_RATE
    return utterances(probabilities, vad.frame_ms / 1000.0, duration_s, segmentation)


@dataclass(frozen=True)
class SpeechCut:
    """Cut a labelled clip to the speech the worker would analyse in it (training, evaluation).

    The worker never scores silence: it scores the utterances its VAD cuts. Corpus clips
    carry very different silence around the speech (median non-speech share, ``python -m
    training speech``: RAVDESS 50 %, TESS 12 %, EmoDB 4 %, URDU 0 %), so a model trained and
    scored on whole clips learns the silence as a corpus cue and is judged on input it never
    gets in service: emotion-v1.1.0 (trained on whole clips) scored 58.3 % UA on whole
    RAVDESS test clips and 47.4 % on the same clips cut like this.
    """

    vad: VadConfig = field(default_factory=VadConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)

    @classmethod
    def of(cls, settings: Settings) -> SpeechCut:
        """The cut of a worker running with ``settings`` (its VAD and segmentation)."""
        return cls(settings.vad, settings.segmentation)

    def extent(self, audio: np.ndarray) -> tuple[int, int] | None:
        """[start, end) samples from the first utterance's start to the last one's end
        (8 kHz mono), or None when the VAD finds no speech."""
        spans = channel_spans(audio, self.vad, self.segmentation)
        if not spans:
            return None
        return (round(spans[0].start_s * ANALYSIS_SAMPLE_RATE),
                round(spans[-1].end_s * ANALYSIS_SAMPLE_RATE))

    def apply(self, audio: np.ndarray) -> np.ndarray:
        """``audio`` from its first to its last utterance (pauses inside kept: a clip has one
        label); the whole clip when no speech is found, so no labelled clip is lost."""
        extent = self.extent(audio)
        return audio if extent is None else audio[extent[0]:extent[1]]


def _check_feature_rate(model: EmotionModel) -> None:
    if model.card.features.sample_rate != ANALYSIS_SAMPLE_RATE:
        raise ModelError(f"model {model.version} expects {model.card.features.sample_rate} Hz "
                         f"features; the pipeline analyses at {ANALYSIS_SAMPLE_RATE} Hz")


def _segments(found: Sequence[tuple[int, Span]], probabilities: np.ndarray, model: EmotionModel,
              settings: Settings, n_channels: int,
              duration_s: float) -> tuple[SegmentEmotion, ...]:
    """SegmentEmotion per (channel, span) and its row of class probabilities, in time order.

    Times are rounded to the millisecond, and an end is kept within ``duration_s`` (the
    source's length): resampling to the analysis rate rounds the sample count up, so speech
    that runs to the end of a 44.1 kHz file ended up to a millisecond after the call did.
    """
    # rounded first: 8008 samples at 8 kHz are 1.0009999999999999 s, one ms short floored
    last_ms_s = math.floor(round(duration_s * 1000.0, 6)) / 1000.0
    segments = []
    for (channel, span), probs in zip(found, probabilities, strict=True):
        decision = decide(probs.tolist(), model.labels)
        segments.append(SegmentEmotion(
            channel=channel,
            role=settings.role_for_channel(channel, n_channels),
            start_s=round(span.start_s, 3),
            end_s=min(round(span.end_s, 3), last_ms_s),
            emotion=decision.label,
            probabilities={label: float(p) for label, p in zip(model.labels, probs, strict=True)},
            confidence=decision.confidence,
            model_version=model.stamp,
        ))
    segments.sort(key=lambda s: (s.start_s, s.channel))
    return tuple(segments)


def score_recording(recording: Recording, model: EmotionModel,
                    settings: Settings) -> tuple[SegmentEmotion, ...]:
    """Segment every channel of ``recording`` and score each utterance, in time order."""
    _check_feature_rate(model)
    config = model.card.features
    found: list[tuple[int, Span]] = []
    features = []
    # one signal written to both channels: analysed once, as the one party of a mono call
    channels = recording.channels
    if len(channels) == 2 and same_signal(channels[0], channels[1]):
        channels = channels[:1]
    activity = [channel_activity(audio, settings.vad) for audio in channels]
    spans = without_crosstalk(
        [utterances(a.probabilities, settings.vad.frame_s, audio.size / ANALYSIS_SAMPLE_RATE,
                    settings.segmentation) for a, audio in zip(activity, channels, strict=True)],
        [a.levels_db for a in activity], settings.vad.frame_s, settings.crosstalk)
    for channel, (audio, kept) in enumerate(zip(channels, spans, strict=True)):
        for span in kept:
            lo, hi = span_samples(span)   # as the streamed path cuts it
            found.append((channel, span))
            features.append(extract_features(audio[lo:hi], config))
    probabilities = model.predict_proba(features) if features else np.zeros((0, 0))
    return _segments(found, probabilities, model, settings, len(channels),
                     recording.duration_s)


@dataclass(frozen=True)
class StreamedScores:
    """What :func:`score_streamed` found: the segments and the decoded length."""

    segments: tuple[SegmentEmotion, ...]
    source_frames: int
    """Frames decoded at the source rate (duration = source_frames / source rate)."""


def score_streamed(stream: StreamInfo, model: EmotionModel, settings: Settings) -> StreamedScores:
    """:func:`score_recording` for a recording decoded in two streamed passes, never whole.

    Same segments, probabilities and labels as ``score_recording(load_recording(...))``
    (the samples, VAD decisions and utterance cuts are identical; tests/worker/test_stream.py).
    Each utterance is scored as soon as it is cut, so features are never accumulated either.
    """
    _check_feature_rate(model)
    config = model.card.features
    found = streamed_spans(stream, settings.max_duration_s, settings.vad, settings.segmentation,
                           settings.crosstalk)
    scored: list[tuple[int, Span]] = []
    rows = []
    for channel, span, samples in streamed_utterances(stream, settings.max_duration_s, found):
        scored.append((channel, span))
        # one utterance at a time: predict_proba scores item by item, so this is the same
        rows.append(model.predict_proba([extract_features(samples, config)])[0])
    probabilities = np.stack(rows) if rows else np.zeros((0, 0))
    return StreamedScores(
        segments=_segments(scored, probabilities, model, settings,
                           1 if found.dual_mono else stream.n_channels,
                           found.source_frames / float(stream.source_sample_rate)),
        source_frames=found.source_frames)


def _load_checked_model(settings: Settings) -> EmotionModel:
    model = load_model(settings.model_path, settings.onnx_threads)
    if sorted(model.labels) != sorted(EMOTIONS):
        raise ModelError(f"model {model.version} has labels {list(model.labels)}; the worker "
                         f"stores exactly {list(EMOTIONS)}")
    _check_feature_rate(model)
    return model


def analyze_file(uri: str, settings: Settings, streaming: bool | None = None) -> RecordingAnalysis:
    """Run the whole pipeline on one recording. Raises InputError subclasses for bad input.

    ``streaming``: None picks by length (:func:`worker.stream.should_stream`); True or False
    forces the streamed or the whole-file path (tests and benchmarks compare the two).
    """
    path = resolve_input(uri, settings.input_roots)
    model = _load_checked_model(settings)  # a model that cannot serve fails before decoding
    stream = open_stream(path, settings.max_duration_s, settings.max_file_bytes)
    if streaming is None:
        streaming = should_stream(stream)
    if streaming:
        scores = score_streamed(stream, model, settings)
        return RecordingAnalysis(
            path=path,
            duration_s=scores.source_frames / float(stream.source_sample_rate),
            channels=stream.n_channels,
            source_sample_rate=stream.source_sample_rate,
            content_sha256=recording_sha256(path),
            model_version=model.stamp,
            segments=scores.segments,
        )
    recording = load_recording(path, settings.max_duration_s, settings.max_file_bytes)
    segments = score_recording(recording, model, settings)
    return RecordingAnalysis(
        path=path,
        duration_s=recording.duration_s,
        channels=recording.n_channels,
        source_sample_rate=recording.source_sample_rate,
        content_sha256=recording.sha256,
        model_version=model.stamp,
        segments=segments,
    )
