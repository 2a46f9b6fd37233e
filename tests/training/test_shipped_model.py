"""Regression guard for the shipped model: its card is honest and its test-split UA holds.

Floors sit just under the figures measured for emotion-v1.9.0 (``python -m training evaluate
--robustness``: each clip cut to its speech as the worker cuts calls; the card's
``test_metrics`` hold the full tables). A retrained model that scores lower fails here until
the floors are consciously lowered.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from training.dataset import corpus_manifest_paths
from training.evaluate import DEFAULT_SPEECH_CUT, EvaluationResult, evaluate_model
from worker.constants import EMOTIONS
from worker.emotion import card_path_for, load_card

EVAL_CORPORA = ("ravdess", "emodb", "urdu")

# (corpus, channel): UA floor.  Measured UA for emotion-v1.9.0 in the comment (v1.8.0's after:
# v1.9.0 was chosen on validation speakers and is lower on the RAVDESS and URDU test speakers,
# see the README).
UA_FLOORS: dict[tuple[str, str], float] = {
    ("ravdess", "clean"): 0.60,    # measured 0.641 (v1.8.0: 0.664; 0.635 before the VAD's idle frames)
    ("ravdess", "mulaw8k"): 0.61,  # measured 0.640 (0.678)
    ("emodb", "clean"): 0.85,      # measured 0.888 (0.874)
    ("emodb", "mulaw8k"): 0.81,    # measured 0.846 (0.847)
    ("urdu", "clean"): 0.49,       # measured 0.534 (0.566; one URDU clip moves it 1-4 points)
    ("urdu", "mulaw8k"): 0.46,     # measured 0.505 (0.621)
}
MAX_ONNX_BYTES = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def measured(emotion_model: Path, callmood_corpora: Path) -> EvaluationResult:
    return evaluate_model(emotion_model, corpus_manifest_paths(callmood_corpora, EVAL_CORPORA),
                          split="test", channels=("clean", "mulaw8k"), threads=1, workers=2)


def test_the_shipped_model_is_small_and_its_card_matches_it(emotion_model: Path) -> None:
    card = load_card(emotion_model)          # raises if the card's sha256 is of another file
    assert card.labels == EMOTIONS
    assert emotion_model.stat().st_size <= MAX_ONNX_BYTES
    raw = json.loads(card_path_for(emotion_model).read_text())
    assert set(raw["data_licences"]) == {"ravdess", "tess", "emodb", "urdu"}
    assert "Research default" in emotion_model.with_suffix(".card.md").read_text()


def test_the_card_names_every_setting_of_the_retrain_recipe(emotion_model: Path) -> None:
    """The README's ``CALLMOOD_VAD_REMOVE_DC=0 callmood train`` is the shipped recipe: every
    field of today's TrainConfig is in the card with the same value. A field added since
    must be written into the card with the value the model was trained with, or
    leave-one-corpus-out rows list it as a recipe difference that is not one."""
    from training.card import config_differences
    from training.train import TrainConfig, config_record
    from worker.pipeline import SpeechCut
    from worker.vad import VadConfig

    training = json.loads(card_path_for(emotion_model).read_text())["training"]
    recipe = TrainConfig(speech_cut=SpeechCut(vad=VadConfig(remove_dc=False)))
    config = dict(training["config"])
    final_fit = training.get("final_fit")
    if final_fit:
        # a final fit: the selected run's recipe on every train speaker, for the epochs the
        # selected run needed (python -m training train --final-fit-version)
        assert config["val_fraction"] == 0.0 and training["val_speakers"] == []
        assert len(training["history"]) == final_fit["epochs"] == final_fit["selected"][
            "best_epoch"] + 1
        config["val_fraction"] = recipe.val_fraction
    differences = config_differences(config, config_record(recipe))
    # v1.4.0 was trained with early stopping (patience 12 after epoch 30), the default since
    # is to run every epoch; its run never stopped, so today's default trains the same model
    if differences == ["patience"]:
        assert final_fit or len(training["history"]) == config["epochs"] == recipe.epochs
        differences = []
    assert differences == []


def test_the_run_a_final_fit_refits_is_kept_beside_it(emotion_model: Path) -> None:
    """`callmood final-fit --selected worker/models/selection/emotion-v1.onnx` reproduces the
    shipped final fit: the selected run it names is there, byte for byte."""
    final_fit = json.loads(card_path_for(emotion_model).read_text())["training"].get("final_fit")
    if not final_fit:
        pytest.skip("the shipped model is a selected run, not a final fit")
    selected = emotion_model.parent / "selection" / emotion_model.name
    assert load_card(selected).onnx_sha256 == final_fit["selected"]["onnx_sha256"]
    assert load_card(selected).version == final_fit["selected"]["version"]


@pytest.mark.parametrize(("corpus", "channel"), sorted(UA_FLOORS))
def test_test_split_ua_holds(measured: EvaluationResult, corpus: str, channel: str) -> None:
    assert measured.get(corpus, channel).ua >= UA_FLOORS[(corpus, channel)]


def test_the_card_reports_what_the_model_measures(emotion_model: Path,
                                                  measured: EvaluationResult) -> None:
    test_metrics = json.loads(card_path_for(emotion_model).read_text())["test_metrics"]
    # the card's figures are of clips cut to speech as the worker cuts them, as measured here
    assert test_metrics["speech_cut"] == asdict(DEFAULT_SPEECH_CUT)
    assert measured.speech_cut == DEFAULT_SPEECH_CUT
    by_channel = test_metrics["by_channel"]
    for row in measured.rows:
        stated = by_channel[row.channel][row.corpus]
        assert stated["n_clips"] == row.n_clips
        # one clip's prediction flipping by float rounding on another CPU moves URDU's UA (14
        # happy clips) by 0.036; a card written for another model is off by far more
        assert stated["ua"] == pytest.approx(row.ua, abs=0.04), (row.corpus, row.channel)


# Robustness table on RAVDESS (``--robustness``), emotion-v1.9.0: clean 0.641, worst condition
# clipping (each clip's speech at -26 dBFS, +20 dB, hard clip), measured 0.603 (3.8 points
# under clean: the goal of at most 5 is met); every other condition within 1.9 points (strong
# EQ/tilt 0.622) or above clean (since 2026-12-06's idle frames in the VAD; before: clean
# 0.635, clipping 0.606). v1.8.0: clipping 0.614 (5.0 under its 0.664); v1.7.0:
# clipping 0.532 (5.65 under its 0.588); v1.6.0: clipping 0.570 (5.5 under its 0.625);
# v1.5.0: clipping 0.604 (4.9 under its 0.653); v1.4.0: Opus 0.558.
RAVDESS_WORST_CASE_FLOOR = 0.58
# a regression guard, not the goal: the measured drop plus about one point, since one or two
# clips flipping by float rounding on another CPU move a condition's UA by ~0.3 points each
RAVDESS_MAX_DROP_FROM_CLEAN = 0.048


def test_worst_channel_condition_holds_on_ravdess(emotion_model: Path,
                                                  callmood_corpora: Path) -> None:
    from training.evaluate import ROBUSTNESS

    result = evaluate_model(emotion_model, corpus_manifest_paths(callmood_corpora, ("ravdess",)),
                            split="test", channels=ROBUSTNESS, threads=1, workers=2)
    assert len(result.rows) == len(ROBUSTNESS)
    worst = min(result.rows, key=lambda r: r.ua)
    assert worst.ua >= RAVDESS_WORST_CASE_FLOOR, (worst.channel, worst.ua)
    clean = result.get("ravdess", "clean").ua
    assert clean - worst.ua <= RAVDESS_MAX_DROP_FROM_CLEAN, (worst.channel, clean, worst.ua)
