"""The broker benchmark runs end to end on a small table (figures printed, never compared
with a target)."""

from __future__ import annotations

import re

import pytest

from bench.broker_bench import main


def test_broker_benchmark_empties_the_table_it_filled(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rows", "3000", "--recent-share", "0.2", "--polls", "3"]) == 0
    out = capsys.readouterr().out
    # the old rows go by age, the recent ones (of done calls) by the census
    assert "deleted 3000 rows, 0 left" in out, out
    before, after = (float(m) for m in re.findall(r"idle poll (?:before|after) recovery\s+([\d.]+)",
                                                   out))
    assert before > 0 and after > 0
