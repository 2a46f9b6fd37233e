"""Distillation: soft targets of teachers on clean clips, their loss, and the train command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.model_fixtures import N_MELS, write_tiny_model
from tests.training.test_train import _operator_manifest
from training.cli import final_fit_main, train_main
from training.dataset import build_dataset, speaker_keys
from training.distill import DistillConfig, distillation_loss, soften, teacher_targets
from worker.audio import load_mono
from worker.constants import EMOTIONS
from worker.emotion import load_model
from worker.errors import ConfigError
from worker.features import extract_features


def test_soften_flattens_without_reordering() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(soften(p, 1.0), p, atol=1e-6)
    soft = soften(p, 3.0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    assert (soft.argmax(axis=1) == p.argmax(axis=1)).all()
    assert (soft.max(axis=1) < p.max(axis=1)).all()          # less confident
    # = softmax(log p / T)
    z = np.log(p[0]) / 3.0
    np.testing.assert_allclose(soft[0], np.exp(z) / np.exp(z).sum(), atol=1e-6)


def test_distillation_loss_is_least_where_the_student_matches_the_targets() -> None:
    t = 2.0
    q = torch.tensor([[0.6, 0.3, 0.1]])
    matched = (t * torch.log(q)).requires_grad_()
    loss = distillation_loss(matched, q, t)
    (grad,) = torch.autograd.grad(loss, matched)
    assert float(grad.abs().max()) < 1e-6
    entropy = float(-(q * torch.log(q)).sum())
    assert float(loss.detach()) == pytest.approx(t * t * entropy, rel=1e-5)
    assert float(distillation_loss(torch.tensor([[0.0, 0.0, 3.0]]), q, t)) > float(loss)


@pytest.mark.parametrize(("kwargs", "named"), [({"weight": 1.5}, "distill weight"),
                                               ({"weight": -0.1}, "distill weight"),
                                               ({"temperature": 0.0}, "distill temperature")])
def test_distill_config_refuses_values_out_of_range(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        DistillConfig(**kwargs)  # type: ignore[arg-type]


def _teacher(folder: Path, val_speakers: list[str], seed: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = write_tiny_model(folder, np.random.default_rng(seed).normal(size=(N_MELS, 7)))
    card = json.loads(path.with_suffix(".card.json").read_text())
    card["training"] = {"val_speakers": val_speakers}
    path.with_suffix(".card.json").write_text(json.dumps(card))
    return path


def test_teacher_targets_are_the_teachers_softened_calibrated_view_of_clean_clips(
        tmp_path: Path, callmood_corpora: Path) -> None:
    teacher = _teacher(tmp_path / "t", ["ravdess:1"])
    model = load_model(teacher.resolve(), 1)
    rows = pd.read_csv(callmood_corpora / "ravdess" / "manifest.csv").head(3)
    waves = [load_mono(callmood_corpora / "ravdess" / p, model.card.features.sample_rate)
             for p in rows["path"]]
    targets, records = teacher_targets([str(teacher)], waves, model.card.features.sample_rate,
                                       EMOTIONS, ["ravdess:1"], 2.0)
    direct = model.predict_proba([extract_features(w, model.card.features) for w in waves])
    np.testing.assert_allclose(targets, soften(direct, 2.0), atol=1e-6)
    assert records[0].version == "tiny-0.0.1" and records[0].onnx_sha256 == model.card.onnx_sha256
    # a teacher that held out other speakers may have trained on the student's validation ones
    with pytest.raises(ConfigError, match=r"validation speakers.*ravdess:2"):
        teacher_targets([str(teacher)], waves, model.card.features.sample_rate, EMOTIONS,
                        ["ravdess:2"], 2.0)
    with pytest.raises(ConfigError, match="16000 Hz"):
        teacher_targets([str(teacher)], waves, 16000, EMOTIONS, ["ravdess:1"], 2.0)


def test_train_command_distils_from_a_teacher_and_records_it(
        tmp_path: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _operator_manifest(tmp_path, callmood_corpora)
    data = build_dataset([manifest])            # the student's validation speakers, as train
    held_out = sorted(set(speaker_keys(data[data["subset"] == "val"])))
    teacher = _teacher(tmp_path / "teacher", held_out)
    tiny = ["--manifest", str(manifest), "--epochs", "1", "--draws-per-epoch", "32",
            "--batch-size", "16", "--workers", "1", "--threads", "1", "--no-test-eval"]
    out_dir = tmp_path / "student"
    assert train_main([*tiny, "--out-dir", str(out_dir), "--teacher", str(teacher),
                       "--distill-weight", "0.7"]) == 0
    raw = json.loads((out_dir / "emotion-v1.card.json").read_text())
    assert raw["training"]["teachers"] == [{"path": str(teacher), "version": "tiny-0.0.1",
                                            "onnx_sha256": load_model(teacher.resolve(), 1)
                                            .card.onnx_sha256}]
    assert raw["training"]["config"]["distill"] == {"teachers": [str(teacher)], "weight": 0.7,
                                                    "temperature": 2.0}
    assert (raw["training"]["seed"], raw["training"]["split_seed"]) == (0, 0)
    # another seed of the recipe holds out the same speakers (the split seed picks them), so
    # the teacher is accepted; another split seed holds out others and is refused
    assert train_main([*tiny, "--out-dir", str(tmp_path / "seed3"), "--teacher", str(teacher),
                       "--seed", "3"]) == 0
    other = next(s for s in range(1, 50)
                 if sorted(set(speaker_keys(build_dataset([manifest], seed=s).query(
                     "subset == 'val'")))) != held_out)
    assert train_main([*tiny, "--out-dir", str(tmp_path / "split"), "--teacher", str(teacher),
                       "--split-seed", str(other)]) == 2
    # refused with a clear message, nothing trained
    wrong = _teacher(tmp_path / "wrong", ["ravdess:99"])
    assert train_main([*tiny, "--out-dir", str(tmp_path / "x"), "--teacher", str(wrong)]) == 2
    assert train_main([*tiny, "--out-dir", str(tmp_path / "y"), "--distill-weight", "2"]) == 2
    err = capsys.readouterr().err
    assert "held out validation speakers ['ravdess:99']" in err
    assert "distill weight=2.0: use a value in [0, 1]" in err
    assert not (tmp_path / "x" / "emotion-v1.onnx").exists()
    assert "train the teacher with the student's split seed" in err
    assert not (tmp_path / "split" / "emotion-v1.onnx").exists()
    # a final fit of the student distils from the same teacher (which held out the speakers
    # the final fit now trains on), and from no other file at that path
    final = ["--selected", str(out_dir / "emotion-v1.onnx"), "--manifest", str(manifest),
             "--workers", "1", "--threads", "1", "--no-test-eval"]
    assert final_fit_main([*final, "--out-dir", str(tmp_path / "final")]) == 0
    # its leave-one-corpus-out fit would learn the held-out corpus from the teacher's targets
    assert final_fit_main([*final, "--out-dir", str(tmp_path / "loco"),
                           "--without-corpus", "urdu"]) == 2
    assert "from their soft targets" in capsys.readouterr().err
    refit = json.loads((tmp_path / "final" / "emotion-v1.card.json").read_text())
    assert refit["training"]["teachers"] == raw["training"]["teachers"]
    replaced = _teacher(tmp_path / "replaced", held_out, seed=4)   # other weights, same split
    shutil.copy(replaced, teacher)
    shutil.copy(replaced.with_suffix(".card.json"), teacher.with_suffix(".card.json"))
    assert final_fit_main([*final, "--out-dir", str(tmp_path / "final2")]) == 2
    assert "are not the files" in capsys.readouterr().err
