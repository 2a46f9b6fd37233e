"""Report names and option values, importable without pandas (the CLI parser needs them)."""

from __future__ import annotations

from typing import Final, Literal, get_args

ReportKind = Literal["calls", "timeline", "stress", "agents"]
REPORT_KINDS: Final[tuple[str, ...]] = get_args(ReportKind)

Period = Literal["day", "week", "all"]
PERIODS: Final[tuple[str, ...]] = get_args(Period)

GroupBy = Literal["agent", "team"]
GROUP_BYS: Final[tuple[str, ...]] = get_args(GroupBy)

DEFAULT_BIN_S: Final[float] = 5.0
"""Timeline grid step (s): about one short utterance (the worker cuts at <= 8 s), so a
5-minute call gives 60 points per party, readable on one chart row and in a spreadsheet."""

DEFAULT_MAX_PLOTS: Final[int] = 100
"""``--plots`` draws at most this many calls (most stressed first; about 0.5 s each)."""
