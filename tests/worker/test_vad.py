"""The WebRTC VAD edge: shapes, edge cases, and behaviour on real speech / silence / noise."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.audio import Audio, load_mono
from worker.constants import ANALYSIS_SAMPLE_RATE
from worker.errors import ConfigError
from worker.segmentation import SegmentationConfig, utterances
from worker.vad import (
    Probabilities,
    VadConfig,
    VadStream,
    level_gain_db,
    smooth,
    speech_decisions,
    speech_probabilities,
    to_pcm16,
    without_dc,
    without_idle_frames,
)

RATE = ANALYSIS_SAMPLE_RATE
# An EmoDB test-split clip (speaker 03, "Der Lappen liegt auf dem Eisschrank", happy).
CLIP = "emodb/audio/03a01Fa.opus"


@pytest.fixture(scope="module")
def speech(callmood_corpora: Path) -> Audio:
    path = callmood_corpora / CLIP
    return load_mono(path, RATE)


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("n_samples", [0, 1, 79, 80, 81, 239, 240, 241, 8000, 12345])
def test_one_value_per_started_frame(frame_ms: int, n_samples: int) -> None:
    cfg = VadConfig(frame_ms=frame_ms, smoothing_ms=3 * frame_ms)
    rng = np.random.default_rng(0)
    p = speech_probabilities(rng.uniform(-0.5, 0.5, n_samples).astype(np.float32), cfg)
    assert p.dtype == np.float32
    assert p.shape == (math.ceil(n_samples / (RATE * frame_ms / 1000)),)
    assert np.all((p >= 0.0) & (p <= 1.0))


def test_zeros_and_empty_are_non_speech() -> None:
    assert speech_probabilities(np.zeros(0, np.float32), VadConfig()).shape == (0,)
    p = speech_probabilities(np.zeros(10 * RATE, np.float32), VadConfig())
    assert p.shape == (math.ceil(10_000 / VadConfig().frame_ms),)
    assert not p.any()


def test_real_speech_clip_is_mostly_speech(speech: Audio) -> None:
    p = speech_probabilities(speech, VadConfig())
    # The clip is ~1.9 s with ~0.2 s of room silence at the ends; measured share 0.92.
    assert float(np.mean(p >= 0.5)) > 0.7


def test_speech_in_silence_is_found_where_it_is(speech: Audio) -> None:
    gap = np.zeros(2 * RATE, np.float32)
    x = np.concatenate([gap, speech, gap])
    cfg = VadConfig()
    p = speech_probabilities(x, cfg)
    n_gap = int(2.0 / cfg.frame_s)
    assert not p[:n_gap].any() and not p[-n_gap:].any()
    assert float(np.mean(p[n_gap:-n_gap] >= 0.5)) > 0.7


def test_low_level_white_noise_is_mostly_non_speech() -> None:
    rng = np.random.default_rng(1)
    x = (0.003 * rng.standard_normal(20 * RATE)).astype(np.float32)  # about -50 dBFS
    p = speech_probabilities(x, VadConfig())
    assert float(np.mean(p >= 0.5)) < 0.1


def test_out_of_range_and_non_finite_samples_are_clipped(speech: Audio) -> None:
    loud = (speech * 50.0).astype(np.float32)  # hard clipping, as from an overdriven line
    clipped = np.clip(loud, -1.0, 1.0).astype(np.float32)
    np.testing.assert_array_equal(speech_probabilities(loud, VadConfig()),
                                  speech_probabilities(clipped, VadConfig()))
    pcm = to_pcm16(np.array([2.0, -2.0, np.nan, np.inf, 0.5], np.float32))
    assert pcm.tolist() == [32767, -32767, 0, 32767, 16384]


def test_smoothing_is_a_centred_average_with_honest_edges() -> None:
    d = np.array([1, 0, 0, 1, 1, 1, 0], bool)
    np.testing.assert_allclose(smooth(d, 3), [0.5, 1 / 3, 1 / 3, 2 / 3, 1.0, 2 / 3, 0.5],
                               rtol=1e-6)
    np.testing.assert_array_equal(smooth(d, 1), d.astype(np.float32))


def test_probabilities_are_smoothed_decisions(speech: Audio) -> None:
    cfg = VadConfig(aggressiveness=2, frame_ms=10, smoothing_ms=50)
    d = speech_decisions(speech, cfg)
    np.testing.assert_array_equal(speech_probabilities(speech, cfg), smooth(d, 5))


def test_stereo_input_is_refused() -> None:
    with pytest.raises(ValueError, match="mono"):
        speech_probabilities(np.zeros((2, 800), np.float32), VadConfig())


@pytest.mark.parametrize("kwargs", [{"aggressiveness": 4}, {"frame_ms": 25},
                                    {"frame_ms": 30, "smoothing_ms": 10},
                                    {"max_gain_db": -1.0}, {"target_level_dbfs": 3.0},
                                    {"noise_ceiling_dbfs": -120.0}])
def test_invalid_config_raises_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        VadConfig(**kwargs)


def _level_dbfs(x: Audio, percentile: float) -> float:
    frames = x[: x.size // 80 * 80].reshape(-1, 80).astype(np.float64)
    energy = np.mean(frames**2, axis=1)
    return float(np.percentile(10 * np.log10(energy[energy > 0]), percentile))


def test_level_gain_raises_quiet_speech_to_the_target(speech: Audio) -> None:
    cfg = VadConfig()
    quiet = (speech * 10 ** (-35 / 20)).astype(np.float32)
    gain = level_gain_db(quiet, cfg)
    assert gain > 0
    # the loud frames land on the target unless the noise ceiling or max gain binds first
    assert gain == pytest.approx(min(cfg.target_level_dbfs - _level_dbfs(quiet, 95),
                                     cfg.noise_ceiling_dbfs - _level_dbfs(quiet, 10),
                                     cfg.max_gain_db), abs=1e-6)


def test_level_gain_never_attenuates_and_can_be_turned_off(speech: Audio) -> None:
    cfg = VadConfig()
    above = (speech * 10 ** ((cfg.target_level_dbfs + 3 - _level_dbfs(speech, 95)) / 20))
    assert level_gain_db(above.astype(np.float32), cfg) == 0.0
    quiet = (speech * 1e-2).astype(np.float32)
    assert level_gain_db(quiet, VadConfig(max_gain_db=0.0)) == 0.0
    assert level_gain_db(np.zeros(RATE, np.float32), VadConfig()) == 0.0
    assert level_gain_db(np.zeros(0, np.float32), VadConfig()) == 0.0


def test_level_gain_is_finite_on_nan_and_inf_samples(speech: Audio) -> None:
    cfg = VadConfig()
    quiet = (speech * 10 ** (-35 / 20)).astype(np.float32)
    bad = quiet.copy()
    bad[::500] = np.nan
    bad[250::1000] = np.inf
    gain = level_gain_db(bad, cfg)
    # the bad samples count as 0 and full scale, as to_pcm16 hands them to WebRTC
    cleaned = np.nan_to_num(bad, nan=0.0, posinf=1.0, neginf=-1.0)
    assert np.isfinite(gain) and gain == level_gain_db(cleaned, cfg)
    assert level_gain_db(np.full(RATE, np.nan, np.float32), cfg) == 0.0
    assert speech_probabilities(bad, cfg).shape == speech_probabilities(quiet, cfg).shape


def test_without_dc_removes_the_mean_of_finite_samples() -> None:
    x = np.array([0.1, 0.3, np.nan, 0.2], np.float32)
    out = without_dc(x)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[[0, 1, 3]], [-0.1, 0.1, 0.0], atol=1e-7)
    assert np.isnan(out[2])
    zeros = np.zeros(100, np.float32)
    assert not without_dc(zeros).any()  # digital silence stays digital silence
    gaps = np.array([0.0, 0.3, 0.0, 0.5], np.float32)  # ... and out of the mean
    np.testing.assert_allclose(without_dc(gaps), [0.0, -0.1, 0.0, 0.1], atol=1e-7)
    assert np.isnan(without_dc(np.full(3, np.nan, np.float32))).all()


def test_frames_holding_one_value_become_digital_silence() -> None:
    step = 4
    x = np.array([8, 8, 8, 8,  0, 0, 0, 0,  8, 9, 8, 8,  np.nan, 1, 1, 1,  5, 5], np.float32)
    out = without_idle_frames(x / np.float32(32768), step)
    assert out.shape == x.shape and out.dtype == np.float32
    # the constant frame is zeroed; a frame that moves by one LSB, one holding NaN and the
    # partial last frame stay as given
    np.testing.assert_array_equal(out[:8], 0.0)
    np.testing.assert_array_equal(out[8:12] * 32768, [8, 9, 8, 8])
    assert np.isnan(out[12]) and (out[13:] * 32768).tolist() == [1, 1, 1, 5, 5]
    short = x[:3] / np.float32(32768)  # shorter than a frame: as given
    np.testing.assert_array_equal(without_idle_frames(short, step), short)


@pytest.mark.parametrize("subtype", ["PCM_16", "ULAW", "ALAW"])
def test_comfort_noise_between_silences_is_no_speech_whatever_the_codec(
        subtype: str, tmp_path: Path) -> None:
    """A channel whose party never speaks, VoIP silence suppression: 0.5 s bursts of
    -55 dBFS comfort noise between 1.5 s of digital silence. A-law has no zero code, so its
    silence decodes to a constant +-8 LSB, which the level gain took for the noise floor:
    it rose to its cap and the bursts were cut as speech (a review: 4 customer utterances
    on the A-law copy of a call, none on PCM or mu-law)."""
    import soundfile as sf

    rng = np.random.default_rng(5)
    burst = (rng.standard_normal(RATE // 2) * 10 ** (-55 / 20)).astype(np.float32)
    channel = np.concatenate([np.concatenate([np.zeros(3 * RATE // 2, np.float32), burst])
                              for _ in range(15)])
    path = tmp_path / f"dtx-{subtype}.wav"
    sf.write(path, channel, RATE, subtype=subtype)
    decoded = load_mono(path, RATE)
    assert subtype != "ALAW" or not np.any(decoded[:RATE] == 0.0)  # no zero code
    found = utterances(speech_probabilities(decoded, VadConfig()), VadConfig().frame_s,
                       decoded.size / RATE, SegmentationConfig())
    assert found == []


def test_digital_silence_neither_moves_nor_raises_the_level_gain(speech: Audio) -> None:
    """A channel that is part digital silence (muted, on hold) and part line noise with
    nobody talking: removing DC must leave the silence out of the level gain, as it is
    without the removal, or the gain rises to its cap and the noise is cut as speech."""
    rng = np.random.default_rng(0)
    speech = speech / np.float32(np.max(np.abs(speech))) * np.float32(0.3)  # a normal line
    hiss = (rng.standard_normal(12 * RATE) * 10 ** (-60 / 20)).astype(np.float32)
    line = np.concatenate([np.zeros(15 * RATE, np.float32), speech, hiss])
    assert line.size <= 4096 * VadConfig().frame_samples  # one VAD block
    assert not without_dc(line)[:15 * RATE].any()  # the silence stays digital silence
    gain_on = level_gain_db(without_dc(line), VadConfig())
    assert gain_on == pytest.approx(level_gain_db(line, VadConfig()), abs=0.01)
    # the noise ceiling binds, not the cap (the bug gave the cap's ~28 dB and more)
    assert gain_on <= VadConfig().noise_ceiling_dbfs + 60 + 1.5
    p_on = speech_probabilities(line, VadConfig())
    p_off = speech_probabilities(line, VadConfig(remove_dc=False))
    assert float(np.mean((p_on >= 0.5) == (p_off >= 0.5))) > 0.99
    hiss_start_s = (line.size - hiss.size) / RATE

    def in_hiss_s(probabilities: Probabilities) -> float:
        found = utterances(probabilities, VadConfig().frame_s, line.size / RATE,
                           SegmentationConfig())
        return sum(max(0.0, u.end_s - max(u.start_s, hiss_start_s)) for u in found)

    # no more of the hiss cut than without the removal (the bug cut seconds more)
    assert in_hiss_s(p_on) <= in_hiss_s(p_off) + 0.1


@pytest.mark.parametrize("offset", [0.05, -0.2])
def test_dc_offset_does_not_move_the_speech(speech: Audio, offset: float) -> None:
    gap = np.zeros(RATE, np.float32)
    line = np.concatenate([gap, speech, gap])
    shifted = (line + np.float32(offset)).astype(np.float32)
    p_line = speech_probabilities(line, VadConfig())
    p_shifted = speech_probabilities(shifted, VadConfig())
    clean, moved = p_line >= 0.5, p_shifted >= 0.5
    # the offset's removal rounds a few samples to another int16 step: a frame or two
    # may flip, the utterances may not
    assert float(np.mean(clean == moved)) > 0.99
    # without the removal the offset hides the noise floor from the level gain
    kept = speech_probabilities(shifted, VadConfig(remove_dc=False)) >= 0.5
    assert float(np.mean(clean == kept)) < float(np.mean(clean == moved))
    cfg = SegmentationConfig()
    frame_s = VadConfig().frame_s
    found = utterances(p_shifted, frame_s, line.size / RATE, cfg)
    expected = utterances(p_line, frame_s, line.size / RATE, cfg)
    assert len(found) == len(expected) >= 1
    for a, b in zip(found, expected, strict=True):
        assert abs(a.start_s - b.start_s) <= 0.02 and abs(a.end_s - b.end_s) <= 0.02


def test_level_gain_keeps_quiet_noise_under_the_ceiling() -> None:
    cfg = VadConfig()
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(10 * RATE) * 10 ** (-70 / 20)).astype(np.float32)
    gain = level_gain_db(noise, cfg)
    # stationary noise: loud and quiet frames within a few dB, so the ceiling binds
    assert 0 < gain <= cfg.noise_ceiling_dbfs - _level_dbfs(noise, 10) + 1e-6
    assert _level_dbfs(noise * 10 ** (gain / 20), 50) < cfg.noise_ceiling_dbfs + 5
    # WebRTC's noise model needs a few frames to settle (~60 ms of "speech" at the very
    # start); segmentation's min_speech_ms drops that, so no utterance comes out.
    p = speech_probabilities(noise, cfg)
    assert utterances(p, cfg.frame_s, noise.size / RATE, SegmentationConfig()) == []


def test_quiet_line_is_found_only_with_the_level_front_end(speech: Audio) -> None:
    gap = np.zeros(RATE, np.float32)
    quiet = (np.concatenate([gap, speech, gap]) * 10 ** (-40 / 20)).astype(np.float32)
    with_gain = speech_probabilities(quiet, VadConfig())
    without = speech_probabilities(quiet, VadConfig(max_gain_db=0.0))
    assert not without.any()  # speech near -55 dBFS is below WebRTC's fixed thresholds
    assert float(np.mean(with_gain >= 0.5)) > 0.35  # 1.9 s of speech in 3.9 s
    loud = np.concatenate([gap, speech, gap])
    np.testing.assert_array_equal(with_gain >= 0.5, speech_probabilities(loud, VadConfig()) >= 0.5)


def test_stream_records_one_gain_per_block(speech: Audio) -> None:
    cfg = VadConfig()
    quiet = np.tile(speech * np.float32(10 ** (-40 / 20)), 30)  # ~57 s: two blocks
    stream = VadStream(cfg)
    for piece in np.array_split(quiet, 7):
        stream.push(piece)
    decisions = stream.finish()
    assert len(stream.gains_db) == 2 and min(stream.gains_db) > 20
    np.testing.assert_array_equal(decisions, speech_decisions(quiet, cfg))
