"""The crosstalk measurement on a few real corpus clips: leaks dropped, own speech kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.crosstalk_eval import (
    CUSTOMER_DB,
    FLOOR_DBFS,
    LEAK_DB,
    LEAK_DELAY_MS,
    build_call,
    grid,
    leak,
    main,
    measure,
    summary,
)


def test_leak_is_delayed_band_limited_and_quieter() -> None:
    x = np.zeros(8000, dtype=np.float32)
    x[1000] = 1.0
    y = leak(x, -40.0, 40)
    assert y.shape == x.shape
    assert int(np.argmax(np.abs(y))) >= 1000 + 320  # 40 ms at 8 kHz, then the filter's delay
    assert float(np.abs(y).max()) < 10 ** (-40 / 20)


@pytest.fixture(scope="module")
def rows(callmood_corpora: Path) -> pd.DataFrame:
    return measure(build_call("test", 2, 0), 0)


def test_the_gate_drops_leaks_and_keeps_the_customers_own_speech(rows: pd.DataFrame) -> None:
    n_conditions = len(CUSTOMER_DB) * len(LEAK_DB) * len(LEAK_DELAY_MS) * len(FLOOR_DBFS)
    conditions = rows[["customer", "leak_db", "delay_ms", "floor"]].drop_duplicates()
    assert len(conditions) > 0.8 * n_conditions  # nearly every condition cut something (51 of 54)
    leaks, own = rows[~rows["own"]], rows[rows["own"]]
    assert len(leaks) > 50 and len(own) > 30
    # measured with 2 clips per corpus: 54 of 59 leaks dropped, none of 144 own; floors under
    assert leaks["dropped"].mean() > 0.85
    assert not own["dropped"].any()
    table = summary(rows)
    assert table["utterances"].sum() == len(rows)
    assert table["kept_by_gate"].sum() == int((~rows["dropped"]).sum())


def test_main_prints_the_table(callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--clips-per-corpus", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| customer | customer's own | utterances | kept_by_gate")
    assert any(line.startswith("| none | False |") for line in out)


def test_the_grid_counts_what_each_threshold_pair_would_keep_and_drop(rows: pd.DataFrame) -> None:
    table = grid(rows, correlations=(0.85, 2.0), gaps_db=(25.0,))
    default, never = table.iloc[0], table.iloc[1]
    # the default pair is the gate's own decision; a correlation over 1 drops nothing
    assert default["leaks_kept"] == int((~rows["dropped"] & ~rows["own"]).sum())
    assert default["own_dropped"] == int((rows["dropped"] & rows["own"]).sum())
    assert never["leaks_kept"] == never["leaks"] == int((~rows["own"]).sum())
    assert never["own_dropped"] == 0
