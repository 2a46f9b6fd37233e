"""Distillation from trained teachers: soft targets from clean clips for an augmented student.

Each teacher (an ONNX model + card, served as the worker serves it) scores every *clean*
training clip once; the student then learns, from its augmented, codec-damaged draws of the
clip, to match the teachers' averaged and softened view of the clean clip (Hinton et al.,
2015) beside the hard label. So one small model takes over what an ensemble knows, and the
channel damage is tied to the clean clip's answer rather than to the label alone.

Teachers must have been trained with the student's validation speakers held out (their cards
list them): a teacher that saw those speakers would leak them into model selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional

from training.dataset import card_val_speakers
from worker.emotion import load_model, softmax
from worker.errors import ConfigError
from worker.features import extract_features


@dataclass(frozen=True)
class DistillConfig:
    """Teachers and how much their soft targets weigh (no teachers: plain training)."""

    teachers: tuple[str, ...] = ()
    """ONNX paths of the teacher models (each with its card beside it)."""
    weight: float = 0.5
    """Share of the loss given to the teachers' soft targets; the rest is the hard label's."""
    temperature: float = 2.0
    """Softening of both sides of the distillation term (the loss is scaled by its square so
    its gradients keep their size, as in Hinton et al.)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"distill weight={self.weight}: use a value in [0, 1]")
        if self.temperature <= 0.0:
            raise ConfigError(f"distill temperature={self.temperature}: use a value > 0")


@dataclass(frozen=True)
class Teacher:
    """What the card records of one teacher."""

    path: str
    version: str
    onnx_sha256: str


def soften(probabilities: npt.NDArray[np.float32], temperature: float) -> npt.NDArray[np.float32]:
    """(N, C) probabilities raised to 1/temperature and renormalised (= softmax(logits / T))."""
    logp = np.log(np.clip(probabilities.astype(np.float64), 1e-12, None))
    return softmax(logp, temperature)


def distillation_loss(logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Mean cross-entropy of softened student logits (B, C) against soft targets (B, C),
    times temperature**2."""
    logp = functional.log_softmax(logits / temperature, dim=1)
    return -(targets * logp).sum(dim=1).mean() * temperature ** 2


def teacher_targets(teachers: Sequence[str], waves: Sequence[npt.NDArray[np.float32]],
                    sample_rate: int, labels: Sequence[str], val_speakers: Sequence[str],
                    temperature: float) -> tuple[npt.NDArray[np.float32], list[Teacher]]:
    """(N, C) softened mean of the teachers' calibrated probabilities for ``waves`` (clean
    training clips at ``sample_rate``), and each teacher's record.

    Raises ConfigError for a teacher with other labels, another sample rate, or validation
    speakers other than ``val_speakers``.
    """
    probs = []
    records = []
    for path in teachers:
        model = load_model(Path(path).resolve(), 1)
        held_out = card_val_speakers(model.card)
        if model.card.features.sample_rate != sample_rate:
            raise ConfigError(f"teacher {path} reads {model.card.features.sample_rate} Hz "
                              f"features; the student's are at {sample_rate} Hz")
        if held_out != sorted(val_speakers):
            raise ConfigError(f"teacher {path} held out validation speakers {held_out}; the "
                              f"student holds out {sorted(val_speakers)}: train the teacher "
                              "with the student's split seed, validation fraction and manifests")
        if tuple(model.labels) != tuple(labels):
            raise ConfigError(f"teacher {path} has labels {list(model.labels)}; the student "
                              f"has {list(labels)}")
        feats = [extract_features(w, model.card.features) for w in waves]
        probs.append(model.predict_proba(feats))
        records.append(Teacher(path=str(path), version=model.version,
                               onnx_sha256=model.card.onnx_sha256))
    return soften(np.mean(probs, axis=0).astype(np.float32), temperature), records
