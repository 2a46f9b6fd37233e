"""The voice-activity edge: per-frame speech probabilities of one channel, no decisions.

WebRTC's VAD (``webrtcvad-wheels``) classifies each ``frame_ms`` frame of 16-bit PCM as
speech or not. It is a GMM on sub-band energies, runs at ~3000-6000x real time on one core
at 8 kHz, and adapts its noise model along the channel (so one ``Vad`` instance is run over
one channel from start to end). Its output is binary; the value returned here is the share
of speech decisions in a centred window of ``smoothing_ms`` (a hangover-like soft score).
Turning scores into utterances is :mod:`worker.segmentation`'s job. :class:`VadStream`
takes a channel in pieces (long recordings, :mod:`worker.stream`) with the same decisions.

WebRTC's energy thresholds are absolute: speech 25 dB below a normal line level loses a
fifth of its frames and 35 dB below it is not found at all. So each block of the channel
the VAD decides is first raised towards a target level (:func:`level_gain_db`); the gain
is for the VAD's eyes only (the emotion features are level-invariant and see the raw audio).
Each block also loses its mean first (:func:`without_dc`): a DC offset otherwise hides
the block's noise floor from that gain and moves the cut.

Measurements behind the defaults: ``python -m training.vad_eval`` (see docs/vad.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import webrtcvad

from worker.constants import ANALYSIS_SAMPLE_RATE
from worker.errors import ConfigError

Audio = npt.NDArray[np.float32]
Probabilities = npt.NDArray[np.float32]
Levels = npt.NDArray[np.float32]

SILENCE_DB = -120.0
"""Level (dBFS) :func:`frame_levels_db` gives a frame of digital silence: under any
16-bit signal (-96 dBFS)."""

_FRAME_MS_CHOICES = (10, 20, 30)  # the only frame lengths the WebRTC VAD accepts
_INT16_SCALE = 32767.0
# Frames converted to int16 per block: keeps the extra memory bounded (~1 MB) for a
# 4-hour channel instead of a second full-length copy of the signal.
_BLOCK_FRAMES = 4096
_IDLE_SPAN = 1e-6
"""Peak-to-peak (full scale 1) under which a frame holds one value (:func:`without_idle_frames`):
1/30 of a 16-bit step, so only digital constants (and a resampler's rounding of them) fall
under it; attenuated line noise 35 dB below a quiet studio floor still spans ~3e-5."""
# Percentiles of the block's frame levels (digital silence left out) that stand for its
# speech ("loud") and its noise floor ("quiet"): a party talking 5 % of a block still sets
# the loud one; the quiet one is the floor when the party talks up to 90 % of the time.
_LOUD_PERCENTILE = 95.0
_QUIET_PERCENTILE = 10.0


@dataclass(frozen=True)
class VadConfig:
    """Settings of the WebRTC VAD and of the soft score derived from its decisions."""

    aggressiveness: int = 3
    """WebRTC mode 0 (most permissive) .. 3 (most aggressive). 3: best mean utterance F1
    over the 12 conditions of ``python -m training.vad_eval --tune coarse`` (train split):
    mode 0/1/2/3 -> 0.801/0.832/0.868/0.869, and the best worst-condition F1 (mode 2 lets
    white noise at 10 dB SNR through: min F1 0.64 vs 0.76, ``--tune fine``)."""

    frame_ms: int = 10
    """WebRTC frame length (10, 20 or 30 ms). 10: best mean utterance F1 on the coarse
    grid (10/20/30 ms -> 0.869/0.841/0.824) at ~3700 channel-s per CPU-s (30 ms: ~6300)."""

    smoothing_ms: int = 30
    """Width of the centred moving average over binary decisions (ms; = frame_ms: none).
    A centred window spans an odd number of frames: the width is rounded to the nearest
    frame count and an even count up by one (:attr:`smoothing_frames`), so with 10 ms frames
    15 and 20 ms act as 30 (3 frames), and with 20 ms frames the default 30 ms acts as 60.
    30 ms (3 frames): a majority vote with threshold 0.5; on both grids 1, 3 and 5 frames
    gave the same best F1 (+-0.001), so this only makes the score soft, not better."""

    target_level_dbfs: float = -15.0
    """Level (dBFS, frame energy) a quiet block's loud frames are raised to before the VAD.
    Louder blocks are never attenuated. On ``python -m training.vad_eval --tune level``
    (train split, seeds 1 and 2) every target from -20 to -5 dBFS scores within 0.012 mean
    utterance F1 of the best (front end off: 0.64, 0.61); -15 is near the top on both seeds
    and sits just under a normal line's level, so normal lines get no gain (docs/vad.md)."""

    noise_ceiling_dbfs: float = -45.0
    """The gain never lifts a block's quiet frames above this level: WebRTC takes some
    stationary noise at -30 dBFS for speech (~2.7 s per minute) and nearly all of it at
    -20 dBFS, and a block with no speech has only quiet frames. -45: the highest ceiling of that grid that
    adds no speech to noise-only channels (-40 adds 0.15 s per minute, -35 0.46 s)."""

    max_gain_db: float = 40.0
    """Largest gain (dB) applied to a block; 0 turns the level front end off."""

    remove_dc: bool = True
    """Subtract each block's mean before its level gain and decisions (:func:`without_dc`),
    frames holding one value taken as digital silence first (:func:`without_idle_frames`:
    a codec's idle code, A-law's silence).
    A 0.05 DC offset on the RAVDESS test clips cost emotion-v1.4.0 7.0 points of UA without
    it (55.1 % vs 62.1 % clean) and 1.7 with it (60.4 %), ``callmood evaluate --robustness``.
    Every shipped model, emotion-v1.9.0 included, was trained on cuts made without it (their
    recipes were fixed before it existed: the cards say ``remove_dc: false`` in their training
    config; cards before v1.4.0 lack the field); False reproduces those cuts, and the worker
    serves with it on (the cards' test figures are measured that way)."""

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ConfigError(f"VadConfig.aggressiveness={self.aggressiveness!r}: use 0, 1, 2 or 3")
        if self.frame_ms not in _FRAME_MS_CHOICES:
            raise ConfigError(f"VadConfig.frame_ms={self.frame_ms!r}: use 10, 20 or 30 "
                              "(the frame lengths the WebRTC VAD accepts)")
        if self.smoothing_ms < self.frame_ms:
            raise ConfigError(f"VadConfig.smoothing_ms={self.smoothing_ms!r}: must be at least "
                              f"frame_ms={self.frame_ms} (equal means no smoothing)")
        if not 0.0 <= self.max_gain_db <= 90.0:
            raise ConfigError(f"VadConfig.max_gain_db={self.max_gain_db!r}: use 0 (off) to 90 dB")
        for name in ("target_level_dbfs", "noise_ceiling_dbfs"):
            if not -90.0 <= getattr(self, name) <= 0.0:
                raise ConfigError(f"VadConfig.{name}={getattr(self, name)!r}: use -90 to 0 dBFS")

    @property
    def frame_s(self) -> float:
        """Frame length in seconds."""
        return self.frame_ms / 1000.0

    @property
    def frame_samples(self) -> int:
        """Samples per frame at ANALYSIS_SAMPLE_RATE."""
        return ANALYSIS_SAMPLE_RATE * self.frame_ms // 1000

    @property
    def smoothing_frames(self) -> int:
        """Odd number of frames in the smoothing window (1 = none)."""
        k = max(1, round(self.smoothing_ms / self.frame_ms))
        return k if k % 2 == 1 else k + 1


def n_frames(n_samples: int, config: VadConfig) -> int:
    """Number of frames covering ``n_samples`` (the last one may be partial): ceil."""
    return -(-n_samples // config.frame_samples)


def finite_samples(audio: npt.ArrayLike) -> Audio:
    """float32 samples with NaN as 0 and +/-inf as full scale (+/-1): what the level gain
    and the int16 conversion read, so one bad sample cannot poison a whole block."""
    return np.nan_to_num(np.asarray(audio, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)


def to_pcm16(audio: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """float in [-1, 1] -> int16, clipping out-of-range samples and zeroing NaN/inf."""
    x = finite_samples(audio)
    pcm: npt.NDArray[np.int16] = np.rint(np.clip(x, -1.0, 1.0) * _INT16_SCALE).astype(np.int16)
    return pcm


def without_dc(audio: Audio) -> Audio:
    """``audio`` less the mean of its signal, shape kept: exact zeros (digital silence)
    stay zero and out of the mean, as do NaN/inf.

    Applied to each VAD block before its level gain and decisions. A DC offset (a cheap
    ADC, some line cards) adds a constant to every frame: the level gain reads it as the
    block's noise floor and gives no gain, and WebRTC sees it as low-band energy, so the cut
    moves (``VadConfig.remove_dc`` has the figures). Digital silence (a muted, on-hold or
    not yet connected channel; the gaps of many corpus clips) carries no offset: shifting it
    by the signal's mean turned it into a faint constant that the level gain counted as the
    block's noise floor instead of leaving it out, so a block that was part silence got up
    to ``max_gain_db`` of gain and line noise was cut as speech. The mean is the block's
    own (blocks sit at fixed positions), so streamed and whole-file runs still decide alike.
    """
    x = np.asarray(audio, dtype=np.float32)
    signal = np.isfinite(x) & (x != 0.0)
    if not signal.any():
        return x
    dc = float(np.mean(x[signal], dtype=np.float64))
    if dc == 0.0:
        return x
    return np.where(signal, x - np.float32(dc), x).astype(np.float32)


def without_idle_frames(audio: Audio, frame_samples: int) -> Audio:
    """``audio`` with every whole ``frame_samples`` frame that holds a single non-zero value
    set to 0 (digital silence), shape kept; other samples and a partial last frame as given.

    A codec's silence need not decode to 0: G.711 A-law has no zero code, so a muted,
    on-hold or silence-suppressed (VoIP DTX) stretch decodes to a constant +-8 LSB, and an
    8-bit file whose silence sits one code off mid-scale to a constant -1/128. Counted as
    signal, those stretches were the block's noise floor: the level gain rose to its cap and
    comfort-noise bursts between them were cut as speech (an A-law copy of a call whose
    customer only had -55 dBFS noise bursts got 4 customer utterances, the PCM copy none; a
    review). A real signal never holds one value for a frame: the tolerance
    (:data:`_IDLE_SPAN`) is far below a 16-bit step, and only absorbs a resampler's rounding.
    """
    x = np.asarray(audio, dtype=np.float32)
    n = x.size // frame_samples
    if n == 0:
        return x
    frames = x[:n * frame_samples].reshape(n, frame_samples)
    with np.errstate(invalid="ignore"):  # a frame holding NaN is not idle (ptp is NaN)
        idle = (np.ptp(frames, axis=1) <= _IDLE_SPAN) & (frames[:, 0] != 0.0)
    if not idle.any():
        return x
    out = x.copy()
    out[:n * frame_samples].reshape(n, frame_samples)[idle] = 0.0
    return out


def frame_levels_db(audio: npt.ArrayLike, frame_samples: int) -> Levels:
    """Mean-power level (dBFS) of each frame, shape (ceil(n / frame_samples),); the partial
    last frame is zero-padded (as the VAD frames it), digital silence is SILENCE_DB."""
    x = finite_samples(audio)
    n = -(-x.size // frame_samples)
    padded = np.zeros(n * frame_samples, dtype=np.float64)
    padded[:x.size] = x
    power = np.mean(padded.reshape(n, frame_samples) ** 2, axis=1)
    levels: Levels = np.maximum(10.0 * np.log10(np.maximum(power, 1e-30)),
                                SILENCE_DB).astype(np.float32)
    return levels


def level_gain_db(audio: npt.ArrayLike, config: VadConfig) -> float:
    """Gain (dB, >= 0) that brings a block's speech towards ``config.target_level_dbfs``.

    ``audio``: 1-D float at ANALYSIS_SAMPLE_RATE (one VAD block, any length). Frame levels
    are energies of ``frame_ms`` frames in dBFS, digitally silent frames left out. The gain
    is ``target - loud`` capped by ``noise_ceiling - quiet`` and ``max_gain_db``, floored
    at 0; 0 for an empty or digitally silent block.
    """
    if config.max_gain_db == 0.0:
        return 0.0
    x = finite_samples(audio)
    step = config.frame_samples
    n = x.size // step
    if n == 0:
        return 0.0
    frames = x[:n * step].reshape(n, step).astype(np.float64)
    energy = np.mean(frames * frames, axis=1)
    energy = energy[energy > 0.0]
    if energy.size == 0:
        return 0.0
    level_db = 10.0 * np.log10(energy)
    loud_db, quiet_db = np.percentile(level_db, [_LOUD_PERCENTILE, _QUIET_PERCENTILE])
    gain_db = min(config.target_level_dbfs - loud_db, config.noise_ceiling_dbfs - quiet_db,
                  config.max_gain_db)
    return max(0.0, float(gain_db))


class VadStream:
    """WebRTC decisions of one channel fed in pieces of any length; see :func:`speech_decisions`.

    The channel is cut into blocks of ``_BLOCK_FRAMES`` frames at fixed positions from its
    start, whatever the lengths of the pieces pushed, and every block is decided exactly as
    the whole-channel call decides it (same ``Vad`` instance carried along, same level gain
    from the block's own samples, same skipping of digitally silent blocks). So pushing a
    channel in pieces gives the same decisions, bit for bit, as one call on the whole
    channel; the pieces left over between pushes
    (at most one block, ~1.3 MB at 10 ms frames) are the only audio kept.
    """

    def __init__(self, config: VadConfig) -> None:
        self._config = config
        self._vad = webrtcvad.Vad(config.aggressiveness)  # fresh state: one per channel
        self._block_samples = _BLOCK_FRAMES * config.frame_samples
        self._pending: list[Audio] = []
        self._pending_samples = 0
        self._decided: list[npt.NDArray[np.bool_]] = []
        self._levels_db: list[Levels] = []
        self._gains_db: list[float] = []
        self._n_samples = 0
        self._finished = False

    @property
    def n_samples(self) -> int:
        """Samples pushed so far (at ANALYSIS_SAMPLE_RATE)."""
        return self._n_samples

    @property
    def gains_db(self) -> tuple[float, ...]:
        """Level gain (dB) applied to each block decided so far (:func:`level_gain_db`)."""
        return tuple(self._gains_db)

    def levels_db(self) -> Levels:
        """Each frame's level (dBFS, :func:`frame_levels_db`) as the VAD saw it before its
        gain (DC and idle frames removed when ``remove_dc``), shape (n_frames,); after
        :meth:`finish`. The crosstalk gate compares the two channels' levels."""
        if not self._finished:
            raise RuntimeError("VadStream.levels_db before finish")
        if not self._levels_db:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._levels_db)

    def push(self, audio: Audio) -> None:
        """Append mono float32 samples at ANALYSIS_SAMPLE_RATE, shape (n,)."""
        if self._finished:
            raise RuntimeError("VadStream.push after finish")
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"VadStream expects mono audio (1-D), got shape {x.shape}")
        if x.size == 0:
            return
        self._n_samples += x.size
        if self._pending_samples + x.size < self._block_samples:
            # copy: a view would keep the caller's whole (possibly large) array alive
            self._pending.append(x.copy())
            self._pending_samples += x.size
            return
        if self._pending:
            x = np.concatenate([*self._pending, x])
            self._pending, self._pending_samples = [], 0
        n_full = x.size // self._block_samples
        for k in range(n_full):
            self._decide(x[k * self._block_samples:(k + 1) * self._block_samples])
        rest = x[n_full * self._block_samples:]
        if rest.size:
            self._pending, self._pending_samples = [rest.copy()], rest.size

    def finish(self) -> npt.NDArray[np.bool_]:
        """Decide the last (partial) block and return every decision, shape (n_frames,)."""
        if not self._finished:
            if self._pending:
                self._decide(np.concatenate(self._pending))
                self._pending, self._pending_samples = [], 0
            self._finished = True
        if not self._decided:
            return np.zeros(0, dtype=np.bool_)
        return np.concatenate(self._decided)

    def _decide(self, chunk: Audio) -> None:
        """Decisions of one block of at most _BLOCK_FRAMES frames (a partial last frame is
        zero-padded)."""
        step = self._config.frame_samples
        count = n_frames(chunk.size, self._config)
        out = np.zeros(count, dtype=np.bool_)
        self._decided.append(out)
        if self._config.remove_dc:
            chunk = without_dc(without_idle_frames(chunk, step))
        self._levels_db.append(frame_levels_db(chunk, step))
        gain_db = level_gain_db(chunk, self._config)
        self._gains_db.append(gain_db)
        if gain_db > 0.0:
            chunk = chunk * np.float32(10.0 ** (gain_db / 20.0))
        block = np.zeros(count * step, dtype=np.int16)  # zero tail pads the last frame
        block[:chunk.size] = to_pcm16(chunk)
        if not block.any():
            return  # digital silence: WebRTC says non-speech; skip the calls
        frame_bytes = 2 * step
        view = memoryview(block.tobytes())
        out[:] = [
            self._vad.is_speech(view[i * frame_bytes:(i + 1) * frame_bytes], ANALYSIS_SAMPLE_RATE)
            for i in range(count)
        ]


@dataclass(frozen=True)
class ChannelActivity:
    """What the VAD measured on one channel, frame by frame."""

    probabilities: Probabilities
    """Soft speech score in [0, 1], shape (n_frames,) (:func:`speech_probabilities`)."""
    levels_db: Levels
    """Frame levels (dBFS), shape (n_frames,) (:meth:`VadStream.levels_db`)."""


def channel_activity(audio: Audio, config: VadConfig) -> ChannelActivity:
    """:func:`speech_probabilities` and the frame levels of ``audio`` (mono, at
    ANALYSIS_SAMPLE_RATE), from one pass of the VAD."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"channel_activity expects mono audio (1-D), got shape {x.shape}")
    stream = VadStream(config)
    stream.push(x)
    return ChannelActivity(smooth(stream.finish(), config.smoothing_frames), stream.levels_db())


def speech_decisions(audio: Audio, config: VadConfig) -> npt.NDArray[np.bool_]:
    """WebRTC's binary decision per frame, shape (n_frames,).

    ``audio``: 1-D float32 at ANALYSIS_SAMPLE_RATE. Frame i covers samples
    [i * frame_samples, (i + 1) * frame_samples); the partial last frame is zero-padded.
    Equal to pushing the same samples through a :class:`VadStream` in any pieces.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"speech_decisions expects mono audio (1-D), got shape {x.shape}")
    stream = VadStream(config)
    stream.push(x)
    return stream.finish()


def smooth(decisions: npt.ArrayLike, width_frames: int) -> Probabilities:
    """Centred moving average of 0/1 decisions, shape kept; edges average what exists.

    Computed ``_BLOCK_FRAMES`` outputs at a time (each block's running sum starts at its
    window's first frame), so the float64 temporaries stay ~0.2 MB instead of ~40 bytes per
    frame (~30 MB for a 2-hour channel). For 0/1 decisions the sums are exact integers, so
    the result does not depend on the blocking.
    """
    d = np.asarray(decisions)
    if width_frames <= 1 or d.size == 0:
        return d.astype(np.float32)
    half = width_frames // 2
    out: Probabilities = np.empty(d.size, dtype=np.float32)
    for first in range(0, d.size, _BLOCK_FRAMES):
        last = min(first + _BLOCK_FRAMES, d.size)
        base = max(first - half, 0)
        window = d[base:min(last + half, d.size)].astype(np.float64)
        csum = np.concatenate(([0.0], np.cumsum(window)))
        idx = np.arange(first, last)
        lo = np.maximum(idx - half, 0)
        hi = np.minimum(idx + half + 1, d.size)
        out[first:last] = (csum[hi - base] - csum[lo - base]) / (hi - lo)
    return out


def speech_probabilities(audio: Audio, config: VadConfig) -> Probabilities:
    """Soft speech score in [0, 1] per ``config.frame_ms`` frame, shape (ceil(n / frame),).

    ``audio``: mono float32 at ANALYSIS_SAMPLE_RATE, nominally in [-1, 1] (clipped).
    Frame i covers [i * frame_ms, (i + 1) * frame_ms). Empty input gives shape (0,).
    """
    return smooth(speech_decisions(audio, config), config.smoothing_frames)
