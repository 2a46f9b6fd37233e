"""``python -m bench plans --postgres-url URL``: PostgreSQL's plans for a report's segment
read, at the default statistics target of ``segments.call_id`` and at migration 0009's.

Fills the empty database ``URL`` (migrated to head here) server-side with ``--calls`` analysed
calls spread evenly over ``--days`` days, ``--segments`` segments each, stored call by call as
the worker stores them, then for each target: ANALYZE, PostgreSQL's estimate of the distinct
``call_id``, and the plan and execution time (``EXPLAIN ANALYZE``, best of ``--repeats``) of
the query ``analytics.queries.load_filtered_segments`` sends for one day, one week and 30
days. Printed side by side, measured in one run; the table is left at 0009's target. The
1 M-call default takes some 10 minutes to fill and about 4 GB of disk.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from sqlalchemy import text
from sqlalchemy.engine import make_url

from analytics.queries import ReportFilter, filtered_segments_query
from bench.recount_bench import vacuum
from worker import db

FIRST_DAY: Final[date] = date(2026, 1, 5)
SCOPES: Final[tuple[tuple[str, int], ...]] = (("one day", 1), ("one week", 7), ("30 days", 30))
MIGRATION_TARGET: Final[int] = 1000
"""segments.call_id's statistics target after migration 0009."""


@dataclass(frozen=True)
class PlanTiming:
    scope: str
    target: int
    """The column's statistics target (-1: the server's default_statistics_target)."""
    estimate: float
    """The distinct segments.call_id PostgreSQL's statistics give (pg_stats.n_distinct)."""
    join: str
    ms: float


def populate(url: str, calls: int, segments: int, days: int) -> None:
    """``calls`` done calls started evenly over ``days`` days from FIRST_DAY, ``segments``
    segments each, inserted call by call (ids 1..calls on the empty database)."""
    with db.make_engine(url).begin() as c:
        c.execute(text(
            "INSERT INTO calls (external_call_id, source_uri, source_uri_sha256, agent_id, "
            "team, started_at, duration_s, channels, sample_rate, status, attempts, claims, "
            "model_version, processed_at, metadata) "
            "SELECT 'bench-' || lpad(g::text, 8, '0'), '/calls/' || g || '.wav', "
            "md5(g::text) || md5(g::text), 'agent-' || lpad((g % 20)::text, 2, '0'), "
            "'team-' || (g % 4), CAST(:first AS timestamptz) + (g - 1) * (:days * "
            "interval '1 day') / :calls, 180, 2, 8000, 'done', 1, 1, 'bench', now(), '{}' "
            "FROM generate_series(1, :calls) AS g ORDER BY g"),
            {"first": f"{FIRST_DAY.isoformat()}T00:00:00+00:00", "days": days, "calls": calls})
        # LATERAL: the inner series runs once per call, so rows come out call by call
        c.execute(text(
            "INSERT INTO segments (call_id, channel, role, start_s, end_s, emotion, p_angry, "
            "p_disgust, p_fear, p_happy, p_neutral, p_sad, p_surprise, confidence, "
            "model_version) "
            "SELECT c.id, k % 2, CASE WHEN k % 2 = 0 THEN 'agent' ELSE 'customer' END, "
            "k * 4.0, k * 4.0 + 3, 'neutral', 0.1, 0.05, 0.05, 0.1, 0.5, 0.1, 0.1, 0.5, 'bench' "
            "FROM calls AS c CROSS JOIN LATERAL generate_series(0, :last - 1 + 0 * c.id) AS k"),
            {"last": segments})


def _explained(url: str, sql: str, repeats: int) -> tuple[str, float]:
    """(the first join node of the plan, the best execution time in ms)."""
    best, join = float("inf"), ""
    with db.make_engine(url).connect() as c:
        for _ in range(repeats):
            lines = [str(r[0]) for r in c.exec_driver_sql(
                f"EXPLAIN (ANALYZE, TIMING OFF) {sql}")]
            joins = [name for line in lines
                     for name in ("Nested Loop", "Hash Join", "Merge Join") if name in line]
            join = joins[0] if joins else "none"
            best = min(best, float(lines[-1].split(":")[1].split()[0]))
    return join, best


def measure(url: str, calls: int, segments: int, days: int,
            repeats: int) -> list[PlanTiming]:
    """Fill ``url`` (an empty PostgreSQL database) and time the reads at each target."""
    if make_url(url).get_backend_name() != "postgresql":
        raise SystemExit("python -m bench plans needs --postgres-url (PostgreSQL's planner)")
    db.upgrade(url)
    populate(url, calls, segments, days)
    timings: list[PlanTiming] = []
    engine = db.make_engine(url)
    first = FIRST_DAY + timedelta(days=5)
    for target in (-1, MIGRATION_TARGET):
        with engine.begin() as c:
            c.exec_driver_sql(f"ALTER TABLE segments ALTER COLUMN call_id SET STATISTICS {target}")
        vacuum(url, ("segments", "calls"))
        with engine.connect() as c:
            n_distinct, rows = c.execute(text(
                "SELECT n_distinct, reltuples FROM pg_stats JOIN pg_class ON relname = "
                "tablename WHERE tablename = 'segments' AND attname = 'call_id'")).one()
            # a negative n_distinct is a share of the rows (it grows with the table)
            estimate = float(n_distinct) if n_distinct > 0 else -float(n_distinct) * rows
        for scope, length in SCOPES:
            query = filtered_segments_query(ReportFilter(
                date_from=first, date_to=first + timedelta(days=length - 1)))
            sql = str(query.compile(bind=engine, compile_kwargs={"literal_binds": True}))
            join, ms = _explained(url, sql, repeats)
            timings.append(PlanTiming(scope, target, estimate, join, ms))
    db.dispose_engines()
    return timings


def format_table(timings: Sequence[PlanTiming], calls: int) -> str:
    by_scope = {(t.scope, t.target): t for t in timings}
    default, migrated = (next(t for t in timings if t.target == target)
                         for target in (-1, MIGRATION_TARGET))
    lines = [f"distinct call_id estimated: {default.estimate:,.0f} at the default target, "
             f"{migrated.estimate:,.0f} at {MIGRATION_TARGET} (true: {calls:,})",
             f"{'scope':<10} {'default target':>26} {'target ' + str(MIGRATION_TARGET):>26}"
             f" {'ratio':>7}"]
    for scope, _ in SCOPES:
        old, new = by_scope[(scope, -1)], by_scope[(scope, MIGRATION_TARGET)]
        lines.append(f"{scope:<10} {old.join:>14} {old.ms:>8.1f} ms {new.join:>14} "
                     f"{new.ms:>8.1f} ms {old.ms / new.ms:>6.1f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench plans", description=__doc__)
    parser.add_argument("--postgres-url", required=True, help="an empty PostgreSQL database")
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls (1000000)")
    parser.add_argument("--segments", type=int, default=20, help="segments a call (20)")
    parser.add_argument("--days", type=int, default=365, help="days the calls span (365)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each read (3)")
    args = parser.parse_args(argv)
    timings = measure(args.postgres_url, args.calls, args.segments, args.days, args.repeats)
    print(f"postgresql, {args.calls} calls x {args.segments} segments over {args.days} days")
    print(format_table(timings, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
