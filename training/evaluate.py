"""Evaluate any ONNX emotion model (+ card) on any manifest(s), through the serving path.

Each clip goes ``worker.audio.load_mono`` (then its span of the file, if the manifest names
one) -> optional channel -> the worker's cut to speech -> ``worker.features.extract_features``
-> ``worker.emotion.load_model(...).predict_proba``: exactly what the worker does to a
segment, so the figures describe the shipped artefact, not a torch twin.
Metrics per corpus: UA (unweighted average recall over the classes present), WA (accuracy),
ECE (15 equal-width confidence bins) and the confusion matrix (rows true, columns predicted).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.augment import (
    CLIP_LINE_LEVEL_DBFS,
    add_noise,
    butter_filter,
    clipped,
    opus_roundtrip,
    phone_line,
    reverberate,
    rms,
    room_impulse_response,
    set_rms_dbfs,
    strong_eq,
)
from training.clips import load_clips
from training.dataset import (
    SUBSET_TRAIN,
    SUBSET_VAL,
    ClipSource,
    card_train_speakers,
    card_val_speakers,
    clip_sources,
    map_labels,
    read_manifests,
    speaker_keys,
)
from worker.constants import ANALYSIS_SAMPLE_RATE
from worker.emotion import EmotionModel, ModelCard, load_model
from worker.errors import ConfigError
from worker.features import FeatureConfig, extract_features
from worker.pipeline import SpeechCut

Transform = Callable[[npt.NDArray[np.float32], int], npt.NDArray[np.float32]]


DEFAULT_SPEECH_CUT = SpeechCut()
"""The worker's default VAD and segmentation settings."""


def _speech_rms(x: npt.NDArray[np.float32], sample_rate: int, condition: str) -> float:
    """RMS of the speech the worker's default cut finds in ``x``: the region that is scored.
    Over the whole clip, RAVDESS's half silence made a named 10 dB SNR about 13 dB in that
    region (EmoDB and URDU, nearly all speech: about 10), and would overdrive its speech more
    than EmoDB's."""
    if sample_rate != ANALYSIS_SAMPLE_RATE:
        raise ConfigError(f"{condition} conditions cut speech at {ANALYSIS_SAMPLE_RATE} Hz; the "
                          f"model reads {sample_rate} Hz")
    return rms(DEFAULT_SPEECH_CUT.apply(x))


def _noise(snr_db: float) -> Transform:
    def transform(x: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.float32]:
        # the SNR is over the speech that is scored
        reference = _speech_rms(x, sample_rate, "noise")
        # seeded by the clip's samples and the SNR: each clip and condition its own noise,
        # the same in every run
        rng = np.random.default_rng([zlib.crc32(x.tobytes()), round(snr_db * 10)])
        return add_noise(x, snr_db, 1.0, rng, reference_rms=reference)

    return transform


CLIPPING_SPEECH_RMS_DBFS = CLIP_LINE_LEVEL_DBFS
CLIPPING_GAIN_DB = 20.0
"""The ``clipping`` channel: the clip's speech set to -26 dBFS RMS (the line level of the phone
and Opus channels), then 20 dB of gain and hard clipping at full scale. It once added the
gain to the clip as recorded: 172 of the 360 RAVDESS test clips, recorded quietly, peaked
under -20 dBFS and were never clipped (and the features ignore gain), while every EmoDB and
URDU clip was; the row measured half of RAVDESS under a clean channel."""


def _clipping(x: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.float32]:
    speech_rms = _speech_rms(x, sample_rate, "clipping")
    if speech_rms < 1e-8:
        return clipped(x, CLIPPING_GAIN_DB)
    at_line_level = x * (10.0 ** (CLIPPING_SPEECH_RMS_DBFS / 20.0) / speech_rms)
    return clipped(np.asarray(at_line_level, dtype=np.float32), CLIPPING_GAIN_DB)


ROOM_RT60_S = 0.5
ROOM_DRR_DB = 3.0
"""The ``room`` channel: a speakerphone across a mid-sized office (RT60 0.5 s, direct sound
3 dB over the reverberation), one fixed synthetic impulse response (seed 0) for every clip.
Not in the issue's table, so not in :data:`ROBUSTNESS`."""


@functools.cache
def _room_impulse_response(sample_rate: int) -> npt.NDArray[np.float32]:
    """The ``room`` channel's one impulse response at ``sample_rate``: (taps,) float32, built
    once per rate (read-only, since every clip shares it)."""
    ir = room_impulse_response(ROOM_RT60_S, ROOM_DRR_DB, np.random.default_rng(0), sample_rate)
    ir.flags.writeable = False
    return ir


CONDITIONS: dict[str, Transform] = {
    "clean": lambda x, sr: x,
    "mulaw8k": lambda x, sr: phone_line(x, "mulaw", sample_rate=sr),
    "alaw8k": lambda x, sr: phone_line(x, "alaw", sample_rate=sr),
    "opus8kbps": lambda x, sr: opus_roundtrip(set_rms_dbfs(x, -26.0), sr),
    "noise20db": _noise(20.0),
    "noise10db": _noise(10.0),
    "lowpass3k4": lambda x, sr: butter_filter(x, 3400.0, "lowpass", sr),
    "highpass300": lambda x, sr: butter_filter(x, 300.0, "highpass", sr),
    "eq_tilt": lambda x, sr: strong_eq(x, sr),
    "dc_offset": lambda x, sr: np.asarray(x + 0.05, dtype=np.float32),
    "level_minus25db": lambda x, sr: np.asarray(x * 10.0 ** (-25.0 / 20.0), dtype=np.float32),
    "clipping": _clipping,
    "room": lambda x, sr: reverberate(x, _room_impulse_response(sr)),
}
"""Evaluation channels applied to the decoded clip at the model's rate: the phone lines, the
channel-robustness table (pink noise at an SNR over the RMS of the clip's speech as the
worker's default cut finds it, Butterworth filters,
a +10 dB 1.8 kHz resonance with a bright tilt, a 0.05 DC offset, -25 dB level, speech at
-26 dBFS then +20 dB and hard clipping, Opus at libsndfile's lowest bitrate) and a room."""
ROBUSTNESS: tuple[str, ...] = tuple(c for c in CONDITIONS if c != "room")
"""The issue's channel-robustness table (``--robustness``): every condition but the room; the
CI guard's worst case is over these."""
CHANNELS: tuple[str, ...] = tuple(CONDITIONS)


def confusion_matrix(y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64],
                     n_classes: int) -> npt.NDArray[np.int64]:
    """(n_classes, n_classes) counts; rows are true classes, columns predictions."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def unweighted_average_recall(cm: npt.NDArray[np.int64]) -> float:
    """Mean per-class recall over the classes that occur (rows with support)."""
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def weighted_accuracy(cm: npt.NDArray[np.int64]) -> float:
    """Plain accuracy: correct / all."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def expected_calibration_error(probabilities: npt.NDArray[np.float32],
                               y_true: npt.NDArray[np.int64], n_bins: int = 15) -> float:
    """ECE of the top-class confidence, equal-width bins over [0, 1]."""
    if len(y_true) == 0:
        return float("nan")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(np.float64)
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(float(correct[sel].mean()) - float(confidence[sel].mean()))
    return float(ece)


BOOTSTRAP_RESAMPLES = 2000
"""Speaker resamples behind a UA interval: at this count the interval's ends moved by at most
0.3 points over 10 seeds (emotion-v1.7.0, RAVDESS test actors, clean; 2026-12-05)."""
BOOTSTRAP_SEED = 0
"""Fixed, so a card's interval is reproduced by its command."""
MIN_SPEAKERS_FOR_INTERVAL = 5
"""Fewer speakers give no interval: resampling EmoDB's 2 or URDU's 3 test speakers yields a
handful of distinct pools, so their per-speaker figures are shown instead."""


@dataclass(frozen=True)
class SpeakerFigure:
    """UA of one model on one speaker's clips (speaker as ``corpus:speaker``)."""

    speaker: str
    n_clips: int
    ua: float
    confusion: tuple[tuple[int, ...], ...]
    """The speaker's confusion counts (rows true): what a paired comparison resamples."""


def speaker_confusions(y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64],
                       speakers: npt.NDArray[np.str_], n_classes: int,
                       ) -> tuple[list[str], npt.NDArray[np.int64]]:
    """(sorted speaker names, (n_speakers, n_classes, n_classes) confusion counts)."""
    names = sorted({str(s) for s in speakers})
    cms = np.stack([confusion_matrix(y_true[speakers == name], y_pred[speakers == name],
                                     n_classes) for name in names]) if names else \
        np.zeros((0, n_classes, n_classes), dtype=np.int64)
    return names, cms


def _speaker_draws(n_speakers: int, n_resamples: int, seed: int) -> npt.NDArray[np.int64]:
    """(n_resamples, n_speakers): how often each speaker is drawn, with replacement."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_speakers, size=(n_resamples, n_speakers))
    return np.stack([np.bincount(row, minlength=n_speakers) for row in drawn])


def _pooled_ua(weights: npt.NDArray[np.int64], cms: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """(n_resamples,) UA of each resample's pooled confusion counts."""
    pooled = np.tensordot(weights, cms, axes=(1, 0))      # (n_resamples, C, C)
    support = pooled.sum(axis=2).astype(np.float64)
    recall = np.divide(np.diagonal(pooled, axis1=1, axis2=2), support,
                       out=np.full(support.shape, np.nan), where=support > 0)
    return np.asarray(np.nanmean(recall, axis=1))   # over the classes each pool holds, as UA


def speaker_bootstrap_ua(cms: npt.NDArray[np.int64], n_resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED,
                         min_speakers: int = MIN_SPEAKERS_FOR_INTERVAL,
                         ) -> tuple[float, float] | None:
    """95 % percentile interval of UA when the test speakers are drawn again with replacement.

    ``cms``: (n_speakers, n_classes, n_classes) confusion counts, one matrix per speaker.
    Speakers, not clips, are resampled: a test split's clips come in blocks of one voice, and
    a figure that rests on which six actors were held out varies by speaker, not by clip.
    None with fewer than ``min_speakers`` speakers.
    """
    if len(cms) < max(2, min_speakers):
        return None
    ua = _pooled_ua(_speaker_draws(len(cms), n_resamples, seed), cms)
    low, high = np.percentile(ua, [2.5, 97.5])
    return float(low), float(high)


def paired_speaker_bootstrap(cms: npt.NDArray[np.int64], baseline_cms: npt.NDArray[np.int64],
                             n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                             min_speakers: int = MIN_SPEAKERS_FOR_INTERVAL,
                             ) -> tuple[float, float] | None:
    """95 % interval of UA(model) - UA(baseline) over the same speaker resamples.

    Both (n_speakers, C, C), speakers in the same order, scored on the same clips. Drawing
    the speakers once for both models keeps what they share (an actor hard for both) out of
    the difference; where the models find different speakers hard it stays wide (v1.7.0
    against v1.6.0 on the RAVDESS test actors: -3.7 points, about -10 to +3).
    """
    if cms.shape != baseline_cms.shape:
        raise ValueError(f"confusions of shape {cms.shape} and {baseline_cms.shape}: a paired "
                         "comparison needs the same speakers and classes")
    if len(cms) < max(2, min_speakers):
        return None
    weights = _speaker_draws(len(cms), n_resamples, seed)
    diff = _pooled_ua(weights, cms) - _pooled_ua(weights, baseline_cms)
    low, high = np.percentile(diff, [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class CorpusMetrics:
    """Figures of one model on one corpus under one channel."""

    corpus: str
    channel: str
    n_clips: int
    ua: float
    wa: float
    ece: float
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    by_speaker: tuple[SpeakerFigure, ...] = ()
    """UA per speaker, sorted by name (empty when speakers were not given)."""
    ua_interval: tuple[float, float] | None = None
    """:func:`speaker_bootstrap_ua`: None with too few speakers."""

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "corpus": self.corpus, "channel": self.channel, "n_clips": self.n_clips,
            "ua": round(self.ua, 4), "wa": round(self.wa, 4), "ece": round(self.ece, 4),
            "labels": list(self.labels), "confusion": [list(r) for r in self.confusion]}
        if self.by_speaker:
            d["n_speakers"] = len(self.by_speaker)
            # 6 places: the card prints these to 0.1 point without a confusion matrix to recompute
            d["by_speaker"] = {f.speaker: {"n_clips": f.n_clips, "ua": round(f.ua, 6)}
                               for f in self.by_speaker}
        if self.ua_interval is not None:
            # 6 places, as by_speaker: the card prints the ends to 0.1 point
            d["ua_interval95"] = [round(self.ua_interval[0], 6), round(self.ua_interval[1], 6)]
        return d


@dataclass(frozen=True)
class EvaluationResult:
    """All per-corpus figures of one evaluation run."""

    model_version: str
    split: str
    rows: tuple[CorpusMetrics, ...]
    speech_cut: SpeechCut | None = None
    """How clips were cut to speech before scoring (None: whole clips)."""

    def to_frame(self) -> pd.DataFrame:
        """One row per (corpus, channel): n_clips, ua, wa, ece."""
        return pd.DataFrame([{"corpus": r.corpus, "channel": r.channel, "n_clips": r.n_clips,
                              "ua": r.ua, "wa": r.wa, "ece": r.ece} for r in self.rows])

    def get(self, corpus: str, channel: str = "clean") -> CorpusMetrics:
        for r in self.rows:
            if r.corpus == corpus and r.channel == channel:
                return r
        raise KeyError(f"no figures for corpus={corpus!r} channel={channel!r}")

    def format_table(self) -> str:
        """Readable summary table plus one confusion matrix per row."""
        clips = "whole clips" if self.speech_cut is None else "clips cut to speech"
        lines = [f"model {self.model_version}  split={self.split}  {clips}",
                 f"{'corpus':<10} {'channel':<8} {'clips':>6} {'UA':>7} {'WA':>7} {'ECE':>7}"
                 f"  {'speakers':>8}  UA 95% (speakers resampled)"]
        for r in self.rows:
            lines.append(f"{r.corpus:<10} {r.channel:<8} {r.n_clips:>6} {100 * r.ua:>6.1f}% "
                         f"{100 * r.wa:>6.1f}% {r.ece:>7.3f}  {len(r.by_speaker) or '-':>8}  "
                         + interval_text(r.ua_interval))
        speaker_rows = [r for r in self.rows if r.channel == "clean" and r.by_speaker]
        if speaker_rows:
            lines.append("\nUA per speaker (clean)")
            for r in speaker_rows:
                lines.append(f"{r.corpus:<10} " + ", ".join(
                    f"{f.speaker.split(':', 1)[-1]} {100 * f.ua:.1f}% ({f.n_clips})"
                    for f in r.by_speaker))
        for r in self.rows:
            lines.append(f"\nconfusion {r.corpus}/{r.channel} (rows true, cols predicted)")
            lines.append(" " * 10 + "".join(f"{lab[:6]:>7}" for lab in r.labels))
            for lab, row in zip(r.labels, r.confusion, strict=True):
                if sum(row):
                    lines.append(f"{lab:<10}" + "".join(f"{v:>7}" for v in row))
        return "\n".join(lines)


@dataclass(frozen=True)
class Comparison:
    """One (corpus, channel) row of a model against a baseline scored on the same clips."""

    corpus: str
    channel: str
    ua: float
    baseline_ua: float
    interval: tuple[float, float] | None
    """:func:`paired_speaker_bootstrap` of ``ua - baseline_ua``; None with too few speakers."""

    @property
    def difference(self) -> float:
        """UA of the model minus the baseline's (0-1)."""
        return self.ua - self.baseline_ua


def compare(result: EvaluationResult, baseline: EvaluationResult) -> tuple[Comparison, ...]:
    """Every row of ``result`` against the same row of ``baseline``; both must have scored the
    same split, cut, speakers and true classes (ConfigError naming what differs)."""
    if (result.split, result.speech_cut) != (baseline.split, baseline.speech_cut):
        raise ConfigError(f"the model scored split {result.split!r} cut {result.speech_cut}, "
                          f"the baseline split {baseline.split!r} cut {baseline.speech_cut}: "
                          "compare results of one evaluation setting")
    rows: list[Comparison] = []
    for r in result.rows:
        where = f"{r.corpus}/{r.channel}"
        try:
            b = baseline.get(r.corpus, r.channel)
        except KeyError as e:
            raise ConfigError(f"the baseline has no {where} row to compare") from e
        if r.labels != b.labels:
            raise ConfigError(f"{where}: the model's labels {list(r.labels)} are not the "
                              f"baseline's {list(b.labels)}")
        if [f.speaker for f in r.by_speaker] != [f.speaker for f in b.by_speaker]:
            raise ConfigError(f"{where}: the model and the baseline scored other speakers (with "
                              "--split val each model scores the validation speakers its own "
                              "card lists)")
        cms = np.array([f.confusion for f in r.by_speaker], dtype=np.int64)
        base = np.array([f.confusion for f in b.by_speaker], dtype=np.int64)
        # the same clips give every speaker the same count of each true class
        if r.n_clips != b.n_clips or (cms.size and not np.array_equal(cms.sum(axis=2),
                                                                      base.sum(axis=2))):
            raise ConfigError(f"{where}: the model and the baseline scored other clips")
        rows.append(Comparison(r.corpus, r.channel, r.ua, b.ua,
                               paired_speaker_bootstrap(cms, base) if cms.size else None))
    return tuple(rows)


def format_comparison(rows: Sequence[Comparison], model: str, baseline: str) -> str:
    """The comparison as a readable table (points of UA, model minus baseline)."""
    lines = [f"{model} against {baseline}: UA difference, 95% interval with the speakers "
             "resampled together",
             f"{'corpus':<10} {'channel':<8} {'UA':>7} {'base':>7} {'diff':>7}  interval"]
    for c in rows:
        interval = ("-" if c.interval is None
                    else f"{100 * c.interval[0]:+.1f} to {100 * c.interval[1]:+.1f}")
        lines.append(f"{c.corpus:<10} {c.channel:<8} {100 * c.ua:>6.1f}% "
                     f"{100 * c.baseline_ua:>6.1f}% {100 * c.difference:>+7.1f}  {interval}")
    return "\n".join(lines)


def interval_text(interval: Sequence[float] | None) -> str:
    """A UA interval as "52.1-65.0%", or "-" when there is none."""
    if interval is None:
        return "-"
    low, high = interval
    return f"{100 * low:.1f}-{100 * high:.1f}%"


def apply_channel(audio: npt.NDArray[np.float32], channel: str,
                  config: FeatureConfig) -> npt.NDArray[np.float32]:
    """The evaluation channel ``channel`` (one of CHANNELS) applied to a decoded clip."""
    try:
        transform = CONDITIONS[channel]
    except KeyError as e:
        raise ValueError(f"channel={channel!r}: use one of {', '.join(CHANNELS)}") from e
    return transform(np.asarray(audio, dtype=np.float32), config.sample_rate)


def condition_features(audio: npt.NDArray[np.float32], channel: str, config: FeatureConfig,
                       speech_cut: SpeechCut | None = None) -> npt.NDArray[np.float32]:
    """The serving path for one decoded clip (at the model's rate): the channel condition
    ``channel``, the worker's cut to speech (``None``: the whole clip), log-mel."""
    conditioned = apply_channel(audio, channel, config)
    return extract_features(conditioned if speech_cut is None else speech_cut.apply(conditioned),
                            config)


def clips_features(sources: Sequence[ClipSource], channel: str, config: FeatureConfig,
                   speech_cut: SpeechCut | None, workers: int) -> list[npt.NDArray[np.float32]]:
    """:func:`condition_features` of each clip, decoded at the model's rate (``workers``
    decoding threads), in order."""
    return load_clips(sources, config.sample_rate,
                      functools.partial(condition_features, channel=channel, config=config,
                                        speech_cut=speech_cut), workers)


def clip_features(source: ClipSource | str, channel: str, config: FeatureConfig,
                  speech_cut: SpeechCut | None = None) -> npt.NDArray[np.float32]:
    """:func:`condition_features` of one clip (a path: the whole of a mono file), decoded at
    the model's rate."""
    clip = source if isinstance(source, ClipSource) else ClipSource(source)
    return clips_features([clip], channel, config, speech_cut, workers=1)[0]


def label_ids(clips: pd.DataFrame, labels: Sequence[str]) -> npt.NDArray[np.int64]:
    """Each clip's label as its index in ``labels`` (a model's classes), shape (n,)."""
    index = {label: i for i, label in enumerate(labels)}
    ids: npt.NDArray[np.int64] = clips["label"].map(index).to_numpy(np.int64)
    return ids


def _int_rows(cm: npt.NDArray[np.int64]) -> tuple[tuple[int, ...], ...]:
    """A confusion matrix as nested tuples of ints (how cards and frozen rows hold it)."""
    return tuple(tuple(int(v) for v in row) for row in cm)


def metrics_for(corpus: str, channel: str, probabilities: npt.NDArray[np.float32],
                y_true: npt.NDArray[np.int64], labels: Sequence[str],
                speakers: npt.NDArray[np.str_] | None = None) -> CorpusMetrics:
    """UA/WA/ECE/confusion from (n, classes) probabilities and true label ids; with
    ``speakers`` (n,) also UA per speaker and the speaker-bootstrap interval of UA."""
    y_pred = probabilities.argmax(axis=1).astype(np.int64)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    by_speaker: tuple[SpeakerFigure, ...] = ()
    interval = None
    if speakers is not None:
        names, cms = speaker_confusions(y_true, y_pred, np.asarray(speakers), len(labels))
        by_speaker = tuple(SpeakerFigure(name, int(c.sum()), unweighted_average_recall(c),
                                         _int_rows(c))
                           for name, c in zip(names, cms, strict=True))
        interval = speaker_bootstrap_ua(cms)
    return CorpusMetrics(corpus=corpus, channel=channel, n_clips=len(y_true),
                         ua=unweighted_average_recall(cm), wa=weighted_accuracy(cm),
                         ece=expected_calibration_error(probabilities, y_true),
                         labels=tuple(labels), confusion=_int_rows(cm),
                         by_speaker=by_speaker, ua_interval=interval)


EVAL_SPLITS: tuple[str, ...] = ("test", SUBSET_TRAIN, SUBSET_VAL, "all")
MAX_SPEAKERS_NAMED = 10
"""Speakers an error names (the count says how many)."""
"""What ``evaluate`` scores: the manifests' test rows (the reported figures), their train rows,
the validation speakers a card lists (train rows held out to select the run), or every row."""


def evaluate_model(model_path: Path | Sequence[Path], manifest_paths: Sequence[Path],
                   split: str = "test", channels: Sequence[str] = ("clean",), threads: int = 1,
                   workers: int = 2,
                   speech_cut: SpeechCut | None = DEFAULT_SPEECH_CUT,
                   min_frames: int | None = None) -> EvaluationResult:
    """Per-corpus figures of the ONNX model at ``model_path`` on ``split`` rows ("all": every
    row; "val": the train-split speakers its card lists as validation speakers).

    Several paths score their ensemble: the mean of the models' calibrated probabilities,
    each model reading its own card's features (what averaging them in serving would cost:
    one forward pass per model). Ensemble members must share labels, and for "val" their
    validation speakers. Each clip goes through its channel and is then cut to speech as the
    worker cuts calls (``speech_cut``; None scores whole clips, silence included, as v1.1.0's
    card did). Clips whose label is not one of the models' labels (boredom, BAVED) are
    skipped. ConfigError for members that do not fit together.

    ``min_frames`` tiles utterances shorter than that many frames up to it instead of the
    card's ``min_frames`` (a measurement of the serving setting, e.g. 300: the 3 s crops the
    network was trained on).
    """
    group = [model_path] if isinstance(model_path, Path) else list(model_path)
    (result,) = evaluate_models([group], manifest_paths, split=split, channels=channels,
                                threads=threads, workers=workers, speech_cut=speech_cut,
                                min_frames=min_frames)
    return result


def evaluate_models(groups: Sequence[Sequence[Path]], manifest_paths: Sequence[Path],
                    split: str = "test", channels: Sequence[str] = ("clean",),
                    threads: int = 1, workers: int = 2,
                    speech_cut: SpeechCut | None = DEFAULT_SPEECH_CUT,
                    min_frames: int | None = None) -> tuple[EvaluationResult, ...]:
    """:func:`evaluate_model` for each group of paths (one model, or an ensemble) on the same
    clips in one pass: each clip is decoded, put through each channel and featurised once per
    feature config, whichever groups read it (a paired comparison of two models of one config
    costs one decode, not two). Every model of every group must share labels, and for "val"
    validation speakers (ConfigError); the clips are those the first model's card selects.
    Returns one result per group, in order.
    """
    if split not in EVAL_SPLITS:
        raise ConfigError(f"split={split!r}: use one of {', '.join(EVAL_SPLITS)}")
    path_groups = [list(g) for g in groups]
    if not path_groups or not all(path_groups):
        raise ConfigError("evaluate needs at least one model")
    if min_frames is not None and min_frames < 1:
        raise ConfigError(f"min_frames={min_frames}: use a number of frames >= 1")
    model_groups = [[_load_for_evaluation(p, threads, min_frames) for p in g]
                    for g in path_groups]
    paths = [p for g in path_groups for p in g]
    models = [m for g in model_groups for m in g]
    card = models[0].card
    held_out = [card_val_speakers(m.card) for m in models]
    for path, model, speakers in zip(paths[1:], models[1:], held_out[1:], strict=True):
        if tuple(model.labels) != tuple(card.labels):
            raise ConfigError(f"{path} has labels {list(model.labels)}; {paths[0]} has "
                              f"{list(card.labels)}: an ensemble averages, and a comparison "
                              "pairs, the same classes")
        if split == SUBSET_VAL and speakers != held_out[0]:
            raise ConfigError(f"{path} held out validation speakers {speakers}; {paths[0]} "
                              f"held out {held_out[0]}: score models together on val only "
                              "when they share the split seed")
    clips = scored_clips(paths[0], card, manifest_paths, split)
    if split == "test":
        for path, model in zip(paths, models, strict=True):
            refuse_trained_speakers(path, model.card, clips)
    y_all = label_ids(clips, card.labels)
    speakers_all = speaker_keys(clips).to_numpy(str)
    corpora = [(str(c), (clips["corpus"] == c).to_numpy()) for c in sorted(clips["corpus"].unique())]
    sources = clip_sources(clips)
    rows: list[list[CorpusMetrics]] = [[] for _ in model_groups]
    for channel in channels:
        feats: dict[FeatureConfig, list[npt.NDArray[np.float32]]] = {}
        for config in dict.fromkeys(m.card.features for m in models):
            feats[config] = clips_features(sources, channel, config, speech_cut, workers)
        for group_rows, group in zip(rows, model_groups, strict=True):
            probs = np.mean([m.predict_proba(feats[m.card.features]) for m in group],
                            axis=0).astype(np.float32)
            group_rows.extend(metrics_for(corpus, channel, probs[sel], y_all[sel], card.labels,
                                          speakers_all[sel]) for corpus, sel in corpora)
    return tuple(EvaluationResult(model_version=" + ".join(m.version for m in group),
                                  split=split, rows=tuple(group_rows), speech_cut=speech_cut)
                 for group, group_rows in zip(model_groups, rows, strict=True))


def scored_clips(model_path: Path, card: ModelCard, manifest_paths: Sequence[Path],
                 split: str) -> pd.DataFrame:
    """The manifests' rows of ``split`` (one of EVAL_SPLITS; "val": the validation speakers
    the card of ``model_path`` lists) whose label is one of the card's, labels mapped.
    ConfigError when none is left."""
    clips = map_labels(read_manifests(manifest_paths))
    if split == SUBSET_VAL:
        held_out = card_val_speakers(card)
        if not held_out:
            raise ConfigError(f"{model_path} lists no validation speakers (a final fit trains "
                              "on them, or other tooling wrote its card): score the run it was "
                              "selected as on val, or use split test")
        # the model's own validation speakers, as its card lists them
        clips = clips[(clips["split"] == SUBSET_TRAIN) & speaker_keys(clips).isin(held_out)]
        if clips.empty:
            raise ConfigError(f"none of {model_path.name}'s validation speakers "
                              f"({', '.join(held_out[:MAX_SPEAKERS_NAMED])}) has train rows in "
                              f"{', '.join(str(p) for p in manifest_paths)}: pass the "
                              "manifests it was trained on (--manifest)")
    elif split != "all":
        clips = clips[clips["split"] == split]
        if clips.empty:
            raise ConfigError(f"no row of split {split!r} in "
                              f"{', '.join(str(p) for p in manifest_paths)}: nothing to score")
    clips = clips[clips["label"].isin(card.labels)].reset_index(drop=True)
    if clips.empty:
        raise ConfigError(f"no clip of split {split!r} with one of the model's labels in "
                          f"{', '.join(str(p) for p in manifest_paths)}: nothing to score")
    return clips


def refuse_trained_speakers(model_path: Path, card: ModelCard, clips: pd.DataFrame) -> None:
    """ConfigError when test ``clips`` hold speakers the card of ``model_path`` lists as
    having trained it: a figure of its own training speakers was written into the card as
    one of "speakers never seen in training" (a review: an operator's rows marked train,
    then listed again as test)."""
    seen = sorted(set(speaker_keys(clips)) & set(card_train_speakers(card)))
    if seen:
        raise ConfigError(f"split test: {len(seen)} speaker(s) of these rows trained "
                          f"{model_path.name} ({', '.join(seen[:MAX_SPEAKERS_NAMED])}"
                          f"{' ...' if len(seen) > MAX_SPEAKERS_NAMED else ''}; its card's "
                          "train_speakers): test figures are of speakers never seen in "
                          "training; drop their rows, or score --split all")


def _load_for_evaluation(path: Path, threads: int, min_frames: int | None) -> EmotionModel:
    """The model at ``path`` as :func:`evaluate_models` scores it: its card's ``min_frames``
    unless one is given."""
    model = load_model(path.resolve(), threads)
    if min_frames is None:
        return model
    return EmotionModel(path.resolve(), replace(model.card, min_frames=min_frames), threads)
