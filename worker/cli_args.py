"""argparse types for the command line's numbers: each names what it wants when refused.

argparse's own ``type=int`` / ``type=float`` took ``-1`` (a negative LIMIT, a traceback on
PostgreSQL, "no limit" on SQLite), ``nan``, ``inf`` and ``1e300`` (an overflow traceback), so
every count and duration the CLIs take goes through one of these.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(minimum: int, unit: str) -> Callable[[str], int]:
    """A type for a whole number of ``unit`` (e.g. "processes"), ``minimum`` or more."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of {unit}, "
                                             f"{minimum} or more") from e
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: give {minimum} or more {unit}")
        return value

    return parse


def seconds(minimum: float, *, above: bool = False, maximum: float = 10.0 ** 9,
            why: str = "", step: float | None = None) -> Callable[[str], float]:
    """A type for a finite number of seconds, at least ``minimum`` (over it with ``above``)
    and at most ``maximum`` (about 30 years: further is a typo, and overflows a timedelta),
    a whole multiple of ``step`` if given; ``why`` is added to the refusal."""
    bound = f"over {minimum:g}" if above else f"at least {minimum:g}"
    if step is not None:
        bound += f", a multiple of {step:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds") from e
        if not (math.isfinite(value) and (value > minimum if above else value >= minimum)
                and value <= maximum
                # to a millionth of the step: 0.3 / 0.01 is 29.999999999999996
                and (step is None or abs(value / step - round(value / step)) < 1e-6)):
            raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds {bound}"
                                             f"{f' ({why})' if why else ''}")
        return value

    return parse
