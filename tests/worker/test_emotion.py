"""The model edge with a tiny hand-built ONNX graph, so it is tested apart from training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import N_MELS, write_tiny_model
from worker.emotion import check_version, decide, load_card, load_model, softmax
from worker.errors import ModelError


def test_decide_is_argmax_with_its_probability() -> None:
    d = decide([0.1, 0.6, 0.3], ["a", "b", "c"])
    assert (d.label, d.confidence) == ("b", 0.6)
    assert decide([0.5, 0.5], ["x", "y"]).label == "x"
    with pytest.raises(ValueError, match="3 probabilities for 2 labels"):
        decide([0.2, 0.3, 0.5], ["a", "b"])


def test_softmax_rows_sum_to_one_and_temperature_flattens() -> None:
    logits = np.array([[2.0, 0.0, -1.0]], dtype=np.float32)
    p1, p3 = softmax(logits, 1.0), softmax(logits, 3.0)
    assert p1.sum() == pytest.approx(1.0) and p3.sum() == pytest.approx(1.0)
    assert p3.max() < p1.max()


def test_model_predicts_probabilities_per_utterance(tmp_path: Path) -> None:
    weights = np.zeros((N_MELS, 7), dtype=np.float32)
    weights[0, 3] = 5.0  # a high first band pushes "happy"
    path = write_tiny_model(tmp_path, weights)
    model = load_model(path, 1)
    assert load_model(path, 1) is model  # one session per process
    a = np.zeros((N_MELS, 100), dtype=np.float32)
    a[0] = 1.0
    b = np.zeros((N_MELS, 5), dtype=np.float32)  # shorter than min_frames: tiled, not rejected
    probs = model.predict_proba([a, b])
    assert probs.shape == (2, 7)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.labels[int(np.argmax(probs[0]))] == "happy"
    assert np.allclose(probs[1], 1 / 7, atol=1e-5)
    assert model.version == "tiny-0.0.1"
    assert model.stamp == f"tiny-0.0.1+{model.card.onnx_sha256[:12]}"


def test_a_retrain_under_the_same_version_gets_its_own_stamp(tmp_path: Path) -> None:
    """Rows record version + sha prefix, so two files carrying one version stay apart."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = load_card(write_tiny_model(tmp_path / "a", np.zeros((N_MELS, 7))))
    b = load_card(write_tiny_model(tmp_path / "b", np.ones((N_MELS, 7))))
    assert a.version == b.version and a.stamp != b.stamp
    assert len(a.stamp) == len("tiny-0.0.1+") + 12


@pytest.mark.parametrize("version", ["", " v1", "v" * 52])
def test_a_version_that_cannot_be_recorded_is_refused(tmp_path: Path, version: str) -> None:
    path = write_tiny_model(tmp_path, np.zeros((N_MELS, 7)))
    card = json.loads(path.with_suffix(".card.json").read_text())
    path.with_suffix(".card.json").write_text(json.dumps({**card, "version": version}))
    with pytest.raises(ModelError, match="1 to 51 characters"):
        load_card(path)
    assert check_version("v" * 51) == "v" * 51


def test_card_that_describes_another_file_is_refused(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path, np.zeros((N_MELS, 7)))
    card = json.loads(path.with_suffix(".card.json").read_text())
    card["onnx_sha256"] = "0" * 64
    path.with_suffix(".card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="describes another file"):
        load_card(path)


def test_missing_model_and_broken_card(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="CALLMOOD_MODEL_PATH"):
        load_card(tmp_path / "absent.onnx")
    path = write_tiny_model(tmp_path, np.zeros((N_MELS, 7)))
    path.with_suffix(".card.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read model card"):
        load_card(path)
    path.with_suffix(".card.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelError, match="invalid field"):
        load_card(path)
