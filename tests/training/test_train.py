"""One-command retraining on an operator's own labelled manifest, end to end (tiny and fast)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from training.cli import evaluate_main, final_fit_main, train_main
from training.distill import DistillConfig
from training.model import (
    EmotionCNN,
    EmotionEnsemble,
    MergedClasses,
    ModelConfig,
    build_model,
    count_parameters,
)
from training.train import (
    TRAIN_FEATURES,
    TrainConfig,
    batch_loss,
    check_onnx,
    config_record,
    draw_epoch,
    export_onnx,
    final_fit_of,
    member_inputs,
    member_loss,
    recalibrate_batch_norm,
    served_model,
    spec_augment,
    stops_early,
    tile_frames,
    train,
    train_config_from_record,
)
from worker.audio import load_mono
from worker.constants import EMOTIONS
from worker.emotion import load_card, load_model
from worker.errors import ConfigError
from worker.features import extract_features


def _operator_manifest(tmp_path: Path, corpora: Path) -> Path:
    """An operator's "own calls": RAVDESS clips listed by absolute path in another folder."""
    rows = pd.read_csv(corpora / "ravdess" / "manifest.csv")
    actors = sorted(rows["speaker"].unique())[:7]
    picked = (rows[rows["speaker"].isin(actors)].groupby(["speaker", "emotion"]).head(1)
              .assign(path=lambda d: [str(corpora / "ravdess" / p) for p in d["path"]],
                      split=lambda d: np.where(d["speaker"] == actors[-1], "test", "train"))
              .drop(columns=["corpus"]))
    folder = tmp_path / "mycalls"
    folder.mkdir()
    picked.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_train_command_writes_a_servable_model_and_card(
        tmp_path: Path, callmood_env: object, callmood_corpora: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from worker.settings import get_settings

    # a cut other than the worker's default, which the recorded commands must carry
    monkeypatch.setenv("CALLMOOD_VAD_REMOVE_DC", "0")
    get_settings.cache_clear()
    manifest = _operator_manifest(tmp_path, callmood_corpora)
    out_dir = tmp_path / "models"
    status = train_main(["--manifest", str(manifest), "--out-dir", str(out_dir), "--name", "mine",
                         "--version", "mine-0.1", "--epochs", "1", "--draws-per-epoch", "32",
                         "--batch-size", "16", "--workers", "1", "--threads", "1"])
    assert status == 0
    model_path = out_dir / "mine.onnx"
    card = load_card(model_path)                     # sha256 of the ONNX checked here
    assert card.version == "mine-0.1" and card.labels == EMOTIONS
    raw = json.loads(model_path.with_suffix(".card.json").read_text())
    assert set(raw["training"]["train_counts"]) == {"mycalls"}
    assert raw["training"]["val_speakers"] and "test_metrics" in raw
    assert raw["test_metrics"]["by_channel"]["mulaw8k"]["mycalls"]["n_clips"] == 8
    # trained and scored on the speech the worker's VAD cuts, with its settings on record
    assert raw["training"]["config"]["speech_cut"]["vad"]["aggressiveness"] == 3
    assert raw["test_metrics"]["speech_cut"] == raw["training"]["config"]["speech_cut"]
    assert raw["training"]["config"]["speech_cut"]["vad"]["remove_dc"] is False
    # rerunning a card's command (with that environment) rebuilds its cut
    assert raw["training"]["command"].startswith(
        "CALLMOOD_VAD_REMOVE_DC=0 python -m training train --manifest ")
    assert raw["test_metrics"]["command"].startswith(
        "CALLMOOD_VAD_REMOVE_DC=0 python -m training evaluate --model ")
    assert "cut to its speech as the worker cuts calls" in model_path.with_suffix(".card.md").read_text()
    # no research corpus by name: the operator's note, not the research default's
    markdown = model_path.with_suffix(".card.md").read_text()
    assert "operator's own labelled data only" in markdown and "Research default" not in markdown
    # the worker's path serves it: decoded clip -> shared features -> probabilities
    audio = load_mono(Path(pd.read_csv(manifest)["path"].iloc[0]), card.features.sample_rate)
    probs = load_model(model_path.resolve(), 1).predict_proba([extract_features(audio, card.features)])
    assert probs.shape == (1, 7) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert "wrote" in capsys.readouterr().out


def test_final_fit_trains_the_selected_recipe_on_every_train_speaker(
        tmp_path: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _operator_manifest(tmp_path, callmood_corpora)
    selected_dir = tmp_path / "selected"
    final_dir = selected_dir / "final"
    # one command: the run selected on validation speakers, then its final fit
    assert train_main(["--manifest", str(manifest), "--out-dir", str(selected_dir),
                       "--version", "mine-0.1", "--epochs", "3", "--draws-per-epoch", "32",
                       "--batch-size", "16", "--workers", "1", "--threads", "1", "--lr", "1e-3",
                       "--no-test-eval", "--final-fit-version", "mine-0.2"]) == 0
    selected = json.loads((selected_dir / "emotion-v1.card.json").read_text())
    assert "test_metrics" not in selected
    first = json.loads((final_dir / "emotion-v1.card.json").read_text())
    assert first["version"] == "mine-0.2" and first["training"]["final_fit"]["selected"][
        "onnx_sha256"] == selected["onnx_sha256"]
    # the final fit by itself, with the test figures this time
    assert final_fit_main(["--selected", str(selected_dir / "emotion-v1.onnx"),
                           "--manifest", str(manifest), "--out-dir", str(final_dir),
                           "--version", "mine-0.2", "--workers", "1", "--threads", "1"]) == 0
    card = json.loads((final_dir / "emotion-v1.card.json").read_text())
    training, sel = card["training"], selected["training"]
    # the selected run's validation speakers are trained on; nothing is held out
    assert training["val_speakers"] == [] and training["val_ua"] is None
    both = {k: sel["train_counts"]["mycalls"].get(k, 0) + sel["val_counts"]["mycalls"].get(k, 0)
            for k in set(sel["train_counts"]["mycalls"]) | set(sel["val_counts"]["mycalls"])}
    assert training["train_counts"]["mycalls"] == both
    # epochs and temperature come from the selected run, the rest of the recipe too
    assert len(training["history"]) == sel["best_epoch"] + 1 == training["final_fit"]["epochs"]
    assert card["temperature"] == selected["temperature"]
    assert training["final_fit"]["selected"]["onnx_sha256"] == selected["onnx_sha256"]
    assert {**training["config"], "val_fraction": 0.2} == sel["config"]
    assert "test_metrics" in card and "final fit" in (final_dir / "emotion-v1.card.md").read_text()
    assert "loco" not in card           # the selected run has none to carry over
    assert load_card(final_dir / "emotion-v1.onnx").version == "mine-0.2"
    capsys.readouterr()
    # a final fit has no validation speakers to refit on; other data is not a final fit
    assert final_fit_main(["--selected", str(final_dir / "emotion-v1.onnx"), "--manifest",
                           str(manifest), "--out-dir", str(tmp_path / "again")]) == 2
    assert "final fit already" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    pd.read_csv(manifest).head(20).to_csv(other, index=False)
    selected_model = str(selected_dir / "emotion-v1.onnx")
    assert final_fit_main(["--selected", selected_model, "--manifest", str(other),
                           "--out-dir", str(tmp_path / "again")]) == 2
    assert "not the ones mine-0.1 was selected with" in capsys.readouterr().err
    # nor more data, nor over the selected model
    assert final_fit_main(["--selected", selected_model, "--manifest", str(manifest),
                           "--manifest", str(other), "--out-dir", str(tmp_path / "again")]) == 2
    assert "not the ones mine-0.1 was selected with" in capsys.readouterr().err
    assert final_fit_main(["--selected", selected_model, "--manifest", str(manifest),
                           "--manifest", str(manifest), "--out-dir", str(tmp_path / "again")]) == 2
    assert "not the ones mine-0.1 was selected with" in capsys.readouterr().err
    assert final_fit_main(["--selected", selected_model, "--manifest", str(manifest),
                           "--out-dir", str(selected_dir)]) == 2
    assert "would overwrite the selected model" in capsys.readouterr().err
    # a final fit has no validation speakers to be scored on
    assert evaluate_main(["--model", str(final_dir / "emotion-v1.onnx"), "--split", "val",
                          "--manifest", str(manifest)]) == 2
    assert "lists no validation speakers" in capsys.readouterr().err
    # a smoke run has no final fit
    assert train_main(["--manifest", str(manifest), "--limit-per-corpus", "5",
                       "--final-fit-version", "mine-0.3"]) == 2
    assert "smoke run" in capsys.readouterr().err


def test_a_recorded_recipe_reads_back_as_the_config_that_wrote_it(tmp_path: Path) -> None:
    config = TrainConfig(seed=3, extra_classes=("calm",), mixup_alpha=0.2,
                         model=ModelConfig(n_classes=8, channels=(8, 16, 32, 64)),
                         augment=replace(TrainConfig().augment, codec_level_range=(0.9, 1.0)))
    distilled = TrainConfig(distill=DistillConfig(teachers=("a.onnx",), weight=0.3))
    assert train_config_from_record(json.loads(json.dumps(config_record(distilled)))) == distilled
    assert train_config_from_record(json.loads(json.dumps(config_record(config)))) == config
    assert train_config_from_record({"speech_cut": None}).speech_cut is None
    with pytest.raises(ConfigError, match=r"config\.augment has unknown key.*p_flanger"):
        train_config_from_record({"augment": {"p_flanger": 0.5}})
    # a card missing a key has a recipe that cannot be repeated: no final fit of it
    record = config_record(config)
    del record["speech_cut"]["vad"]["remove_dc"]
    card: dict[str, Any] = {"version": "old", "temperature": 1.2, "training": {
        "config": record, "best_epoch": 9, "manifests_sha256": {}}}
    with pytest.raises(ConfigError, match=r"does not record speech_cut\.vad\.remove_dc"):
        final_fit_of(card)
    card["training"]["config"] = config_record(config)
    assert final_fit_of(card)[1].epochs == 10
    assert final_fit_of(card)[0] == replace(config, val_fraction=0.0)
    # a field whose default is what runs did before it existed: the older card still repeats
    del card["training"]["config"]["bn_recalibration_batches"]
    assert final_fit_of(card)[0].bn_recalibration_batches == 0
    card["training"]["config"]["bn_recalibration_batches"] = 8
    assert final_fit_of(card)[0].bn_recalibration_batches == 8
    del card["training"]["config"]["model"]["band_pooling"]      # emotion-v1.6.0's card
    assert final_fit_of(card)[0].model.band_pooling == "mean"
    # every train speaker (val_fraction 0) only in a final fit: nothing would select the epoch
    with pytest.raises(ConfigError, match="only a final fit may"):
        train([], tmp_path, replace(config, val_fraction=0.0))


def _first_batch_norm_stats(module: Any) -> tuple[Any, Any]:
    """(running_mean, running_var) of ``module``'s first BatchNorm2d."""
    import torch

    bn = next(m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.running_mean is not None and bn.running_var is not None
    return bn.running_mean, bn.running_var


def test_batch_norm_recalibration_recomputes_a_copy_s_statistics_from_the_batches() -> None:
    import torch

    torch.manual_seed(0)
    model = EmotionCNN(ModelConfig(channels=(4, 8, 8, 8))).eval()
    mean, var = _first_batch_norm_stats(model)
    with torch.no_grad():                    # statistics that fit no input
        mean.fill_(5.0)
        var.fill_(9.0)
    batches = [torch.randn(3, 64, 40) + 2.0, torch.randn(5, 64, 40) - 1.0]
    recalibrated = recalibrate_batch_norm(model, batches, torch.device("cpu"))
    # the model itself keeps its statistics; the copy is ready to serve
    assert float(mean[0]) == 5.0 and not recalibrated.training
    conv = model.body[0]
    with torch.no_grad():
        means = [conv(b.unsqueeze(1)).mean(dim=(0, 2, 3)) for b in batches]
    # each batch's channel means, weighted equally (update_bn's cumulative average)
    assert torch.allclose(_first_batch_norm_stats(recalibrated)[0], (means[0] + means[1]) / 2,
                          atol=1e-5)
    assert not torch.allclose(recalibrated(batches[0]), model(batches[0]))
    # no batches: the copy keeps the statistics it had
    kept = recalibrate_batch_norm(model, [], torch.device("cpu"))
    assert float(_first_batch_norm_stats(kept)[1][0]) == 9.0
    with pytest.raises(ConfigError, match="bn_recalibration_batches=-1"):
        TrainConfig(bn_recalibration_batches=-1)


def test_training_with_recalibration_selects_on_it_and_logs_the_averaged_statistics(
        tmp_path: Path, callmood_corpora: Path) -> None:
    manifest = _operator_manifest(tmp_path, callmood_corpora)
    histories = []
    for batches in ("0", "1"):
        assert train_main(["--manifest", str(manifest), "--out-dir", str(tmp_path / batches),
                           "--name", "m", "--epochs", "2", "--draws-per-epoch", "32",
                           "--batch-size", "16", "--workers", "1", "--threads", "1",
                           "--bn-recalibration-batches", batches, "--no-test-eval"]) == 0
        histories.append(json.loads((tmp_path / batches / "m.card.json").read_text())["training"])
    without, training = histories
    assert training["config"]["bn_recalibration_batches"] == 1
    assert [sorted(h) for h in training["history"]] == [
        ["epoch", "loss", "mycalls", "val_ua", "val_ua_averaged_bn"]] * 2
    assert "--bn-recalibration-batches 1" in training["command"]
    # recalibrating a copy leaves the training as it was: the same losses, and the same
    # weights validated with the averaged statistics
    assert [h["loss"] for h in training["history"]] == [h["loss"] for h in without["history"]]
    assert ([h["val_ua_averaged_bn"] for h in training["history"]]
            == [h["val_ua"] for h in without["history"]])


def test_a_version_the_database_cannot_record_is_refused_before_training(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--version", "v" * 52, "--epochs", "1"]) == 2
    assert "use 1 to 51 characters" in capsys.readouterr().err


def test_the_network_accepts_any_length_and_tiling_matches_serving() -> None:
    import torch

    net = EmotionCNN(ModelConfig()).eval()
    for frames in (8, 100, 333):
        assert net(torch.zeros(2, 64, frames)).shape == (2, 7)
    feats = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert tile_frames(feats, 7).tolist() == [[0, 1, 2, 0, 1, 2, 0], [3, 4, 5, 3, 4, 5, 3]]


def test_spec_augment_masks_bands_and_frames_reproducibly() -> None:
    import torch

    x = torch.ones(4, 64, 300)
    config = TrainConfig()
    a = spec_augment(x, config, torch.Generator().manual_seed(1))
    b = spec_augment(x, config, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    masked = float((a == 0).float().mean())
    assert 0.0 < masked < 0.4      # at most 2x8 of 64 bands and 2x25 of 300 frames per clip


def test_two_view_input_is_two_channels_masked_alike_and_exports(tmp_path: Path) -> None:
    """CMN and level views (128 rows) enter the CNN as two channels of 64 bands; SpecAugment
    hides the same bands and frames in both; the ONNX export matches torch."""
    import torch

    features = replace(TRAIN_FEATURES, normalization="utterance_cmn_and_level")
    config = TrainConfig(features=features, model=ModelConfig(views=2))
    with pytest.raises(ConfigError, match="1 view"):
        TrainConfig(features=features)                  # a one-view model for two views
    masked = spec_augment(torch.ones(4, 128, 300), config, torch.Generator().manual_seed(1))
    assert torch.equal(masked[:, :64], masked[:, 64:]) and bool((masked == 0).any())
    net = EmotionCNN(config.model).eval()
    assert net.body[0].in_channels == 2
    x = torch.randn(3, 128, 50)
    with torch.no_grad():
        swapped = torch.cat([x[:, 64:], x[:, :64]], dim=1)  # views are channels, not bands
        assert not torch.allclose(net(x), net(swapped))
    export_onnx(net, tmp_path / "two.onnx", features.input_rows)
    assert check_onnx(net, tmp_path / "two.onnx", features.input_rows) < 1e-4


@pytest.mark.parametrize(("channels", "members", "band_pooling", "mega_multiply_adds"), [
    ((16, 32, 64, 128), 1, "mean", 156.7),   # emotion-v1.4.0 to v1.6.0
    ((16, 32, 64, 128), 1, "keep", 156.7),   # emotion-v1.7.0: +12.5 k in the head
    ((8, 16, 32, 64), 4, "mean", 159.5),     # four half-width members
    ((12, 24, 48, 96), 2, "mean", 177.3),    # two 3/4-width members
    ((18, 36, 72, 144), 1, "mean", 197.9),   # the wider CNN
])
def test_the_compute_per_3_s_that_the_model_docs_quote(
        channels: tuple[int, int, int, int], members: int, band_pooling: str,
        mega_multiply_adds: float) -> None:
    from training.model import multiply_adds

    config = ModelConfig(channels=channels, members=members, band_pooling=band_pooling)
    assert multiply_adds(config) / 1e6 == pytest.approx(mega_multiply_adds, abs=0.05)


def test_band_pooling_keep_gives_the_head_each_frequency_row_and_exports(tmp_path: Path) -> None:
    """"keep" feeds the head the time statistics of every (channel, frequency row); the graph
    still takes any length; "mean" keeps emotion-v1.6.0's 2 * channels[3] inputs."""
    import torch

    assert ModelConfig(band_pooling="mean").embedding_size == 256
    assert ModelConfig().embedding_size == 2048      # emotion-v1.7.0's default
    config = ModelConfig(channels=(4, 8, 8, 16), band_pooling="keep")
    assert config.embedding_size == 2 * 16 * (64 // 8)
    with pytest.raises(ConfigError, match=r"band_pooling='rows'.*mean, keep"):
        ModelConfig(band_pooling="rows")
    torch.manual_seed(0)
    net = EmotionCNN(config).eval()
    x = torch.randn(1, 64, 100)
    with torch.no_grad():
        assert net.embed(x).shape == (1, config.embedding_size)
        # the rows are kept apart: swapping the input's high and low bands changes the
        # embedding, where averaging the rows would only see the rows' mean
        flipped = net.embed(x.flip(1))
        assert not torch.allclose(net.embed(x), flipped)
    export_onnx(net, tmp_path / "keep.onnx", 64)
    assert check_onnx(net, tmp_path / "keep.onnx", 64) < 1e-4    # two lengths, dynamic axes


def test_an_ensemble_averages_its_members_in_one_exported_graph(tmp_path: Path) -> None:
    """Members learn from their own losses on their own masks; the model's logits (and the
    ONNX graph's) are the members' mean."""
    import torch

    assert isinstance(build_model(ModelConfig()), EmotionCNN)   # v1.4.0's graph for one member
    with pytest.raises(ConfigError, match="members=0"):
        ModelConfig(members=0)
    config = TrainConfig(model=ModelConfig(channels=(8, 16, 32, 64), members=3))
    torch.manual_seed(0)
    net = build_model(config.model)
    assert isinstance(net, EmotionEnsemble)
    net.eval()
    x = torch.randn(2, 64, 120)
    with torch.no_grad():
        each = [logits for logits, arousal in net.member_logits([x, x, x])]
        assert not torch.allclose(each[0], each[1])             # initialised apart
        assert torch.allclose(net(x), torch.stack(each).mean(dim=0), atol=1e-6)
    with pytest.raises(ValueError, match="2 inputs for 3 members"):
        net.member_logits([x, x])
    inputs = member_inputs(torch.ones(4, 64, 300), config, torch.Generator().manual_seed(1), None)
    assert len(inputs) == 3 and not torch.equal(inputs[0], inputs[1])   # masks of their own
    # one member draws exactly the masks (and so the run) a plain model draws
    (one,) = member_inputs(x, TrainConfig(), torch.Generator().manual_seed(1), None)
    assert torch.equal(one, spec_augment(x, TrainConfig(), torch.Generator().manual_seed(1)))
    y = torch.tensor([0, 3])
    assert torch.allclose(batch_loss(each[0], y, config, None, None), torch.nn.functional.cross_entropy(
        each[0], y, label_smoothing=config.label_smoothing))
    export_onnx(net, tmp_path / "three.onnx", 64)
    assert check_onnx(net, tmp_path / "three.onnx", 64) < 1e-4


def test_calm_trained_apart_is_served_merged_into_neutral(tmp_path: Path) -> None:
    """An extra training class is merged into its served class: the served softmax is the
    eight-class softmax with the two probabilities summed, in torch and in
    the exported graph; the default recipe serves the model itself."""
    import torch

    config = TrainConfig(extra_classes=("calm",), model=ModelConfig(n_classes=8))
    torch.manual_seed(0)
    net = build_model(config.model).eval()
    served = served_model(net, config)
    assert isinstance(served, MergedClasses)
    assert served_model(net, TrainConfig()) is net
    x = torch.randn(3, 64, 90)
    neutral = EMOTIONS.index("neutral")
    with torch.no_grad():
        eight, seven = net(x), served(x)
        p8, p7 = torch.softmax(eight, dim=1), torch.softmax(seven, dim=1)
        expected = p8[:, :7].clone()
        expected[:, neutral] += p8[:, 7]
        assert torch.allclose(p7, expected, atol=1e-6)
    assert seven.shape == (3, 7)
    export_onnx(served, tmp_path / "merged.onnx", 64)
    assert check_onnx(served, tmp_path / "merged.onnx", 64) < 1e-4
    with pytest.raises(ValueError, match="every served class"):
        MergedClasses(net, [0, 1, 2, 3, 4, 5, 7, 4])
    with pytest.raises(ConfigError, match="valid are calm"):
        TrainConfig(extra_classes=("boredom",), model=ModelConfig(n_classes=8))
    with pytest.raises(ConfigError, match="n_classes=8, not 7"):
        TrainConfig(extra_classes=("calm",))
    with pytest.raises(ConfigError, match="without distillation"):
        TrainConfig(extra_classes=("calm",), model=ModelConfig(n_classes=8),
                    distill=DistillConfig(teachers=(str(tmp_path / "t.onnx"),)))


def test_classes_no_clip_taught_are_served_with_probability_zero(tmp_path: Path) -> None:
    """An operator's 4-emotion model gave its 3 untaught classes ~40 % of every segment's
    probability, fear feeding the stress score (a review). Their logits are masked in the
    served graph: probability 0, the taught classes' shares as before, exported alike."""
    import torch

    from training.dataset import untaught_classes
    from training.train import served_model

    untaught = untaught_classes(["angry", "happy", "calm", "sad", "angry"])
    assert [EMOTIONS[i] for i in untaught] == ["disgust", "fear", "surprise"]
    assert untaught_classes(EMOTIONS) == []
    net = build_model(ModelConfig(channels=(4, 4, 4, 4)))
    net.eval()
    served = served_model(net, TrainConfig(), untaught)
    assert served_model(net, TrainConfig(), []) is net
    x = torch.randn(3, 64, 90)
    with torch.no_grad():
        p7 = torch.softmax(served(x) / 0.3, dim=1)      # at a steep card temperature too
        p_net = torch.softmax(net(x) / 0.3, dim=1)
    assert p7[:, untaught].max().item() == 0.0
    taught = [i for i in range(len(EMOTIONS)) if i not in untaught]
    renormalised = p_net[:, taught] / p_net[:, taught].sum(dim=1, keepdim=True)
    assert torch.allclose(p7[:, taught], renormalised, atol=1e-6)
    export_onnx(served, tmp_path / "masked.onnx", 64)
    assert check_onnx(served, tmp_path / "masked.onnx", 64) < 1e-4


def test_the_arousal_head_shares_the_layers_and_stays_out_of_the_exported_graph(
        tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    config = TrainConfig(arousal_weight=0.5, model=ModelConfig(arousal_classes=3))
    torch.manual_seed(0)
    plain = build_model(ModelConfig())
    torch.manual_seed(0)
    net = build_model(config.model)
    assert isinstance(net, EmotionCNN)
    # the emotion layers start as v1.4.0's do; the served graph has the same parameters
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 net.state_dict().values(), strict=False))
    assert count_parameters(net) == count_parameters(plain)
    net.eval()
    x = torch.randn(4, 64, 120)
    with torch.no_grad():
        ((emotion, arousal),) = net.member_logits([x])
        assert arousal is not None and arousal.shape == (4, 3)
        assert torch.allclose(emotion, net(x)) and torch.allclose(arousal, net.arousal_logits(x))
    with pytest.raises(ValueError, match="no arousal head"):
        plain.arousal_logits(x)
    export_onnx(net, tmp_path / "a.onnx", 64)
    session = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert check_onnx(net, tmp_path / "a.onnx", 64) < 1e-4
    # the loss: emotion CE over clips with an emotion, weighted arousal CE over the others
    y, a = torch.tensor([2, -1, 5, -1]), torch.tensor([-1, 0, -1, 2])
    ce = torch.nn.functional.cross_entropy
    want = (ce(emotion[[0, 2]], y[[0, 2]], label_smoothing=config.label_smoothing)
            + 0.5 * ce(arousal[[1, 3]], a[[1, 3]]))
    assert torch.allclose(member_loss(emotion, arousal, y, a, config, None, None), want)
    only_emotion = torch.tensor([2, 1, 5, 0])
    assert torch.allclose(member_loss(emotion, None, only_emotion, a, TrainConfig(), None, None),
                          batch_loss(emotion, only_emotion, TrainConfig(), None, None))
    # an epoch's draws: all emotion draws plus uniform arousal draws, shuffled, seeded
    emotion_draws = np.array([0, 3, 3, 7])
    draws = draw_epoch(emotion_draws, 8, 5, 6, np.random.default_rng(1))
    assert draws.size == 10 and sorted(draws[draws < 8]) == [0, 3, 3, 7]
    assert ((draws >= 8) & (draws < 13)).sum() == 6
    assert np.array_equal(draws, draw_epoch(emotion_draws, 8, 5, 6, np.random.default_rng(1)))
    # a head without a weight (or a weight without a head) and mixed-in targets are refused
    with pytest.raises(ConfigError, match="arousal_classes=3, not 0"):
        TrainConfig(arousal_weight=0.5)
    with pytest.raises(ConfigError, match="arousal_classes=0, not 3"):
        TrainConfig(model=ModelConfig(arousal_classes=3))
    with pytest.raises(ConfigError, match="without mixup and distillation"):
        replace(config, mixup_alpha=0.4)


def test_train_writes_the_arousal_corpora_into_the_card(tmp_path: Path, callmood_corpora: Path) -> None:
    manifest = _operator_manifest(tmp_path, callmood_corpora)
    out_dir = tmp_path / "models"
    status = train_main(["--manifest", str(manifest), "--out-dir", str(out_dir),
                         "--arousal-weight", "0.5", "--arousal-draws-per-epoch", "16",
                         "--limit-per-corpus", "60", "--epochs", "1", "--draws-per-epoch", "32",
                         "--batch-size", "16", "--workers", "1", "--threads", "1",
                         "--no-test-eval"])
    assert status == 0
    card = json.loads((out_dir / "emotion-v1.card.json").read_text())
    arousal = card["training"]["arousal"]
    assert arousal["weight"] == 0.5 and arousal["levels"] == ["low", "neutral", "high"]
    assert set(arousal["train_counts"]) == {"baved"} and arousal["val_speakers"]
    assert not set(arousal["val_speakers"]) & set(card["training"]["val_speakers"])
    assert 0.0 <= card["training"]["history"][0]["arousal_ua"] <= 1.0
    assert card["architecture"]["arousal_classes"] == 3
    assert "Aouf" in card["data_licences"]["baved"]
    # the default BAVED manifest under the corpora dir (a symlinked dir may resolve elsewhere)
    assert any(Path(p).parts[-2:] == ("baved", "manifest.csv")
               for p in card["training"]["manifests_sha256"])


def test_train_refuses_channels_that_are_not_four_positive_integers(
        capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("8,16,32", "8,16,32,x", "8,16,0,64"):
        with pytest.raises(SystemExit):
            train_main(["--channels", bad, "--epochs", "1"])
        assert "four" in capsys.readouterr().err


def test_train_refuses_codec_levels_that_are_not_a_range_in_0_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    from training.augment import AugmentConfig

    for bad in ("0.95", "1.0,0.95", "x,1", "0.5,1.2", "-0.1,0.5"):
        with pytest.raises(SystemExit):
            train_main(["--codec-levels", bad, "--epochs", "1"])
        assert "LOW,HIGH" in capsys.readouterr().err
    with pytest.raises(ValueError, match="codec_level_range"):
        AugmentConfig(codec_level_range=(0.9, 0.8))
    for bad in ("1.1", "1.1,0.9", "0.4,1.0", "1.0,2.5"):
        with pytest.raises(SystemExit):
            train_main(["--speed-range", bad, "--epochs", "1"])
        assert "LOW,HIGH" in capsys.readouterr().err
    with pytest.raises(ValueError, match="speed_range"):
        AugmentConfig(speed_range=(1.1, 0.9))
    # a probability out of range is a usage error naming the field, not a traceback
    assert train_main(["--p-speed", "1.5", "--epochs", "1"]) == 2
    assert "p_speed=1.5 must be a probability" in capsys.readouterr().err


def test_the_speed_options_reach_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.train
    from worker.errors import ConfigError

    recipes: list[object] = []

    def record(manifests: object, out_dir: object, config: object, **_: object) -> None:
        recipes.append(config)
        raise ConfigError("recorded")       # the recipe is all this test needs

    monkeypatch.setattr(training.train, "train", record)
    assert train_main(["--p-speed", "0.3", "--speed-range", "0.93,1.07", "--epochs", "1",
                       "--out-dir", str(tmp_path)]) == 2
    (config,) = recipes
    assert isinstance(config, training.train.TrainConfig)
    assert (config.augment.p_speed, config.augment.speed_range) == (0.3, (0.93, 1.07))
    assert train_main(["--epochs", "1", "--out-dir", str(tmp_path)]) == 2
    default = recipes[-1]
    assert isinstance(default, training.train.TrainConfig)
    # emotion-v1.9.0's recipe; v1.8.0 and earlier: 0.3, (0.93, 1.07)
    assert (default.augment.p_speed, default.augment.speed_range) == (0.6, (0.9, 1.1))


def test_leave_one_corpus_out_trains_without_it_and_tests_on_all_of_it(
        tmp_path: Path, callmood_env: object, callmood_corpora: Path, emotion_model: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import loco_main

    out = tmp_path / "figures.json"
    shipped = tmp_path / "shipped" / "emotion-v1.onnx"   # a copy whose card the run extends
    shipped.parent.mkdir()
    for suffix in (".onnx", ".card.json", ".card.md"):
        shutil.copy(emotion_model.with_suffix(suffix), shipped.with_suffix(suffix))
    status = loco_main(["--holdout", "urdu", "--out-dir", str(tmp_path / "loco"), "--channel",
                        "clean", "--workers", "1", "--json-out", str(out),
                        "--update-card", "--model", str(shipped),
                        # passed on to `train`: a tiny run
                        "--limit-per-corpus", "12", "--epochs", "1", "--draws-per-epoch", "32",
                        "--batch-size", "16", "--threads", "1"])
    assert status == 0
    card = json.loads((tmp_path / "loco" / "without-urdu" / "emotion-v1.card.json").read_text())
    assert set(card["training"]["train_counts"]) == {"ravdess", "tess", "emodb"}
    assert card["version"] == "loco-no-urdu" and "test_metrics" not in card
    rows = json.loads(out.read_text())["urdu"]
    all_urdu = pd.read_csv(callmood_corpora / "urdu" / "manifest.csv")
    assert [r["channel"] for r in rows] == ["clean"]
    assert rows[0]["n_clips"] == len(all_urdu)        # every clip, train and test speakers
    assert 0.0 <= rows[0]["ua"] <= 1.0
    assert "== held out: urdu (trained on ravdess, tess, emodb)" in capsys.readouterr().out
    # the shipped card now carries the figures, with how its recipe differed from the model's
    entry = json.loads(shipped.with_suffix(".card.json").read_text())["loco"]["by_holdout"]["urdu"]
    assert entry["by_channel"]["clean"] == rows[0]
    assert entry["trained_on"] == ["emodb", "ravdess", "tess"]
    assert {"epochs", "draws_per_epoch", "batch_size"} <= set(entry["recipe_differences"])
    assert entry["command"].startswith("python -m training loco --holdout urdu --channel clean")
    assert "--out-dir" not in entry["command"]
    card_md = shipped.with_suffix(".card.md").read_text()
    assert "## Leave-one-corpus-out" in card_md and "| urdu | emodb, ravdess, tess |" in card_md
    assert load_card(shipped).version == load_card(emotion_model).version  # still servable
    # --reuse scores the model as its card says it trained (cut to speech), whatever the
    # flags of the reusing command: it scored whole clips under --whole-clips before
    trained_cut = card["training"]["config"]["speech_cut"]
    assert trained_cut is not None and entry["speech_cut"] == trained_cut
    assert loco_main(["--holdout", "urdu", "--out-dir", str(tmp_path / "loco"), "--channel",
                      "clean", "--workers", "1", "--reuse", "--update-card", "--model",
                      str(shipped), "--whole-clips"]) == 0
    entry = json.loads(shipped.with_suffix(".card.json").read_text())["loco"]["by_holdout"]["urdu"]
    assert entry["speech_cut"] == trained_cut and entry["by_channel"]["clean"] == rows[0]


def _tiny_corpora(tmp_path: Path, corpora: Path) -> Path:
    """The four training corpora cut to one clip per speaker and emotion, for five train
    speakers each (absolute paths), in a corpora folder of their own."""
    root = tmp_path / "corpora"
    for corpus in ("ravdess", "tess", "emodb", "urdu"):
        rows = pd.read_csv(corpora / corpus / "manifest.csv")
        speakers = sorted(rows.loc[rows["split"] == "train", "speaker"].unique())[:5]
        picked = (rows[rows["speaker"].isin(speakers)].groupby(["speaker", "emotion"]).head(1)
                  .assign(path=lambda d, c=corpus: [str(corpora / c / p) for p in d["path"]]))
        (root / corpus).mkdir(parents=True)
        picked.to_csv(root / corpus / "manifest.csv", index=False)
    return root


def test_loco_scores_final_fits_of_the_selected_recipe_without_each_corpus(
        tmp_path: Path, callmood_env: object, callmood_corpora: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import loco_main
    from worker.settings import get_settings

    corpora = _tiny_corpora(tmp_path, callmood_corpora)
    monkeypatch.setenv("CALLMOOD_CORPORA_DIR", str(corpora))
    get_settings.cache_clear()
    selected = tmp_path / "selected" / "emotion-v1.onnx"
    assert train_main(["--out-dir", str(selected.parent), "--version", "mine-0.1", "--epochs", "2",
                       "--draws-per-epoch", "32", "--batch-size", "16", "--workers", "1",
                       "--threads", "1", "--no-test-eval"]) == 0
    sel_card = json.loads(selected.with_suffix(".card.json").read_text())
    target = tmp_path / "target" / "emotion-v1.onnx"   # the card the figures go to
    target.parent.mkdir()
    for suffix in (".onnx", ".card.json", ".card.md"):
        shutil.copy(selected.with_suffix(suffix), target.with_suffix(suffix))
    capsys.readouterr()
    assert loco_main(["--final-fit-of", str(selected), "--holdout", "urdu", "--out-dir",
                      str(tmp_path / "loco"), "--channel", "clean", "--workers", "1",
                      "--update-card", "--model", str(target), "--threads", "1"]) == 0
    card = json.loads((tmp_path / "loco" / "without-urdu" / "emotion-v1.card.json").read_text())
    training, sel = card["training"], sel_card["training"]
    assert card["version"] == "loco-final-no-urdu" and training["final_fit"]["without_corpus"] == "urdu"
    # every train speaker of the other corpora (the selected run's validation ones too), no urdu
    assert set(training["train_counts"]) == {"ravdess", "tess", "emodb"}
    assert training["val_speakers"] == [] and training["val_ua"] is None
    for corpus in ("ravdess", "tess", "emodb"):
        assert (sum(training["train_counts"][corpus].values())
                == sum(sel["train_counts"][corpus].values())
                + sum(sel["val_counts"].get(corpus, {}).values()))
    # the selected run's epochs and temperature
    assert len(training["history"]) == sel["best_epoch"] + 1
    assert card["temperature"] == sel_card["temperature"] and "loco" not in card
    entry = json.loads(target.with_suffix(".card.json").read_text())["loco"]["by_holdout"]["urdu"]
    assert entry["final_fit_of"] == "mine-0.1" and entry["val_ua"] is None
    assert entry["model_version"] == "loco-final-no-urdu"
    assert entry["by_channel"]["clean"]["n_clips"] == len(pd.read_csv(corpora / "urdu" / "manifest.csv"))
    # the target here is the selected run itself, which carved validation speakers
    assert entry["recipe_differences"] == ["val_fraction"]
    assert entry["command"].startswith(f"python -m training loco --holdout urdu --final-fit-of {selected}")
    assert "a final fit (no val UA)" in target.with_suffix(".card.md").read_text()
    # the row names its cut: the one the recipe trained on, which the card says
    assert entry["speech_cut"] == sel["config"]["speech_cut"]
    assert "Held out urdu: " in target.with_suffix(".card.md").read_text()
    capsys.readouterr()
    # --reuse scores the model in the folder only if it is the procedure asked for
    reuse = ["--holdout", "urdu", "--out-dir", str(tmp_path / "loco"), "--channel", "clean",
             "--workers", "1", "--reuse"]
    assert loco_main(["--final-fit-of", str(selected), *reuse]) == 0
    assert loco_main(reuse) == 2             # a selected run was asked for: not this final fit
    assert "is a final fit" in capsys.readouterr().err
    other_holdout = tmp_path / "loco" / "without-emodb"
    shutil.copytree(tmp_path / "loco" / "without-urdu", other_holdout)
    assert loco_main(["--final-fit-of", str(selected), "--holdout", "emodb", "--out-dir",
                      str(tmp_path / "loco"), "--channel", "clean", "--workers", "1",
                      "--reuse"]) == 2
    assert "was trained on emodb" in capsys.readouterr().err
    # teachers heard every corpus: never in a leave-one-corpus-out run
    assert loco_main(["--holdout", "urdu", "--out-dir", str(tmp_path / "t"),
                      "--teacher", str(selected)]) == 2
    assert "must not learn from them" in capsys.readouterr().err
    # the held-out corpus's manifest must be one the selected run trained on, and only it goes
    every = [a for c in ("ravdess", "tess", "emodb", "urdu")
             for a in ("--manifest", str(corpora / c / "manifest.csv"))]
    assert final_fit_main(["--selected", str(selected), "--without-corpus", "urdu",
                           "--out-dir", str(tmp_path / "again"), *every]) == 2
    assert "less urdu's" in capsys.readouterr().err


def test_early_stop_waits_for_min_epochs_then_for_patience() -> None:
    config = TrainConfig(patience=12, min_epochs=30)
    # best at epoch 0, 12 epochs without a gain: too early to stop (the EMA model is barely
    # trained; the first run without EmoDB stopped here with its epoch-0 model)
    assert not stops_early(12, 0, config)
    assert not stops_early(28, 0, config)
    assert stops_early(29, 0, config)            # the 30th epoch has run
    assert not stops_early(40, 29, config)       # a gain at 29: 11 epochs without one
    assert stops_early(41, 29, config)
    assert stops_early(12, 0, TrainConfig(patience=12, min_epochs=1))


def test_the_default_runs_the_whole_one_cycle_schedule() -> None:
    # the distilled student that stopped at epoch 41 (best at 29) would have gone on
    config = TrainConfig()
    assert config.patience is None
    assert not any(stops_early(epoch, 29, config) for epoch in range(config.epochs))
    assert not stops_early(config.epochs - 1, 0, config)


def test_mixup_draws_fold_each_clip_to_the_larger_share_of_a_partner() -> None:
    from training.train import draw_mix

    a = draw_mix(64, 0.4, np.random.default_rng(3))
    b = draw_mix(64, 0.4, np.random.default_rng(3))
    assert torch_equal(a.share, b.share) and torch_equal(a.partner, b.partner)
    assert float(a.share.min()) >= 0.5 and float(a.share.max()) <= 1.0
    assert sorted(a.partner.tolist()) == list(range(64))


def test_mixup_blends_features_and_targets_and_weighs_both_labels() -> None:
    import torch

    from training.train import Mix, mix_inputs, mixed_cross_entropy

    mix = Mix(share=torch.tensor([0.75, 1.0]), partner=torch.tensor([1, 0]))
    x = torch.stack([torch.zeros(3, 4), torch.ones(3, 4)])
    mixed = mix_inputs(x, mix)
    assert torch.allclose(mixed[0], torch.full((3, 4), 0.25)) and torch.equal(mixed[1], x[1])
    soft = mix_inputs(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), mix)
    assert torch.allclose(soft, torch.tensor([[0.75, 0.25], [0.0, 1.0]]))

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 2])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    ce_partner = torch.nn.functional.cross_entropy(logits, y[[1, 0]], reduction="none")
    by_hand = (0.75 * ce[0] + 0.25 * ce_partner[0] + ce[1]) / 2
    assert float(mixed_cross_entropy(logits, y, mix, 0.0)) == pytest.approx(float(by_hand))
    unmixed = Mix(share=torch.ones(2), partner=torch.tensor([1, 0]))
    assert float(mixed_cross_entropy(logits, y, unmixed, 0.05)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.05)))


def test_a_negative_mixup_alpha_is_refused() -> None:
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match=r"mixup_alpha=-0\.1"):
        TrainConfig(mixup_alpha=-0.1)


def torch_equal(a: object, b: object) -> bool:
    import torch

    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return bool(torch.equal(a, b))


def test_training_refuses_to_write_over_the_model_the_worker_serves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from worker.settings import get_settings

    serving = tmp_path / "serve" / "emotion-v1.onnx"
    monkeypatch.setenv("CALLMOOD_MODEL_PATH", str(serving))
    get_settings.cache_clear()
    try:
        assert train_main(["--out-dir", str(serving.parent), "--epochs", "1"]) == 2
        assert "model the worker serves" in capsys.readouterr().err
        assert final_fit_main(["--selected", str(tmp_path / "sel.onnx"),
                               "--out-dir", str(serving.parent)]) == 2
        assert "model the worker serves" in capsys.readouterr().err
        assert not serving.exists()
    finally:
        get_settings.cache_clear()
    # the default is a folder of its own, not the packaged models
    from training.cli import build_train_parser

    assert build_train_parser().parse_args([]).out_dir == Path("runs") / "train"


def test_an_operators_stereo_calls_train_on_the_channel_their_manifest_names(
        tmp_path: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stereo recordings (agent and customer) were averaged into one channel for training and
    evaluation, a mix of both parties the worker never scores (it scores each channel apart).
    A stereo clip without a ``channel`` column now stops the run with what to add; with it,
    the named party's channel is what trains."""
    mono = pd.read_csv(_operator_manifest(tmp_path, callmood_corpora))
    folder = tmp_path / "stereo"
    folder.mkdir()
    paths = []
    for i, path in enumerate(mono["path"]):
        party = load_mono(Path(path), 16000)
        other = np.random.default_rng(i).standard_normal(party.size).astype(np.float32) * 0.05
        paths.append(folder / f"call-{i}.wav")
        sf.write(str(paths[-1]), np.stack([other, party], axis=1), 16000, subtype="PCM_16")
    stereo = mono.assign(path=[str(p) for p in paths])
    manifest = folder / "manifest.csv"
    stereo.to_csv(manifest, index=False)
    args = ["--manifest", str(manifest), "--out-dir", str(tmp_path / "models"), "--epochs", "1",
            "--draws-per-epoch", "16", "--batch-size", "8", "--workers", "1", "--threads", "1",
            "--no-test-eval"]
    assert train_main(args) != 0
    assert "has 2 channels: name the labelled party's channel" in capsys.readouterr().err
    stereo.assign(channel=1).to_csv(manifest, index=False)
    assert train_main(args) == 0
    assert (tmp_path / "models" / "emotion-v1.onnx").exists()
    # the channel picked is the party's (to 16-bit rounding), not the mix
    party, original = load_mono(paths[0], 16000, 1), load_mono(Path(mono["path"][0]), 16000)
    assert np.allclose(party, original, atol=1e-4)


def test_an_operators_test_rows_are_checked_before_training(
        tmp_path: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Test rows are decoded only once the model is trained: a missing or stereo test file
    stopped the run after its training (an hour, for a real one), or never with
    --no-test-eval (a review). Every row's file, channel and span start are checked first."""
    manifest = _operator_manifest(tmp_path, callmood_corpora)
    rows = pd.read_csv(manifest)
    test = rows.index[rows["split"] == "test"]
    stereo = tmp_path / "stereo.wav"
    sf.write(str(stereo), np.zeros((16000, 2), np.float32), 16000, subtype="PCM_16")
    mono_span = rows.assign(start_s=np.nan, end_s=np.nan)
    broken = {
        "1 file(s) of the manifest not found": rows.assign(
            path=rows["path"].where(rows.index != test[0], str(tmp_path / "gone.wav"))),
        "has 2 channels: name the labelled party's channel": rows.assign(
            path=rows["path"].where(rows.index != test[0], str(stereo))),
        "starts past its end": mono_span.assign(
            start_s=mono_span["start_s"].where(rows.index != test[0], 30.0),
            end_s=mono_span["end_s"].where(rows.index != test[0], 31.0)),
    }
    out_dir = tmp_path / "models"
    for message, frame in broken.items():
        frame.to_csv(manifest, index=False)
        assert train_main(["--manifest", str(manifest), "--out-dir", str(out_dir),
                           "--epochs", "1", "--draws-per-epoch", "16", "--batch-size", "8",
                           "--workers", "1", "--threads", "1", "--no-test-eval"]) == 2
        assert message in capsys.readouterr().err
        assert not out_dir.exists() or not any(out_dir.iterdir())   # nothing trained


def test_test_figures_of_speakers_that_trained_the_model_are_refused(
        tmp_path: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The card kept no record of who trained the model: an operator's train rows listed
    again as test were scored, and --update-card wrote them as "speakers never seen in
    training" (a review). The card lists its train speakers, and evaluate refuses them."""
    manifest = _operator_manifest(tmp_path, callmood_corpora)
    out_dir = tmp_path / "models"
    assert train_main(["--manifest", str(manifest), "--out-dir", str(out_dir), "--epochs", "1",
                       "--draws-per-epoch", "16", "--batch-size", "8", "--workers", "1",
                       "--threads", "1", "--no-test-eval"]) == 0
    model = out_dir / "emotion-v1.onnx"
    card = json.loads(model.with_suffix(".card.json").read_text())
    rows = pd.read_csv(manifest)
    trained = sorted(set(rows.loc[rows["split"] == "train", "speaker"].astype(str)))
    assert card["training"]["train_speakers"] == sorted(
        f"mycalls:{s}" for s in trained if f"mycalls:{s}" not in card["training"]["val_speakers"])
    relabelled = tmp_path / "mycalls" / "again.csv"
    rows.assign(split="test").to_csv(relabelled, index=False)
    capsys.readouterr()
    assert evaluate_main(["--model", str(model), "--update-card", "--manifest",
                          str(relabelled)]) == 2
    assert "trained emotion-v1.onnx" in capsys.readouterr().err
    assert "test_metrics" not in json.loads(model.with_suffix(".card.json").read_text())
    assert evaluate_main(["--model", str(model), "--update-card", "--manifest",
                          str(manifest)]) == 0
    assert json.loads(model.with_suffix(".card.json").read_text())["test_metrics"]


def test_an_operators_whole_calls_train_and_score_on_their_labelled_spans(
        tmp_path: Path, callmood_corpora: Path) -> None:
    """Labels of utterances inside whole calls (start_s / end_s) train and are scored span by
    span, as the worker scores utterances; the call is never cut into clip files."""
    mono = pd.read_csv(_operator_manifest(tmp_path, callmood_corpora))
    folder = tmp_path / "calls"
    folder.mkdir()
    gap = np.zeros(4000, dtype=np.float32)
    rows: list[dict[str, Any]] = []
    for speaker, group in mono.groupby("speaker"):
        clips = [load_mono(Path(p), 16000) for p in group["path"]]
        customer = np.concatenate([part for clip in clips for part in (gap, clip)])
        agent = np.random.default_rng(len(rows)).standard_normal(customer.size) * 0.05
        call = folder / f"call-{speaker}.wav"
        sf.write(str(call), np.stack([agent.astype(np.float32), customer], axis=1), 16000,
                 subtype="PCM_16")
        start = 0
        for clip, (_, row) in zip(clips, group.iterrows(), strict=True):
            start += gap.size
            rows.append(row.to_dict() | {"path": call.name, "channel": 1,
                                         "start_s": start / 16000,
                                         "end_s": (start + clip.size) / 16000})
            start += clip.size
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    assert train_main(["--manifest", str(manifest), "--out-dir", str(tmp_path / "models"),
                       "--epochs", "1", "--draws-per-epoch", "16", "--batch-size", "8",
                       "--workers", "1", "--threads", "1"]) == 0
    raw = json.loads((tmp_path / "models" / "emotion-v1.card.json").read_text())
    test_spans = sum(1 for r in rows if r["split"] == "test")
    assert raw["test_metrics"]["by_channel"]["clean"]["calls"]["n_clips"] == test_spans == 8
    trained = sum(n for corpus in raw["training"]["train_counts"].values() for n in corpus.values())
    validated = sum(n for corpus in raw["training"]["val_counts"].values() for n in corpus.values())
    assert trained + validated == len(rows) - test_spans



def test_the_mel_warp_draws_apart_and_leaves_other_recipes_as_they_drew(
        callmood_corpora: Path) -> None:
    """--p-warp warps a draw's features on its own generator: with it at 0 (every model so
    far) a draw is what it was, and with it at 1 the same draw differs only in its bands."""
    import torch

    from training.augment import AugmentConfig
    from training.train import TrainDraws

    rows = pd.read_csv(callmood_corpora / "ravdess" / "manifest.csv").head(2)
    waves = [load_mono(callmood_corpora / "ravdess" / p, 8000) for p in rows["path"]]
    labels = np.zeros(2, dtype=np.int64)

    def draw(p_warp: float) -> torch.Tensor:
        config = TrainConfig(augment=AugmentConfig(p_warp=p_warp))
        dataset = TrainDraws(waves, labels, config)
        dataset.set_epoch(3, np.array([1, 0]))
        return dataset[0][0]

    plain, warped = draw(0.0), draw(1.0)
    assert torch.equal(plain, draw(0.0)) and not torch.equal(plain, warped)
    assert plain.shape == warped.shape


def test_a_temperature_fit_on_logits_that_barely_separate_is_flagged() -> None:
    """Short runs all recorded T = 0.30, the search bound, without a word: the validation
    logits spread 0.02-0.13 and the model was close to untrained (a review)."""
    from training.train import TEMPERATURE_BOUNDS, fit_temperature, temperature_at_bound

    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, size=200)
    flat = rng.normal(scale=0.01, size=(200, 7)).astype(np.float32)
    flat[np.arange(200), y] += 0.02          # right, by a hair
    t_flat = fit_temperature(flat, y)
    assert t_flat == pytest.approx(TEMPERATURE_BOUNDS[0], rel=0.01) and temperature_at_bound(t_flat)
    trained = rng.normal(size=(200, 7)).astype(np.float32)
    trained[np.arange(200), y] += 1.0        # a calibrated model's margins (T near 1)
    t_trained = fit_temperature(trained, y)
    assert not temperature_at_bound(t_trained) and 0.5 < t_trained < 5.0


def test_python_m_training_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m training --help` printed a one-line usage and exited 2 (a review)."""
    from training.__main__ import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in ("train", "final-fit", "evaluate", "loco"))
    assert main([]) == 2 and "usage: python -m training" in capsys.readouterr().err
