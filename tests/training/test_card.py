"""Model-card helpers that need no model: recipe comparison, the clip-cut sentence."""

from __future__ import annotations

from dataclasses import asdict

from training.card import clips_sentence, config_differences, with_loco_of
from worker.pipeline import SpeechCut
from worker.vad import VadConfig


def test_config_differences_names_changed_nested_and_one_sided_keys() -> None:
    shipped = {"epochs": 40, "augment": {"p_phone": 0.7, "p_codec": 0.0}, "speech_cut": None}
    loco = {"epochs": 40, "augment": {"p_phone": 0.5}, "seed": 0, "speech_cut": None}
    assert config_differences(shipped, loco) == ["augment.p_codec", "augment.p_phone", "seed"]
    assert config_differences(shipped, shipped) == []


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
