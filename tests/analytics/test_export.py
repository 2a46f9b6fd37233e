from __future__ import annotations

from pathlib import Path

import pandas as pd

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
