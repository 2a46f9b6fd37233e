"""The export edge: CSV files for supervisors (opened in Excel).

Text cells are neutralised against CSV formula injection (OWASP): a value from the
call-centre system such as an agent name ``=HYPERLINK(...)`` would otherwise execute when a
supervisor opens the file in a spreadsheet. A cell holding a line break (CR or LF), a comma
or a quote is quoted, so the row stays one row.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

import pandas as pd

log = logging.getLogger(__name__)

PICTURE_INDEX_NAME = "plots.csv"
"""The index ``--plots`` writes beside its PNGs: rank, call, png (this report's pictures)."""

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\0",
                     "\uff1d", "\uff0b", "\uff0d", "\uff20")
"""Leading characters a spreadsheet may read as a formula: OWASP's CSV injection list, and
the full-width forms of ``= + - @``, which spreadsheets with East Asian input read as the
plain ones (a full-width ``=HYPERLINK(...)``, U+FF1D, went out as it was, a review)."""

_LEADING_SPACE = " \u00a0\u3000"
"""Spaces a spreadsheet may skip before a formula (`` =1+1`` went out as it was, a review):
plain, no-break and ideographic."""

_FORMULA_START = re.compile(
    "(?:^|(?<=[\r\n]))(?=[" + re.escape(_LEADING_SPACE) + "]*["
    + re.escape("".join(_FORMULA_PREFIXES)) + "])")
"""A cell's start, or a line's start inside it, followed by a formula prefix (after spaces)."""

CSV_CHUNK_ROWS: Final[int] = 10_000
"""Rows formatted per step by :func:`write_csv`: bounds the text held in memory at once."""


def neutralize_cell(value: object) -> object:
    """Prefix a text cell that a spreadsheet would read as a formula with ``'``, and each
    line inside it that would (a reader that splits the row at a line break, as some do at
    a bare CR, starts a cell there)."""
    # the pattern only where it can match: run on every plain name it tripled the time
    if isinstance(value, str) and (value.lstrip(_LEADING_SPACE).startswith(_FORMULA_PREFIXES)
                                   or "\r" in value or "\n" in value):
        return _FORMULA_START.sub("'", value)
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
        with partial.open("w", encoding="utf-8-sig" if excel_bom else "utf-8",
                          newline="") as out:
            for text in csv_text(spreadsheet_safe(frame)):
                out.write(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def csv_text(frame: pd.DataFrame, chunk_rows: int | None = None) -> Iterator[str]:
    """``frame`` as CSV text (header first, rows ending in LF), in pieces of ``chunk_rows``
    rows (default :data:`CSV_CHUNK_ROWS`). A cell holding CR, LF, a comma or a quote is
    quoted.

    The csv module quotes a cell only for the characters of its row terminator: with LF
    rows a bare CR went unquoted, and a spreadsheet split the row there (a review). So the
    rows are formatted with CRLF, which quotes both, and each row's own CRLF, the only one
    outside quotes, becomes LF again (a quote either opens or closes a cell or comes
    doubled inside one, so the text before an odd-numbered quote lies outside every cell)."""
    step = chunk_rows or CSV_CHUNK_ROWS
    for start in range(0, max(len(frame), 1), step):
        text = frame.iloc[start:start + step].to_csv(index=False, header=start == 0,
                                                     lineterminator="\r\n")
        parts = text.split('"')
        parts[::2] = [outside.replace("\r\n", "\n") for outside in parts[::2]]
        yield '"'.join(parts)


def replace_picture_index(folder: Path, drawn: Mapping[str, Path]) -> list[str]:
    """Write ``folder``'s picture index (rank, call, png: ``drawn``, call id to picture, most
    stressed first) and delete the PNGs the previous index listed that this one does not.

    A folder reused for each night's report kept every earlier night's pictures beside
    tonight's, with nothing to tell them apart (a review). Only files the previous index
    named (plain ``.png`` names in ``folder``) are deleted, never a file put there by hand;
    an index that cannot be read deletes nothing. Returns the names deleted."""
    index_path = folder / PICTURE_INDEX_NAME
    before = _indexed_pictures(index_path)
    index = pd.DataFrame({"rank": range(1, len(drawn) + 1), "call": list(drawn),
                          "png": [path.name for path in drawn.values()]})
    write_csv(index, index_path)
    kept = {name.casefold() for name in index["png"]}
    stale = sorted(name for name in before if name.casefold() not in kept)
    for name in stale:
        (folder / name).unlink(missing_ok=True)
    return stale


def _indexed_pictures(index_path: Path) -> set[str]:
    """The PNG names a picture index lists (none if it is missing or unreadable)."""
    try:
        listed = pd.read_csv(index_path, usecols=["png"], dtype=str)["png"].dropna()
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, pd.errors.ParserError) as e:
        # hand-edited or damaged: keeping a stale picture loses less than deleting a file
        log.warning("%s: not read (%s); earlier pictures are kept", index_path, e)
        return set()
    return {name for name in listed
            if name == Path(name).name and name.lower().endswith(".png")}
