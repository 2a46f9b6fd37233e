"""``python -m bench status``: ``callmood status``'s count of the calls done and failed since
a given instant, by index.

Stores ``--calls`` calls finished over ``--days`` days (a tenth failed) in a fresh SQLite file
(or the empty PostgreSQL database ``--postgres-url``, vacuumed after each change, as
autovacuum would), times ``worker.store.counts_processed_since`` over the last 24 hours (what
``status`` asks from the site's midnight; median of ``--repeats``) with the schema's (status,
processed_at) index, then with the status-only index migration 0008 replaced, and prints both
and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import insert, text

from bench.recount_bench import median_ms, run_main, vacuum
from worker import db, store
from worker.schema import Call, utcnow


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
    composite, counts = median_ms(url, lambda s: store.counts_processed_since(s, since),
                                  repeats)
    with db.session_scope(url) as session:
        session.execute(text("CREATE INDEX ix_bench_status ON calls (status)"))
        session.execute(text("DROP INDEX ix_calls_status_processed_at"))
    vacuum(url)
    status_only, counts_again = median_ms(
        url, lambda s: store.counts_processed_since(s, since), repeats)
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

    def measured(url: str) -> str:
        composite, status_only, today = measure(url, args.calls, args.days, args.repeats)
        return (f"{args.calls} calls over {args.days} days ({today} in the last 24 h): "
                f"done/failed today {composite:.1f} ms with (status, processed_at), "
                f"{status_only:.1f} ms with status alone ({status_only / composite:.1f}x)")

    return run_main("status", measured, args.postgres_url)


if __name__ == "__main__":
    sys.exit(main())
