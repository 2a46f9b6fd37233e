"""The whole in-process pipeline on a synthetic two-party call built from real speech.

The tiny untrained model keeps this test about the pipeline's mechanics (channels, roles,
timing, probabilities, versions); the trained model's accuracy is guarded in tests/training.
"""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from bench.workload import read_manifest, synthesize_call, write_call
from tests.model_fixtures import tiny_model_settings
from worker.emotion import load_card
from worker.errors import AudioDecodeError, InputNotAllowedError, ModelError
from worker.pipeline import analyze_file
from worker.settings import Settings


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return tiny_model_settings(tmp_path)


def overlap_s(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def test_stereo_mulaw_call_gives_per_party_utterances(tmp_path: Path, settings: Settings,
                                                      callmood_corpora: Path) -> None:
    manifest = read_manifest(callmood_corpora, "ravdess")
    test = manifest[manifest["split"] == "test"]
    agent = test[test["speaker"] == "actor19"].head(3)
    customer = test[test["speaker"] == "actor20"].head(3)
    call = synthesize_call(agent, customer, np.random.default_rng(3), overlap_share=0.0)
    path = write_call(call, tmp_path / "call.wav", subtype="ULAW")

    result = analyze_file(str(path), settings)

    assert result.channels == 2 and result.source_sample_rate == 8000
    assert result.duration_s == pytest.approx(call.duration_s, abs=0.01)
    assert result.model_version == f"tiny-0.0.1+{load_card(settings.model_path).onnx_sha256[:12]}"
    assert {s.role for s in result.segments} == {"agent", "customer"}
    for segment in result.segments:
        assert segment.role == ("agent" if segment.channel == 0 else "customer")
        assert sum(segment.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert segment.confidence == max(segment.probabilities.values())
        assert segment.model_version == result.model_version
        assert 0.0 <= segment.start_s < segment.end_s <= result.duration_s
    # Every placed clip (a RAVDESS sentence: ~1.5 s of speech inside ~3.5 s with its own
    # leading and trailing silence) is found on its own channel, and nothing outside clips.
    for clip in call.clips:
        own = [s for s in result.segments if s.channel == clip.channel]
        covered = sum(overlap_s((s.start_s, s.end_s), (clip.start_s, clip.end_s)) for s in own)
        assert covered > 0.8, clip
    for segment in result.segments:
        inside = sum(overlap_s((segment.start_s, segment.end_s), (c.start_s, c.end_s))
                     for c in call.clips if c.channel == segment.channel)
        assert inside > 0.9 * (segment.end_s - segment.start_s), segment
    assert [s.start_s for s in result.segments] == sorted(s.start_s for s in result.segments)


def test_silent_call_is_done_with_no_segments(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros((8000 * 5, 2), dtype=np.float32), 8000, subtype="ULAW")
    result = analyze_file(str(path), settings)
    assert result.segments == ()
    assert result.duration_s == pytest.approx(5.0)


def test_mono_file_is_one_unknown_party(tmp_path: Path, settings: Settings, callmood_corpora: Path) -> None:
    clip = callmood_corpora / "ravdess" / "audio" / "03-01-05-02-01-01-21.opus"
    target = tmp_path / "mono.opus"
    target.write_bytes(clip.read_bytes())
    result = analyze_file(str(target), settings)
    assert result.channels == 1
    assert result.segments and {s.role for s in result.segments} == {"unknown"}


def test_speech_running_to_the_end_of_a_44k_file_ends_within_the_call(
        tmp_path: Path, settings: Settings, callmood_corpora: Path) -> None:
    # resampled to 8 kHz the length rounds up; unclamped, the last segment ended up to 1 ms
    # after the call (most of these file/path cases did)
    speech, rate = sf.read(str(callmood_corpora / "ravdess" / "audio" /
                               "03-01-05-02-01-01-21.opus"))
    speech = librosa.resample(speech, orig_sr=rate, target_sr=44100)
    for extra in range(0, 140, 7):       # cut mid-word, 2.0 s + 0..3 ms
        path = tmp_path / f"cut{extra}.wav"
        sf.write(str(path), speech[:2 * 44100 + extra], 44100, subtype="PCM_16")
        for streaming in (False, True):
            result = analyze_file(str(path), settings, streaming=streaming)
            last = max(s.end_s for s in result.segments)
            assert result.duration_s - 0.001 < last <= result.duration_s, (extra, streaming)


def test_bad_inputs_raise_input_errors(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "junk.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(AudioDecodeError):
        analyze_file(str(tmp_path / "junk.wav"), settings)
    with pytest.raises(InputNotAllowedError):
        analyze_file("/etc/passwd", settings)


def test_speech_cut_keeps_a_clips_speech_and_drops_its_silence(callmood_corpora: Path) -> None:
    from worker.audio import load_mono
    from worker.constants import ANALYSIS_SAMPLE_RATE
    from worker.pipeline import SpeechCut

    manifest = read_manifest(callmood_corpora, "ravdess")
    audio = load_mono(Path(manifest["audio_path"].iloc[0]), ANALYSIS_SAMPLE_RATE)
    # a RAVDESS clip: about a second of room tone, the sentence, then room tone again
    padded = np.concatenate([np.zeros(ANALYSIS_SAMPLE_RATE, np.float32), audio,
                             np.zeros(ANALYSIS_SAMPLE_RATE, np.float32)])
    cut = SpeechCut()
    extent = cut.extent(padded)
    assert extent is not None
    start, end = extent
    assert ANALYSIS_SAMPLE_RATE <= start and end <= ANALYSIS_SAMPLE_RATE + audio.size
    speech = cut.apply(padded)
    assert np.array_equal(speech, padded[start:end])
    assert 0.8 < speech.size / ANALYSIS_SAMPLE_RATE < audio.size / ANALYSIS_SAMPLE_RATE
    # nearly all the energy is inside the cut
    energy = float(np.sum(padded.astype(np.float64) ** 2))
    assert float(np.sum(speech.astype(np.float64) ** 2)) > 0.98 * energy
    silence = np.zeros(2 * ANALYSIS_SAMPLE_RATE, np.float32)
    assert cut.extent(silence) is None and cut.apply(silence) is silence   # nothing lost


def test_a_model_for_another_feature_rate_is_refused_before_any_decoding(
        tmp_path: Path, settings: Settings) -> None:
    card_path = settings.model_path.with_suffix(".card.json")
    card = json.loads(card_path.read_text())
    card["features"]["sample_rate"] = 16000  # a wideband model: the worker analyses 8 kHz
    card_path.write_text(json.dumps(card))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    # the model is the problem, not the file: the error says so, before the decode fails
    with pytest.raises(ModelError, match="expects 16000 Hz features; the pipeline analyses at 8000"):
        analyze_file(str(corrupt), settings, streaming=False)
