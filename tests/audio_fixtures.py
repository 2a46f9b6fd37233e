"""Fabricated call recordings for tests, built from real corpus clips (never committed),
and hand-made analysis results for the store and task tests."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from worker.constants import EMOTIONS

if TYPE_CHECKING:
    from worker.pipeline import RecordingAnalysis, SegmentEmotion

Audio = npt.NDArray[np.float32]


def pick_clips(corpora_dir: Path, n: int, corpus: str = "ravdess", split: str = "test",
               emotions: Sequence[str] = ("angry", "happy", "neutral", "sad")) -> list[Path]:
    """``n`` clips from the corpus manifest, deterministic, cycling through ``emotions``."""
    manifest = corpora_dir / corpus / "manifest.csv"
    with manifest.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split and r["emotion"] in emotions]
    rows.sort(key=lambda r: r["path"])
    by_emotion = {e: [r for r in rows if r["emotion"] == e] for e in emotions}
    picked: list[Path] = []
    i = 0
    while len(picked) < n:
        pool = by_emotion[emotions[i % len(emotions)]]
        picked.append(corpora_dir / corpus / pool[(i // len(emotions)) % len(pool)]["path"])
        i += 1
    return picked


def load_clip(path: Path, sample_rate: int) -> Audio:
    """A corpus clip as mono float32 at ``sample_rate``."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate)
    return np.asarray(mono, dtype=np.float32)


def make_call_wav(path: Path, clips_per_channel: Sequence[Sequence[Path]], sample_rate: int = 8000,
                  subtype: str = "ULAW", gap_s: float = 0.7, noise_rms: float = 1e-3,
                  seed: int = 0) -> float:
    """Write a call recording: channel c holds its clips, taking turns with the other channels.

    Turns alternate channel 0, 1, 0, 1, ... with ``gap_s`` of near-silence between them, so
    each party is silent while the other speaks (as on a stereo call recording). The
    container follows the suffix (.wav, .flac). Returns the duration in seconds.
    """
    rng = np.random.default_rng(seed)
    n_channels = len(clips_per_channel)
    turns: list[tuple[int, Audio]] = []
    for k in range(max(len(c) for c in clips_per_channel)):
        for channel, clips in enumerate(clips_per_channel):
            if k < len(clips):
                turns.append((channel, load_clip(clips[k], sample_rate)))
    gap = int(gap_s * sample_rate)
    total = gap + sum(a.size + gap for _, a in turns)
    out = (rng.standard_normal((total, n_channels)) * noise_rms).astype(np.float32)
    at = gap
    for channel, audio in turns:
        out[at:at + audio.size, channel] += audio
        at += audio.size + gap
    np.clip(out, -1.0, 1.0, out=out)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), out, sample_rate, subtype=subtype)  # container from the suffix
    return total / sample_rate


def make_corrupt_file(path: Path) -> None:
    """A file named like a WAV whose header promises audio that is not there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 40)


# --------------------------------------------------------------------------- fake results

def fake_segment(start_s: float, channel: int = 0, emotion: str = "neutral",
                 model_version: str = "test-v1") -> SegmentEmotion:
    """A scored utterance as the pipeline would return it."""
    from worker.pipeline import SegmentEmotion

    rest = 0.4 / (len(EMOTIONS) - 1)
    probabilities = {label: (0.6 if label == emotion else rest) for label in EMOTIONS}
    return SegmentEmotion(channel=channel, role=("agent", "customer")[channel % 2],
                          start_s=start_s, end_s=start_s + 1.5, emotion=emotion,
                          probabilities=probabilities, confidence=0.6,
                          model_version=model_version)


def fake_analysis(n_segments: int = 3, model_version: str = "test-v1",
                  sha256: str = "ab" * 32) -> RecordingAnalysis:
    """A RecordingAnalysis with ``n_segments`` alternating-party segments."""
    from worker.pipeline import RecordingAnalysis

    emotions = ("angry", "happy", "sad", "neutral")
    segments = tuple(fake_segment(2.0 * i, i % 2, emotions[i % 4], model_version)
                     for i in range(n_segments))
    return RecordingAnalysis(path=Path("/calls/x.wav"), duration_s=2.0 * n_segments + 1,
                             channels=2, source_sample_rate=8000, content_sha256=sha256,
                             model_version=model_version, segments=segments)
