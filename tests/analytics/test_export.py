from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analytics.export import spreadsheet_safe, write_csv


def test_formula_cells_are_neutralised_and_numbers_kept(tmp_path: Path) -> None:
    frame = pd.DataFrame({"agent": ["=HYPERLINK(\"http://x\")", "+1", "-cmd", "@SUM(A1)", "Ana",
                                    "\t=1", "\r=1", "\0=1"],
                          "stress": [-1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]})
    safe = spreadsheet_safe(frame)
    assert safe["agent"].tolist() == ["'=HYPERLINK(\"http://x\")", "'+1", "'-cmd", "'@SUM(A1)", "Ana",
                                      "'\t=1", "'\r=1", "'\0=1"]
    assert safe["stress"].tolist() == [-1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert frame["agent"][0].startswith("=")  # the input is not mutated


def test_bom_and_empty_csv_has_headers(tmp_path: Path) -> None:
    path = write_csv(pd.DataFrame(columns=["call", "agent"]), tmp_path / "r.csv", excel_bom=True)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw.decode("utf-8-sig").strip() == "call,agent"


def test_a_write_that_fails_leaves_the_previous_report_whole(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The CSV is written beside the file and renamed over it when complete: a disk that
    fills mid-write left half a report, the old one already gone."""
    path = write_csv(pd.DataFrame({"call": ["a", "b"]}), tmp_path / "r.csv")
    before = path.read_bytes()

    def disk_full(self: pd.DataFrame, target: object, **_: object) -> None:
        Path(str(target)).write_text("call\na")          # part of it, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_csv(pd.DataFrame({"call": ["c"]}), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]      # no partial file left


def test_two_writes_to_one_report_each_use_a_partial_file_of_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cron run and a manual run writing one --out shared ".r.csv.partial": one could move
    the other's half-written file into place (a review). Each write has its own now, and
    another writer's partial file is left alone; the report keeps the umask's mode."""
    import os

    others = tmp_path / ".r.csv.partial"             # another writer's, half done
    others.write_text("call\nhalf")
    renamed: list[str] = []
    real_replace = os.replace

    def replace(source: str | Path, target: str | Path) -> None:
        renamed.append(Path(source).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    for rows in (["a"], ["b"]):
        path = write_csv(pd.DataFrame({"call": rows}), tmp_path / "r.csv")
    assert len(set(renamed)) == 2 and others.name not in renamed
    assert all(n.startswith(".r.csv.") and n.endswith(".partial") for n in renamed)
    assert others.read_text() == "call\nhalf" and path.read_text() == "call\nb\n"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
