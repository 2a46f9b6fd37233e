"""From recordings to supervisor CSV and PNG: the shipped model, the CLI, the embedded DB."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bench.workload import read_manifest, synthesize_call, write_call
from worker.cli import main


def test_recordings_to_stress_report_and_pictures(tmp_path: Path, emotion_model: Path,
                                                  callmood_corpora: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("CALLMOOD_DATABASE_URL", "CALLMOOD_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CALLMOOD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CALLMOOD_INPUT_ROOTS", str(tmp_path))
    monkeypatch.setenv("CALLMOOD_MODEL_PATH", str(emotion_model))
    test = read_manifest(callmood_corpora, "ravdess").query("split == 'test'")
    agent = test[(test["speaker"] == "actor21") & (test["emotion"] == "neutral")].head(3)
    calm = test[(test["speaker"] == "actor22") & (test["emotion"].isin(["neutral", "calm"]))].head(3)
    angry = test[(test["speaker"] == "actor22") & (test["emotion"] == "angry")].head(3)
    rng = np.random.default_rng(3)
    calm_call = write_call(synthesize_call(agent, calm, rng), tmp_path / "calm.wav")
    angry_call = write_call(synthesize_call(agent, angry, rng), tmp_path / "angry.wav")
    assert main(["analyze", str(calm_call), "--call-id", "C-calm", "--agent", "=HYPERLINK(1)"]) == 0
    assert main(["analyze", str(angry_call), "--call-id", "C-angry", "--agent", "a-1"]) == 0

    out = tmp_path / "reports" / "stress.csv"
    plots = tmp_path / "reports" / "png"
    assert main(["report", "stress", "--out", str(out), "--plots", str(plots)]) == 0
    with out.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["call"] for r in rows] == ["C-angry", "C-calm"]       # ranked by customer stress
    assert float(rows[0]["customer_stress"]) > float(rows[1]["customer_stress"]) + 20
    assert rows[1]["agent_id"] == "'=HYPERLINK(1)"                   # formula neutralised
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert len(pngs) == 2 and all((plots / p).stat().st_size > 20_000 for p in pngs)
    assert (plots / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # path mistakes: a clear error, exit 2, before any query, and the last report kept whole
    kept = out.read_bytes()
    assert main(["report", "stress", "--out", str(plots)]) == 2                 # a folder
    assert main(["report", "stress", "--out", str(out), "--plots", str(out)]) == 2  # a file
    assert out.read_bytes() == kept

    # the calm recording analysed again under its content id (as the inbox scan would;
    # without --reprocess analyze shows C-calm's): the reports still count it once, as
    # C-calm, and `callmood calls` says so
    assert main(["analyze", str(calm_call), "--reprocess"]) == 0
    capsys.readouterr()
    assert main(["report", "stress", "--out", str(out)]) == 0
    with out.open(encoding="utf-8-sig", newline="") as fh:
        assert [r["call"] for r in csv.DictReader(fh)] == ["C-angry", "C-calm"]
    assert "1 analysed call holds a recording another call holds too" in capsys.readouterr().err
    assert main(["calls"]) == 0
    (listed,) = [line for line in capsys.readouterr().out.splitlines()
                 if line.startswith("sha256-")]
    assert listed.endswith("(same recording as C-calm, which the reports count instead)")
    # its labels reach no report: relabel says which call to relabel instead (a review)
    assert main(["relabel", listed.split()[0], "--agent", "dora"]) == 0
    assert ("reports count call C-calm for this recording, not sha256-"
            in capsys.readouterr().err)
