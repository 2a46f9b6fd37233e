"""``callmood report``: argparse registration and handler (imports pandas only when run).

Wiring in ``worker/cli.py`` (``build_parser``)::

    from analytics.cli import add_report_parser
    add_report_parser(sub)

``main`` then calls ``args.func(args, settings)`` = :func:`run_report`.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
from datetime import date
from pathlib import Path
from typing import Any, cast

from analytics.options import (
    BIN_STEP_S,
    DEFAULT_BIN_S,
    DEFAULT_MAX_PLOTS,
    GROUP_BYS,
    MIN_BIN_S,
    PERIODS,
    REPORT_KINDS,
    GroupBy,
    Period,
)
from worker.cli_args import seconds, whole_number
from worker.errors import CallmoodError, ConfigError, TransientError
from worker.settings import Settings


def _iso_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as e:
        # 2026-11-31 is in the format: say what is wrong with it (a review)
        why = f" ({e})" if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a day YYYY-MM-DD{why}") from e


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` on an ``add_subparsers()`` object; ``args.func`` is
    :func:`run_report`."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "report", help="supervisor reports over analysed calls (CSV, optional PNG per call)",
        description="Write a supervisor report over analysed calls as CSV. Days are the site's "
                    "(CALLMOOD_TIMEZONE, default UTC) and inclusive; the columns are "
                    "documented in docs/analytics.md.")
    p.add_argument("kind", choices=REPORT_KINDS,
                   help="calls: one row per call; stress: calls ranked by customer stress; "
                        "timeline: per call, party and time bin; agents: per agent/team")
    p.add_argument("--from", dest="date_from", type=_iso_day, metavar="YYYY-MM-DD",
                   help="first day of call starts (days of CALLMOOD_TIMEZONE, default UTC)")
    p.add_argument("--to", dest="date_to", type=_iso_day, metavar="YYYY-MM-DD",
                   help="last day (inclusive) of call starts (days of CALLMOOD_TIMEZONE)")
    p.add_argument("--agent", help="only this agent id")
    p.add_argument("--team", help="only this team")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.csv", help="CSV to write")
    p.add_argument("--bom", action="store_true",
                   help="start the CSV with a UTF-8 BOM (Excel on Windows)")
    p.add_argument("--plots", type=Path, metavar="DIR",
                   help="also draw one PNG per call (most stressed first) into DIR")
    # None when not given: an option the report would ignore is refused (a review: `calls
    # --period week` wrote the plain per-call CSV without a word)
    p.add_argument("--max-plots", type=whole_number(0, "pictures"), default=None,
                   metavar="N",
                   help=f"with --plots: at most N PNGs (default {DEFAULT_MAX_PLOTS})")
    p.add_argument("--bin-s", type=seconds(MIN_BIN_S, step=BIN_STEP_S,
                                           why="segment edges sit on 10 ms frames and the "
                                               "CSV keeps seconds to 0.01"),
                   default=None, metavar="SECONDS",
                   help=f"timeline report and --plots step, at least {MIN_BIN_S:g}, in steps of "
                        f"{BIN_STEP_S:g} (default {DEFAULT_BIN_S:g})")
    p.add_argument("--period", choices=PERIODS, default=None,
                   help="agents report: one row per group and day/week, or overall (default)")
    p.add_argument("--by", choices=GROUP_BYS, default=None,
                   help="agents report: group by agent (default) or team")
    # checked before connecting, as the worker's commands are: a PostgreSQL database never
    # migrated failed the report with a ProgrammingError traceback
    p.set_defaults(func=run_report, needs_db=True)
    return p


def ignored_options(args: argparse.Namespace) -> str | None:
    """Why options given to ``callmood report`` do not apply to its report (None: all do)."""
    plots = args.plots is not None
    wrong = [f"{option} applies to {where} only"
             for option, given, applies, where in (
                 ("--period", args.period is not None, args.kind == "agents", "the agents report"),
                 ("--by", args.by is not None, args.kind == "agents", "the agents report"),
                 ("--bin-s", args.bin_s is not None, args.kind == "timeline" or plots,
                  "the timeline report and --plots"),
                 ("--max-plots", args.max_plots is not None, plots, "--plots"))
             if given and not applies]
    return "; ".join(wrong) or None


def clashing_paths(args: argparse.Namespace, index_name: str) -> str | None:
    """Why ``--out`` and ``--plots`` would write over one another (None: they do not).
    ``index_name``: the picture index ``--plots`` writes in its folder."""
    if args.plots is None:
        return None
    out = args.out.resolve()
    if out == args.plots.resolve():
        return (f"--out {args.out} and --plots {args.plots} name one path: the CSV is a file, "
                "--plots a folder")
    if out == (args.plots / index_name).resolve():
        # the index was written over the report, and the command still said it wrote the
        # report (a review)
        return (f"--out {args.out} is the picture index --plots writes "
                f"({args.plots / index_name}): name another file for the report or another "
                "folder for --plots")
    return None


_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
"""Write errors that pass (room made, the share back): exit 1, not the configuration's 2."""


def _write_error(message: str, error: OSError) -> CallmoodError:
    """TransientError (exit 1) for a full disk, a quota or an I/O error, which an unchanged
    command run again later gets past; ConfigError (exit 2) for what the operator must
    change (a read-only folder, no permission). A full disk exited 2 (a review)."""
    if error.errno in _NO_ROOM:
        return TransientError(f"{message}; run the report again once there is room")
    return ConfigError(message)


def run_report(args: argparse.Namespace, settings: Settings) -> int:
    """Handler of ``callmood report``: write the CSV (and PNGs). 0 on success, 2 when
    ``--from`` is after ``--to``, an option given does not apply to the report or ``--out``
    and ``--plots`` clash. With a date filter, says on stderr how many analysed calls it
    leaves out for having no start time."""
    from analytics.callreport import call_metrics, calls_to_draw, rank_by_customer_stress
    from analytics.export import PICTURE_INDEX_NAME, write_csv
    from analytics.queries import (
        ReportFilter,
        label_known,
        load_calls,
        load_filtered_segments,
        report_session,
        same_recording_calls,
        unanalysed_calls,
        undated_calls,
    )
    from analytics.reports import report_from_frames, round_for_export

    if args.date_from and args.date_to and args.date_from > args.date_to:
        print(f"callmood report: --from {args.date_from} is after --to {args.date_to}",
              file=sys.stderr)
        return 2
    unused = ignored_options(args)
    if unused:
        print(f"callmood report {args.kind}: {unused}", file=sys.stderr)
        return 2
    clash = clashing_paths(args, PICTURE_INDEX_NAME)
    if clash:
        print(f"callmood report {args.kind}: {clash}", file=sys.stderr)
        return 2
    bin_s: float = DEFAULT_BIN_S if args.bin_s is None else args.bin_s
    max_plots: int = DEFAULT_MAX_PLOTS if args.max_plots is None else args.max_plots
    # paths checked before the queries, so a mistake costs no report and keeps the old one
    if args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a folder: name the CSV file to write")
    if args.plots is not None:
        if args.plots.exists() and not args.plots.is_dir():
            raise ConfigError(f"--plots {args.plots} is a file: name a folder for the PNGs")
        try:
            args.plots.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--plots {args.plots}: cannot make the folder: "
                              f"{e.strerror or e}") from e
    where = ReportFilter(date_from=args.date_from, date_to=args.date_to, agent=args.agent,
                         team=args.team, timezone=settings.timezone)
    with report_session(settings.database_url) as session:
        calls = load_calls(session, where)
        segments = load_filtered_segments(session, where)
        undated = undated_calls(session, where)
        same_recording = same_recording_calls(session, where)
        unanalysed = unanalysed_calls(session, where)
        unknown = [f"{option} {value!r}" for option, column, value in
                   (("--agent", "agent_id", args.agent), ("--team", "team", args.team))
                   if value is not None and not label_known(session, column, value)]
    report = report_from_frames(args.kind, calls, segments, bin_s=bin_s,
                                period=cast(Period, args.period or "all"),
                                by=cast(GroupBy, args.by or "agent"), timezone=settings.timezone)
    try:
        path = write_csv(round_for_export(report), args.out, excel_bom=args.bom)
    except OSError as e:
        raise _write_error(f"--out {args.out}: cannot write it: {e.strerror or e}", e) from e
    message = f"callmood report {args.kind}: {len(report)} rows -> {path}"
    if args.plots is not None:
        from analytics.export import replace_picture_index
        from analytics.plots import write_call_pngs

        chosen = calls_to_draw(rank_by_customer_stress(call_metrics(calls, segments)),
                               segments, max_plots)
        try:
            pictures = write_call_pngs(chosen, segments[segments["call"].isin(chosen["call"])],
                                       args.plots, bin_s=bin_s, timezone=settings.timezone)
            stale = replace_picture_index(args.plots, pictures)
        except OSError as e:   # a full disk, a folder made read-only meanwhile
            raise _write_error(f"--plots {args.plots}: cannot write the PNGs: "
                               f"{e.strerror or e} ({path} was written)", e) from e
        message += (f"; {len(pictures)} PNG in {args.plots}, listed most stressed first in "
                    f"{PICTURE_INDEX_NAME}"
                    + (f" ({len(stale)} of the previous report's removed)" if stale else ""))
    print(message, file=sys.stderr)
    label = "agent_id" if (args.by or "agent") == "agent" else "team"
    unlabelled = int(calls[label].isna().sum()) if args.kind == "agents" else 0
    if unlabelled:
        # the empty group reads as nobody's: say whose calls it holds (a review)
        print(f"callmood report agents: {unlabelled} analysed "
              + ("call has" if unlabelled == 1 else "calls have")
              + f" no {'agent id' if label == 'agent_id' else 'team'} and "
              + ("is" if unlabelled == 1 else "are") + " counted in the rows with an empty "
              "group (calls sent without it, and those the inbox scan, callmood run or "
              "callmood analyze register without --agent/--team; callmood relabel CALL_ID "
              "--agent A --team T labels a call without a new analysis)", file=sys.stderr)
    if unknown:
        # an empty report for a mistyped agent read as a quiet day (a review)
        print(f"callmood report {args.kind}: no call has {' or '.join(unknown)} (ids match "
              "exactly, case included; callmood report agents lists them)", file=sys.stderr)
    if unanalysed:
        failed = unanalysed.get("failed", 0)
        waiting = sum(unanalysed.values()) - failed
        parts = ([f"{failed} failed (callmood failures lists why)"] if failed else []) + (
            [f"{waiting} not analysed yet (pending or processing)"] if waiting else [])
        total = failed + waiting
        print(f"callmood report {args.kind}: {total} "
              + ("call" if total == 1 else "calls") + " of this selection "
              + ("holds" if total == 1 else "hold") + " no analysis and "
              + ("is" if total == 1 else "are") + " not in the report: " + ", ".join(parts),
              file=sys.stderr)
    if same_recording:
        print(f"callmood report {args.kind}: {same_recording} analysed "
              + ("call holds" if same_recording == 1 else "calls hold")
              + " a recording another call holds too and "
              + ("is" if same_recording == 1 else "are") + " left out, so each recording "
              "counts once (callmood calls names the call counted instead)", file=sys.stderr)
    if undated:
        # the CSV cannot show what it leaves out: a supervisor took the rows for every call
        print(f"callmood report {args.kind}: {undated} analysed "
              + ("call has no start time and is" if undated == 1 else
                 "calls have no start time and are")
              + " left out of --from/--to (calls registered by the inbox scan, callmood "
                "analyze or callmood run carry none); a report without --from/--to lists them",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    # ``python -m analytics.cli [report] KIND ...`` is ``callmood report KIND ...`` (it ran
    # nothing and exited 0: a nightly cron on it "succeeded" without writing a report)
    from worker.cli import main

    arguments = sys.argv[1:]
    sys.exit(main(["report", *arguments[arguments[:1] == ["report"]:]]))
