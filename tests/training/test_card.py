"""Model-card helpers that need no model: recipe comparison."""

from __future__ import annotations

from training.card import config_differences


def test_config_differences_names_changed_nested_and_one_sided_keys() -> None:
    shipped = {"epochs": 40, "augment": {"p_phone": 0.7, "p_codec": 0.0}, "speech_cut": None}
    loco = {"epochs": 40, "augment": {"p_phone": 0.5}, "seed": 0, "speech_cut": None}
    assert config_differences(shipped, loco) == ["augment.p_codec", "augment.p_phone", "seed"]
    assert config_differences(shipped, shipped) == []
