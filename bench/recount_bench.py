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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from worker import db, store
from worker.schema import Call

T = TypeVar("T")


def vacuum(url: str, tables: Sequence[str] = ("calls",)) -> None:
    """VACUUM ANALYZE ``tables`` on PostgreSQL (as autovacuum would leave them: visibility map
    set, statistics taken); SQLite: nothing."""
    if url.startswith("postgresql"):
        engine = create_engine(url, isolation_level="AUTOCOMMIT")   # VACUUM runs outside one
        with engine.connect() as c:
            for table in tables:
                c.execute(text(f"VACUUM ANALYZE {table}"))
        engine.dispose()


def median_ms(url: str, work: Callable[[Session], T], repeats: int) -> tuple[float, T]:
    """The median ms of ``work`` over ``repeats`` sessions at ``url`` (each its own
    transaction), and what its last run returned."""
    times = []
    for _ in range(repeats):
        with db.session_scope(url) as session:
            began = time.perf_counter()
            result = work(session)
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000.0, result


def run_main(name: str, measure_text: Callable[[str], str], postgres_url: str | None) -> int:
    """Run ``measure_text`` on ``postgres_url`` or a fresh SQLite file of a temporary folder,
    and print what it says, prefixed with the database's kind."""
    with tempfile.TemporaryDirectory(prefix=f"callmood-{name}-bench-") as tmp:
        url = postgres_url or f"sqlite:///{Path(tmp) / f'{name}.sqlite'}"
        text_out = measure_text(url)
    print(f"{make_url(url).get_backend_name()}: {text_out}")
    return 0


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
    covering, _ = median_ms(url, lambda s: store.refresh_batch_counts(s, batch_id), repeats)
    with db.session_scope(url) as session:
        session.execute(text("CREATE INDEX ix_bench_batch_id ON calls (batch_id)"))
        session.execute(text("DROP INDEX ix_calls_batch_id_status"))
    vacuum(url)
    batch_only, _ = median_ms(url, lambda s: store.refresh_batch_counts(s, batch_id), repeats)
    db.dispose_engines()
    return covering, batch_only


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench recount", description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000, help="calls in the batch (50000)")
    parser.add_argument("--repeats", type=int, default=15, help="recounts timed (15)")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database instead of SQLite")
    args = parser.parse_args(argv)

    def measured(url: str) -> str:
        covering, batch_only = measure(url, args.calls, args.repeats)
        return (f"{args.calls} calls in one batch: recount {covering:.1f} ms with (batch_id, "
                f"status), {batch_only:.1f} ms with batch_id alone "
                f"({batch_only / covering:.1f}x)")

    return run_main("recount", measured, args.postgres_url)


if __name__ == "__main__":
    sys.exit(main())
