"""Channel augmentations: G.711 round trips, levels, band limits, seeded randomness."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from training.augment import (
    AugmentConfig,
    alaw_roundtrip,
    augment,
    band_limit,
    codec_roundtrip,
    mulaw_roundtrip,
    phone_line,
    reverberate,
    room_impulse_response,
    set_rms_dbfs,
    warp_bands,
)

SR = 8000


def _tone(freq_hz: float, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))))


@pytest.mark.parametrize("roundtrip", [mulaw_roundtrip, alaw_roundtrip])
def test_g711_round_trip_keeps_speech_level_signals_within_quantisation_error(roundtrip) -> None:  # type: ignore[no-untyped-def]
    x = _tone(440.0)
    y = roundtrip(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    snr_db = _rms_db(x) - _rms_db(y - x)
    assert 25.0 < snr_db < 45.0      # 8-bit companding: ~38 dB SNR at this level, never lossless


def test_set_rms_dbfs_hits_the_level_and_leaves_silence_alone() -> None:
    assert _rms_db(set_rms_dbfs(_tone(300.0), -26.0)) == pytest.approx(-26.0, abs=0.01)
    silent = np.zeros(100, dtype=np.float32)
    assert np.array_equal(set_rms_dbfs(silent, -26.0), silent)


def test_telephone_band_removes_low_hum_and_keeps_the_voice_band() -> None:
    hum, voice = _tone(60.0, 2.0), _tone(1000.0, 2.0)
    assert _rms_db(band_limit(hum)[SR:]) < _rms_db(hum) - 30.0
    assert _rms_db(band_limit(voice)[SR:]) == pytest.approx(_rms_db(voice), abs=1.0)
    line = phone_line(voice)
    assert _rms_db(line[SR:]) == pytest.approx(-26.0, abs=1.5)


def test_augment_is_reproducible_by_seed_and_bounded() -> None:
    x = _tone(500.0, 2.0)
    a = augment(x, np.random.default_rng(7))
    b = augment(x, np.random.default_rng(7))
    c = augment(x, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    low, high = AugmentConfig().speed_range
    for seed in range(20):
        y = augment(x, np.random.default_rng(seed))
        assert x.size / high - 2 <= y.size <= x.size / low + 2
        assert np.isfinite(y).all() and np.abs(y).max() <= 1.0


def _voice_like(seconds: float = 2.0) -> np.ndarray:
    """A 150 Hz buzz with falling harmonics, at -20 dBFS: speech-like for a codec."""
    t = np.arange(int(SR * seconds)) / SR
    x = sum(np.sin(2 * np.pi * 150.0 * k * t) / k for k in range(1, 20))
    return set_rms_dbfs(np.asarray(x, dtype=np.float32), -20.0)


@pytest.mark.parametrize("codec", ["opus", "mp3"])
def test_low_bitrate_codec_round_trip_is_lossy_but_keeps_the_voice(codec: str) -> None:
    x = _voice_like()
    y = codec_roundtrip(x, codec, SR, 1.0)  # type: ignore[arg-type]
    assert y.dtype == np.float32 and y.shape == x.shape
    mid = slice(SR // 2, 3 * SR // 2)  # away from the codec's start-up and end padding
    assert _rms_db(y[mid]) == pytest.approx(_rms_db(x[mid]), abs=3.0)
    assert not np.allclose(y, x, atol=1e-3)


def test_the_codec_levels_drawn_span_these_bitrates(callmood_corpora: Path) -> None:
    """What AugmentConfig.codec_level_range means in kbit/s (Ogg or MP3 bytes over the
    signal's length, a RAVDESS clip at -26 dBFS repeated to 35 s so the Ogg headers do not
    count, libsndfile's encoders): Opus ~47 kbit/s at level 0.8 down to ~5 at 1.0, MP3 8 or
    17 (its two lowest bitrates). A single 3.5 s clip's file is ~7 kbit/s at 1.0, headers
    included."""
    import io

    import soundfile as sf

    from training.augment import set_rms_dbfs
    from worker.audio import load_mono

    x = set_rms_dbfs(load_mono(callmood_corpora / "ravdess" / "audio" /
                               "03-01-05-01-01-01-20.opus", 8000), -26.0)
    x = np.tile(x, 10)

    def kbit_s(fmt: str, subtype: str, level: float, **extra: str) -> float:
        buffer = io.BytesIO()
        sf.write(buffer, x, 8000, format=fmt, subtype=subtype, compression_level=level, **extra)
        return 8 * len(buffer.getvalue()) / (x.size / 8000) / 1000

    low, high = AugmentConfig().codec_level_range
    assert 40 < kbit_s("OGG", "OPUS", low) < 55
    assert 4 < kbit_s("OGG", "OPUS", high) < 6
    assert 15 < kbit_s("MP3", "MPEG_LAYER_III", low, bitrate_mode="CONSTANT") < 19
    assert 7 < kbit_s("MP3", "MPEG_LAYER_III", 0.99, bitrate_mode="CONSTANT") < 10


def test_unknown_codec_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="opus, mp3"):
        codec_roundtrip(_voice_like(0.1), "aac")  # type: ignore[arg-type]


def test_codec_augmentation_is_seeded_and_can_be_turned_off() -> None:
    x = _voice_like()
    with_codec = AugmentConfig(p_codec=1.0, p_phone=0.0, p_noise=0.0, p_speed=0.0)
    without = AugmentConfig(p_codec=0.0, p_phone=0.0, p_noise=0.0, p_speed=0.0)
    a = augment(x, np.random.default_rng(3), with_codec)
    assert np.array_equal(a, augment(x, np.random.default_rng(3), with_codec))
    assert a.shape == x.shape
    assert not np.allclose(a, augment(x, np.random.default_rng(3), without), atol=1e-3)


@pytest.mark.parametrize("opus_share", [0.0, 0.5, 1.0])
def test_opus_share_picks_the_codec_from_one_draw(opus_share: float) -> None:
    # every other augmentation off, so the generator's draws are, in order: speed, EQ, tilt
    # (3 coin flips), level, noise flip, codec flip, codec choice, compression level, phone flip
    x = _voice_like()
    config = AugmentConfig(p_codec=1.0, opus_share=opus_share, p_phone=0.0, p_noise=0.0,
                           p_speed=0.0, p_eq=0.0, p_tilt=0.0, p_reverb=0.0, p_clip=0.0)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        rng.random(3)
        level_dbfs = float(rng.uniform(*config.level_dbfs_range))
        rng.random(2)
        codec: Literal["opus", "mp3"] = "opus" if rng.random() < opus_share else "mp3"
        compression = float(rng.uniform(*config.codec_level_range))
        expected = np.clip(codec_roundtrip(set_rms_dbfs(x, level_dbfs), codec, SR, compression),
                           -1.0, 1.0)
        assert np.array_equal(augment(x, np.random.default_rng(seed), config), expected)


def test_augment_probabilities_are_checked() -> None:
    with pytest.raises(ValueError, match=r"opus_share=1.5 must be a probability in \[0, 1\]"):
        AugmentConfig(opus_share=1.5)


@pytest.mark.parametrize(("rt60_s", "drr_db"), [(0.3, 0.0), (0.7, 10.0)])
def test_room_impulse_response_has_the_drawn_decay_and_direct_to_reverberant_ratio(
        rt60_s: float, drr_db: float) -> None:
    ir = room_impulse_response(rt60_s, drr_db, np.random.default_rng(0), SR).astype(np.float64)
    direct, tail = ir[0], ir[1:]
    assert direct == 1.0
    assert 10 * np.log10(direct ** 2 / np.sum(tail ** 2)) == pytest.approx(drr_db, abs=0.01)
    # Schroeder backward integration: the time the tail's energy decay curve takes from -5
    # to -25 dB, times 3, estimates RT60 (ISO 3382's T20)
    edc = np.cumsum(tail[::-1] ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    t20_s = 3 * (np.argmax(edc_db <= -25) - np.argmax(edc_db <= -5)) / SR
    assert t20_s == pytest.approx(rt60_s, rel=0.15)
    with pytest.raises(ValueError, match="rt60_s=0"):
        room_impulse_response(0.0, 5.0, np.random.default_rng(0), SR)


def test_reverberation_keeps_the_length_and_smears_a_click() -> None:
    click = np.zeros(SR, dtype=np.float32)
    click[100] = 0.5
    wet = reverberate(click, room_impulse_response(0.5, 0.0, np.random.default_rng(1), SR))
    assert wet.shape == click.shape and wet[100] == pytest.approx(0.5)
    # at 0 dB DRR as much energy rings on after the click as the click itself carries
    assert np.sum(wet[101:].astype(np.float64) ** 2) == pytest.approx(0.5 ** 2, rel=0.1)


def test_reverb_augmentation_is_seeded_and_drawn_only_when_enabled() -> None:
    x = _voice_like()
    assert AugmentConfig().p_reverb == 0.15    # emotion-v1.6.0's recipe and since
    dry = AugmentConfig(p_codec=0.0, p_phone=0.0, p_noise=0.0, p_speed=0.0, p_eq=0.0,
                        p_tilt=0.0, p_reverb=0.0, p_clip=0.0)
    wet = AugmentConfig(p_codec=0.0, p_phone=0.0, p_noise=0.0, p_speed=0.0, p_eq=0.0,
                        p_tilt=0.0, p_reverb=1.0, p_clip=0.0)
    a = augment(x, np.random.default_rng(5), wet)
    assert a.shape == x.shape
    assert np.array_equal(a, augment(x, np.random.default_rng(5), wet))
    assert not np.allclose(a, augment(x, np.random.default_rng(5), dry), atol=1e-3)
    with pytest.raises(ValueError, match=r"p_reverb=2.0 must be a probability"):
        AugmentConfig(p_reverb=2.0)
    with pytest.raises(ValueError, match=r"rt60_range_s=\(0.0, 0.5\) must be two"):
        AugmentConfig(rt60_range_s=(0.0, 0.5))


def test_clipping_draws_overdrive_the_speech_and_are_drawn_only_when_enabled() -> None:
    from dataclasses import replace

    x = _voice_like()
    assert AugmentConfig().p_clip == 0.15   # emotion-v1.8.0's recipe
    quiet = AugmentConfig(p_codec=0.0, p_phone=0.0, p_noise=0.0, p_speed=0.0, p_eq=0.0,
                          p_tilt=0.0, p_reverb=0.0, p_clip=0.0)
    off = augment(x, np.random.default_rng(5), quiet)
    # 30 dB over the -26 dBFS line level: this voice-like test tone's crest is only a few dB
    on = augment(x, np.random.default_rng(5), replace(quiet, p_clip=1.0,
                                                      clip_gain_db_range=(30.0, 30.0)))
    assert on.shape == x.shape and np.abs(on).max() == pytest.approx(1.0)
    assert np.mean(np.abs(on) >= 1.0) > 0.01
    assert np.mean(np.abs(off) >= 1.0) == 0.0
    # p_clip=0 draws nothing: the later draws (the phone line's here) stay v1.7.0's
    phone = replace(quiet, p_phone=1.0)
    assert np.array_equal(augment(x, np.random.default_rng(7), phone),
                          augment(x, np.random.default_rng(7), replace(phone, p_clip=0.0)))
    assert not np.array_equal(augment(x, np.random.default_rng(7), phone),
                              augment(x, np.random.default_rng(7), replace(phone, p_clip=0.5)))
    with pytest.raises(ValueError, match=r"p_clip=1.5 must be a probability"):
        AugmentConfig(p_clip=1.5)


def test_a_mel_warp_moves_the_spectrum_along_the_bands_not_the_frames() -> None:
    """Band k takes the value at k / factor: a peak at band 20 lands at band 22 for 1.1 and
    18 for 0.9 (rounded), in every view alike; frames and a factor of 1 change nothing."""
    n_mels, frames = 64, 5
    view = np.zeros((n_mels, frames), dtype=np.float32)
    view[20] = 1.0
    features = np.concatenate([view, 2 * view])              # two views
    assert np.array_equal(warp_bands(features, 1.0, n_mels), features)
    for factor, band in ((1.1, 22), (0.9, 18)):
        warped = warp_bands(features, factor, n_mels)
        assert warped.shape == features.shape and warped.dtype == np.float32
        assert int(np.argmax(warped[:n_mels, 0])) == band
        assert np.allclose(warped[n_mels:], 2 * warped[:n_mels])
        assert np.allclose(warped[:, 0:1], warped)               # every frame alike
    # past the top, the top band: a factor under 1 reads beyond band 63
    ramp = np.tile(np.arange(n_mels, dtype=np.float32)[:, None], (1, frames))
    assert warp_bands(ramp, 0.9, n_mels)[-1, 0] == n_mels - 1
    with pytest.raises(ValueError, match="not views of 64 mel bands"):
        warp_bands(np.zeros((65, 3), dtype=np.float32), 1.1, n_mels)
    with pytest.raises(ValueError, match="warp_range"):
        AugmentConfig(warp_range=(1.2, 1.1))
