"""The throughput benchmark runs end to end in its quick mode (figures printed, never compared
with a target)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_a_run_without_work_dir_leaves_no_files_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A default run left its workload (~35 MB; a --long-s 7200 run its 110 MB call) in the
    temp folder each time (a review)."""
    import bench.throughput

    used: list[Path] = []

    def record(args: Any) -> int:
        used.append(Path(args.work_dir))
        (used[-1] / "call.wav").write_bytes(b"x" * 1000)
        return 0

    monkeypatch.setattr(bench.throughput, "_run_and_print", record)
    assert bench.throughput.main(["--long-s", "60"]) == 0
    assert used and used[0].name.startswith("callmood-long-") and not used[0].exists()
