"""Metrics on hand-computed cases, and the evaluate command through the serving path."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.model_fixtures import N_MELS, write_tiny_model
from training.cli import evaluate_main
from training.evaluate import (
    MIN_SPEAKERS_FOR_INTERVAL,
    EvaluationResult,
    compare,
    confusion_matrix,
    evaluate_model,
    expected_calibration_error,
    metrics_for,
    paired_speaker_bootstrap,
    speaker_bootstrap_ua,
    speaker_confusions,
    unweighted_average_recall,
    weighted_accuracy,
)
from worker.emotion import card_path_for
from worker.errors import ConfigError


def test_ua_wa_and_confusion_on_a_hand_computed_case() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 2], dtype=np.int64)
    y_pred = np.array([0, 0, 0, 1, 1, 0], dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, 4)
    assert cm.tolist() == [[3, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # recalls 3/4, 1/1, 0/1 over the 3 classes present (class 3 has no support)
    assert unweighted_average_recall(cm) == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert weighted_accuracy(cm) == pytest.approx(4 / 6)


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy() -> None:
    probs = np.array([[0.5, 0.5], [0.5, 0.5]], dtype=np.float32)   # conf 0.5, argmax 0
    assert expected_calibration_error(probs, np.array([0, 1])) == pytest.approx(0.0)
    over = np.array([[0.9, 0.1], [0.9, 0.1]], dtype=np.float32)    # conf 0.9, accuracy 0.5
    assert expected_calibration_error(over, np.array([0, 1])) == pytest.approx(0.4)


def _manifest(tmp_path: Path, corpora: Path) -> Path:
    import pandas as pd

    rows = pd.read_csv(corpora / "ravdess" / "manifest.csv")
    test = rows[rows["split"] == "test"].groupby("emotion").head(2)
    out = tmp_path / "ravdess_small.csv"
    test.assign(path=[str(corpora / "ravdess" / p) for p in test["path"]]).to_csv(out, index=False)
    return out


def _speaker_cm(correct_per_class: list[int], n_per_class: int = 4) -> np.ndarray:
    """One speaker's 3-class confusion: ``correct_per_class[k]`` of ``n_per_class`` right."""
    cm = np.zeros((3, 3), dtype=np.int64)
    for k, right in enumerate(correct_per_class):
        cm[k, k] = right
        cm[k, (k + 1) % 3] = n_per_class - right
    return cm


def test_the_speaker_bootstrap_interval_spans_how_much_the_speakers_differ() -> None:
    # six speakers alike: every resample pools the same recalls, so the interval is a point
    alike = np.stack([_speaker_cm([2, 3, 4])] * 6)
    low, high = speaker_bootstrap_ua(alike) or (0.0, 0.0)
    assert low == pytest.approx(0.75) and high == pytest.approx(0.75)
    # three good and three poor speakers, equal clips per class: a resample's UA is the
    # mean of its drawn speakers' UA, so it lies between the poor (0.25) and the good (1.0)
    mixed = np.stack([_speaker_cm([4, 4, 4])] * 3 + [_speaker_cm([1, 1, 1])] * 3)
    low, high = speaker_bootstrap_ua(mixed) or (0.0, 0.0)
    assert 0.25 <= low < 0.625 < high <= 1.0 and high - low > 0.3
    assert speaker_bootstrap_ua(mixed) == speaker_bootstrap_ua(mixed)    # seeded
    few = mixed[:MIN_SPEAKERS_FOR_INTERVAL - 1]
    assert speaker_bootstrap_ua(few) is None


def test_metrics_carry_ua_per_speaker_and_the_interval_into_the_card_row() -> None:
    # speaker a: both right; speaker b: one of two wrong; 3 classes, probabilities one-hot
    y_true = np.array([0, 1, 0, 1], dtype=np.int64)
    y_pred = np.array([0, 1, 0, 2], dtype=np.int64)
    speakers = np.array(["c:a", "c:a", "c:b", "c:b"])
    names, cms = speaker_confusions(y_true, y_pred, speakers, 3)
    assert names == ["c:a", "c:b"] and cms.sum(axis=(1, 2)).tolist() == [2, 2]
    probs = np.eye(3, dtype=np.float32)[y_pred]
    m = metrics_for("c", "clean", probs, y_true, ["x", "y", "z"], speakers)
    assert [(f.speaker, f.n_clips, f.ua) for f in m.by_speaker] == [("c:a", 2, 1.0),
                                                                    ("c:b", 2, 0.5)]
    assert m.ua == pytest.approx(0.75) and m.ua_interval is None      # 2 speakers: no interval
    row = m.to_dict()
    assert row["n_speakers"] == 2 and row["by_speaker"] == {"c:a": {"n_clips": 2, "ua": 1.0},
                                                            "c:b": {"n_clips": 2, "ua": 0.5}}
    assert "ua_interval95" not in row
    assert "by_speaker" not in metrics_for("c", "clean", probs, y_true, ["x", "y", "z"]).to_dict()


def test_a_paired_interval_keeps_what_both_models_share_out_of_the_difference() -> None:
    # speakers from easy to hard; the model gets one more clip per class right than the
    # baseline on every speaker: each resample's difference is exactly 1/4
    base = np.stack([_speaker_cm([k, k, k]) for k in (0, 1, 2, 3, 0, 1)])
    better = np.stack([_speaker_cm([k + 1, k + 1, k + 1]) for k in (0, 1, 2, 3, 0, 1)])
    assert paired_speaker_bootstrap(better, base) == pytest.approx((0.25, 0.25))
    own = speaker_bootstrap_ua(better) or (0.0, 0.0)
    assert own[1] - own[0] > 0.25              # alone, the speakers' spread is far wider
    assert paired_speaker_bootstrap(base, base) == (0.0, 0.0)
    assert paired_speaker_bootstrap(better[:4], base[:4]) is None
    with pytest.raises(ValueError, match="same speakers"):
        paired_speaker_bootstrap(better, base[:5])


def _result(correct: list[int], speakers: list[str]) -> EvaluationResult:
    """Two clips per speaker (classes 0 and 1): the first ``correct[i]`` of them right."""
    y_true = np.array([0, 1] * len(speakers), dtype=np.int64)
    y_pred = np.array([t if j < c else 2 for c in correct for j, t in enumerate((0, 1))])
    names = np.repeat(np.array(speakers), 2)
    return EvaluationResult("m", "test", (metrics_for("c", "clean", np.eye(3, dtype=np.float32)
                                                      [y_pred], y_true, ["a", "b", "z"], names),))


def test_compare_pairs_rows_and_refuses_results_of_other_speakers() -> None:
    six = [f"c:s{i}" for i in range(6)]
    (row,) = compare(_result([2, 2, 2, 2, 2, 2], six), _result([1, 1, 1, 1, 1, 1], six))
    assert row.difference == pytest.approx(0.5) and row.interval == pytest.approx((0.5, 0.5))
    with pytest.raises(ConfigError, match="other speakers"):
        compare(_result([2] * 6, six), _result([2] * 6, [f"c:t{i}" for i in range(6)]))
    good = _result([2] * 6, six)
    with pytest.raises(ConfigError, match=r"split 'test'.*split 'val'"):
        compare(good, replace(good, split="val"))
    with pytest.raises(ConfigError, match="no c/mulaw8k row"):
        compare(replace(good, rows=(replace(good.rows[0], channel="mulaw8k"),)), good)
    with pytest.raises(ConfigError, match="labels"):
        compare(replace(good, rows=(replace(good.rows[0], labels=("b", "a", "z")),)), good)
    # same speakers and clip count, but a speaker's true classes differ: other clips
    first, second = good.rows[0].by_speaker[:2]
    swapped = (replace(first, confusion=((0, 0, 0), (1, 0, 0), (0, 0, 1))), second,
               *good.rows[0].by_speaker[2:])
    with pytest.raises(ConfigError, match="other clips"):
        compare(replace(good, rows=(replace(good.rows[0], by_speaker=swapped),)), good)


def test_a_pool_missing_a_class_averages_the_classes_it_holds() -> None:
    # speakers 0-3 recorded class 0 only (all right), 4-5 classes 0 and 1 (half right): a
    # resample of class-0 speakers alone (p = (4/6)^6 = 9 %) has no class 1 and scores 1.0,
    # not NaN; every other pool scores between 0.5 (class 1's recall) and 1
    only0 = np.zeros((3, 3), dtype=np.int64)
    only0[0, 0] = 4
    both = _speaker_cm([2, 2, 0], n_per_class=4)
    both[2] = 0
    low, high = speaker_bootstrap_ua(np.stack([only0] * 4 + [both] * 2)) or (-1.0, -1.0)
    assert 0.5 <= low < high == pytest.approx(1.0)


def test_evaluate_with_a_baseline_prints_the_paired_difference(
        tmp_path: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import training.clips
    from worker.audio import load_mono as decode

    decoded: list[str] = []

    def counted(path: Path, *args: Any) -> Any:
        decoded.append(str(path))
        return decode(path, *args)

    monkeypatch.setattr(training.clips, "load_mono", counted)
    rows = pd.read_csv(callmood_corpora / "ravdess" / "manifest.csv")
    rows = rows[(rows["split"] == "test") & rows["emotion"].isin(["angry", "sad"])]
    small = rows.groupby(["speaker", "emotion"]).head(1)          # 6 actors x 2 clips
    manifest = tmp_path / "six.csv"
    small.assign(path=[str(callmood_corpora / "ravdess" / p) for p in small["path"]]).to_csv(
        manifest, index=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    model = write_tiny_model(tmp_path / "a", np.zeros((N_MELS, 7), dtype=np.float32))
    baseline = write_tiny_model(tmp_path / "b", np.zeros((N_MELS, 7), dtype=np.float32))
    assert evaluate_main(["--model", str(model), "--baseline", str(baseline), "--manifest",
                          str(manifest), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    # both always say angry: 50 % UA each, no difference on any resample of the 6 actors
    assert "UA difference" in printed
    assert "ravdess    clean      50.0%   50.0%    +0.0  +0.0 to +0.0" in printed
    # one pass: each clip decoded and featurised once for both models (they share a config)
    assert sorted(decoded) == sorted(small["path"].map(lambda p: str(callmood_corpora
                                                                        / "ravdess" / p)))
    assert evaluate_main(["--model", str(model), "--baseline", str(tmp_path / "none.onnx"),
                          "--manifest", str(manifest), "--workers", "1"]) == 2
    # a baseline of other labels is refused before the model is scored: no table printed
    (tmp_path / "c").mkdir()
    other = write_tiny_model(tmp_path / "c", np.zeros((N_MELS, 7), dtype=np.float32))
    card = json.loads(card_path_for(other).read_text())
    card_path_for(other).write_text(json.dumps({**card, "labels": card["labels"][::-1]}))
    capsys.readouterr()
    assert evaluate_main(["--model", str(model), "--baseline", str(other), "--manifest",
                          str(manifest), "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    assert "labels" in err and "UA" not in out
    # the card records the command that made its figures: the baseline changes none of them
    assert evaluate_main(["--model", str(model), f"--baseline={baseline}", "--manifest",
                          str(manifest), "--workers", "1", "--update-card"]) == 0
    command = json.loads(card_path_for(model).read_text())["test_metrics"]["command"]
    assert "--manifest" in command and "--baseline" not in command and "b/tiny" not in command


def test_evaluate_scores_any_onnx_model_on_any_manifest(tmp_path: Path, callmood_corpora: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    weights = np.zeros((N_MELS, 7), dtype=np.float32)
    model = write_tiny_model(tmp_path, weights)           # constant logits -> always "angry"
    manifest = _manifest(tmp_path, callmood_corpora)
    result = evaluate_model(model, [manifest], channels=("clean", "mulaw8k"), workers=1)
    clean = result.get("ravdess", "clean")
    assert clean.n_clips == 16                              # 8 raw labels x 2; calm -> neutral
    angry_row = clean.confusion[0]
    assert sum(sum(r) for r in clean.confusion) == 16 and sum(angry_row) == 2
    assert all(row[0] == sum(row) for row in clean.confusion)   # everything predicted angry
    assert clean.ua == pytest.approx(1 / 7) and clean.wa == pytest.approx(2 / 16)
    assert result.get("ravdess", "mulaw8k").n_clips == 16
    json_out = tmp_path / "figures.json"
    assert evaluate_main(["--model", str(model), "--manifest", str(manifest),
                          "--workers", "1", "--json-out", str(json_out)]) == 0
    printed = capsys.readouterr().out
    assert "ravdess" in printed and "14.3%" in printed and json_out.is_file()


def test_evaluate_can_score_another_tiling_than_the_card_s(
        tmp_path: Path, callmood_corpora: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import training.evaluate as evaluation

    model = write_tiny_model(tmp_path, np.zeros((N_MELS, 7), dtype=np.float32))
    manifest = _manifest(tmp_path, callmood_corpora)
    built: list[int] = []
    from worker.emotion import EmotionModel as real

    def spy(path: Path, card: Any, threads: int) -> Any:
        built.append(card.min_frames)
        return real(path, card, threads)

    monkeypatch.setattr(evaluation, "EmotionModel", spy)
    result = evaluate_model(model, [manifest], workers=1, min_frames=300)
    assert built == [300] and result.get("ravdess", "clean").n_clips == 16
    with pytest.raises(ConfigError, match="min_frames=0"):
        evaluate_model(model, [manifest], workers=1, min_frames=0)
    # a card's figures are scored with its own setting
    assert evaluate_main(["--model", str(model), "--manifest", str(manifest), "--workers", "1",
                          "--min-frames", "300", "--update-card"]) == 2
    assert "--min-frames" in capsys.readouterr().err


def test_only_test_figures_go_into_a_card_and_a_split_must_exist(
        tmp_path: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--split val with --update-card once wrote the speakers that chose the epoch under the
    card's "speakers never seen in training" heading; --split Test scored nothing, exited 0,
    and emptied the card's figures."""
    model = write_tiny_model(tmp_path, np.zeros((N_MELS, 7), dtype=np.float32))
    manifest = _manifest(tmp_path, callmood_corpora)
    card_before = card_path_for(model).read_text()
    assert evaluate_main(["--model", str(model), "--manifest", str(manifest), "--workers", "1",
                          "--split", "train", "--update-card"]) == 2
    assert "--update-card writes the card's test figures" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        evaluate_main(["--model", str(model), "--manifest", str(manifest), "--split", "Test"])
    assert info.value.code == 2 and "invalid choice: 'Test'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="split='Test': use one of test, train, val, all"):
        evaluate_model(model, [manifest], split="Test", workers=1)
    # the manifest holds test rows only: no train row to score is an error, not an empty table
    with pytest.raises(ConfigError, match="no row of split 'train'"):
        evaluate_model(model, [manifest], split="train", workers=1)
    assert card_path_for(model).read_text() == card_before


def test_evaluate_reports_a_missing_model_clearly(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_main(["--model", str(tmp_path / "nope.onnx"),
                          "--manifest", str(tmp_path / "m.csv")]) == 2
    assert "not found" in capsys.readouterr().err


def test_every_channel_condition_keeps_length_and_does_what_it_says() -> None:
    from training.evaluate import CHANNELS, apply_channel
    from worker.features import FeatureConfig

    config = FeatureConfig()
    t = np.arange(16000) / config.sample_rate
    tone = (0.1 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    rms = float(np.sqrt(np.mean(tone.astype(np.float64) ** 2)))
    for channel in CHANNELS:
        out = apply_channel(tone, channel, config)
        assert out.shape == tone.shape and out.dtype == np.float32, channel
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.5, channel
    assert apply_channel(tone, "dc_offset", config).mean() == pytest.approx(0.05, abs=1e-3)
    quiet = apply_channel(tone, "level_minus25db", config)
    assert 20 * np.log10(np.sqrt(np.mean(quiet.astype(np.float64) ** 2)) / rms) == pytest.approx(-25.0)
    # speech level -26 dBFS, +20 dB: a sine (3 dB crest) peaks at -3 dBFS, unclipped; speech,
    # with its 12 dB and more, clips (the corpus test below)
    assert np.abs(apply_channel(tone, "clipping", config)).max() == pytest.approx(
        np.sqrt(2) * 10 ** (-6 / 20), rel=1e-3)
    noisy = apply_channel(tone, "noise10db", config)
    assert 20 * np.log10(rms / np.sqrt(np.mean((noisy - tone).astype(np.float64) ** 2))) == \
        pytest.approx(10.0, abs=0.1)
    assert np.array_equal(noisy, apply_channel(tone, "noise10db", config))   # seeded
    opus = apply_channel(tone, "opus8kbps", config)
    assert np.corrcoef(opus[2000:], tone[2000:])[0, 1] > 0.3    # lossy, still the same tone
    hum = (0.1 * np.sin(2 * np.pi * 60.0 * t)).astype(np.float32)
    assert np.abs(apply_channel(hum, "highpass300", config)[8000:]).max() < 0.01
    with pytest.raises(ValueError, match="mulaw8k"):
        apply_channel(tone, "telegraph", config)
    # the room smears a click into a tail, the same one every run; not in the issue's table
    click = np.zeros(16000, dtype=np.float32)
    click[100] = 0.5
    room = apply_channel(click, "room", config)
    assert np.array_equal(room, apply_channel(click, "room", config))
    assert np.sum(room[101:].astype(np.float64) ** 2) == pytest.approx(
        0.25 * 10 ** (-0.3), rel=0.1)  # DRR 3 dB
    from training.evaluate import ROBUSTNESS
    assert "room" in CHANNELS and "room" not in ROBUSTNESS


def test_clips_are_scored_as_the_worker_cuts_them(callmood_corpora: Path) -> None:
    from training.evaluate import DEFAULT_SPEECH_CUT, clip_features
    from worker.features import FeatureConfig

    rows = pd.read_csv(callmood_corpora / "ravdess" / "manifest.csv")
    path = str(callmood_corpora / "ravdess" / rows["path"].iloc[0])
    config = FeatureConfig()
    whole = clip_features(path, "clean", config, None)
    cut = clip_features(path, "clean", config, DEFAULT_SPEECH_CUT)
    # RAVDESS clips are about half room tone around the sentence; the worker never scores it
    assert cut.shape[0] == whole.shape[0] and 0.2 * whole.shape[1] < cut.shape[1] < 0.9 * whole.shape[1]


def test_noise_snr_is_over_the_speech_that_is_scored(callmood_corpora: Path) -> None:
    """RAVDESS clips are about half room tone: the named SNR holds inside the speech the
    worker cuts (what is scored), not over the whole clip, where it came out ~3 dB better."""
    from training.augment import rms
    from training.evaluate import DEFAULT_SPEECH_CUT, apply_channel
    from worker.audio import load_mono
    from worker.features import FeatureConfig

    config = FeatureConfig()
    rows = pd.read_csv(callmood_corpora / "ravdess" / "manifest.csv")
    clips = [load_mono(callmood_corpora / "ravdess" / p, config.sample_rate)
             for p in rows["path"].iloc[:3]]
    for x in clips:
        extent = DEFAULT_SPEECH_CUT.extent(x)
        assert extent is not None and extent[1] - extent[0] < 0.8 * x.size
        speech = slice(*extent)
        for snr_db in (20.0, 10.0):
            noise = apply_channel(x, f"noise{snr_db:.0f}db", config) - x
            measured_db = 20 * np.log10(rms(x[speech]) / rms(noise[speech]))
            # pink noise's slow low-band drift moves the part under the speech by <1 dB
            assert measured_db == pytest.approx(snr_db, abs=1.0)
    # each clip and condition draws its own noise (not one per clip length)
    same_length = clips[0][: min(c.size for c in clips)], clips[1][: min(c.size for c in clips)]
    n0, n1 = (apply_channel(c, "noise10db", config) - c for c in same_length)
    assert abs(np.corrcoef(n0 / rms(n0), n1 / rms(n1))[0, 1]) < 0.2


def test_clipping_overdrives_a_quiet_recording_as_much_as_a_loud_one(
        callmood_corpora: Path) -> None:
    """The condition sets the speech's level before the 20 dB of gain: a clip recorded 26 dB
    quieter is clipped the same (it once was not clipped at all: 172 of RAVDESS's 360 test
    clips peaked under -20 dBFS)."""
    from training.evaluate import apply_channel
    from worker.audio import load_mono
    from worker.features import FeatureConfig

    config = FeatureConfig()
    rows = pd.read_csv(callmood_corpora / "ravdess" / "manifest.csv")
    x = load_mono(callmood_corpora / "ravdess" / rows["path"].iloc[0], config.sample_rate)
    quiet = np.asarray(x * 0.05, dtype=np.float32)
    assert np.abs(quiet).max() < 0.1                     # the old gain alone would not clip it
    shares = []
    for clip in (x, quiet):
        out = apply_channel(clip, "clipping", config)
        shares.append(float(np.mean(np.abs(out) >= 1.0)))
    assert shares[0] > 0.01 and shares[1] == pytest.approx(shares[0], abs=0.005)


def test_the_cards_command_leaves_out_options_that_do_not_change_the_figures() -> None:
    from training.cli import _without_options

    argv = ["--robustness", "--json-out", "/tmp/x.json", "--update-card", "--json-out=y.json",
            "--model", "m.onnx"]
    assert _without_options(argv, {"--update-card": 0, "--json-out": 1}) == [
        "--robustness", "--model", "m.onnx"]


def test_robustness_is_the_issues_table_and_a_channel_beside_it_adds_a_row() -> None:
    from training.cli import evaluation_channels
    from training.evaluate import ROBUSTNESS

    assert evaluation_channels(False, None) == ["clean"]
    assert evaluation_channels(False, ["room", "clean"]) == ["room", "clean"]
    assert evaluation_channels(True, None) == list(ROBUSTNESS)
    assert evaluation_channels(True, ["room", "clean"]) == [*ROBUSTNESS, "room"]


def test_split_val_scores_the_validation_speakers_the_card_lists(emotion_model: Path,
                                                                  callmood_corpora: Path) -> None:
    import json

    manifest = callmood_corpora / "ravdess" / "manifest.csv"
    # the shipped model is a final fit (trained on its run's validation speakers too): the
    # run it refits was selected on them, and is kept beside it
    if json.loads(emotion_model.with_suffix(".card.json").read_text())["training"].get(
            "final_fit"):
        with pytest.raises(ConfigError, match="lists no validation speakers"):
            evaluate_model(emotion_model, [manifest], split="val", workers=2)
        emotion_model = emotion_model.parent / "selection" / emotion_model.name
    card = json.loads(emotion_model.with_suffix(".card.json").read_text())
    result = evaluate_model(emotion_model, [manifest], split="val", workers=2)
    expected = sum(card["training"]["val_counts"]["ravdess"].values())
    assert result.get("ravdess").n_clips == expected and result.split == "val"


def _tiny_member(folder: Path, seed: int, labels: tuple[str, ...] | None = None,
                 val_speakers: list[str] | None = None, **features: object) -> Path:
    """A tiny model with seeded weights whose card reads log-mels without CMN (with CMN the
    tiny model's time-mean is zero and every clip would get the same logits)."""
    import json

    folder.mkdir(parents=True)
    # small weights: soft probabilities, so the average can differ from either member
    weights = 0.01 * np.random.default_rng(seed).normal(size=(N_MELS, 7)).astype(np.float32)
    path = write_tiny_model(folder, weights)
    card = json.loads(path.with_suffix(".card.json").read_text())
    card["features"].update({"normalization": "none", **features})
    if labels is not None:
        card["labels"] = list(labels)
    card["training"] = {"val_speakers": val_speakers or ["ravdess:Actor_01"]}
    path.with_suffix(".card.json").write_text(json.dumps(card))
    return path


def test_an_ensemble_scores_the_mean_of_its_members_probabilities(
        tmp_path: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.evaluate import DEFAULT_SPEECH_CUT, clip_features, metrics_for
    from worker.constants import EMOTIONS
    from worker.emotion import load_model
    from worker.errors import ConfigError

    a = _tiny_member(tmp_path / "a", 1)
    b = _tiny_member(tmp_path / "b", 2, dynamic_range_db=30.0)   # other features: its own
    manifest = _manifest(tmp_path, callmood_corpora)
    ensemble = evaluate_model([a, b], [manifest], workers=1)
    assert ensemble.model_version == "tiny-0.0.1 + tiny-0.0.1"
    # by hand: each member on its own card's features, probabilities averaged
    rows = pd.read_csv(manifest)
    members = [load_model(p.resolve(), 1) for p in (a, b)]
    probs = np.mean([m.predict_proba([clip_features(p, "clean", m.card.features,
                                                    DEFAULT_SPEECH_CUT) for p in rows["path"]])
                     for m in members], axis=0).astype(np.float32)
    labels = rows["emotion"].replace({"calm": "neutral"}).map(EMOTIONS.index).to_numpy(np.int64)
    expected = metrics_for("ravdess", "clean", probs, labels, EMOTIONS)
    got = ensemble.get("ravdess")
    assert got.confusion == expected.confusion and got.ece == pytest.approx(expected.ece, abs=1e-6)
    alone = [evaluate_model(p, [manifest], workers=1).get("ravdess") for p in (a, b)]
    # the by-hand check can tell the ensemble from either member (averaging softens them)
    assert all(got.ece != pytest.approx(m.ece, abs=1e-3) for m in alone), (got, alone)
    twice = evaluate_model([a, a], [manifest], workers=1).get("ravdess")
    assert twice.confusion == alone[0].confusion and twice.ece == pytest.approx(alone[0].ece)

    # members that do not fit together are refused, naming what differs
    flipped = _tiny_member(tmp_path / "flipped", 1, labels=tuple(reversed(EMOTIONS)))
    with pytest.raises(ConfigError, match="labels"):
        evaluate_model([a, flipped], [manifest], workers=1)
    other_split = _tiny_member(tmp_path / "other", 3, val_speakers=["ravdess:Actor_02"])
    with pytest.raises(ConfigError, match="split seed"):
        evaluate_model([a, other_split], [manifest], split="val", workers=1)
    assert evaluate_main(["--model", str(a), "--model", str(b), "--manifest", str(manifest),
                          "--workers", "1", "--update-card"]) == 2
    assert "--update-card writes one model's card" in capsys.readouterr().err
    assert evaluate_main(["--model", str(a), "--model", str(b), "--manifest", str(manifest),
                          "--workers", "1"]) == 0
    assert "model tiny-0.0.1 + tiny-0.0.1" in capsys.readouterr().out


def test_evaluate_runs_where_torch_is_not_installed() -> None:
    """`callmood evaluate` scores ONNX models: the production install (no train extra, no
    torch) must still run it; only training needs torch."""
    import subprocess
    import sys

    blocked = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'torch'\")\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from worker.cli import main\n"
        "sys.exit(main(['evaluate', '--help']))\n")
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--min-frames" in done.stdout


def test_a_trained_model_without_test_rows_keeps_its_exit_status(
        tmp_path: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An operator's manifest of their own labelled calls may hold train rows only: training
    ends well, with a note, rather than failing after the whole run on the test figures."""
    from training.cli import _test_figures_into_card

    model = write_tiny_model(tmp_path, np.zeros((N_MELS, 7), dtype=np.float32))
    card_before = card_path_for(model).read_text()
    train_only = tmp_path / "train_only.csv"
    pd.read_csv(_manifest(tmp_path, callmood_corpora)).assign(split="train").to_csv(
        train_only, index=False)
    assert _test_figures_into_card(model, [train_only], workers=1) == 0
    err = capsys.readouterr().err
    assert "no test rows in the manifests" in err
    # the command it suggests names the new model: without --model, --update-card rewrote
    # the card of the model the worker serves (a review)
    assert f"callmood evaluate --model {model} --update-card --manifest M" in err
    assert card_path_for(model).read_text() == card_before


def test_update_card_names_the_card_it_rewrites(
        tmp_path: Path, callmood_corpora: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`evaluate --update-card --manifest theirs.csv` without --model scored an operator's
    calls and replaced the served model's published test figures with them (a review); loco
    refuses it before training, not hours later."""
    from training.cli import loco_main

    served = write_tiny_model(tmp_path, np.zeros((N_MELS, 7), dtype=np.float32))
    monkeypatch.setenv("CALLMOOD_MODEL_PATH", str(served))
    card_before = card_path_for(served).read_text()
    manifest = _manifest(tmp_path, callmood_corpora)
    assert evaluate_main(["--manifest", str(manifest), "--workers", "1", "--update-card"]) == 2
    assert "--update-card rewrites a model's card: name the model" in capsys.readouterr().err
    assert loco_main(["--holdout", "urdu", "--update-card", "--epochs", "1"]) == 2
    assert "--update-card rewrites a model's card: name the model" in capsys.readouterr().err
    assert card_path_for(served).read_text() == card_before
    assert not (tmp_path / "loco").exists() and not Path("loco").exists()


def test_evaluate_says_why_nothing_is_left_to_score(tmp_path: Path) -> None:
    """An operator's manifest without test rows, or another data set than the model's own
    for --split val, read "no clip ... with one of the model's labels": the labels were fine
    (a review). Each case now says what is missing."""
    from types import SimpleNamespace

    from training.evaluate import scored_clips

    model_path = tmp_path / "mine.onnx"
    card: Any = SimpleNamespace(labels=("angry", "happy", "neutral", "sad"),
                                extra={"training": {"val_speakers": ["ravdess:01"]}})
    manifest = tmp_path / "mycalls" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,speaker,emotion,split\na.wav,agent-1,angry,train\n"
                        "b.wav,agent-2,sad,train\n")
    with pytest.raises(ConfigError, match=r"no row of split 'test' in \S+manifest.csv"):
        scored_clips(model_path, card, [manifest], "test")
    with pytest.raises(ConfigError, match=r"none of mine.onnx's validation speakers "
                                          r"\(ravdess:01\) has train rows"):
        scored_clips(model_path, card, [manifest], "val")
    manifest.write_text("path,speaker,emotion,split\na.wav,agent-1,fear,test\n")
    with pytest.raises(ConfigError, match="with one of the model's labels"):
        scored_clips(model_path, card, [manifest], "test")
