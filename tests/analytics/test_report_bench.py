from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from bench.report_bench import (
    START_DAY,
    main,
    per_call_ratio,
    populate,
    synthesize,
    time_reports,
)
from worker.db import session_scope
from worker.schema import Call, Segment


def test_synthetic_calls_have_the_asked_shape_and_valid_probabilities() -> None:
    data = synthesize(n_calls=30, segments_per_call=10, days=3, seed=1)
    assert len(data.calls) == 30 and len(data.segments["role"]) == 300
    total = sum(data.segments[f"p_{e}"] for e in ("angry", "disgust", "fear", "happy",
                                                    "neutral", "sad", "surprise"))
    assert np.allclose(total, 1.0)
    assert (data.segments["end_s"] > data.segments["start_s"]).all()
    days = {c["started_at"].date() for c in data.calls}
    assert min(days) >= START_DAY and max(days) < START_DAY + timedelta(days=3)
    assert all(c["started_at"].tzinfo is not None for c in data.calls)

def test_bench_loads_the_database_and_times_every_report(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.sqlite'}"
    populate(url, synthesize(n_calls=40, segments_per_call=8, days=2, seed=2))
    with session_scope(url) as session:
        assert session.query(Call).count() == 40
        assert session.query(Segment).count() == 320
    results = time_reports(url, days=2, full=True, out_dir=tmp_path)
    kinds = {(scope, kind) for scope, kind, *_ in results}
    assert ("everything", "agents") in kinds and len(results) == 16
    everything = {kind: rows for scope, kind, rows, *_ in results if scope == "everything"}
    assert everything["calls"] == 40 and everything["stress"] == 40
    assert all(total_s >= read_s >= 0 for *_, read_s, total_s in results)
    assert {calls for scope, _, _, calls, *_ in results if scope == "everything"} == {40}
    # the per-call ratio is against the same report's one-day figure of the same run
    assert per_call_ratio(results, "one day", "calls") == pytest.approx(1.0)
    day, week = (next(r for r in results if r[0] == s and r[1] == "calls")
                 for s in ("one day", "everything"))
    assert per_call_ratio(results, "everything", "calls") == pytest.approx(
        (week[5] / week[3]) / (day[5] / day[3]))


def test_cli_quick_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--calls", "20", "--segments", "5", "--days", "1"]) == 0
    out = capsys.readouterr().out
    assert "sqlite, 20 calls x 5 segments" in out and "timeline" in out
    assert "per call vs one day" in out and "1.00x" in out
