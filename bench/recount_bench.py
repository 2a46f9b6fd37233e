"""``python -m bench recount``: the batch recount every finished call makes, by index.

Stores ``--calls`` calls of one batch (half done, a tenth failed, the rest pending) in a
fresh SQLite file (or the empty PostgreSQL database ``--postgres-url``, vacuumed after each
change, as autovacuum would), times ``worker.store.refresh_batch_counts`` (median of
``--repeats``) with the schema's (batch_id, status) index, then with the batch_id-only index
migration 0004 replaced, and prints both and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from worker import db, store
from worker.schema import Call


def vacuum(url: str) -> None:
    """VACUUM ANALYZE the calls table on PostgreSQL (as autovacuum would); SQLite: nothing."""
    if url.startswith("postgresql"):
        with create_engine(url, isolation_level="AUTOCOMMIT").connect() as c:
            c.execute(text("VACUUM ANALYZE calls"))


def _median_ms(url: str, batch_id: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with db.session_scope(url) as session:
            began = time.perf_counter()
            store.refresh_batch_counts(session, batch_id)
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000.0


def measure(url: str, calls: int, repeats: int) -> tuple[float, float]:
    """(ms with the (batch_id, status) index, ms with batch_id alone) for one batch of
    ``calls`` calls stored at ``url`` (migrated here)."""
    db.upgrade(url)
    statuses = (["done"] * (calls // 2) + ["failed"] * (calls // 10)
                + ["pending"] * (calls - calls // 2 - calls // 10))
    with db.session_scope(url) as session:
        batch_id = store.create_batch(session, "bench").id
        session.execute(insert(Call), [
            {"external_call_id": f"bench-{i}", "source_uri": f"/in/{i}.wav",
             "source_uri_sha256": f"{i:064x}", "status": status, "attempts": 0,
             "call_metadata": {}, "batch_id": batch_id} for i, status in enumerate(statuses)])
    vacuum(url)
    covering = _median_ms(url, batch_id, repeats)
    with db.session_scope(url) as session:
        session.execute(text("CREATE INDEX ix_bench_batch_id ON calls (batch_id)"))
        session.execute(text("DROP INDEX ix_calls_batch_id_status"))
    vacuum(url)
    batch_only = _median_ms(url, batch_id, repeats)
    db.dispose_engines()
    return covering, batch_only


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench recount", description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000, help="calls in the batch (50000)")
    parser.add_argument("--repeats", type=int, default=15, help="recounts timed (15)")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database instead of SQLite")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="callmood-recount-bench-") as tmp:
        url = args.postgres_url or f"sqlite:///{Path(tmp) / 'recount.sqlite'}"
        covering, batch_only = measure(url, args.calls, args.repeats)
    print(f"{args.calls} calls in one batch, {make_url(url).get_backend_name()}: recount "
          f"{covering:.1f} ms with (batch_id, status), {batch_only:.1f} ms with batch_id alone "
          f"({batch_only / covering:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
