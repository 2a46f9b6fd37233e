"""The throughput benchmark runs end to end in its quick mode (figures printed, never compared
with a target)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.throughput import main


def test_quick_benchmark_reports_every_stage(tmp_path: Path, emotion_model: Path,
                                             callmood_corpora: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLMOOD_MODEL_PATH", str(emotion_model))
    monkeypatch.setenv("CALLMOOD_CORPORA_DIR", str(callmood_corpora))
    out = tmp_path / "bench.json"
    assert main(["--quick", "--work-dir", str(tmp_path / "work"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["stages_cpu_s"]) >= {"decode", "vad", "segmentation", "features", "model", "store"}
    assert result["segments"] > 0 and result["calls"] == 2
    assert result["in_process_call_s_per_cpu_s"] > 0 and result["peak_rss_mb"] > 0
    assert result["celery_sqlite_call_s_per_wall_s"] > 0
    assert result["celery_sqlite"]["startup_cpu_s"] > 0  # read from /proc: the worker ran
    assert result["speedup_2_vs_1"] > 0 and result["busy_loop_speedup_2_vs_1"] > 0
    assert "| end to end | value |" in capsys.readouterr().out
