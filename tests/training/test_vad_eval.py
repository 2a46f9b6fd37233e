"""A small, seeded VAD evaluation on real corpus clips, and the ground-truth helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.vad_eval import (
    CONDITIONS,
    LEVEL_CONDITIONS,
    active_region,
    evaluate,
    false_alarms,
    frames_to_grid,
    main,
    prf,
    truth_mask,
)
from worker.segmentation import SegmentationConfig, Span
from worker.vad import VadConfig

SMALL = ("8k clean", "16k pink 10 dB", "8k mu-law pink 20 dB")

# Floors just under what this run measured (3 test clips per corpus, seed 0, defaults):
# (condition, level): (precision floor, recall floor)  # measured P, R
FLOORS = {
    ("8k clean", "vad"): (0.92, 0.86),                   # 0.952, 0.892
    ("8k clean", "utterances"): (0.90, 0.90),            # 0.930, 0.938
    ("16k pink 10 dB", "vad"): (0.80, 0.68),             # 0.848, 0.720
    ("16k pink 10 dB", "utterances"): (0.68, 0.85),      # 0.731, 0.889
    ("8k mu-law pink 20 dB", "vad"): (0.92, 0.75),       # 0.961, 0.788
    ("8k mu-law pink 20 dB", "utterances"): (0.91, 0.84),  # 0.947, 0.875
}


@pytest.fixture(scope="module")
def small_eval(callmood_corpora: Path) -> pd.DataFrame:
    conditions = [c for c in CONDITIONS if c.name in SMALL]
    return evaluate(clips_per_corpus=3, seed=0, conditions=conditions)


def test_small_eval_is_above_measured_floors(small_eval: pd.DataFrame) -> None:
    assert len(small_eval) == 2 * len(SMALL)
    for row in small_eval.itertuples():
        p_floor, r_floor = FLOORS[(row.condition, row.level)]
        assert row.precision >= p_floor, row
        assert row.recall >= r_floor, row
    assert (small_eval["n_clips"] == 12).all()  # 3 clips x 4 corpora


def test_eval_is_deterministic(small_eval: pd.DataFrame) -> None:
    conditions = [c for c in CONDITIONS if c.name == "16k pink 10 dB"]
    again = evaluate(clips_per_corpus=3, seed=0, conditions=conditions)
    first = small_eval[small_eval["condition"] == "16k pink 10 dB"].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again)


def test_active_region_excludes_leading_and_trailing_silence() -> None:
    rate = 16_000
    rng = np.random.default_rng(0)
    x = np.concatenate([1e-4 * rng.standard_normal(rate // 2),     # -80 dB room noise
                        0.3 * rng.standard_normal(rate),           # 1 s "speech"
                        1e-4 * rng.standard_normal(rate // 4)]).astype(np.float32)
    start_s, end_s = active_region(x, rate)
    assert start_s == pytest.approx(0.5, abs=0.011)
    assert end_s == pytest.approx(1.5, abs=0.011)


def test_truth_grid_and_scores() -> None:
    mask = truth_mask([Span(0.02, 0.05)], 0.1)
    assert mask.tolist() == [False, False, True, True, True, False, False, False, False, False]
    vad_frames = np.array([False, True, False, True])  # 30 ms frames over 0.12 s
    want = [False] * 3 + [True] * 3 + [False] * 3 + [True]
    assert frames_to_grid(vad_frames, 0.03, 10).tolist() == want
    p, r, f = prf(np.array([True, True, False, False]), np.array([True, False, True, False]))
    assert (p, r, f) == (0.5, 0.5, 0.5)


def test_main_prints_a_markdown_table(capsys: pytest.CaptureFixture[str], callmood_corpora: Path) -> None:
    assert main(["--clips-per-corpus", "1"]) == 0
    out = capsys.readouterr().out
    assert "| condition | VAD P |" in out
    assert out.count("\n| ") >= len(CONDITIONS) + 1


def test_level_front_end_finds_quiet_lines(callmood_corpora: Path) -> None:
    # 3 test clips per corpus, seed 0; measured utterance F1 with / without the front end:
    # clean -35 dB 0.934 / 0.258, 16 kHz white noise at 10 dB SNR, -25 dB 0.859 / 0.612.
    names = ("8k clean, level -35 dB", "16k white 10 dB, level -25 dB")
    conditions = [c for c in LEVEL_CONDITIONS if c.name in names]
    on = evaluate(clips_per_corpus=3, seed=0, conditions=conditions).query("level == 'utterances'")
    off = evaluate(clips_per_corpus=3, seed=0, vad=VadConfig(max_gain_db=0.0),
                   conditions=conditions).query("level == 'utterances'")
    f1_on, f1_off = on.set_index("condition")["f1"], off.set_index("condition")["f1"]
    assert f1_on[names[0]] >= 0.90 and f1_off[names[0]] <= 0.30
    assert f1_on[names[1]] >= 0.82 and f1_off[names[1]] <= 0.65
    assert (on["precision"] >= 0.92).all()


def test_level_front_end_finds_no_speech_in_quiet_noise() -> None:
    alarms = false_alarms(VadConfig(), SegmentationConfig(), seconds=20.0,
                          levels_dbfs=(-75.0, -60.0, -45.0))
    assert len(alarms) == 6 and set(alarms["noise"]) == {"white", "pink"}
    assert (alarms["speech_s_per_min"] == 0.0).all()
    # noise as loud as the front end's target is taken for speech: why the gain has a ceiling
    loud = false_alarms(VadConfig(), SegmentationConfig(), seconds=20.0, levels_dbfs=(-15.0,))
    assert loud["speech_s_per_min"].max() > 10.0
