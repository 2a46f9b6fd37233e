"""The analysis pipeline: a recording in, per-utterance emotions out. No database, no Celery.

    resolve_input -> load_recording -> per channel: speech_probabilities -> utterances
                  -> extract_features -> EmotionModel.predict_proba -> decide

Everything here is called the same way from the CLI (in-process) and from the Celery task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.audio import Recording, load_recording, resolve_input
from worker.constants import ANALYSIS_SAMPLE_RATE, EMOTIONS
from worker.emotion import EmotionModel, decide, load_model
from worker.errors import ModelError
from worker.features import extract_features
from worker.segmentation import SegmentationConfig, Span, utterances
from worker.settings import Settings
from worker.vad import VadConfig, speech_probabilities


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
    sample_rate: int
    """Sample rate of the source file (Hz); analysis always runs at ANALYSIS_SAMPLE_RATE."""
    content_sha256: str
    model_version: str
    segments: tuple[SegmentEmotion, ...]


def channel_spans(audio: np.ndarray, vad: VadConfig, segmentation: SegmentationConfig) -> list[Span]:
    """Utterance spans (seconds) of one channel at ANALYSIS_SAMPLE_RATE."""
    probabilities = speech_probabilities(audio, vad)
    duration_s = audio.size / ANALYSIS_SAMPLE_RATE
    return utterances(probabilities, vad.frame_ms / 1000.0, duration_s, segmentation)


def score_recording(recording: Recording, model: EmotionModel,
                    settings: Settings) -> tuple[SegmentEmotion, ...]:
    """Segment every channel of ``recording`` and score each utterance, in time order."""
    config = model.card.features
    if config.sample_rate != ANALYSIS_SAMPLE_RATE:
        raise ValueError(f"model expects {config.sample_rate} Hz features; the pipeline "
                         f"analyses at {ANALYSIS_SAMPLE_RATE} Hz")
    found: list[tuple[int, Span]] = []
    features = []
    for channel, audio in enumerate(recording.channels):
        for span in channel_spans(audio, settings.vad, settings.segmentation):
            lo = round(span.start_s * ANALYSIS_SAMPLE_RATE)
            hi = round(span.end_s * ANALYSIS_SAMPLE_RATE)
            found.append((channel, span))
            features.append(extract_features(audio[lo:hi], config))
    probabilities = model.predict_proba(features) if features else np.zeros((0, 0))
    segments = []
    for (channel, span), probs in zip(found, probabilities, strict=True):
        decision = decide(probs.tolist(), model.labels)
        segments.append(SegmentEmotion(
            channel=channel,
            role=settings.role_for_channel(channel, recording.n_channels),
            start_s=round(span.start_s, 3),
            end_s=round(span.end_s, 3),
            emotion=decision.label,
            probabilities={label: float(p) for label, p in zip(model.labels, probs, strict=True)},
            confidence=decision.confidence,
            model_version=model.version,
        ))
    segments.sort(key=lambda s: (s.start_s, s.channel))
    return tuple(segments)


def analyze_file(uri: str, settings: Settings) -> RecordingAnalysis:
    """Run the whole pipeline on one recording. Raises InputError subclasses for bad input."""
    path = resolve_input(uri, settings.input_roots)
    recording = load_recording(path, settings.max_duration_s, settings.max_file_bytes)
    model = load_model(settings.model_path, settings.onnx_threads)
    if sorted(model.labels) != sorted(EMOTIONS):
        raise ModelError(f"model {model.version} has labels {list(model.labels)}; the worker "
                         f"stores exactly {list(EMOTIONS)}")
    segments = score_recording(recording, model, settings)
    return RecordingAnalysis(
        path=path,
        duration_s=recording.duration_s,
        channels=recording.n_channels,
        sample_rate=recording.source_sample_rate,
        content_sha256=recording.sha256,
        model_version=model.version,
        segments=segments,
    )
