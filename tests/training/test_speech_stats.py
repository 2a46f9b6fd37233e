"""How much of a corpus clip the worker's cut to speech keeps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training.speech_stats import clip_speech, main, speech_table
from worker.pipeline import SpeechCut


def test_ravdess_clips_are_about_half_silence_and_a_muted_clip_has_no_speech(
        callmood_corpora: Path) -> None:
    rows = pd.read_csv(callmood_corpora / "ravdess" / "manifest.csv").head(6)
    clips = rows.assign(path=[str(callmood_corpora / "ravdess" / p) for p in rows["path"]],
                        corpus="ravdess")
    table = speech_table(clips, SpeechCut(), workers=1)
    row = table.iloc[0]
    assert row["corpus"] == "ravdess" and row["clips"] == 6
    assert 0.3 < row["median_non_speech"] < 0.8       # the sentence sits in room tone
    assert clip_speech(clips["path"].iloc[0], SpeechCut(), level_db=-120.0) == (1.0, True)


def test_command_prints_a_row_per_corpus(callmood_env: object,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--corpus", "emodb", "--split", "test", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "emodb" in out and "median_non_speech" in out
