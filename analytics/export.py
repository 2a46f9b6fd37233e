"""The export edge: CSV files for supervisors (opened in Excel).

Text cells are neutralised against CSV formula injection (OWASP): a value from the
call-centre system such as an agent name ``=HYPERLINK(...)`` would otherwise execute when a
supervisor opens the file in a spreadsheet.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pandas as pd

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\0")
"""Leading characters a spreadsheet may read as a formula (OWASP's CSV injection list)."""


def neutralize_cell(value: object) -> object:
    """Prefix a text cell that a spreadsheet would read as a formula with ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text columns cannot start a formula. Numbers stay numbers."""
    text_columns = [c for c in frame.columns
                    if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])]
    return frame.assign(**{c: frame[c].map(neutralize_cell) for c in text_columns})


def write_csv(frame: pd.DataFrame, path: Path, excel_bom: bool = False) -> Path:
    """Write ``frame`` as UTF-8 CSV (with a BOM if ``excel_bom``, so Excel reads UTF-8).

    Written beside ``path`` and renamed over it once complete: a write that fails (a full
    disk) leaves the previous report whole, never half a file. OSError as the OS gives it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of this write's own: two reports to one --out at once (a cron run beside a
    # manual one) shared ".NAME.partial", and one could move the other's half-written file
    # into place (a review). Opened as any file is, so the report keeps the umask's mode.
    partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        spreadsheet_safe(frame).to_csv(partial, index=False,
                                       encoding="utf-8-sig" if excel_bom else "utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
