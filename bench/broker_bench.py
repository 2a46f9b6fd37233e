"""``python -m bench broker``: what delivered rows cost the embedded (SQLite) broker, and what
one recovery run gives back.

Kombu's SQLAlchemy transport keeps a row for every message it ever delivered (it records no
ack). This fills a fresh SQLite broker with ``--rows`` delivered analysis messages, as weeks
of calls without recovery leave them (``--recent-share`` of them delivered within the last
hour, for calls that are done; the rest older than any worker can hold a message), then
times an idle worker's poll of the empty queue (the transport polls every 0.2 s) before and
after one :func:`worker.recovery.recover` run, and the run itself. Figures are measured in
this one run and printed as ratios; nothing is asserted.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from queue import Empty
from typing import Any

from sqlalchemy import func, insert, select

from worker.celery_app import (
    ANALYZE_TASK_NAME,
    DATABASE_BROKER_MAX_HELD_S,
    SQLA_BROKER_POLLING_INTERVAL_S,
    TASK_QUEUE,
    make_celery,
    utc_naive_now,
)
from worker.db import make_engine, upgrade
from worker.recovery import recover
from worker.schema import Call
from worker.settings import Settings

INSERT_CHUNK_ROWS = 20_000


def _payload(call_id: str) -> str:
    """A Kombu message of the analysis task as Celery writes it (about 1.2 KB)."""
    body = json.dumps([[], {"call_id": call_id, "uri": f"file:///recordings/{call_id}.wav",
                            "agent_id": "agent-07", "team": "team-1"},
                       {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return json.dumps({
        "body": base64.b64encode(body.encode()).decode(), "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": ANALYZE_TASK_NAME, "id": f"task-{call_id}",
                    "eta": None, "expires": None, "retries": 0, "timelimit": [186.0, 126.0],
                    "root_id": f"task-{call_id}", "parent_id": None, "argsrepr": "()",
                    "kwargsrepr": body[:200], "origin": "gen1234@producer",
                    "ignore_result": True},
        "properties": {"correlation_id": f"task-{call_id}", "reply_to": "0" * 36,
                       "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": TASK_QUEUE},
                       "delivery_tag": "0" * 36}})


def _poll_ms(channel: Any, polls: int) -> float:
    """Mean wall time of the transport's own poll of the empty main queue, in ms."""
    began = time.perf_counter()
    for _ in range(polls):
        try:
            channel._get(TASK_QUEUE)
        except Empty:
            pass
    return (time.perf_counter() - began) / polls * 1000.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench broker", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000,
                        help="delivered rows to start from (100000)")
    parser.add_argument("--recent-share", type=float, default=0.1,
                        help="share delivered in the last hour, of done calls (0.1)")
    parser.add_argument("--polls", type=int, default=20, help="polls timed each way (20)")
    args = parser.parse_args(argv)
    recent = int(args.rows * args.recent_share)
    with tempfile.TemporaryDirectory(prefix="callmood-broker-bench-") as tmp:
        settings = Settings.from_env({"CALLMOOD_DATA_DIR": tmp,
                                      "CALLMOOD_INPUT_ROOTS": str(Path(tmp))})
        upgrade(settings.database_url)
        app = make_celery(settings, set_as_current=False)
        try:
            with app.connection_for_write() as connection:
                channel = connection.default_channel
                queue_id = channel._get_or_create(TASK_QUEUE).id
                messages = channel.message_cls.__table__
                now = utc_naive_now()  # how callmood's workers make Kombu stamp a delivery
                old = now - timedelta(seconds=DATABASE_BROKER_MAX_HELD_S + 3600)
                began = time.perf_counter()
                for start in range(0, args.rows, INSERT_CHUNK_ROWS):
                    rows = [{"payload": _payload(f"bench-{i:07d}"), "visible": False,
                             "timestamp": now - timedelta(seconds=600) if i < recent else old,
                             "queue_id": queue_id, "version": 2}
                            for i in range(start, min(args.rows, start + INSERT_CHUNK_ROWS))]
                    channel.session.execute(insert(messages), rows)
                channel.session.commit()
                done_at = datetime.now(UTC) - timedelta(seconds=300)
                with make_engine(settings.database_url).begin() as calls_connection:
                    for start in range(0, recent, INSERT_CHUNK_ROWS):
                        calls_connection.execute(insert(Call), [{
                            "external_call_id": f"bench-{i:07d}",
                            "source_uri": f"file:///recordings/bench-{i:07d}.wav",
                            "status": "done", "attempts": 1, "processed_at": done_at,
                            "enqueued_at": done_at - timedelta(seconds=600)}
                            for i in range(start, min(recent, start + INSERT_CHUNK_ROWS))])
                print(f"filled {args.rows} delivered rows ({recent} of done calls from the "
                      f"last hour) in {time.perf_counter() - began:.1f} s", file=sys.stderr)
                before_ms = _poll_ms(channel, args.polls)
                began = time.perf_counter()
                report = recover(settings, min_age_s=0, app=app)
                recover_s = time.perf_counter() - began
                left = int(channel.session.execute(
                    select(func.count()).select_from(messages)).scalar_one())
                channel.session.commit()
                after_ms = _poll_ms(channel, args.polls)
        finally:
            app.close()
    interval_ms = SQLA_BROKER_POLLING_INTERVAL_S * 1000.0
    print(f"embedded SQLite broker, {args.rows} delivered rows")
    print(f"idle poll before recovery  {before_ms:8.1f} ms  ({before_ms / interval_ms:.0%} of "
          f"the {interval_ms:.0f} ms between an idle worker's polls)")
    print(f"recovery run               {recover_s:8.1f} s   (deleted {report.deleted} rows, "
          f"{left} left; the census pause is 1 s of it)")
    print(f"idle poll after recovery   {after_ms:8.1f} ms  ({after_ms / interval_ms:.0%})")
    print(f"poll before / after        {before_ms / after_ms:8.1f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
