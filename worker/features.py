"""Log-mel features: the one implementation used by training and by the worker.

Training imports :func:`extract_features` from here and writes the :class:`FeatureConfig`
into the model card; the worker reads the config back from the card. So the features a
model was trained on and the features it is served can never drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import scipy.fft

from worker.constants import ANALYSIS_SAMPLE_RATE
from worker.vad import without_dc

Normalization = Literal["none", "utterance_cmn", "utterance_cmvn", "utterance_level",
                        "utterance_cmn_and_level"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel settings; stored in every model card.

    Defaults: 25 ms Hann window, 10 ms hop, 64 mel bands over the telephone band.
    """

    sample_rate: int = ANALYSIS_SAMPLE_RATE
    n_fft: int = 256
    win_length: int = 200
    hop_length: int = 80
    n_mels: int = 64
    fmin_hz: float = 60.0
    fmax_hz: float = 3800.0
    log_floor: float = 1e-6
    normalization: Normalization = "utterance_cmn"
    dynamic_range_db: float | None = None
    """If set, mel energies more than this many dB below the utterance's loudest one are
    clamped there, so scaling the audio only shifts the log-mel by a constant (which CMN
    removes) as long as ``log_floor`` stays below that level. None: only the absolute
    ``log_floor`` (how emotion-v1.0.0 was trained; it loses quiet lines to the floor)."""
    remove_dc: bool = False
    """Subtract the utterance's mean sample before framing. A DC offset (a cheap sound card,
    a biased line) otherwise leaks into the lowest mel bands through the window's main lobe
    and shifts every frame the same way, which CMN only partly undoes because the log is not
    additive. The same removal as the VAD's (:func:`worker.vad.without_dc`). False: how every
    shipped model, emotion-v1.9.0 included, was trained (cards before v1.4.0 lack the field)."""

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length={self.win_length} must be <= n_fft={self.n_fft}")
        if not 0 <= self.fmin_hz < self.fmax_hz <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin_hz < fmax_hz <= {self.sample_rate / 2} Hz")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={self.normalization!r}: use one of {NORMALIZATIONS}")
        if self.dynamic_range_db is not None and not self.dynamic_range_db > 0:
            raise ValueError(f"dynamic_range_db={self.dynamic_range_db} must be > 0 dB or None")

    @property
    def n_views(self) -> int:
        """Normalised copies of the log-mel stacked along the band axis (2 for
        ``utterance_cmn_and_level``, else 1); the model reads each as an input channel."""
        return 2 if self.normalization == "utterance_cmn_and_level" else 1

    @property
    def input_rows(self) -> int:
        """Rows of the model input: ``n_views * n_mels``."""
        return self.n_views * self.n_mels

    @property
    def frame_s(self) -> float:
        """Seconds between feature frames."""
        return self.hop_length / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        """The config a card records. A key the card lacks takes its default, which is the
        value of the cards written before the key existed (e.g. ``remove_dc`` False); a key
        this code does not know is refused (ValueError naming the valid keys): a card from
        newer training code must not be served with features it does not describe."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown feature setting(s) {', '.join(unknown)}; valid are "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**data)


# Slaney's mel scale (Auditory Toolbox; librosa's default, htk=False): linear below 1 kHz,
# logarithmic above. Written out here rather than calling librosa.filters.mel because importing
# librosa costs a fresh worker ~1.5 s and ~140 MB of RSS for a 64x129 matrix;
# tests/worker/test_features.py checks this equals librosa's filterbank.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_STEP = float(np.log(6.4) / 27.0)


def hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney mel of frequencies in Hz."""
    f = np.asarray(hz, dtype=np.float64)
    start_mel = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL
    log_part = start_mel + np.log(np.maximum(f, 1e-10) / _SLANEY_LOG_START_HZ) / _SLANEY_LOG_STEP
    return np.where(f >= _SLANEY_LOG_START_HZ, log_part, f / _SLANEY_HZ_PER_MEL)


def mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(mel, dtype=np.float64)
    start_mel = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL
    log_part = _SLANEY_LOG_START_HZ * np.exp(_SLANEY_LOG_STEP * (m - start_mel))
    return np.where(m >= start_mel, log_part, m * _SLANEY_HZ_PER_MEL)


@lru_cache(maxsize=8)
def _mel_filterbank(config: FeatureConfig) -> npt.NDArray[np.float32]:
    """(n_mels, n_fft // 2 + 1) Slaney-normalised triangular mel filterbank, once per config."""
    fft_hz = np.fft.rfftfreq(config.n_fft, d=1.0 / config.sample_rate)
    edges_mel = np.linspace(hz_to_mel(np.array(config.fmin_hz)), hz_to_mel(np.array(config.fmax_hz)),
                            config.n_mels + 2)
    edges_hz = mel_to_hz(edges_mel)
    widths_hz = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths_hz[:-1, None]
    falling = ramps[2:] / widths_hz[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: each triangle has unit area, so wide high bands are not louder
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return np.ascontiguousarray(weights, dtype=np.float32)


@lru_cache(maxsize=8)
def _window(n_fft: int, win_length: int) -> npt.NDArray[np.float32]:
    """Periodic Hann window of ``win_length`` centred in ``n_fft`` samples."""
    win = np.zeros(n_fft, dtype=np.float32)
    start = (n_fft - win_length) // 2
    n = np.arange(win_length, dtype=np.float64)
    win[start:start + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length)
    return win


def n_frames(n_samples: int, config: FeatureConfig) -> int:
    """Number of feature frames :func:`log_mel` yields for ``n_samples`` samples."""
    return 1 + max(0, n_samples - 1) // config.hop_length if n_samples > 0 else 0


def log_mel(audio: npt.NDArray[np.floating[Any]], config: FeatureConfig) -> npt.NDArray[np.float32]:
    """Natural-log mel energies, shape (n_mels, n_frames), float32.

    ``audio`` is mono at ``config.sample_rate``. Frames are centred (the signal is
    reflect-padded by n_fft/2 at each end), so frame ``t`` describes time ``t * frame_s``.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"audio must be 1-D (samples,), got shape {x.shape}")
    frames_out = n_frames(x.size, config)
    if frames_out == 0:
        return np.zeros((config.n_mels, 0), dtype=np.float32)
    if config.remove_dc:
        x = without_dc(x)
    pad = config.n_fft // 2
    mode: Literal["reflect", "constant"] = "reflect" if x.size > pad else "constant"
    x = np.pad(x, (pad, pad), mode=mode)
    frames = np.lib.stride_tricks.sliding_window_view(x, config.n_fft)[::config.hop_length]
    frames = frames[:frames_out] * _window(config.n_fft, config.win_length)
    spectrum = scipy.fft.rfft(frames, n=config.n_fft, axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = _mel_filterbank(config) @ power.T
    floor = config.log_floor
    if config.dynamic_range_db is not None:
        floor = max(floor, float(mel.max()) * 10.0 ** (-config.dynamic_range_db / 10.0))
    return np.asarray(np.log(np.maximum(mel, floor)), dtype=np.float32)


def normalize(features: npt.NDArray[np.float32], config: FeatureConfig) -> npt.NDArray[np.float32]:
    """Per-utterance normalisation of a (n_mels, n_frames) log-mel; returns
    (config.input_rows, n_frames).

    ``utterance_cmn``/``utterance_cmvn`` work per mel band over time: they remove the constant
    spectral colouring of a channel (microphone, line EQ, level), which would otherwise become
    a corpus label the model learns first, but with it the utterance's own long-term spectrum
    (vocal effort tilts it: shouted speech carries more energy high up). ``utterance_level``
    subtracts one number, the mean over all bands and frames: with a ``dynamic_range_db``
    floor that removes the gain alone and keeps the spectral envelope; the channel's colouring
    is then left for training's EQ, tilt and phone-band augmentation to teach away.
    ``utterance_cmn_and_level`` stacks both views, CMN rows first: a model of one view
    misses what the other keeps (their ensemble beat either on validation speakers).
    """
    if config.normalization == "none":
        return features
    if features.shape[1] == 0:
        return np.zeros((config.input_rows, 0), dtype=np.float32)
    if config.normalization == "utterance_level":
        return np.asarray(features - features.mean(), dtype=np.float32)
    centred = features - features.mean(axis=1, keepdims=True)
    if config.normalization == "utterance_cmn":
        return np.asarray(centred, dtype=np.float32)
    if config.normalization == "utterance_cmn_and_level":
        return np.concatenate([centred, features - features.mean()], axis=0).astype(np.float32)
    std = features.std(axis=1, keepdims=True)
    return np.asarray(centred / np.maximum(std, 1e-3), dtype=np.float32)


def extract_features(audio: npt.NDArray[np.floating[Any]], config: FeatureConfig) -> npt.NDArray[np.float32]:
    """Model input for one utterance: normalised log-mel, shape (config.input_rows, n_frames)."""
    return normalize(log_mel(audio, config), config)
