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

MIN_BIN_S: Final[float] = 0.1
"""Smallest timeline step (s): segment edges sit on the VAD's 10 ms frames and the CSV keeps
seconds to 0.01, so a finer step repeats ``bin_start_s`` values and shows speech as 0.0 s; at
0.1 s an edge's rounding is at most a tenth of its bin."""

BIN_STEP_S: Final[float] = 0.01
"""``--bin-s`` is a whole number of these (s): the CSV keeps seconds to 0.01, and a step of
0.125 s showed bins alternately 0.12 and 0.13 s wide (a review)."""

DEFAULT_MAX_PLOTS: Final[int] = 100
"""``--plots`` draws at most this many calls (most stressed first; about 0.5 s each)."""
