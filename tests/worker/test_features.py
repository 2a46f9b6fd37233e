from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from worker.features import FeatureConfig, extract_features, log_mel, n_frames


def test_shape_dtype_and_frame_count() -> None:
    config = FeatureConfig()
    x = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    feats = log_mel(x, config)
    assert feats.shape == (config.n_mels, n_frames(8000, config)) == (64, 100)
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()


def test_tone_lands_in_the_right_band() -> None:
    config = FeatureConfig(normalization="none")
    t = np.arange(8000) / 8000
    low = log_mel(np.sin(2 * np.pi * 300 * t).astype(np.float32), config).mean(axis=1)
    high = log_mel(np.sin(2 * np.pi * 3000 * t).astype(np.float32), config).mean(axis=1)
    assert np.argmax(low) < np.argmax(high)


def test_cmn_cancels_gain_and_fixed_channel_colouring() -> None:
    config = FeatureConfig(normalization="utterance_cmn")
    x = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    a = extract_features(x, config)
    b = extract_features(x * 0.25, config)  # -12 dB, well above the log floor
    assert np.abs(a - b).max() < 1e-3
    assert np.abs(a.mean(axis=1)).max() < 1e-4


def test_empty_and_tiny_inputs() -> None:
    config = FeatureConfig()
    assert extract_features(np.zeros(0, dtype=np.float32), config).shape == (64, 0)
    assert extract_features(np.zeros(10, dtype=np.float32), config).shape == (64, 1)


def test_config_round_trip_and_validation() -> None:
    config = FeatureConfig(n_mels=40)
    assert FeatureConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="fmax_hz"):
        FeatureConfig(fmax_hz=5000.0)
    with pytest.raises(ValueError, match="normalization"):
        FeatureConfig(normalization="per_speaker")  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [FeatureConfig(), FeatureConfig(sample_rate=16000, n_fft=512,
                                                                   win_length=400, hop_length=160,
                                                                   n_mels=80, fmin_hz=0.0,
                                                                   fmax_hz=8000.0)])
def test_mel_filterbank_equals_librosa_slaney(config: FeatureConfig) -> None:
    import librosa

    from worker.features import _mel_filterbank

    expected = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                                   fmin=config.fmin_hz, fmax=config.fmax_hz)
    got = _mel_filterbank(config)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_a_dynamic_range_floor_makes_features_gain_invariant() -> None:
    # a quiet line: speech-like noise bursts at -48 dBFS with digital silence between them
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal(4000) * 0.004, np.zeros(4000),
                        rng.standard_normal(4000) * 0.004]).astype(np.float32)
    relative = FeatureConfig(log_floor=1e-20, dynamic_range_db=80.0)
    for gain_db in (-25.0, -50.0, 10.0):
        scaled = (x * 10 ** (gain_db / 20)).astype(np.float32)
        assert np.abs(extract_features(x, relative) - extract_features(scaled, relative)).max() < 1e-3
    # the absolute floor of emotion-v1.0.0 is not: the silence sits at the floor, speech moves
    absolute = FeatureConfig()
    quiet = (x * 10 ** (-25 / 20)).astype(np.float32)
    assert np.abs(extract_features(x, absolute) - extract_features(quiet, absolute)).max() > 1.0
    with pytest.raises(ValueError, match="dynamic_range_db"):
        FeatureConfig(dynamic_range_db=0.0)


def test_remove_dc_cancels_an_offset_and_old_cards_keep_it_off() -> None:
    x = np.random.default_rng(5).standard_normal(16000).astype(np.float32) * 0.05
    offset = (x + 0.05).astype(np.float32)
    on = FeatureConfig(log_floor=1e-20, dynamic_range_db=80.0, remove_dc=True)
    off = FeatureConfig(log_floor=1e-20, dynamic_range_db=80.0)
    assert np.abs(extract_features(offset, on) - extract_features(x, on)).max() < 1e-3
    # without it the offset's energy sits in the lowest bands, beyond what CMN removes
    assert np.abs(extract_features(offset, off) - extract_features(x, off)).max() > 0.1
    # a card written before the field existed describes a model trained without it
    legacy = {k: v for k, v in on.to_dict().items() if k != "remove_dc"}
    assert FeatureConfig.from_dict(legacy).remove_dc is False
    # a key this code does not know (a misspelling, or newer training code) is refused
    with pytest.raises(ValueError, match=r"unknown feature setting\(s\) normalisation; valid "
                                         r"are sample_rate, n_fft"):
        FeatureConfig.from_dict({**on.to_dict(), "normalisation": "utterance_cmvn"})


def test_level_normalisation_cancels_gain_and_keeps_the_spectral_envelope() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal(16000).astype(np.float32) * 0.05
    # a brighter voice: the same noise with a first difference, which lifts the high bands
    bright = np.append(x[0], np.diff(x)).astype(np.float32)
    level = FeatureConfig(log_floor=1e-20, dynamic_range_db=80.0, normalization="utterance_level")
    cmn = FeatureConfig(log_floor=1e-20, dynamic_range_db=80.0, normalization="utterance_cmn")
    for gain in (0.01, 4.0):
        scaled = (x * gain).astype(np.float32)
        assert np.abs(extract_features(x, level) - extract_features(scaled, level)).max() < 1e-3
    a, b = extract_features(x, level), extract_features(bright, level)
    assert abs(float(a.mean())) < 1e-4  # one number subtracted: the overall mean is zero
    # the long-term spectrum survives: the bright version's top bands sit higher, bottom lower
    tilt = b.mean(axis=1) - a.mean(axis=1)
    assert tilt[-8:].mean() - tilt[:8].mean() > 2.0
    # CMN takes each band's mean away, so the same fixed tilt all but vanishes
    cmn_tilt = extract_features(bright, cmn).mean(axis=1) - extract_features(x, cmn).mean(axis=1)
    assert np.abs(cmn_tilt).max() < 1e-4


def test_two_views_stack_the_cmn_rows_over_the_level_rows() -> None:
    """``utterance_cmn_and_level`` is exactly the two one-view features, CMN first."""
    rng = np.random.default_rng(4)
    audio = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    both = FeatureConfig(normalization="utterance_cmn_and_level", dynamic_range_db=80.0)
    cmn = replace(both, normalization="utterance_cmn")
    level = replace(both, normalization="utterance_level")
    feats = extract_features(audio, both)
    assert both.n_views == 2 and cmn.n_views == 1 and both.input_rows == 128
    assert feats.shape == (128, 100) and feats.dtype == np.float32
    assert np.array_equal(feats[:64], extract_features(audio, cmn))
    assert np.array_equal(feats[64:], extract_features(audio, level))
    assert extract_features(np.zeros(0, np.float32), both).shape == (128, 0)
