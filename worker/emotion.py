"""The emotion model edge: the ONNX session and its card, loaded lazily once per process.

A model is two files that travel together: ``NAME.onnx`` and ``NAME.card.json``. The card
holds the labels, the feature settings and the version recorded on every segment row,
and the SHA-256 of the ONNX file, checked at load so a card can never describe another model.

Sessions are created on first use, never at import: a Celery prefork parent that imported
this module forks children that each build their own session (ONNX Runtime's thread pools
do not survive ``fork``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.audio import file_sha256
from worker.constants import MODEL_STAMP_CHARS
from worker.errors import ModelError
from worker.features import FeatureConfig

STAMP_SHA_CHARS = 12
"""Hex digits of the ONNX file's sha256 in a model's stamp (48 bits: two different files of
one version are told apart)."""
MAX_VERSION_CHARS = MODEL_STAMP_CHARS - STAMP_SHA_CHARS - 1


def check_version(version: str) -> str:
    """``version`` if it fits in a stamp beside the sha prefix; ModelError otherwise."""
    if not version or len(version) > MAX_VERSION_CHARS or version != version.strip():
        raise ModelError(f"model version {version!r}: use 1 to {MAX_VERSION_CHARS} characters "
                         "without leading or trailing spaces (the database records it with the "
                         f"ONNX file's sha256 prefix in {MODEL_STAMP_CHARS})")
    return version


@dataclass(frozen=True)
class ModelCard:
    """What the worker needs to know about a model, read from ``NAME.card.json``."""

    name: str
    version: str
    labels: tuple[str, ...]
    features: FeatureConfig
    onnx_sha256: str
    input_name: str = "features"
    output_name: str = "logits"
    temperature: float = 1.0
    min_frames: int = 50
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                labels=tuple(str(x) for x in data["labels"]),
                features=FeatureConfig.from_dict(data["features"]),
                onnx_sha256=str(data["onnx_sha256"]),
                input_name=str(data.get("input_name", "features")),
                output_name=str(data.get("output_name", "logits")),
                temperature=float(data.get("temperature", 1.0)),
                min_frames=int(data.get("min_frames", 50)),
                extra={k: v for k, v in data.items() if k not in cls.__dataclass_fields__},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"model card is missing or has an invalid field: {e}") from e

    def __post_init__(self) -> None:
        check_version(self.version)

    @property
    def stamp(self) -> str:
        """What every segment and call row records as ``model_version``: the card's version and
        the first hex digits of the ONNX file's sha256 as semver build metadata
        (``emotion-v1.9.0+4f9736430a0f``). A model retrained under the shipped version's name
        (``callmood train`` without ``--version``) is so still told apart from it."""
        return f"{self.version}+{self.onnx_sha256[:STAMP_SHA_CHARS]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "labels": list(self.labels),
            "features": self.features.to_dict(), "onnx_sha256": self.onnx_sha256,
            "input_name": self.input_name, "output_name": self.output_name,
            "temperature": self.temperature, "min_frames": self.min_frames, **self.extra,
        }


def card_path_for(model_path: Path) -> Path:
    """``models/emotion-v1.onnx`` -> ``models/emotion-v1.card.json``."""
    return model_path.with_suffix(".card.json")


def load_card(model_path: Path) -> ModelCard:
    """Read and check the card of ``model_path``; raise ModelError if it does not match."""
    card_path = card_path_for(model_path)
    if not model_path.is_file():
        raise ModelError(f"emotion model not found: {model_path} (set CALLMOOD_MODEL_PATH)")
    try:
        card = ModelCard.from_dict(json.loads(card_path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read model card {card_path}: {e}") from e
    actual = file_sha256(model_path)
    if actual != card.onnx_sha256:
        raise ModelError(f"model card {card_path.name} describes another file "
                         f"(card sha256 {card.onnx_sha256[:12]}, file {actual[:12]})")
    return card


def softmax(logits: npt.NDArray[np.float32], temperature: float = 1.0) -> npt.NDArray[np.float32]:
    """Row-wise softmax of (n, classes) logits divided by ``temperature``."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    probabilities: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities


@dataclass(frozen=True)
class Decision:
    """The label chosen for one segment and the model's probability for it."""

    label: str
    confidence: float


def decide(probabilities: Sequence[float], labels: Sequence[str]) -> Decision:
    """Pure decision rule: the most probable class (ties go to the first label)."""
    if len(probabilities) != len(labels) or not labels:
        raise ValueError(f"{len(probabilities)} probabilities for {len(labels)} labels")
    best = int(np.argmax(np.asarray(probabilities, dtype=np.float64)))
    return Decision(label=labels[best], confidence=float(probabilities[best]))


class EmotionModel:
    """An ONNX emotion classifier with its card. Build with :func:`load_model`."""

    def __init__(self, model_path: Path, card: ModelCard, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Pinned threads: a worker runs one child per core, and ORT's default of one
        # thread per core in every child oversubscribes the machine.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own untyped errors
            raise ModelError(f"cannot load ONNX model {model_path}: {e}") from e
        self.card = card
        self.path = model_path

    @property
    def labels(self) -> tuple[str, ...]:
        return self.card.labels

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def stamp(self) -> str:
        """:attr:`ModelCard.stamp`: the ``model_version`` the database records."""
        return self.card.stamp

    def _pad(self, feats: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        # Very short utterances are tiled in time up to the receptive field the model
        # was trained with; zero padding would shift the normalised statistics.
        t = feats.shape[1]
        if t >= self.card.min_frames:
            return feats
        if t == 0:
            return np.zeros((feats.shape[0], self.card.min_frames), dtype=np.float32)
        reps = -(-self.card.min_frames // t)
        return np.tile(feats, (1, reps))[:, : self.card.min_frames]

    def predict_proba(self, features: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        """Class probabilities, shape (len(features), n_labels), for (n_mels, frames) inputs."""
        out = np.zeros((len(features), len(self.labels)), dtype=np.float32)
        for i, feats in enumerate(features):
            x = self._pad(np.asarray(feats, dtype=np.float32))[None, :, :]
            (logits,) = self._session.run([self.card.output_name], {self.card.input_name: x})
            out[i] = softmax(np.asarray(logits, dtype=np.float32), self.card.temperature)[0]
        return out


@lru_cache(maxsize=4)
def load_model(model_path: Path, threads: int = 1) -> EmotionModel:
    """The process's EmotionModel for ``model_path``: built on first call, then reused."""
    card = load_card(model_path)
    return EmotionModel(model_path, card, threads)
