"""Decoding labelled clips: each call once, then the spans its manifest labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import training.clips
from training.clips import SPAN_END_TOLERANCE_S, cut_span, load_clips
from training.dataset import ClipSource
from worker.audio import load_mono
from worker.errors import ConfigError


def test_a_span_is_cut_by_its_seconds_and_may_end_a_little_past_the_file() -> None:
    audio = np.arange(100, dtype=np.float32)                   # 10 s at 10 Hz
    assert cut_span(audio, 10, ClipSource("a.wav")) is audio   # no span: the whole file
    assert cut_span(audio, 10, ClipSource("a.wav", 1, 2.0, 4.5)).tolist() == list(range(20, 45))
    # a labeller's rounding past the end is cut at the end
    assert cut_span(audio, 10, ClipSource("a.wav", 1, 9.0, 10.0 + SPAN_END_TOLERANCE_S)
                    ).tolist() == list(range(90, 100))
    span = cut_span(audio, 10, ClipSource("a.wav", 1, 2.0, 4.5))
    span[0] = -1.0
    assert audio[20] == 20.0                                   # a copy: the call can be freed
    for start_s, end_s in ((9.0, 10.5), (10.0, 11.0)):
        with pytest.raises(ConfigError, match=rf"span {start_s:g}-{end_s:g} s of a.wav runs "
                                              r"past its end \(10.00 s decoded\)"):
            cut_span(audio, 10, ClipSource("a.wav", 1, start_s, end_s))


def test_a_call_is_decoded_once_for_all_its_labelled_spans(
        tmp_path: Path, callmood_corpora: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = pd.read_csv(callmood_corpora / "ravdess" / "manifest.csv").head(3)
    clips = [load_mono(callmood_corpora / "ravdess" / p, 16000) for p in rows["path"]]
    gap = np.zeros(8000, dtype=np.float32)
    customer = np.concatenate([part for clip in clips for part in (clip, gap)])
    agent = np.random.default_rng(0).standard_normal(customer.size).astype(np.float32) * 0.05
    call = tmp_path / "call.wav"
    sf.write(str(call), np.stack([agent, customer], axis=1), 16000, subtype="PCM_16")
    starts = np.cumsum([0] + [c.size + gap.size for c in clips[:-1]]) / 16000
    sources = [ClipSource(str(call), 1, float(s), float(s) + c.size / 16000)
               for s, c in zip(starts, clips, strict=True)]
    decoded: list[tuple[Path, int | None]] = []

    def counted(path: Path, rate: int, channel: int | None = None) -> Any:
        decoded.append((path, channel))
        return load_mono(path, rate, channel)

    monkeypatch.setattr(training.clips, "load_mono", counted)
    spans = load_clips([*sources, ClipSource(str(call), 0, 0.0, 1.0)], 16000,
                       lambda audio: audio, workers=2)
    assert sorted(decoded, key=str) == [(call, 0), (call, 1)]  # once per party, not per span
    for span, clip in zip(spans, clips, strict=False):
        assert span.size == clip.size and np.allclose(span, clip, atol=1e-4)
    assert np.allclose(spans[-1], agent[:16000], atol=1e-4)
    # the transform runs per span, in the manifest's order
    assert load_clips(sources, 16000, len, workers=1) == [c.size for c in clips]


def test_every_missing_file_is_named_before_any_is_decoded(tmp_path: Path) -> None:
    """A missing file surfaced as libsndfile's 'Error opening ...: System error' once the
    dataset was built, and only the first of them (a review)."""
    present = tmp_path / "here.wav"
    sf.write(present, np.zeros(8000, np.float32), 8000)
    decoded: list[Any] = []
    sources = [ClipSource(str(present), None, None, None),
               ClipSource(str(tmp_path / "nope.wav"), None, None, None),
               ClipSource(str(tmp_path / "gone.wav"), None, 1.0, 2.0)]
    with pytest.raises(ConfigError, match=r"2 file\(s\) of the manifest not found: "
                                          r"\S+gone.wav, \S+nope.wav \(paths in a manifest"):
        load_clips(sources, 8000, decoded.append)
    assert decoded == []
