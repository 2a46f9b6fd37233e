"""Seeded training of the emotion CNN, epoch selection on validation speakers' UA,
temperature scaling, ONNX export and model card.

Reproducibility: the split seed fixes the validation speakers; the seed fixes the sampled
clips of every epoch, each draw's augmentation (its RNG is seeded by (seed, epoch, draw), so
the worker count does not matter), crops, SpecAugment masks and the weight initialisation.
CPU runs repeat exactly; a CUDA run follows the same recipe but its kernels round differently.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
import typing
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.optimize
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.augment import AugmentConfig, augment, warp_bands
from training.card import (
    ADDED_AS_BEFORE,
    LICENCES,
    config_differences,
    data_limits,
    label_notes,
    usage_note,
    write_card,
)
from training.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from training.clips import check_sources, load_clips
from training.dataset import (
    AROUSAL_LEVELS,
    BALANCES,
    LABEL_MAP,
    SUBSET_TRAIN,
    SUBSET_VAL,
    TRAINABLE_EXTRA_CLASSES,
    build_arousal_dataset,
    build_dataset,
    clip_sources,
    counts_table,
    sampling_weights,
    speaker_keys,
    training_targets,
    untaught_classes,
)
from training.distill import DistillConfig, distillation_loss, teacher_targets
from training.evaluate import confusion_matrix, unweighted_average_recall
from training.model import (
    MergedClasses,
    ModelConfig,
    WithoutUntaught,
    build_model,
    count_parameters,
)
from worker.audio import file_sha256
from worker.constants import ANALYSIS_SAMPLE_RATE, EMOTIONS
from worker.errors import ConfigError
from worker.features import FeatureConfig, extract_features, n_frames
from worker.pipeline import SpeechCut

log = logging.getLogger(__name__)
Audio = npt.NDArray[np.float32]

WARP_STREAM = 1
"""Fourth word of the seed of a draw's warp generator ((seed, epoch, draw, 1)): apart from
the draw's own generator, so adding the warp leaves every other draw as it was."""
OPSET = 17


TRAIN_FEATURES = FeatureConfig(log_floor=1e-20, dynamic_range_db=80.0)
"""Features of models trained from v1.1 on: an 80 dB range below each utterance's peak makes
them gain-invariant down to -80 dBFS lines (v1.0's absolute floor lost RAVDESS at -25 dB:
51.1% -> 39.6% UA). 80 dB: a little below the 96 dB of 16-bit audio's own range."""


MIXUP_STREAM = 0x6D6978
"""Second word of the mixup draws' seed ([seed, MIXUP_STREAM]): a stream of its own, so
turning mixup on leaves the sampled clips, augmentations and masks as they were."""

AROUSAL_STREAM = 0x61726F
"""Second word of the arousal clips' draws ([seed, AROUSAL_STREAM]): with the arousal head off,
the emotion clips' draws and every other stream stay as they were."""

MODEL_VERSION = "emotion-v1.9.0-speed-cand"
"""Version the default recipe writes into the card (bump it with any change of recipe).
Selected runs were trained with their option (``--band-pooling keep``, ``--p-clip 0.15``,
``--p-speed 0.6 --speed-range 0.9,1.1``) before it became the default, so their cards carry
the name of the day: emotion-v1.7.0's ``emotion-v1.6.0-reverb15-cand``, emotion-v1.8.0's and
emotion-v1.9.0's ``emotion-v1.7.0-bandpool-cand``."""

T = TypeVar("T")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model (recorded in the card)."""

    seed: int = 0
    """Weight initialisation, sampled clips, augmentation draws, crops and masks."""
    split_seed: int = 0
    """Which train speakers are held out for validation. Kept apart from ``seed`` so that
    several seeds of one recipe are selected and compared on the same validation speakers
    (and can teach one another: a teacher must hold out the student's speakers)."""
    epochs: int = 60
    patience: int | None = None
    """Stop after this many epochs without a validation gain; None (the default) runs every
    epoch. The one-cycle schedule anneals the learning rate to zero over ``epochs``, and the
    runs peak in its tail: a student distilled from three seeds stopped at epoch 41 with
    patience 12 (learning rate still 30 % of its peak; best val UA 62.8 % at epoch 29), and
    the same run, identical to epoch 41, reached 65.4 % at epoch 58 once it ran all 60.
    emotion-v1.4.0 and the runs before this default were trained with 12 (after epoch 30)."""
    min_epochs: int = 30
    """No early stop before this epoch (with ``patience`` set). The EMA weights (decay 0.995,
    32 steps per epoch) are still mostly the initial ones for the first epochs, so an
    untrained model's near-chance validation UA can stay the best for ``patience`` epochs: the
    first leave-one-corpus-out run without EmoDB stopped at epoch 12 and kept its epoch-0
    model (val UA 20.9 %)."""
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.05
    crop_s: float = 3.0
    val_fraction: float = 0.2
    draws_per_epoch: int = 2048
    """Clips sampled per epoch (with replacement, by :func:`sampling_weights`)."""
    balance: str = "corpora"
    """How the draws split a class's share (:data:`training.dataset.BALANCES`): among the
    corpora that have it (every model up to emotion-v1.9.0) or among the speakers."""
    freq_masks: int = 2
    freq_mask_bands: int = 8
    time_masks: int = 2
    time_mask_frames: int = 25
    min_frames: int = 100
    ema_decay: float = 0.995
    """Per-step decay of the weight average that is validated and exported (smooths the
    noisy epoch-to-epoch validation curve of a small, heavily augmented model)."""
    bn_recalibration_batches: int = 0
    """Recompute the weight average's batch-norm statistics on this many of the epoch's last
    training batches, without SpecAugment's masks, before it is validated and exported
    (:func:`recalibrate_batch_norm`); 0 keeps the average of the trained model's statistics
    (emotion-v1.7.0 and earlier). Averaged statistics need not fit averaged weights, and the
    trained model's were taken on masked batches the served model never sees."""
    mixup_alpha: float = 0.0
    """Mixup (Zhang et al., 2018) of the batch's log-mel features and targets with weights
    drawn from Beta(alpha, alpha), folded so that each clip keeps the larger share; 0 turns it
    off and leaves every other random stream as it was."""
    arousal_weight: float = 0.0
    """Weight of the auxiliary arousal head's cross-entropy (BAVED's low / neutral / high
    levels) beside the emotion loss; 0 trains no arousal head. The arousal clips come from
    speakers and a language the emotion corpora lack; the head is not exported."""
    arousal_draws_per_epoch: int = 512
    """Arousal clips sampled per epoch (uniformly, with replacement), on top of
    ``draws_per_epoch`` emotion clips and shuffled in among them."""
    extra_classes: tuple[str, ...] = ()
    """Raw labels trained as classes of their own (from
    :data:`training.dataset.TRAINABLE_EXTRA_CLASSES`, e.g. ``("calm",)``) and merged into
    their served class in the exported graph (:class:`training.model.MergedClasses`); the
    model then has ``len(EMOTIONS) + len(extra_classes)`` outputs while training, and
    validation, calibration and the served graph see the seven merged ones."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = TRAIN_FEATURES
    speech_cut: SpeechCut | None = field(default_factory=SpeechCut)
    """Clips are cut to their speech as the worker cuts calls (VAD + segmentation settings)
    before cropping and augmenting; None trains on whole clips, as emotion-v1.1.0 did."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Teachers whose soft targets on the clean clips join the loss (none: plain training)."""

    def __post_init__(self) -> None:
        if self.balance not in BALANCES:
            raise ConfigError(f"balance={self.balance!r}: use one of {', '.join(BALANCES)}")
        if self.mixup_alpha < 0:
            raise ConfigError(f"mixup_alpha={self.mixup_alpha}: use 0 (off) or a positive "
                              "Beta parameter")
        if self.bn_recalibration_batches < 0:
            raise ConfigError(f"bn_recalibration_batches={self.bn_recalibration_batches}: use 0 "
                              "(averaged statistics) or a number of batches")
        feats, model = self.features, self.model
        if self.arousal_weight < 0 or self.arousal_draws_per_epoch < 1:
            raise ConfigError(f"arousal_weight={self.arousal_weight}, arousal_draws_per_epoch="
                              f"{self.arousal_draws_per_epoch}: use a weight >= 0 (0: no "
                              "arousal head) and at least one draw")
        wanted = len(AROUSAL_LEVELS) if self.arousal_weight > 0 else 0
        if model.arousal_classes != wanted:
            raise ConfigError(f"arousal_weight={self.arousal_weight} needs a model with "
                              f"arousal_classes={wanted}, not {model.arousal_classes}")
        if self.arousal_weight > 0 and (self.mixup_alpha > 0 or self.distill.teachers):
            raise ConfigError("the arousal head trains without mixup and distillation (their "
                              "targets cover emotion clips only): set mixup_alpha 0 and no "
                              "teachers, or arousal_weight 0")
        unknown = [e for e in self.extra_classes if e not in TRAINABLE_EXTRA_CLASSES]
        if unknown:
            raise ConfigError(f"extra class(es) {', '.join(unknown)}: valid are "
                              f"{', '.join(TRAINABLE_EXTRA_CLASSES)}")
        if model.n_classes != len(EMOTIONS) + len(self.extra_classes):
            raise ConfigError(f"{len(EMOTIONS)} emotions and extra classes "
                              f"{list(self.extra_classes)} need a model with n_classes="
                              f"{len(EMOTIONS) + len(self.extra_classes)}, not {model.n_classes}")
        if self.extra_classes and self.distill.teachers:
            raise ConfigError("extra classes train without distillation (the teachers' soft "
                              "targets cover the seven served classes only)")
        if (model.n_mels, model.views) != (feats.n_mels, feats.n_views):
            raise ConfigError(f"model reads {model.views} view(s) of {model.n_mels} bands; the "
                              f"features give {feats.n_views} of {feats.n_mels} "
                              f"(normalization {feats.normalization!r})")


@dataclass(frozen=True)
class FinalFit:
    """Train a selected run's recipe once more on every train speaker, its validation speakers
    included, for as many epochs as the selected run needed (its best epoch + 1, on the same
    one-cycle schedule), and calibrate with the selected run's temperature.

    Nothing is selected or calibrated on the final fit itself (it has no held-out speakers):
    the recipe, the epoch count and the temperature all come from the selected run, chosen on
    validation speakers; the test speakers stay unseen by both. RAVDESS trains on 18 actors
    instead of 14, EmoDB on 8 speakers instead of 6, URDU on 26 instead of 21.
    """

    epochs: int
    """Epochs trained (the selected run's 0-based best epoch + 1)."""
    temperature: float
    """The selected run's validation-fitted temperature."""
    selected: dict[str, Any]
    """What the card records of the selected run (version, ONNX sha256, best epoch,
    validation UA and speakers)."""
    without_corpus: str | None = None
    """Leave-one-corpus-out: the corpus whose manifest this fit leaves out of the selected
    run's data (all its clips unseen, for ``python -m training loco --final-fit-of`` to score);
    None: all of the selected run's data."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.temperature <= 0:
            raise ConfigError(f"final fit of {self.epochs} epoch(s) at temperature "
                              f"{self.temperature}: the selected run's card needs a best epoch "
                              ">= 0 and a temperature > 0")


def final_fit_of(card: dict[str, Any]) -> tuple[TrainConfig, FinalFit]:
    """The recipe (``val_fraction`` 0) and the :class:`FinalFit` of a selected run's card.
    Raises ConfigError for a card that records no recipe, or one that is a final fit itself."""
    training = card.get("training", {})
    if "config" not in training or "best_epoch" not in training:
        raise ConfigError(f"card of {card.get('version', '?')} records no training config and "
                          "best epoch: final-fit a model trained by `python -m training train`")
    if training.get("final_fit"):
        raise ConfigError(f"{card.get('version', '?')} is a final fit already (no validation "
                          "speakers to have selected its epoch on): final-fit the selected run")
    if training.get("limit_per_corpus"):
        raise ConfigError(f"{card.get('version', '?')} was trained on at most "
                          f"{training['limit_per_corpus']} clips per corpus (a smoke run): "
                          "final-fit a run on the whole data")
    rebuilt = train_config_from_record(training["config"])
    # a key the card lacks would take today's default, which is not the selected recipe
    # (except a field whose default is how runs trained before it existed: ADDED_AS_BEFORE)
    differences = config_differences(config_record(rebuilt), training["config"])
    if differences:
        raise ConfigError(f"card of {card.get('version', '?')} does not record "
                          f"{', '.join(differences)} (written before they existed): its recipe "
                          "cannot be repeated exactly, so it has no final fit")
    config = replace(rebuilt, val_fraction=0.0)
    selected = {"version": card.get("version"), "onnx_sha256": card.get("onnx_sha256"),
                "teachers": training.get("teachers", []),
                "manifests_sha256": training.get("manifests_sha256", {}),
                "command": training.get("command"), "best_epoch": training["best_epoch"],
                "val_ua": training.get("val_ua"),
                "val_ua_by_corpus": training.get("val_ua_by_corpus", {}),
                "val_speakers": training.get("val_speakers", [])}
    return config, FinalFit(epochs=int(training["best_epoch"]) + 1,
                            temperature=float(card.get("temperature", 0.0)), selected=selected)


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    model_path: Path
    best_epoch: int
    val_ua: float
    temperature: float
    seconds: float
    device: str
    card: dict[str, Any]


def speech_of(speech_cut: SpeechCut | None) -> Callable[[Audio], Audio]:
    """A decoded clip -> what training scores of it: the worker's cut to speech, or all of it."""
    return (lambda audio: audio) if speech_cut is None else speech_cut.apply


def tile_frames(feats: npt.NDArray[np.float32], frames: int) -> npt.NDArray[np.float32]:
    """Repeat (n_mels, T) in time up to ``frames`` (as EmotionModel pads short segments)."""
    t = feats.shape[1]
    if t >= frames:
        return feats[:, :frames]
    if t == 0:
        return np.zeros((feats.shape[0], frames), dtype=np.float32)
    return np.tile(feats, (1, -(-frames // t)))[:, :frames]


class TrainDraws(Dataset[tuple[torch.Tensor, int, int]]):
    """One epoch of sampled clips: random crop, augmentation, log-mel, fixed frame count.
    Items are (features (n_mels, frames), label id, clip index)."""

    def __init__(self, waves: list[Audio], labels: npt.NDArray[np.int64],
                 config: TrainConfig) -> None:
        self.waves = waves
        self.labels = labels
        self.config = config
        self.draws = np.zeros(0, dtype=np.int64)
        self.epoch = 0
        sr = config.features.sample_rate
        self.crop_samples = int(config.crop_s * sr)
        self.crop_frames = n_frames(self.crop_samples, config.features)

    def set_epoch(self, epoch: int, draws: npt.NDArray[np.int64]) -> None:
        self.epoch = epoch
        self.draws = draws

    def __len__(self) -> int:
        return int(self.draws.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        clip = int(self.draws[i])
        rng = np.random.default_rng([self.config.seed, self.epoch, i])
        wave = self.waves[clip]
        # crop with 10% margin before augmenting (speed perturbation changes the length)
        margin = int(self.crop_samples * 1.1)
        if wave.size > margin:
            start = int(rng.integers(0, wave.size - margin + 1))
            wave = wave[start:start + margin]
        wave = augment(wave, rng, self.config.augment)
        if wave.size > self.crop_samples:
            start = int(rng.integers(0, wave.size - self.crop_samples + 1))
            wave = wave[start:start + self.crop_samples]
        feats = tile_frames(extract_features(wave, self.config.features), self.crop_frames)
        chain = self.config.augment
        if chain.p_warp > 0.0:
            # its own stream: a recipe without the warp draws exactly as before
            warp_rng = np.random.default_rng([self.config.seed, self.epoch, i, WARP_STREAM])
            if warp_rng.random() < chain.p_warp:
                feats = warp_bands(feats, float(warp_rng.uniform(*chain.warp_range)),
                                   self.config.features.n_mels)
        return torch.from_numpy(np.ascontiguousarray(feats)), int(self.labels[clip]), clip


def spec_augment(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Zero random mel bands and frame spans of a (B, views * n_mels, T) batch (0 = the
    normalised mean); every view of a clip loses the same bands and frames."""
    b, _, t = x.shape
    views, n_mels = config.features.n_views, config.features.n_mels
    mask = torch.ones(b, n_mels, t, dtype=torch.bool)
    for _ in range(config.freq_masks):
        width = torch.randint(0, config.freq_mask_bands + 1, (b,), generator=generator)
        start = (torch.rand(b, generator=generator) * (n_mels - width)).long()
        bands = torch.arange(n_mels)[None, :]
        mask &= ~((bands >= start[:, None]) & (bands < (start + width)[:, None]))[:, :, None]
    for _ in range(config.time_masks):
        width = torch.randint(0, config.time_mask_frames + 1, (b,), generator=generator)
        start = (torch.rand(b, generator=generator) * (t - width)).long()
        frames = torch.arange(t)[None, :]
        mask &= ~((frames >= start[:, None]) & (frames < (start + width)[:, None]))[:, None, :]
    return x * mask.repeat(1, views, 1).to(x.device, x.dtype)


@dataclass(frozen=True)
class Mix:
    """A batch's mixup draw: each clip i is mixed with clip ``partner[i]``, keeping the share
    ``share[i]`` (in [0.5, 1]) of its own features and target."""

    share: torch.Tensor
    """(B,) float32"""
    partner: torch.Tensor
    """(B,) int64, a permutation of the batch"""


def draw_mix(batch: int, alpha: float, rng: np.random.Generator) -> Mix:
    """Per-clip shares from Beta(alpha, alpha), folded to max(share, 1 - share), and a random
    partner permutation."""
    share = rng.beta(alpha, alpha, size=batch)
    share = np.maximum(share, 1.0 - share)
    return Mix(share=torch.from_numpy(share.astype(np.float32)),
               partner=torch.from_numpy(rng.permutation(batch).astype(np.int64)))


def mix_inputs(x: torch.Tensor, mix: Mix) -> torch.Tensor:
    """(B, ...) batch blended with its partners: share * x + (1 - share) * x[partner]."""
    share = mix.share.to(x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return share * x + (1.0 - share) * x[mix.partner.to(x.device)]


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mix: Mix,
                        label_smoothing: float) -> torch.Tensor:
    """Mean over the batch of share * CE(own label) + (1 - share) * CE(partner's label)."""
    share = mix.share.to(logits.device, logits.dtype)
    own = nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing,
                                      reduction="none")
    other = nn.functional.cross_entropy(logits, y[mix.partner.to(y.device)],
                                        label_smoothing=label_smoothing, reduction="none")
    return (share * own + (1.0 - share) * other).mean()


def member_inputs(x: torch.Tensor, config: TrainConfig, generator: torch.Generator,
                  mix: Mix | None) -> list[torch.Tensor]:
    """One input per ensemble member: the (B, rows, T) batch under masks of its own (members
    see the same clips but hide different bands and frames, which keeps them apart), mixed
    with the batch's mixup partners when ``mix`` is given."""
    inputs = [spec_augment(x, config, generator) for _ in range(config.model.members)]
    return inputs if mix is None else [mix_inputs(x_m, mix) for x_m in inputs]


def batch_loss(logits: torch.Tensor, y: torch.Tensor, config: TrainConfig, mix: Mix | None,
               soft: torch.Tensor | None) -> torch.Tensor:
    """Mean loss of one member's (B, classes) logits: label-smoothed cross-entropy on ``y``
    (mixed with the partners' labels under mixup), blended with the distillation loss on
    the teachers' ``soft`` targets when given."""
    loss = (nn.functional.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            if mix is None else mixed_cross_entropy(logits, y, mix, config.label_smoothing))
    if soft is None:
        return loss
    w = config.distill.weight
    return (1.0 - w) * loss + w * distillation_loss(logits, soft, config.distill.temperature)


def member_loss(logits: torch.Tensor, arousal_logits: torch.Tensor | None, y: torch.Tensor,
                arousal_y: torch.Tensor, config: TrainConfig, mix: Mix | None,
                soft: torch.Tensor | None) -> torch.Tensor:
    """One member's loss: :func:`batch_loss` without an arousal head; with one, the emotion
    loss over the clips with an emotion label (``y`` >= 0) plus ``config.arousal_weight`` times
    the arousal cross-entropy over the clips with an arousal level (``arousal_y`` >= 0)."""
    if arousal_logits is None:
        return batch_loss(logits, y, config, mix, soft)
    has_emotion, has_arousal = y >= 0, arousal_y >= 0
    loss = logits.new_zeros(())
    if bool(has_emotion.any()):
        loss = loss + batch_loss(logits[has_emotion], y[has_emotion], config, None, None)
    if bool(has_arousal.any()):
        loss = loss + config.arousal_weight * nn.functional.cross_entropy(
            arousal_logits[has_arousal], arousal_y[has_arousal])
    return loss


def draw_epoch(emotion_draws: npt.NDArray[np.int64], n_emotion: int, n_arousal: int,
               arousal_draws: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Clip indices of one epoch: the emotion draws and ``arousal_draws`` uniform draws of the
    arousal clips (indices ``n_emotion`` on), shuffled together so that batches mix both."""
    extra = n_emotion + rng.integers(0, n_arousal, size=arousal_draws)
    both = np.concatenate([emotion_draws, extra]).astype(np.int64)
    return both[rng.permutation(both.size)]


def architecture_name(config: ModelConfig) -> str:
    """The card's ``architecture.type``."""
    one = ("EmotionCNN (4 conv stages, mean+std pooling over time)" if config.band_pooling == "mean"
           else "EmotionCNN (4 conv stages, mean+std pooling over time per frequency row)")
    name = one if config.members == 1 else f"{config.members} x {one}, logits averaged"
    return name if not config.arousal_classes else name + " (arousal head trained, not exported)"


def served_model(model: nn.Module, config: TrainConfig,
                 untaught: Sequence[int] = ()) -> nn.Module:
    """The graph that is validated, calibrated and exported: ``model`` itself, or with extra
    classes the model with each merged into its served class (LABEL_MAP's); the served
    classes of ``untaught`` (indices into EMOTIONS: no training clip of them) never win any
    probability (:class:`training.model.WithoutUntaught`)."""
    served = model
    if config.extra_classes:
        into = [*range(len(EMOTIONS)),
                *(EMOTIONS.index(str(LABEL_MAP[e])) for e in config.extra_classes)]
        served = MergedClasses(model, into)
    return WithoutUntaught(served, untaught, len(EMOTIONS)) if untaught else served



def predict_logits(model: nn.Module, feats: Sequence[npt.NDArray[np.float32]],
                   device: torch.device, min_frames: int,
                   arousal: bool = False) -> npt.NDArray[np.float32]:
    """(N, classes) emotion logits for full-length clips, one clip per forward pass (no
    padding); (N, arousal_classes) logits of the arousal head with ``arousal``."""
    model.eval()
    out = []
    with torch.no_grad():
        for f in feats:
            x = torch.from_numpy(tile_frames(f, max(min_frames, f.shape[1])))[None].to(device)
            logits = model.arousal_logits(x) if arousal else model(x)  # type: ignore[operator]
            out.append(logits.float().cpu().numpy()[0])
    return np.stack(out).astype(np.float32)


def per_corpus_ua(logits: npt.NDArray[np.float32], y: npt.NDArray[np.int64],
                  corpora: npt.NDArray[Any]) -> dict[str, float]:
    """{corpus: UA} for the validation set."""
    pred = logits.argmax(axis=1).astype(np.int64)
    return {str(c): unweighted_average_recall(confusion_matrix(y[corpora == c],
                                                               pred[corpora == c], len(EMOTIONS)))
            for c in sorted(set(corpora.tolist()))}


TEMPERATURE_BOUNDS: tuple[float, float] = (0.3, 10.0)
"""Search range of :func:`fit_temperature`: a trained model's fit lands well inside it
(the shipped models: 1.2-1.6)."""


def fit_temperature(logits: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    """Temperature minimising validation NLL (Guo et al., 2017), searched in [0.3, 10]."""
    z = logits.astype(np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s -= s.max(axis=1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())

    res = scipy.optimize.minimize_scalar(nll, bounds=(np.log(TEMPERATURE_BOUNDS[0]),
                                                      np.log(TEMPERATURE_BOUNDS[1])),
                                         method="bounded")
    return float(np.exp(res.x))


def temperature_at_bound(temperature: float) -> bool:
    """Whether a fitted temperature sits on its search bound (within 1 %): the validation
    logits barely separate, as after a run of a few optimiser steps, and the probabilities'
    calibration was not found, only clipped."""
    low, high = TEMPERATURE_BOUNDS
    return temperature <= low * 1.01 or temperature >= high * 0.99


def export_onnx(model: nn.Module, path: Path, rows: int) -> None:
    """ONNX (opset 17) with dynamic batch and frame axes: features (B, rows, frames) -> logits."""
    model = model.cpu().eval()
    dummy = torch.zeros(1, rows, 300)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (dummy,), str(path), input_names=["features"],
                      output_names=["logits"], opset_version=OPSET, dynamo=False,
                      dynamic_axes={"features": {0: "batch", 2: "frames"},
                                    "logits": {0: "batch"}})


def check_onnx(model: nn.Module, path: Path, rows: int) -> float:
    """Max |torch - onnxruntime| logit difference on random inputs of two lengths."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for frames in (57, 413):
            x = torch.randn(2, rows, frames, generator=gen)
            ref = model.cpu().eval()(x).numpy()
            (got,) = sess.run(["logits"], {"features": x.numpy()})
            worst = max(worst, float(np.abs(ref - got).max()))
    return worst


@dataclass(frozen=True)
class MovingParts:
    """What every training step changes: saved and restored together, so that a resumed run
    takes the steps an uninterrupted one would have taken."""

    model: nn.Module
    ema: torch.optim.swa_utils.AveragedModel
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler_rng: np.random.Generator
    mask_gen: torch.Generator
    mix_rng: np.random.Generator
    arousal_rng: np.random.Generator
    device: torch.device

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers and strings only (a checkpoint loads with ``weights_only``)."""
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimiser": self.optimiser.state_dict(), "scheduler": self.scheduler.state_dict(),
                "sampler_rng": self.sampler_rng.bit_generator.state,
                "mix_rng": self.mix_rng.bit_generator.state,
                "arousal_rng": self.arousal_rng.bit_generator.state, "mask_gen": self.mask_gen.get_state(),
                # dropout draws from the global generators
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": (torch.cuda.get_rng_state_all() if self.device.type == "cuda"
                             else [])}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.ema.load_state_dict(saved["ema"])
        self.optimiser.load_state_dict(saved["optimiser"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.sampler_rng.bit_generator.state = saved["sampler_rng"]
        self.mix_rng.bit_generator.state = saved["mix_rng"]
        self.arousal_rng.bit_generator.state = saved["arousal_rng"]
        self.mask_gen.set_state(saved["mask_gen"])
        torch.set_rng_state(saved["torch_rng"])
        if self.device.type == "cuda" and saved["cuda_rng"]:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])


def stops_early(epoch: int, best_epoch: int, config: TrainConfig) -> bool:
    """Whether training stops after 0-based ``epoch`` whose best validation UA was at
    ``best_epoch``: ``config.patience`` epochs without a gain, once ``config.min_epochs``
    epochs have run; never without a ``patience``."""
    return (config.patience is not None and epoch + 1 >= config.min_epochs
            and epoch - best_epoch >= config.patience)


def train(manifest_paths: Sequence[Path], out_dir: Path, config: TrainConfig,
          name: str = "emotion-v1", version: str = MODEL_VERSION, device: str = "auto",
          workers: int = 2, limit_per_corpus: int = 0, command: str = "",
          resume: bool = False, arousal_manifests: Sequence[Path] = (),
          final_fit: FinalFit | None = None) -> TrainResult:
    """Train, select on validation speakers, calibrate, export ONNX + card; return the result.

    With ``final_fit`` (and ``config.val_fraction`` 0) there are no validation speakers: the
    model after ``final_fit.epochs`` epochs is exported with ``final_fit.temperature``.

    With ``config.arousal_weight`` > 0 the clips of ``arousal_manifests`` (an
    ``arousal_level`` column) train the auxiliary arousal head beside the emotion head.

    Every finished epoch is checkpointed beside the model (removed once the model is
    exported); ``resume`` carries on from that checkpoint when there is one.
    """
    t0 = time.monotonic()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else ("cpu" if device == "auto" else device))
    if (final_fit is not None) != (config.val_fraction == 0.0):
        raise ConfigError(f"val_fraction={config.val_fraction}: a final fit trains on every "
                          "train speaker (0), and only a final fit may (its epochs and "
                          "temperature come from a run selected on validation speakers)")
    dataset = build_dataset(manifest_paths, val_fraction=config.val_fraction,
                            seed=config.split_seed)
    check_sources(clip_sources(dataset))   # the test rows too, scored only after training
    train_df, val_df = train_and_val(dataset, limit_per_corpus, config.split_seed,
                                     "the emotion head", need_val=final_fit is None)
    val_speakers = sorted(set(speaker_keys(val_df)))
    untaught = untaught_classes(train_df["label"])
    log.info("train %d clips, val %d clips (%s)", len(train_df), len(val_df),
             ", ".join(val_speakers))
    sr = config.features.sample_rate
    if config.speech_cut is not None and sr != ANALYSIS_SAMPLE_RATE:
        raise ConfigError(f"features at {sr} Hz: the cut to speech runs the worker's VAD at "
                          f"{ANALYSIS_SAMPLE_RATE} Hz; train with --whole-clips or at that rate")
    speech = speech_of(config.speech_cut)
    train_waves = load_clips(clip_sources(train_df), sr, speech, workers)
    val_waves = load_clips(clip_sources(val_df), sr, speech, workers)
    val_feats = [extract_features(w, config.features) for w in val_waves]
    y_val = val_df["label_id"].to_numpy(np.int64)
    val_corpora = val_df["corpus"].to_numpy()
    arousal_train, arousal_val = _arousal_clips(config, arousal_manifests, limit_per_corpus)
    arousal_waves = load_clips(clip_sources(arousal_train), sr, speech, workers)
    arousal_val_feats = load_clips(clip_sources(arousal_val), sr,
                                   lambda w: extract_features(speech(w), config.features), workers)
    y_arousal_val = arousal_val["arousal_id"].to_numpy(np.int64)
    # arousal clips follow the emotion clips: no emotion label, and emotion clips no level
    arousal_y = torch.from_numpy(np.concatenate([
        np.full(len(train_df), -1, np.int64), arousal_train["arousal_id"].to_numpy(np.int64)]))
    log.info("decoded clips in %.1f s", time.monotonic() - t0)
    soft_targets: torch.Tensor | None = None
    teachers: list[dict[str, str]] = []
    if config.distill.teachers:
        # a final fit's teachers held out the selected run's speakers (it trains on them)
        targets, records = teacher_targets(
            config.distill.teachers, train_waves, sr, EMOTIONS,
            val_speakers if final_fit is None else final_fit.selected["val_speakers"],
            config.distill.temperature)
        # the files as they are now (a loaded model is cached per path and process)
        if final_fit is not None and ([file_sha256(Path(t)) for t in config.distill.teachers]
                                      != [t.get("onnx_sha256")
                                          for t in final_fit.selected["teachers"]]):
            raise ConfigError(f"teachers {list(config.distill.teachers)} are not the files "
                              f"{final_fit.selected['version']} was distilled from (sha256 "
                              "differs): restore them, or select a new run")
        soft_targets = torch.from_numpy(targets)
        teachers = [asdict(r) for r in records]
        log.info("teacher targets from %s in %.1f s", [r.version for r in records],
                 time.monotonic() - t0)

    weights = sampling_weights(train_df, config.balance)
    draws_per_epoch = config.draws_per_epoch or len(train_df)
    dataset = TrainDraws(train_waves + arousal_waves,
                         np.concatenate([training_targets(train_df, config.extra_classes),
                                         np.full(len(arousal_waves), -1, np.int64)]),
                         config)
    model = build_model(config.model).to(dev)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),  # type: ignore[no-untyped-call]
        use_buffers=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    arousal_draws = config.arousal_draws_per_epoch if arousal_waves else 0
    steps_per_epoch = -(-(draws_per_epoch + arousal_draws) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr,
                                                    epochs=config.epochs,
                                                    steps_per_epoch=steps_per_epoch,
                                                    pct_start=0.15)
    sampler_rng = np.random.default_rng(config.seed)
    mask_gen = torch.Generator().manual_seed(config.seed)
    mix_rng = np.random.default_rng([config.seed, MIXUP_STREAM])
    arousal_rng = np.random.default_rng([config.seed, AROUSAL_STREAM])
    best_ua, best_epoch, best_state = -1.0, -1, None
    history: list[dict[str, Any]] = []
    manifests_sha256 = manifest_digests([*manifest_paths, *(arousal_manifests if arousal_waves
                                                            else [])])
    ckpt = checkpoint_path(out_dir, name)
    # the teachers by their ONNX sha256, not only their paths: a model replaced at the same
    # path gives other soft targets, and resuming with them would mix two recipes
    identity = {"config": config_record(config), "manifests_sha256": manifests_sha256,
                "limit_per_corpus": limit_per_corpus, "train_clips": len(train_df),
                "val_speakers": val_speakers, "teachers": teachers,
                "final_fit": asdict(final_fit) if final_fit is not None else None}
    start_epoch, stopped, seconds_before = 0, False, 0.0
    resumed_after: list[int] = []
    moving = MovingParts(model, ema, optimiser, scheduler, sampler_rng, mask_gen, mix_rng,
                         arousal_rng, dev)
    saved = load_checkpoint(ckpt, identity) if resume else None
    if saved is not None:
        moving.load_state_dict(saved)
        best_ua, best_epoch, best_state = saved["best_ua"], saved["best_epoch"], saved["best_state"]
        history, stopped = saved["history"], saved["stopped"]
        start_epoch = saved["epoch"] + 1
        seconds_before = saved["seconds"]       # this run's decoding is counted again
        resumed_after = [*saved["resumed_after"], saved["epoch"]]
        log.info("resumed from %s after epoch %d (%s)", ckpt, saved["epoch"],
                 f"best val UA {best_ua:.3f} at epoch {best_epoch}" if final_fit is None
                 else "final fit")
    elif resume:
        log.info("no checkpoint at %s: training from the start", ckpt)
    last_epoch = final_fit.epochs if final_fit is not None else config.epochs
    for epoch in range(start_epoch, start_epoch if stopped else last_epoch):
        draws = sampler_rng.choice(len(train_df), size=draws_per_epoch, p=weights).astype(np.int64)
        if arousal_waves:
            draws = draw_epoch(draws, len(train_df), len(arousal_waves),
                               config.arousal_draws_per_epoch, arousal_rng)
        dataset.set_epoch(epoch, draws)
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                            num_workers=workers if workers > 1 else 0, drop_last=False)
        model.train()
        total, n = 0.0, 0
        # the epoch's last unmasked batches, for the weight average's batch-norm statistics
        recent: deque[torch.Tensor] = deque(maxlen=config.bn_recalibration_batches or 1)
        for x, y, clips in loader:
            if config.bn_recalibration_batches:
                recent.append(x)
            # masks and mixup draw from streams of their own, so their order does not matter
            mix = draw_mix(len(y), config.mixup_alpha, mix_rng) if config.mixup_alpha > 0 else None
            inputs = [x_m.to(dev) for x_m in member_inputs(x, config, mask_gen, mix)]
            y = y.to(dev)
            soft = None
            if soft_targets is not None:
                soft = (soft_targets[clips] if mix is None
                        else mix_inputs(soft_targets[clips], mix)).to(dev)
            # each member learns from its own loss (an ensemble of independent models)
            a = arousal_y[clips].to(dev)
            loss = torch.stack([member_loss(logits, arousal, y, a, config, mix, soft)
                                for logits, arousal in model.member_logits(inputs)]).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch
            optimiser.step()
            scheduler.step()
            ema.update_parameters(model)
            total += float(loss.detach()) * len(y)
            n += len(y)
        averaged = ema.module
        if config.bn_recalibration_batches:
            averaged = recalibrate_batch_norm(ema.module, list(recent), dev)
        if final_fit is not None:
            # nothing to select on: each epoch's average replaces the last; the last is the model
            history.append({"epoch": epoch, "loss": total / max(n, 1)})
            log.info("epoch %d loss %.3f (%.0f s)", epoch, total / max(n, 1),
                     time.monotonic() - t0)
            best_epoch, best_state = epoch, _state_copy(averaged)
        else:
            logits = predict_logits(served_model(averaged, config, untaught), val_feats, dev,
                                    config.min_frames)
            uas = per_corpus_ua(logits, y_val, val_corpora)
            # selection metric: UA pooled over all validation clips (URDU's few val speakers
            # have 2-8 clips in some classes; a per-corpus mean would follow their noise)
            val_ua = unweighted_average_recall(confusion_matrix(
                y_val, logits.argmax(axis=1).astype(np.int64), len(EMOTIONS)))
            if config.bn_recalibration_batches:
                # logged, not selected on: the same weights with the averaged statistics
                kept = predict_logits(served_model(ema.module, config, untaught), val_feats, dev,
                                      config.min_frames)
                uas = {**uas, "val_ua_averaged_bn": unweighted_average_recall(confusion_matrix(
                    y_val, kept.argmax(axis=1).astype(np.int64), len(EMOTIONS)))}
            if arousal_val_feats:
                # logged, not selected on: the model is chosen on emotion UA alone
                pred = predict_logits(averaged, arousal_val_feats, dev, config.min_frames,
                                      arousal=True)
                uas = {**uas, "arousal_ua": unweighted_average_recall(confusion_matrix(
                    y_arousal_val, pred.argmax(axis=1).astype(np.int64), len(AROUSAL_LEVELS)))}
            history.append({"epoch": epoch, "loss": total / max(n, 1), "val_ua": val_ua, **uas})
            log.info("epoch %d loss %.3f val UA %.3f %s (%.0f s)", epoch, total / max(n, 1), val_ua,
                     {k: round(v, 3) for k, v in uas.items()}, time.monotonic() - t0)
            if val_ua > best_ua:
                best_ua, best_epoch = val_ua, epoch
                best_state = _state_copy(averaged)
            else:
                stopped = stops_early(epoch, best_epoch, config)
        save_checkpoint(ckpt, identity, {
            **moving.state_dict(), "epoch": epoch, "stopped": stopped,
            "seconds": time.monotonic() - t0 + seconds_before, "resumed_after": resumed_after,
            "best_ua": best_ua, "best_epoch": best_epoch, "best_state": best_state,
            "history": history})
        if stopped:
            log.info("early stop: no val UA gain for %d epochs", config.patience)
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    served = served_model(model.cpu(), config, untaught)
    if final_fit is not None:
        temperature = final_fit.temperature
    else:
        temperature = fit_temperature(predict_logits(served, val_feats, torch.device("cpu"),
                                                     config.min_frames), y_val)
        if temperature_at_bound(temperature):
            # said: short runs all stopped at 0.30 without a word, their models near
            # untrained (a review)
            log.warning("the fitted temperature %.2f sits on its search bound: the validation "
                        "logits barely separate (too few optimiser steps? more epochs or "
                        "--draws-per-epoch); this model is close to untrained", temperature)
    seconds = time.monotonic() - t0 + seconds_before

    model_path = out_dir / f"{name}.onnx"
    export_onnx(served, model_path, config.features.input_rows)
    max_diff = check_onnx(served, model_path, config.features.input_rows)
    if max_diff > 1e-3:
        raise RuntimeError(f"ONNX export differs from torch by {max_diff:.2e}")
    corpora = sorted(set(train_df["corpus"]) | set(arousal_train["corpus"]))
    card: dict[str, Any] = {
        "name": name, "version": version, "labels": list(EMOTIONS),
        "features": config.features.to_dict(), "onnx_sha256": file_sha256(model_path),
        "input_name": "features", "output_name": "logits", "temperature": round(temperature, 4),
        "min_frames": config.min_frames, "sample_rate": config.features.sample_rate,
        "usage_note": usage_note(corpora),
        "architecture": {"type": architecture_name(config.model),
                         **config.model.to_dict(), "parameters": count_parameters(served),
                         "onnx_bytes": model_path.stat().st_size, "opset": OPSET},
        "training": {
            "command": command, "seed": config.seed, "split_seed": config.split_seed,
            "device": str(dev),
            "seconds": round(seconds, 1), "best_epoch": best_epoch,
            "val_ua": round(best_ua, 4) if final_fit is None else None,
            "val_ua_by_corpus": (history[best_epoch] if best_epoch >= 0 and final_fit is None
                                 else {}),
            "final_fit": asdict(final_fit) if final_fit is not None else None,
            "val_speakers": val_speakers,
            # evaluate refuses test rows of these: a test figure is of speakers never seen
            "train_speakers": sorted(set(speaker_keys(train_df))),
            "teachers": teachers,
            "arousal": ({} if not arousal_waves else {
                "levels": list(AROUSAL_LEVELS), "weight": config.arousal_weight,
                "train_counts": counts_table(arousal_train.assign(label=arousal_train["arousal"])),
                "val_counts": counts_table(arousal_val.assign(label=arousal_val["arousal"])),
                "val_speakers": sorted(set(speaker_keys(arousal_val)))}),
            "train_counts": counts_table(train_df), "val_counts": counts_table(val_df),
            "manifests_sha256": manifests_sha256, "limit_per_corpus": limit_per_corpus,
            "resumed_after_epochs": resumed_after,
            "config": config_record(config),
            "label_decisions": (("calm -> neutral" if not config.extra_classes else
                                 "calm trained as a class of its own, merged into neutral in "
                                 "the exported graph (log-sum-exp of the two logits)")
                                + label_notes(set(train_df["corpus"]))
                                + ("" if not arousal_waves else
                                   " from the emotion head; its arousal levels train the "
                                   "auxiliary arousal head")),
            "history": history,
        },
        "data_licences": {c: LICENCES.get(c, "operator data") for c in corpora},
        "limits": data_limits(counts_table(train_df)),
    }
    write_card(model_path, card)
    remove_checkpoint(ckpt)
    return TrainResult(model_path=model_path, best_epoch=best_epoch,
                       val_ua=best_ua if final_fit is None else float("nan"),
                       temperature=temperature, seconds=seconds, device=str(dev), card=card)


def recalibrate_batch_norm(module: nn.Module, batches: Sequence[torch.Tensor],
                           device: torch.device) -> nn.Module:
    """An evaluation-mode copy of ``module`` whose batch-norm running statistics are
    recomputed over ``batches`` ((B, rows, frames) inputs; the batches' means, weighted
    equally, as :func:`torch.optim.swa_utils.update_bn` takes them); ``module`` itself is
    left as it was. Without batches the copy keeps ``module``'s statistics."""
    recalibrated = copy.deepcopy(module)
    if batches:
        # update_bn runs the copy in training mode, so its dropout draws from torch's global
        # generator: forked here, the training's own draws stay as they would be without it
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.optim.swa_utils.update_bn(batches, recalibrated, device)
    return recalibrated.eval()


def _state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``module``'s weights and buffers (the EMA model kept as the best)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _arousal_clips(config: TrainConfig, manifests: Sequence[Path],
                   limit_per_corpus: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) clips of the arousal corpora; both empty with the arousal head off."""
    if config.arousal_weight == 0:
        empty = pd.DataFrame({"path": [], "corpus": [], "speaker": [], "arousal": [],
                              "arousal_id": np.zeros(0, np.int64)})
        return empty, empty
    return train_and_val(build_arousal_dataset(manifests, val_fraction=config.val_fraction,
                                               seed=config.split_seed),
                         limit_per_corpus, config.split_seed, "the arousal head",
                         need_val=config.val_fraction > 0)


def train_and_val(data: pd.DataFrame, limit_per_corpus: int, seed: int,
                  what: str, need_val: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) rows of a dataset with ``subset``, at most ``limit_per_corpus`` clips per
    corpus and subset when > 0. Raises ConfigError, naming ``what`` they train, if either is
    empty (val only if ``need_val``: a final fit has none)."""
    if limit_per_corpus > 0:
        data = limit_clips(data, limit_per_corpus, seed)
    train_df = data[data["subset"] == SUBSET_TRAIN].reset_index(drop=True)
    val_df = data[data["subset"] == SUBSET_VAL].reset_index(drop=True)
    if train_df.empty or (need_val and val_df.empty):
        raise ConfigError(f"{what} needs train and validation clips; got {len(train_df)} train, "
                          f"{len(val_df)} val (validation speakers come from corpora with >= 4 "
                          "train speakers)")
    return train_df, val_df


def manifest_digest(path: Path) -> str:
    """The first 16 hex digits of a manifest file's sha256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def manifest_digests(paths: Sequence[Path]) -> dict[str, str]:
    """{path: :func:`manifest_digest`} (the card's record of the training data)."""
    return {str(p): manifest_digest(p) for p in paths}


def limit_clips(df: pd.DataFrame, per_corpus: int, seed: int) -> pd.DataFrame:
    """At most ``per_corpus`` clips per (corpus, subset), seeded (smoke tests, quick trials)."""
    parts = [g.sample(n=min(per_corpus, len(g)), random_state=seed)
             for _, g in df.groupby(["corpus", "subset"], sort=True)]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def config_record(config: TrainConfig) -> dict[str, Any]:
    """``config`` as the card records it (nested dicts; tuples as JSON lists)."""
    record: dict[str, Any] = _jsonable(asdict(config))
    return record


def train_config_from_record(record: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`config_record`. A key the record lacks takes its
    :data:`~training.card.ADDED_AS_BEFORE` value (what every run did before the field existed,
    which need not be today's default: ``band_pooling``), else today's default (a card written
    before a field existed; :func:`final_fit_of`, which must repeat a recipe exactly, refuses
    such a card); an unknown key raises ConfigError rather than being dropped."""
    return _dataclass_from(TrainConfig, record, "config")


def _dataclass_from(cls: type[T], record: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(record) - names)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(unknown)}; {cls.__name__} "
                          f"has {', '.join(sorted(names))}")
    # a field added since the record was written: what runs did before it, not today's default
    before = {k: v for k, v in ADDED_AS_BEFORE.items() if k in names and k not in record}
    return cls(**{k: _field_value(hints[k], v, f"{where}.{k}")
                  for k, v in {**record, **before}.items()})


def _field_value(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    # X | None: the dataclass among the union's members, if any
    candidates = typing.get_args(hint) if typing.get_origin(hint) in (Union, UnionType) else (hint,)
    for candidate in candidates:
        if is_dataclass(candidate) and isinstance(value, dict):
            return _dataclass_from(candidate, value, where)  # type: ignore[arg-type]
    if isinstance(value, list):
        return tuple(value)                  # the records' lists are tuples in the configs
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
