"""Model-card helpers that need no model: recipe comparison, the clip-cut sentence."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from training.card import (
    clips_sentence,
    config_differences,
    data_limits,
    exact_ua,
    label_notes,
    loco_lines,
    markdown_path_for,
    render_markdown,
    robustness_lines,
    with_loco_of,
)
from worker.constants import EMOTIONS
from worker.emotion import card_path_for
from worker.pipeline import SpeechCut
from worker.vad import VadConfig


def test_config_differences_names_changed_nested_and_one_sided_keys() -> None:
    shipped = {"epochs": 40, "augment": {"p_phone": 0.7, "p_codec": 0.0}, "speech_cut": None}
    loco = {"epochs": 40, "augment": {"p_phone": 0.5}, "seed": 0, "speech_cut": None}
    assert config_differences(shipped, loco) == ["augment.p_codec", "augment.p_phone", "seed"]
    assert config_differences(shipped, shipped) == []
    # a field added with the value every older run had: the card or checkpoint without it
    # (here nested as a checkpoint's identity nests it) is the same recipe
    today = {**shipped, "bn_recalibration_batches": 0}
    assert config_differences({"config": shipped}, {"config": today}) == []
    assert config_differences({"config": {**today, "bn_recalibration_batches": 8}},
                              {"config": shipped}) == ["config.bn_recalibration_batches"]


def test_clips_sentence_names_the_cut_and_the_vad_level_front_end() -> None:
    cut = asdict(SpeechCut())
    sentence = clips_sentence(cut)
    assert "VAD mode 3, 10 ms frames" in sentence and "-15 dBFS" in sentence
    assert "400 ms bridged" in sentence
    old_vad = {k: v for k, v in cut["vad"].items() if k in ("aggressiveness", "frame_ms")}
    assert "dBFS" not in clips_sentence({**cut, "vad": old_vad})  # card before the front end
    assert "dBFS" not in clips_sentence(asdict(SpeechCut(VadConfig(max_gain_db=0.0))))
    assert clips_sentence(None).startswith("Whole clips")


def test_a_final_fit_carries_its_selected_runs_loco_figures_with_the_recipe_difference() -> None:
    selected_config = {"epochs": 60, "val_fraction": 0.2}
    entry = {"recipe_differences": [], "by_channel": {}, "val_ua": 0.63}
    selected = {"training": {"config": selected_config}, "loco": {"by_holdout": {"emodb": entry}}}
    final = {"training": {"config": {**selected_config, "val_fraction": 0.0}}}
    carried = with_loco_of(final, selected)["loco"]["by_holdout"]["emodb"]
    assert carried["recipe_differences"] == ["val_fraction"] and carried["val_ua"] == 0.63
    assert "loco" not in with_loco_of(final, {"training": {"config": selected_config}})
    assert final == {"training": {"config": {**selected_config, "val_fraction": 0.0}}}


def _row(ua: float, confusion: list[list[int]]) -> dict[str, Any]:
    return {"corpus": "emodb", "channel": "clean", "n_clips": sum(map(sum, confusion)),
            "ua": ua, "wa": 0.5, "ece": 0.1, "labels": ["angry", "sad", "fear"],
            "confusion": confusion}


def test_the_markdown_prints_ua_from_the_confusion_matrix_not_the_rounded_json() -> None:
    # recalls 1/2, 1/2 and 5/23: UA 0.4058; the stored figure is set apart (0.4050, which
    # would print 40.5 %) so that 40.6 % shows the figure was read from the matrix. The real
    # case: EmoDB's LOCO row, 0.27346 stored as 0.2735, printed 27.4 % instead of 27.3 %.
    row = _row(0.4050, [[1, 1, 0], [1, 1, 0], [9, 9, 5]])
    assert exact_ua(row) == pytest.approx((0.5 + 0.5 + 5 / 23) / 3)
    assert exact_ua({"ua": 0.4}) == 0.4  # a row without a matrix keeps its stored figure
    assert "40.6%" in "\n".join(robustness_lines({"clean": {"emodb": row},
                                                  "a": {"emodb": row}, "b": {"emodb": row}}))
    loco = {"by_holdout": {"emodb": {"trained_on": ["ravdess"], "recipe_differences": [],
                                     "command": "x", "by_channel": {"clean": row}}}}
    assert "| 40.6% |" in "\n".join(loco_lines(loco))
    # a row scored through mu-law only: its WA and ECE are not printed under "clean"
    mulaw = {**row, "channel": "mulaw8k", "wa": 0.77, "ece": 0.33}
    loco["by_holdout"]["emodb"]["by_channel"] = {"mulaw8k": mulaw}
    only_mulaw = "\n".join(loco_lines(loco))
    assert "77.0%" not in only_mulaw and "0.330" not in only_mulaw
    assert "| 40.6% | - | - |" in only_mulaw


def test_the_markdown_shows_speakers_the_interval_and_ua_per_test_speaker(
        emotion_model: Path) -> None:
    base = {k: v for k, v in json.loads(card_path_for(emotion_model).read_text()).items()
            if k not in ("test_metrics", "loco")}
    row = {**_row(0.5, [[1, 1, 0], [1, 1, 0], [0, 0, 0]]), "n_speakers": 6,
           "ua_interval95": [0.4123, 0.6789],
           "by_speaker": {"ravdess:actor19": {"n_clips": 60, "ua": 0.41666}}}

    def rendered(metrics: dict[str, Any]) -> str:
        return render_markdown({**base, "test_metrics": {
            "split": "test", "command": "c", "speech_cut": None,
            "by_channel": {"clean": {"ravdess": metrics}}}})

    lines = rendered(row)
    assert "| clean | ravdess | 4 | 6 | 50.0% | 41.2-67.9% |" in lines
    assert "| ravdess | actor19 | 60 | 41.7% |" in lines
    # a card written before the interval existed prints "-" in its place
    lines = rendered({k: v for k, v in row.items()
                      if k not in ("n_speakers", "ua_interval95", "by_speaker")})
    assert "| clean | ravdess | 4 | - | 50.0% | - |" in lines and "per test speaker" not in lines


def test_the_shipped_cards_stored_ua_is_the_matrix_ua_rounded(emotion_model: Path) -> None:
    """Every stored UA of the shipped card agrees with its own confusion matrix, so the
    Markdown (matrix) and the JSON (rounded) cannot tell different stories; the card's
    Markdown is the rendering of its JSON."""
    card = json.loads(card_path_for(emotion_model).read_text())
    rows = [m for per in card["test_metrics"]["by_channel"].values() for m in per.values()]
    rows += [m for e in card.get("loco", {}).get("by_holdout", {}).values()
             for m in e["by_channel"].values()]
    assert rows and all(round(exact_ua(m), 4) == m["ua"] for m in rows)
    assert markdown_path_for(emotion_model).read_text() == render_markdown(card)


def test_reuse_problem_names_a_model_that_heard_the_corpus_or_is_another_procedure() -> None:
    from training.card import reuse_problem

    selected = {"version": "sel-1", "onnx_sha256": "aa"}
    fit = {"version": "loco-final-no-urdu", "training": {
        "train_counts": {"ravdess": {}, "emodb": {}},
        "final_fit": {"selected": {"onnx_sha256": "aa"}, "without_corpus": "urdu"}}}
    assert reuse_problem(fit, "urdu", selected) is None
    assert "was trained on emodb" in str(reuse_problem(fit, "emodb", selected))
    assert "not the final fit of sel-1" in str(
        reuse_problem(fit, "urdu", {"version": "sel-1", "onnx_sha256": "bb"}))
    assert "is a final fit" in str(reuse_problem(fit, "urdu", None))
    run: dict[str, Any] = {"version": "loco-no-urdu",
                           "training": {"train_counts": {"ravdess": {}}}}
    assert reuse_problem(run, "urdu", None) is None
    # a student of teachers that heard urdu (trained before loco refused teachers)
    taught = {**run, "training": {**run["training"], "teachers": [{"path": "t.onnx"}]}}
    assert "learnt from teachers" in str(reuse_problem(taught, "urdu", None))
    assert "not the final fit" in str(reuse_problem(run, "urdu", selected))


def test_a_cards_limits_name_only_the_corpora_and_languages_it_trained_on() -> None:
    """Before, every card said "plus 310 URDU talk-show clips" and "English, German, Urdu",
    also a model trained without URDU or on an operator's own calls."""
    shared = {"ravdess": {"sad": 3}, "tess": {"sad": 2}, "emodb": {"sad": 1},
              "urdu": {"angry": 200, "happy": 110}}
    limits = data_limits(shared)
    assert "310 URDU talk-show clips" in limits[0] and "Languages: English, German, Urdu;" in limits[2]
    without_urdu = data_limits({k: v for k, v in shared.items() if k != "urdu"})
    assert "URDU" not in without_urdu[0] and "Languages: English, German;" in without_urdu[2]
    operator = data_limits({"mycalls": {"angry": 40}})
    assert "operator data (mycalls)" in operator[0] and "acted" not in operator[0]
    assert "English" not in operator[2]
    assert label_notes(set(shared)) == ("; EmoDB boredom dropped; URDU kept (4 classes, natural "
                                        "speech); BAVED excluded (arousal only)")
    assert label_notes({"ravdess"}) == "; BAVED excluded (arousal only)"
    assert label_notes({"mycalls"}) == ""


def test_a_card_names_the_classes_no_clip_taught() -> None:
    """An operator's model trained on 4 emotions listed all 7 outputs without a word, while
    the 3 untrained ones took probability and fed the stress score (a review)."""
    four = data_limits({"mycalls": {"angry": 40, "happy": 30, "neutral": 50, "sad": 20}})
    assert four[-1] == ("No training clip of disgust, fear, surprise: the model gives them "
                        "probability 0 (masked in the exported graph), so the stress score "
                        "reads nothing of disgust, fear.")
    every = {"ravdess": {e: 1 for e in EMOTIONS}}
    assert not any(line.startswith("No training clip") for line in data_limits(every))
