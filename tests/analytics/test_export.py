from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from analytics import export
from analytics.export import spreadsheet_safe, write_csv


def test_formula_cells_are_neutralised_and_numbers_kept(tmp_path: Path) -> None:
    frame = pd.DataFrame({"agent": ["=HYPERLINK(\"http://x\")", "+1", "-cmd", "@SUM(A1)", "Ana",
                                    "\t=1", "\r=1", "\0=1"],
                          "stress": [-1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]})
    safe = spreadsheet_safe(frame)
    # "\r=1": the CR starts a formula, and so does "=1" after it (a line's start)
    assert safe["agent"].tolist() == ["'=HYPERLINK(\"http://x\")", "'+1", "'-cmd", "'@SUM(A1)", "Ana",
                                      "'\t=1", "'\r'=1", "'\0=1"]
    assert safe["stress"].tolist() == [-1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert frame["agent"][0].startswith("=")  # the input is not mutated


def test_formulas_behind_spaces_or_in_full_width_are_neutralised() -> None:
    """`` =1+1``, ``=HYPERLINK(...)`` and ``-2`` in full width (U+FF1D, U+FF0D) went out as they were (a
    review): some spreadsheets skip leading spaces, and East Asian input reads the
    full-width signs as the plain ones. A space inside a name, or after a letter, is left."""
    cells = [" =1+1", "\u3000@x", "\u00a0+1", "\uff1dHYPERLINK(1)", "\uff0b1", "\uff0d2",
             "\uff20x", "ok\n =2", "Ana Lopez", "  Ana", "a=1"]
    safe = spreadsheet_safe(pd.DataFrame({"agent": cells}))["agent"].tolist()
    assert safe == ["' =1+1", "'\u3000@x", "'\u00a0+1", "'\uff1dHYPERLINK(1)", "'\uff0b1",
                    "'\uff0d2", "'\uff20x", "ok\n' =2", "Ana Lopez", "  Ana", "a=1"]


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

    def disk_full(frame: pd.DataFrame, chunk_rows: int | None = None) -> Iterator[str]:
        yield "call\na"                                   # part of it, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "csv_text", disk_full)
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


def test_a_cell_with_a_line_break_is_quoted_and_each_of_its_lines_neutralised(
        tmp_path: Path) -> None:
    """A bare CR in a cell went unquoted (the csv module quotes only the row terminator's
    characters, LF): a spreadsheet split the row there, and the "=1" after the CR started a
    cell of its own, unneutralised (a review). Such cells are quoted, every line of a cell
    is neutralised, rows still end in LF and numbers stay unquoted."""
    names = ["\r=1", "x\r=1+1", "a\n@SUM(A1)", "b\r\n-2", "a,b\"c", "Ana", "c\rd"]
    frame = pd.DataFrame({"agent": names, "stress": [1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]})
    text = write_csv(frame, tmp_path / "r.csv").read_bytes().decode("utf-8")
    assert text.startswith("agent,stress\n")
    assert '"\'\r\'=1",1.5\n' in text and '"c\rd",7.0\n' in text
    assert "Ana,6.0\n" in text                         # quoted only where needed
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1:] == [["'\r'=1", "1.5"], ["x\r'=1+1", "2.0"], ["a\n'@SUM(A1)", "3.0"],
                        ["b\r\n'-2", "4.0"], ['a,b"c', "5.0"], ["Ana", "6.0"], ["c\rd", "7.0"]]
    read = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert len(read) == len(names) and read["stress"].tolist() == frame["stress"].tolist()
    lines = [line for cell, _ in rows[1:] for line in cell.replace("\r", "\n").split("\n")]
    assert not [line for line in lines if line.startswith(("=", "+", "-", "@", "\t", "\0"))]
    # written in pieces of rows: a piece boundary between two rows changes nothing
    assert "".join(export.csv_text(spreadsheet_safe(frame), chunk_rows=2)) == text
