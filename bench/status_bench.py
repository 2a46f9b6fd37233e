"""``python -m bench status``: ``callmood status``'s "done and failed today" count, by index.

Stores ``--calls`` calls finished over ``--days`` days (one day's share of them today; a
tenth failed) in a fresh SQLite file (or the empty PostgreSQL database ``--postgres-url``,
vacuumed after each change, as autovacuum would), times
``worker.store.counts_processed_since`` from midnight (median of ``--repeats``) with the
schema's (status, processed_at) index, then with the status-only index migration 0008
replaced, and prints both and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from bench.recount_bench import vacuum
from worker import db, store
from worker.schema import Call, utcnow


def _median_ms(url: str, since: datetime, repeats: int) -> tuple[float, dict[str, int]]:
    times = []
    counts: dict[str, int] = {}
    for _ in range(repeats):
        with db.session_scope(url) as session:
            began = time.perf_counter()
            counts = store.counts_processed_since(session, since)
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000.0, counts


def measure(url: str, calls: int, days: int, repeats: int) -> tuple[float, float, int]:
    """(ms with (status, processed_at), ms with status alone, calls counted) for ``calls``
    calls finished evenly over the last ``days`` days, stored at ``url`` (migrated here)."""
    db.upgrade(url)
    now = utcnow()
    step = timedelta(days=days) / calls
    with db.session_scope(url) as session:
        session.execute(insert(Call), [
            {"external_call_id": f"bench-{i}", "source_uri": f"/in/{i}.wav",
             "source_uri_sha256": f"{i:064x}", "status": "failed" if i % 10 == 0 else "done",
             "attempts": 1, "call_metadata": {}, "processed_at": now - i * step}
            for i in range(calls)])
    vacuum(url)
    since = now - timedelta(days=1)
    composite, counts = _median_ms(url, since, repeats)
    with db.session_scope(url) as session:
        session.execute(text("CREATE INDEX ix_bench_status ON calls (status)"))
        session.execute(text("DROP INDEX ix_calls_status_processed_at"))
    vacuum(url)
    status_only, counts_again = _median_ms(url, since, repeats)
    if counts_again != counts:
        raise AssertionError(f"the two indexes counted {counts} and {counts_again}")
    db.dispose_engines()
    return composite, status_only, sum(counts.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench status", description=__doc__)
    parser.add_argument("--calls", type=int, default=300_000,
                        help="calls finished over the days (300000)")
    parser.add_argument("--days", type=int, default=30, help="days they finished over (30)")
    parser.add_argument("--repeats", type=int, default=15, help="counts timed (15)")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database instead of SQLite")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="callmood-status-bench-") as tmp:
        url = args.postgres_url or f"sqlite:///{Path(tmp) / 'status.sqlite'}"
        composite, status_only, today = measure(url, args.calls, args.days, args.repeats)
    print(f"{args.calls} calls over {args.days} days ({today} in the last 24 h), "
          f"{make_url(url).get_backend_name()}: done/failed today {composite:.1f} ms with "
          f"(status, processed_at), {status_only:.1f} ms with status alone "
          f"({status_only / composite:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
