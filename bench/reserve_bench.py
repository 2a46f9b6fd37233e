"""``python -m bench reserve``: what a producer's database side costs a call.

``callmood enqueue``, the inbox scan, ``retry`` and recovery decide what to send in chunks of
``worker.enqueue.SUBMIT_CHUNK`` calls, one transaction a chunk (``worker.store.reserve_all``).
This reserves ``--calls`` new calls so, then the same requests again (duplicates: nothing
sent), then, with every call failed, their retries, in a fresh SQLite file (or the empty
PostgreSQL database ``--postgres-url``), and prints for each the statements sent a call and
the milliseconds a call, measured in one run. Publishing to the broker is not included
(``python -m bench broker`` times that).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, update
from sqlalchemy.engine import Engine

from bench.recount_bench import run_main
from worker import db, store
from worker.enqueue import SUBMIT_CHUNK
from worker.schema import Call


@dataclass(frozen=True)
class ReserveCost:
    """One pass of reserving every call, a chunk a transaction."""

    name: str
    calls: int
    statements: int
    seconds: float
    sent: int

    def text(self) -> str:
        return (f"{self.name}: {self.statements / self.calls:.2f} statements and "
                f"{1000 * self.seconds / self.calls:.2f} ms a call, {self.sent} sent")


@contextmanager
def counted_statements() -> Iterator[list[str]]:
    """The SQL statements any engine sends while the block runs, in order (an executemany is
    one: one round trip)."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def _pass(url: str, name: str, requests: Sequence[store.CallRequest]) -> ReserveCost:
    sent = 0
    began = time.perf_counter()
    with counted_statements() as statements:
        for start in range(0, len(requests), SUBMIT_CHUNK):
            with db.session_scope(url) as session:
                reserved = store.reserve_all(session, requests[start:start + SUBMIT_CHUNK])
                sent += sum(r.send for r in reserved)
    return ReserveCost(name, len(requests), len(statements), time.perf_counter() - began, sent)


def measure(url: str, calls: int) -> list[ReserveCost]:
    """New calls, the same again, then their retries (every call failed first), at ``url``
    (migrated here)."""
    db.upgrade(url)
    requests = [store.CallRequest(uri=f"/calls/{i}.wav", external_call_id=f"bench-{i:07d}",
                                  agent_id=f"agent-{i % 20:02d}", team=f"team-{i % 4}")
                for i in range(calls)]
    costs = [_pass(url, "new", requests), _pass(url, "duplicates", requests)]
    with db.session_scope(url) as session:
        session.execute(update(Call).values(status="failed", failure_reason="bench",
                                            processed_at=datetime.now(UTC)))
    with db.session_scope(url) as session:
        retries = [store.RetryRequest.of(c) for c in store.list_calls(session, status="failed")]
    costs.append(_pass(url, "retries", retries))
    db.dispose_engines()
    return costs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench reserve", description=__doc__)
    parser.add_argument("--calls", type=int, default=5000, help="calls reserved (5000)")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database instead of SQLite")
    args = parser.parse_args(argv)

    def measured(url: str) -> str:
        return (f"{args.calls} calls in chunks of {SUBMIT_CHUNK}; "
                + "; ".join(cost.text() for cost in measure(url, args.calls)))

    return run_main("reserve", measured, args.postgres_url)


if __name__ == "__main__":
    sys.exit(main())
