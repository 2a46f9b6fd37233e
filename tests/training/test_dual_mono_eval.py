"""The dual-mono measurement on real corpus clips: copies within the level limit are one
signal through every codec, two parties never are."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.dual_mono_eval import channels, main, measure, table
from worker.constants import DUAL_MONO_GAIN_RESIDUAL_DB, DUAL_MONO_MAX_GAIN_DB


def test_copies_are_one_signal_and_parties_two_with_margin(callmood_corpora: Path) -> None:
    rows = measure(*channels("test", 1, 0))
    assert {r.codec for r in rows} == {"PCM_16", "ULAW", "ALAW", "OPUS"}
    for r in rows:
        within = r.kind.startswith("copy") and abs(r.gap_db) <= DUAL_MONO_MAX_GAIN_DB
        assert r.same_signal == within, r
    # the threshold sits between the two kinds with room on both sides, for crosstalk up
    # to 30 % each way (at 50 % a quiet party's channel is mostly the other's leak, which
    # the level limit keeps apart)
    copies = [r.residual_db for r in rows if r.kind.startswith("copy")
              and abs(r.gap_db) <= DUAL_MONO_MAX_GAIN_DB]
    parties = [r.residual_db for r in rows if r.kind.startswith("parties")
               and float(r.kind.rsplit(" ", 1)[1]) <= 0.3]
    assert max(copies) < DUAL_MONO_GAIN_RESIDUAL_DB - 5
    assert min(parties) > DUAL_MONO_GAIN_RESIDUAL_DB + 4
    assert len(table(rows)) == len(rows) // 2


def test_main_prints_the_table(callmood_corpora: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--clips-per-corpus", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| kind | codec | gap_db |") and "| copy x 0.99 | OPUS |" in out
