"""Signal constants shared by serving and training: the one place they live.

Why 8 kHz: call-centre audio is overwhelmingly narrowband (G.711 at 8 kHz). Analysing
everything in the 0-4 kHz band means a wideband recording and its phone-line copy look
alike to the VAD and the model, and it halves the DSP cost.
"""

from typing import Final

ANALYSIS_SAMPLE_RATE: Final[int] = 8000
"""Every channel is resampled to this rate (Hz) before VAD and features."""

MIN_INPUT_SAMPLE_RATE: Final[int] = 4000
"""Below this (Hz) a file cannot hold speech in the telephone band; it is rejected."""

MAX_INPUT_SAMPLE_RATE: Final[int] = 384_000
"""Above this (Hz) the header is taken to be corrupt (no recorder writes more)."""

MAX_CHANNELS: Final[int] = 2
"""A call recording has one party per channel: agent and customer."""

DUAL_MONO_MAX_DIFF: Final[float] = 1e-4
"""RMS difference (full scale 1.0, at the analysis rate) between the two channels of a stereo
file (or a block of it) under which they count as one signal whatever their energy: about 3
LSB of 16-bit PCM, so an exact copy, one inverted (rounded apart by an LSB) and a block of
silence on both channels pass. Only for channels that move together
(:data:`DUAL_MONO_MIN_CORRELATION`): over a whole quiet call mostly digital silence, two
parties (or one beside a silent channel) differ by less than it too."""

DUAL_MONO_MIN_CORRELATION: Final[float] = 0.9
"""Correlation of the two channels (sum of a*b over the root of sum a^2 times sum b^2, one
channel inverted if that is closer) that the absolute floor :data:`DUAL_MONO_MAX_DIFF` needs
as well. A review (2026-12-06) found quiet calls of two parties, each utterance at -60 to -65
dBFS in minutes of digital silence, judged one signal: the customer's speech was dropped and
the agent's stored as an unknown party. Measured the same day: a RAVDESS clip written to both
channels in 300 s of digital silence correlates >= 0.999 at -40 to -90 dBFS speech level
(PCM, Opus, G.711), one channel inverted in PCM 0.92 at -80 dBFS (an LSB's rounding is a
large part of it there); two parties who never overlap 0, with 10 % crosstalk each way
about 0.2."""

DUAL_MONO_RESIDUAL_DB: Final[float] = -40.0
"""Energy of the two channels' difference (or sum: one channel's polarity inverted) under
theirs (dB) at which a stereo file counts as dual-mono: one signal written twice (a mono
phone system's stereo export), analysed as mono, one unknown party; as two channels every
utterance was stored twice, once per role, as 100 % overtalk. Measured 2026-12-06 on eight
RAVDESS clips written to both channels: PCM, FLAC, G.711, MP3 and Vorbis decode to exact
copies, Opus to -52 dB (16 kHz) and -66 dB (48 kHz), which the sample-difference test alone
missed (up to 4e-4 apart); two parties' channels measure +3 dB, with 10 % crosstalk each
way +2 dB. Inverted polarity: exact for PCM, G.711 and MP3, Opus -51 dB, Vorbis -15 dB
(such a file stays two parties)."""

DUAL_MONO_MAX_GAIN_DB: Final[float] = 4.0
"""Level difference (dB) up to which one signal written to both channels at two gains counts
as dual-mono too, judged by :data:`DUAL_MONO_GAIN_RESIDUAL_DB`. A review (2026-12-07) found a
copy at 0.99 of the other's level (0.09 dB) -40 dB apart sample by sample already, each
utterance stored twice as agent and customer; 0.95, 0.89 and G.711 the same. Chosen with
``python -m training.dual_mono_eval``: copies at 0.99, 0.89 and 0.7 (3.1 dB) are within it,
at half the level (6 dB) and at a leak's (20 dB) not. Past it the channels stay two parties
whatever their correlation: a silent party's channel that carries only the other's leak
(crosstalk, 20 dB and more under the speaker) keeps the speaker's role, and the crosstalk
gate drops the leak (a copy at half the level stays two parties, as before)."""

DUAL_MONO_GAIN_RESIDUAL_DB: Final[float] = -10.0
"""What is left of one channel after the best gain applied to the other, ``1 -
correlation**2`` over the whole recording (dB), at which channels within
:data:`DUAL_MONO_MAX_GAIN_DB` of each other's level are one signal. ``python -m
training.dual_mono_eval`` (2026-12-07, test split, 4 clips per corpus): copies at 0.99 to 0.7
of the level measure -74 to -78 dB in 16-bit PCM, -34 to -35 in G.711, -24 to -30 in Opus, and
26 dB quieter -23 to -53; two parties' channels 0.0 dB, with 10, 30 and 50 % crosstalk each
way -0.2, -1.6 and -4.4 dB."""

ESTIMATED_LENGTH_FORMATS: Final[tuple[str, ...]] = ("MP3",)
"""soundfile formats whose header length is an estimate: an MP3 without a Xing/Info frame
(encoders that write as they record) is sized from its first frame's bitrate, so a VBR file
that opens with silence reads as ~2x its length (measured: 222 s for 120 s) and one that
opens loud reads as far shorter. That estimate neither refuses a file nor bounds its decode
(a Xing/Info or VBRI frame count, read apart from it, does refuse a file cut short:
``worker.audio.check_mp3_stated_length``)."""

MP3_BITRATES_BPS: Final[tuple[tuple[int, int, int], ...]] = (
    (32_000, 32_000, 448_000),   # MPEG-1: 32, 44.1, 48 kHz
    (0, 8_000, 256_000),         # MPEG-2 and 2.5: 8 to 24 kHz
)
"""(lowest sample rate, lowest bitrate, highest bitrate) of MPEG audio, first match by
sample rate: an MP3 of N bytes lasts between 8 N / highest and 8 N / lowest seconds, whatever
its header estimates. The lowest is layer III's (32 / 8 kbit/s), the highest layer I's
(448 / 256 kbit/s): libsndfile's "MP3" reads layers I and II too, so the bound that refuses
a file undecoded must hold for them."""

MP3_LAYER3_KBPS: Final[dict[str, tuple[int, ...]]] = {
    "1": (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    "2": (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
"""Layer III bitrates (kbit/s) by the header's 4-bit index, for MPEG-1 and for MPEG-2 / 2.5
(ISO/IEC 11172-3 and 13818-3); index 0 is free format, 15 invalid."""

MP3_SAMPLE_RATES: Final[dict[str, tuple[int, int, int]]] = {
    "1": (44_100, 48_000, 32_000), "2": (22_050, 24_000, 16_000), "2.5": (11_025, 12_000, 8_000),
}
"""MPEG audio sample rates (Hz) by the header's 2-bit index (3 is reserved)."""

MP3_SHORT_READ_S: Final[float] = 1.0
"""An MP3 whose MPEG frames hold this many seconds (or more) beyond what libsndfile decoded
is refused: libsndfile stops at a VBR file's header estimate, which a file without a
Xing/Info frame can put at half its length (measured: 60.5 s read of 120 s), and the call
would be stored as done, cut short. A second, as for a WAV's stale header; the decoder's
gapless trimming and a Xing frame differ by a fraction of it."""

MAX_SAMPLE_PEAK: Final[float] = 2.0
"""Decoded samples are on a +-1.0 full scale. Integer PCM, G.711 and the codecs cannot pass
it; a float WAV may overshoot a little (a mastering limiter's +6 dB at most), but one
written at integer scale (samples up to 32767) would be clipped to noise and analysed as
such, so a file whose samples pass this peak is rejected instead."""

FLOAT_SUBTYPES: Final[tuple[str, ...]] = ("FLOAT", "DOUBLE")
"""libsndfile subtypes that store samples as floats, the only uncompressed ones whose decoded
samples can pass +-1.0 (integer PCM and G.711 cannot); a lossy codec's can, from damaged
frames or from float input encoded at integer scale."""

ROLE_AGENT: Final[str] = "agent"
ROLE_CUSTOMER: Final[str] = "customer"
ROLE_UNKNOWN: Final[str] = "unknown"
ROLES: Final[tuple[str, ...]] = (ROLE_AGENT, ROLE_CUSTOMER, ROLE_UNKNOWN)

EMOTIONS: Final[tuple[str, ...]] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
"""The seven classes of the emotion model, in the order of its output."""
PROB_COLUMNS: Final[tuple[str, ...]] = tuple(f"p_{label}" for label in EMOTIONS)
"""The probability column of each class (``segments`` table, analytics frames), same order."""

MODEL_STAMP_CHARS: Final[int] = 64
"""Width of the ``model_version`` columns that record :attr:`worker.emotion.ModelCard.stamp`."""

AUDIO_SUFFIXES: Final[tuple[str, ...]] = (".wav", ".flac", ".ogg", ".opus", ".oga", ".mp3")
"""File suffixes taken for recordings when a folder is expanded (CLI, inbox scan)."""
