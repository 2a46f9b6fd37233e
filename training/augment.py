"""On-the-fly waveform augmentation for 8 kHz training clips, favouring channel robustness.

The corpora are clean studio recordings; calls arrive through telephone band-limiting,
G.711 companding, AGC, handset colouring and noise. Each transform is a pure function
``(audio, rng) -> audio`` on float32 (samples,) arrays; :func:`augment` chains them with
the probabilities of an :class:`AugmentConfig`. :func:`phone_line` is the deterministic
channel used by evaluation (``--channel mulaw8k``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.signal

from worker.audio import resample
from worker.constants import ANALYSIS_SAMPLE_RATE

Audio = npt.NDArray[np.float32]
Codec = Literal["mulaw", "alaw"]
LossyCodec = Literal["opus", "mp3"]

_MU = 255.0
_A = 87.6


def mulaw_roundtrip(audio: Audio) -> Audio:
    """Encode to 8-bit mu-law (G.711 companding law, mu=255) and decode back; clips at +-1."""
    x = np.clip(audio, -1.0, 1.0).astype(np.float64)
    y = np.sign(x) * np.log1p(_MU * np.abs(x)) / np.log1p(_MU)
    q = np.round((y + 1.0) * 127.5) / 127.5 - 1.0  # 256 levels
    return np.asarray(np.sign(q) * np.expm1(np.abs(q) * np.log1p(_MU)) / _MU, dtype=np.float32)


def alaw_roundtrip(audio: Audio) -> Audio:
    """Encode to 8-bit A-law (A=87.6) and decode back; clips at +-1."""
    x = np.clip(audio, -1.0, 1.0).astype(np.float64)
    ax = np.abs(x)
    ln_a = 1.0 + np.log(_A)
    y = np.where(ax < 1.0 / _A, _A * ax / ln_a, (1.0 + np.log(np.maximum(ax, 1e-12) * _A)) / ln_a)
    q = np.round(np.sign(x) * y * 127.0) / 127.0
    aq = np.abs(q)
    z = np.where(aq < 1.0 / ln_a, aq * ln_a / _A, np.exp(aq * ln_a - 1.0) / _A)
    return np.asarray(np.sign(q) * z, dtype=np.float32)


def rms(audio: npt.NDArray[np.floating[Any]]) -> float:
    """Root mean square of the samples (0.0 for none), summed in float64."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def set_rms_dbfs(audio: Audio, rms_dbfs: float) -> Audio:
    """Scale to the given RMS level (dB re full scale); silence is returned unchanged."""
    level = rms(audio)
    if level < 1e-8:
        return np.asarray(audio, dtype=np.float32)
    return np.asarray(audio * (10.0 ** (rms_dbfs / 20.0) / level), dtype=np.float32)


def band_limit(audio: Audio, low_hz: float = 300.0, high_hz: float = 3400.0,
               sample_rate: int = ANALYSIS_SAMPLE_RATE, order: int = 4) -> Audio:
    """Butterworth band-pass, the telephone band by default."""
    high_hz = min(high_hz, 0.49 * sample_rate)
    sos = scipy.signal.butter(order, [low_hz, high_hz], btype="bandpass", fs=sample_rate,
                              output="sos")
    return np.asarray(scipy.signal.sosfilt(sos, audio), dtype=np.float32)


def phone_line(audio: Audio, codec: Codec = "mulaw", rms_dbfs: float = -26.0,
               sample_rate: int = ANALYSIS_SAMPLE_RATE) -> Audio:
    """Deterministic narrowband call channel: level to ``rms_dbfs``, 300-3400 Hz, G.711.

    -26 dBFS is the nominal speech level of a telephone line (ITU-T P.56 style).
    """
    x = band_limit(set_rms_dbfs(audio, rms_dbfs), sample_rate=sample_rate)
    return mulaw_roundtrip(x) if codec == "mulaw" else alaw_roundtrip(x)


def _peaking_eq(audio: Audio, centre_hz: float, gain_db: float, q: float,
                sample_rate: int) -> Audio:
    """RBJ-cookbook peaking biquad: handset/microphone resonances."""
    a_gain = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * centre_hz / sample_rate
    alpha = np.sin(w0) / (2.0 * q)
    b = np.array([1 + alpha * a_gain, -2 * np.cos(w0), 1 - alpha * a_gain])
    a = np.array([1 + alpha / a_gain, -2 * np.cos(w0), 1 - alpha / a_gain])
    return np.asarray(scipy.signal.lfilter(b / a[0], a / a[0], audio), dtype=np.float32)


def _tilt(audio: Audio, coefficient: float) -> Audio:
    """First-order spectral tilt y[n] = x[n] - c x[n-1] (c>0 brightens, c<0 darkens)."""
    return np.asarray(scipy.signal.lfilter([1.0, -coefficient], [1.0], audio), dtype=np.float32)


def _coloured_noise(n_samples: int, exponent: float, rng: np.random.Generator) -> Audio:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    white = rng.standard_normal(n_samples)
    if exponent == 0.0 or n_samples < 4:
        noise = white
    else:
        spec = np.fft.rfft(white)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1.0
        noise = np.fft.irfft(spec / f ** (exponent / 2.0), n=n_samples)
    return np.asarray(noise / (rms(noise) or 1.0), dtype=np.float32)


def add_noise(audio: Audio, snr_db: float, exponent: float, rng: np.random.Generator,
              reference_rms: float | None = None) -> Audio:
    """Add coloured noise at ``snr_db`` relative to ``reference_rms`` (default: the clip's
    RMS, silence included)."""
    level = rms(audio) if reference_rms is None else reference_rms
    if level < 1e-8:
        return np.asarray(audio, dtype=np.float32)
    noise = _coloured_noise(audio.size, exponent, rng) * level / 10.0 ** (snr_db / 20.0)
    return np.asarray(audio + noise, dtype=np.float32)


def room_impulse_response(rt60_s: float, drr_db: float, rng: np.random.Generator,
                          sample_rate: int = ANALYSIS_SAMPLE_RATE,
                          predelay_ms: float = 2.0) -> Audio:
    """Synthetic room impulse response, (samples,) float32: a unit direct path, then after
    ``predelay_ms`` a Gaussian-noise tail whose energy decays by 60 dB in ``rt60_s`` (Polack's
    statistical model of a diffuse field), scaled so that direct-to-reverberant energy is
    ``drr_db``. The tail is cut where it has decayed by 60 dB."""
    if rt60_s <= 0.0:
        raise ValueError(f"rt60_s={rt60_s} must be a positive reverberation time in seconds")
    n_tail = max(1, int(rt60_s * sample_rate))
    t_s = np.arange(n_tail, dtype=np.float64) / sample_rate
    # energy falls 60 dB over rt60_s, so amplitude falls by 10^(-3 t / rt60)
    tail = rng.standard_normal(n_tail) * 10.0 ** (-3.0 * t_s / rt60_s)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / float(np.sum(tail ** 2)))
    n_delay = max(1, round(predelay_ms * sample_rate / 1000.0))
    ir = np.zeros(n_delay + n_tail, dtype=np.float64)
    ir[0] = 1.0
    ir[n_delay:] += tail
    return np.asarray(ir, dtype=np.float32)


def reverberate(audio: Audio, impulse_response: Audio) -> Audio:
    """Convolve with a room impulse response, keeping the input's length (the tail that rings
    past the end is cut, as a recording stops)."""
    wet = scipy.signal.fftconvolve(np.asarray(audio, dtype=np.float64),
                                   np.asarray(impulse_response, dtype=np.float64))
    return np.asarray(wet[:audio.size], dtype=np.float32)


CLIP_LINE_LEVEL_DBFS = -26.0
"""Level (RMS dBFS) a clipping draw sets before its gain: the line level of the phone, Opus
and clipping channels of the evaluation (:mod:`training.evaluate`)."""


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentations (8 kHz audio)."""

    p_speed: float = 0.6
    speed_range: tuple[float, float] = (0.9, 1.1)
    """Speed factors drawn for ``p_speed``: tempo, pitch and formants all scale by the factor
    (+-10 %: about +-1.7 semitones, the vocal-tract-length warp of speaker-independent speech
    recognition), speaker variety beside the tempo. 0.6 and (0.9, 1.1) since emotion-v1.9.0,
    a candidate by the rule written before its runs (docs/model-experiments.md: mean pooled
    validation UA of two seeds 66.65 % against 65.0 %); 0.3 and (0.93, 1.07) before, which
    every earlier card records."""
    p_eq: float = 0.5
    eq_gain_db: float = 8.0
    p_tilt: float = 0.5
    tilt_range: tuple[float, float] = (-0.6, 0.9)
    p_phone: float = 0.7
    p_noise: float = 0.4
    snr_db_range: tuple[float, float] = (5.0, 35.0)
    level_dbfs_range: tuple[float, float] = (-40.0, -12.0)
    p_codec: float = 0.25
    """Probability of a lossy-codec round trip (Opus or MP3 through libsndfile, random bitrate)
    after the noise and before the phone line, as on a VoIP leg. From emotion-v1.4.0 on; 0
    reproduces v1.3.0 and earlier, whose worst RAVDESS robustness condition was Opus (v1.3.0:
    -4.7 points). v1.4.0's validation UA: 66.4 % with 0.25 vs 62.8 % with 0 (v1.3.0). Costs
    ~10 ms (MP3) to ~50 ms (Opus) of CPU per 3.3 s draw that gets one: training took 3,450 s
    instead of 2,860 s on 2 cores."""
    codec_level_range: tuple[float, float] = (0.8, 1.0)
    """libsndfile compression levels drawn (uniformly) for the codec. For Opus at 8 kHz the
    bitrate falls about linearly with the level, from ~47 kbit/s at 0.8 to ~5 kbit/s at 1.0
    (the evaluation's ``opus8kbps`` condition, named when it was measured with a short clip's
    Ogg headers, ~7 kbit/s of file), so only about a fifth of the Opus draws are under
    17 kbit/s; MP3 gives 17 kbit/s below ~0.91 and 8 kbit/s above (measured by
    tests/training/test_augment.py::test_the_codec_levels_drawn_span_these_bitrates).
    0.95-1.0 (Opus ~19-5 kbit/s) was tried (docs/model-experiments.md): validation UA 66.35 %
    vs 66.42 %, and no better through Opus on the test actors (54.0 % vs 55.8 %)."""
    opus_share: float = 0.5
    """Of the codec round trips, the share that is Opus (the rest MP3). Opus is the worse of
    the two for the model (v1.4.0: RAVDESS Opus 55.8 % vs clean 62.1 %). 0.75 with
    p_codec=0.35 was tried (docs/model-experiments.md): validation UA 65.4 % vs 66.4 %,
    and no better through Opus, so the default stays at v1.4.0's 0.5."""
    p_reverb: float = 0.15
    """Probability of a synthetic room (:func:`room_impulse_response`) after the speed change
    and before the microphone's EQ and tilt: speakerphones and headsets away from the mouth
    add a room the studio corpora lack. 0.15 is emotion-v1.6.0's recipe: it passed the rule
    written before its run (docs/model-experiments.md), 0.3 cost pooled validation UA. 0
    (v1.5.0 and earlier) draws nothing for it, so the other draws stay as they were."""
    rt60_range_s: tuple[float, float] = (0.2, 0.8)
    """Reverberation times drawn: small offices and call-centre floors (~0.3-0.6 s) and a
    little beyond on both sides."""
    drr_range_db: tuple[float, float] = (0.0, 15.0)
    """Direct-to-reverberant ratios drawn: 0 dB is a speakerphone across a room, 15 dB a
    handset close to the mouth in a live room."""
    p_clip: float = 0.15
    """Probability of an overdriven microphone preamp: the draw's speech set to
    ``CLIP_LINE_LEVEL_DBFS``, a gain from ``clip_gain_db_range``, hard clipping at full
    scale, after the noise and before the codec and the phone line. The robustness table's
    ``clipping`` (-26 dBFS, +20 dB) was the worst condition of emotion-v1.7.0 and v1.6.0 on
    RAVDESS (-5.7 and -5.5 points), whose draws never clipped but for the loudest levels'
    peaks. 0.15 (emotion-v1.8.0): a candidate by the rule written before its runs
    (docs/model-experiments.md), the mean RAVDESS validation clipping drop of two seeds 3.3
    points against 6.5. 0 (emotion-v1.7.0 and earlier) draws nothing for it, so the other
    draws stay as they were."""
    clip_gain_db_range: tuple[float, float] = (6.0, 24.0)
    """Gains drawn for ``p_clip`` (dB over the -26 dBFS line level): from a few peaks clipped
    to about a tenth of the samples."""
    p_warp: float = 0.0
    """Probability of a vocal-tract-length warp of the mel axis per draw (:func:`warp_bands`,
    on the features: formants and pitch move, tempo does not). 0 (every model so far) draws
    nothing for it, so the other draws stay as they were."""
    warp_range: tuple[float, float] = (0.9, 1.1)
    """Warp factors drawn for ``p_warp`` (>1 moves the spectrum up the mel axis)."""
    sample_rate: int = ANALYSIS_SAMPLE_RATE

    def __post_init__(self) -> None:
        for name in ("p_speed", "p_eq", "p_tilt", "p_phone", "p_noise", "p_codec", "opus_share",
                     "p_reverb", "p_clip", "p_warp"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be a probability in [0, 1]")
        low, high = self.codec_level_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"codec_level_range={self.codec_level_range} must be two "
                             "compression levels LOW <= HIGH in [0, 1]")
        low, high = self.speed_range
        if not 0.5 <= low <= high <= 2.0:
            raise ValueError(f"speed_range={self.speed_range} must be two speed factors "
                             "0.5 <= LOW <= HIGH <= 2 (1: unchanged)")
        low, high = self.warp_range
        if not 0.5 <= low <= high <= 2.0:
            raise ValueError(f"warp_range={self.warp_range} must be two warp factors "
                             "0.5 <= LOW <= HIGH <= 2 (1: unchanged)")
        low, high = self.rt60_range_s
        if not 0.0 < low <= high:
            raise ValueError(f"rt60_range_s={self.rt60_range_s} must be two reverberation "
                             "times 0 < LOW <= HIGH in seconds")


def warp_bands(features: npt.NDArray[np.float32], factor: float,
               n_mels: int) -> npt.NDArray[np.float32]:
    """Features (views * n_mels, T) with each view's mel axis stretched by ``factor``: band k
    takes the value at band k / factor (linear between bands; past the top, the top band), so
    a factor over 1 moves formants and pitch up, as a shorter vocal tract does, and the
    frames (tempo) are untouched. A factor of 1 returns the features unchanged."""
    rows, frames = features.shape
    if rows % n_mels:
        raise ValueError(f"{rows} feature rows are not views of {n_mels} mel bands")
    source = np.clip(np.arange(n_mels, dtype=np.float64) / factor, 0.0, n_mels - 1.0)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, n_mels - 1)
    weight = (source - low).astype(np.float32)[:, None]
    views = features.reshape(rows // n_mels, n_mels, frames)
    warped = views[:, low, :] * (1.0 - weight) + views[:, high, :] * weight
    return np.ascontiguousarray(warped.reshape(rows, frames), dtype=np.float32)


def augment(audio: Audio, rng: np.random.Generator,
            config: AugmentConfig = AugmentConfig()) -> Audio:
    """A random channel applied to one clip: (samples,) float32 in, (samples',) float32 out.

    Speed perturbation changes the length (by at most ``speed_range``); the rest keep it.
    """
    sr = config.sample_rate
    x = np.asarray(audio, dtype=np.float32)
    if x.size < 16:
        return x.copy()
    if rng.random() < config.p_speed:
        factor = float(rng.uniform(*config.speed_range))
        # resampling to sr/factor and playing at sr: tempo and pitch both scale by factor
        x = resample(x, sr, max(1, round(sr / factor)))
    # drawn only when enabled, so p_reverb=0 leaves every later draw as v1.5.0's recipe drew it
    if config.p_reverb > 0.0 and rng.random() < config.p_reverb:
        x = reverberate(x, room_impulse_response(float(rng.uniform(*config.rt60_range_s)),
                                                 float(rng.uniform(*config.drr_range_db)),
                                                 rng, sr))
    if rng.random() < config.p_eq:
        x = _peaking_eq(x, float(rng.uniform(200.0, 0.45 * sr)),
                        float(rng.uniform(-config.eq_gain_db, config.eq_gain_db)),
                        float(rng.uniform(0.5, 3.0)), sr)
    if rng.random() < config.p_tilt:
        x = _tilt(x, float(rng.uniform(*config.tilt_range)))
    # a random level: matters for the noise floor and for G.711's quantisation step
    x = set_rms_dbfs(x, float(rng.uniform(*config.level_dbfs_range)))
    if rng.random() < config.p_noise:
        x = add_noise(x, float(rng.uniform(*config.snr_db_range)),
                      float(rng.choice([0.0, 1.0, 2.0])), rng)
    # drawn only when enabled, so p_clip=0 leaves every later draw as v1.7.0's recipe drew it
    if config.p_clip > 0.0 and rng.random() < config.p_clip:
        x = clipped(set_rms_dbfs(x, CLIP_LINE_LEVEL_DBFS),
                    float(rng.uniform(*config.clip_gain_db_range)))
    # drawn only when enabled, so p_codec=0 leaves every later draw (and v1.1.0's recipe) as is
    if config.p_codec > 0.0 and rng.random() < config.p_codec:
        x = codec_roundtrip(x, "opus" if rng.random() < config.opus_share else "mp3", sr,
                            float(rng.uniform(*config.codec_level_range)))
    if rng.random() < config.p_phone:
        x = band_limit(x, float(rng.uniform(200.0, 400.0)), float(rng.uniform(3000.0, 3600.0)),
                       sample_rate=sr)
        x = mulaw_roundtrip(x) if rng.random() < 0.5 else alaw_roundtrip(x)
    return np.asarray(np.clip(x, -1.0, 1.0), dtype=np.float32)


_CODEC_FORMATS: dict[str, tuple[str, str]] = {"opus": ("OGG", "OPUS"),
                                               "mp3": ("MP3", "MPEG_LAYER_III")}


def codec_roundtrip(audio: Audio, codec: LossyCodec = "opus",
                    sample_rate: int = ANALYSIS_SAMPLE_RATE,
                    compression_level: float = 1.0) -> Audio:
    """Encode to Ogg/Opus or MP3 in memory through libsndfile and decode back (same length).

    ``compression_level`` in [0, 1] is libsndfile's bitrate knob; 1.0 is its lowest bitrate
    (~5 kbit/s Opus at 8 kHz). The decoded signal is cut or zero-padded to the input length
    (MP3 frames pad the end); the codecs' few-ms delay is kept, as a real decoder keeps it.
    """
    import io

    import soundfile as sf

    try:
        fmt, subtype = _CODEC_FORMATS[codec]
    except KeyError as e:
        raise ValueError(f"codec={codec!r}: use one of {', '.join(_CODEC_FORMATS)}") from e
    level = float(np.clip(compression_level, 0.0, 1.0))
    extra: dict[str, str] = {}
    if codec == "mp3":
        # LAME via libsndfile refuses a level under VBR, and 1.0 at 8 kHz (below MPEG-2.5's
        # 8 kbit/s floor); 0.99 already gives that floor
        extra, level = {"bitrate_mode": "CONSTANT"}, min(level, 0.99)
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format=fmt, subtype=subtype,
             compression_level=level, **extra)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    out = np.zeros_like(audio, dtype=np.float32)
    n = min(out.size, decoded.size)
    out[:n] = decoded[:n]
    return out


def opus_roundtrip(audio: Audio, sample_rate: int = ANALYSIS_SAMPLE_RATE,
                   compression_level: float = 1.0) -> Audio:
    """Ogg/Opus round trip (:func:`codec_roundtrip`); 1.0 is ~5 kbit/s at 8 kHz speech."""
    return codec_roundtrip(audio, "opus", sample_rate, compression_level)


def butter_filter(audio: Audio, cutoff_hz: float, btype: Literal["lowpass", "highpass"],
                  sample_rate: int = ANALYSIS_SAMPLE_RATE, order: int = 6) -> Audio:
    """Butterworth low- or high-pass."""
    sos = scipy.signal.butter(order, min(cutoff_hz, 0.49 * sample_rate), btype=btype,
                              fs=sample_rate, output="sos")
    return np.asarray(scipy.signal.sosfilt(sos, audio), dtype=np.float32)


def strong_eq(audio: Audio, sample_rate: int = ANALYSIS_SAMPLE_RATE) -> Audio:
    """A cheap-handset colouring: +10 dB resonance at 1.8 kHz and a bright tilt."""
    return _tilt(_peaking_eq(audio, 1800.0, 10.0, 1.5, sample_rate), 0.8)


def clipped(audio: Audio, gain_db: float = 20.0) -> Audio:
    """Overdriven line: ``gain_db`` of gain, then hard clipping at full scale."""
    return np.asarray(np.clip(audio * 10.0 ** (gain_db / 20.0), -1.0, 1.0), dtype=np.float32)
