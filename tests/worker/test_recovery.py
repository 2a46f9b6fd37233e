"""Recovery of calls a Redis broker lost, and of messages stranded in its unacked hash.

The pure decisions on hand-built messages; then a real redis-server and PostgreSQL, where a
message is taken out of the queue (as a Redis restart between BRPOP and HSET does), one is
parked in the unacked hash with an old delivery time (a worker that lost its connection
mid-task) and one with a fresh one (a worker busy with it): recovery sends the first again,
restores the second, leaves the third, and a real worker then analyses each exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.worker.prod_support import (
    call_rows,
    callmood_env,
    celery_worker,
    fresh_redis_db,
    make_recordings,
    segment_stats,
    tiny_model,
    wait_final,
)
from worker import db
from worker.celery_app import (
    ANALYZE_TASK_NAME,
    CONTROL_QUEUE,
    RECOVERY_TASK_NAME,
    TASK_HARD_TIME_LIMIT_S,
    TASK_QUEUE,
    BrokerCensus,
    BrokerMessage,
    beat_schedule,
    broker_census,
    make_celery,
    read_task_message,
)
from worker.enqueue import enqueue
from worker.recovery import (
    CallState,
    lost_calls,
    plan_delivered,
    recover,
    split_stuck,
    stranded_messages,
    unclaimed_messages,
)
from worker.settings import PACKAGE_DIR, Settings, get_settings

# --------------------------------------------------------------------------- pure decisions


def _held(tag: str, delivered_at_s: float, hard_limit_s: float | None = 100.0,
          eta_s: float | None = None, call_id: str = "C") -> BrokerMessage:
    return BrokerMessage(call_id, tag, delivered_at_s, eta_s, hard_limit_s)


def test_stranded_means_past_its_own_hard_limit_plus_the_margin() -> None:
    now = 10_000.0
    messages = [
        _held("old", delivered_at_s=now - 161),             # 100 s limit + 60 s margin passed
        _held("young", delivered_at_s=now - 159),           # not yet
        # a countdown retry may wait a whole other task's limit (1000 s) for a pool process
        _held("countdown", delivered_at_s=now - 2000, eta_s=now - 1100),
        _held("countdown-late", delivered_at_s=now - 2000, eta_s=now - 1200),
        _held("default", delivered_at_s=now - 1059, hard_limit_s=None),  # app default 1000 s
        BrokerMessage("C", "no-time", None),                # no delivery time: left alone
    ]
    found = stranded_messages(messages, now, margin_s=60.0, default_hard_limit_s=1000.0)
    assert [m.delivery_tag for m in found] == ["old", "countdown-late"]
    later = stranded_messages(messages, now + 100, margin_s=60.0, default_hard_limit_s=1000.0)
    assert [m.delivery_tag for m in later] == ["old", "young", "countdown", "countdown-late",
                                               "default"]


def test_unclaimed_means_delivered_past_the_margin_and_no_worker_processing_its_call() -> None:
    now = 10_000.0

    def held(tag: str, age_s: float, call_id: str | None = "C", eta_s: float | None = None,
             task: str = ANALYZE_TASK_NAME) -> BrokerMessage:
        return BrokerMessage(call_id, tag, now - age_s, eta_s, 1000.0, task)

    messages = [
        held("forgotten", 61),                           # pending 61 s after delivery
        held("young", 59),                               # may be starting now
        held("running", 600, call_id="R"),               # its worker claimed it
        held("countdown", 600, eta_s=now - 100),         # a retry: its worker holds it until due
        held("no-id", 600, call_id=None),                # unreadable: the hard-limit rule's
        held("control", 600, task="callmood.recover_lost"),
        BrokerMessage("C", "no-time", None, None, None, ANALYZE_TASK_NAME),
    ]
    found = unclaimed_messages(messages, now, frozenset({"R"}), margin_s=60.0)
    assert [m.delivery_tag for m in found] == ["forgotten"]
    later = unclaimed_messages(messages, now + 2, frozenset(), margin_s=60.0)
    assert [m.delivery_tag for m in later] == ["forgotten", "young", "running"]


def test_lost_calls_are_those_no_census_saw() -> None:
    first = BrokerCensus(queued=(BrokerMessage("A"), BrokerMessage(None)),
                         unacked=(BrokerMessage("B", "t1", 1.0),))
    second = BrokerCensus(queued=(), unacked=(BrokerMessage("C", "t2", 2.0),))
    # C was between BRPOP and HSET during the first census: the second one saw it.
    assert lost_calls(["D", "A", "C", "B", "E"], [first, second]) == ["D", "E"]
    assert lost_calls([], [first]) == []


def test_calls_claimed_repeatedly_are_failed_not_sent_again() -> None:
    assert split_stuck(["A", "B", "C"], {"B": 2, "C": 1}) == (["A", "C"], ["B"])
    assert split_stuck([], {"B": 5}) == ([], [])


def test_database_broker_rows_sorted_into_live_restore_and_delete() -> None:
    """Kombu's SQLAlchemy transport keeps every delivered row, acked or not: only the age
    and the call tell a message a dead worker took from one that was acknowledged."""
    now = 100_000.0

    def row(tag: str, call_id: str | None, age_s: float, eta_s: float | None = None,
            task: str = ANALYZE_TASK_NAME) -> BrokerMessage:
        return BrokerMessage(call_id, tag, now - age_s, eta_s, 1000.0, task)

    delivered = [  # oldest first, as the census reads them
        row("acked-done", "DONE", 300),            # finished call: its row was acked
        row("old-run", "KILLED", 5000),            # an earlier run's row of the same call
        row("killed", "KILLED", 1400),             # past its 1000 s limit + 300 s margin
        row("retry-old", "RETRYING", 1400),        # acked when its retry was sent ...
        row("retry", "RETRYING", 700, eta_s=now - 690),  # ... and the retry's worker holds it
        row("forgotten", "FORGOTTEN", 180),        # taken, never claimed: the worker died
        row("starting", "STARTING", 5),            # taken a moment ago
        row("resent", "RESENT", 180),              # stale, but the call was sent since
        row("queued-again", "QUEUED", 180),        # stale, and a newer message waits
        row("stranger", "UNKNOWN", 180),           # a producer's send_task; its worker died
        row("rejected", "not an id", 180),         # no such call, and none could be made
        row("scan-old", None, 1400, task="callmood.nightly_scan"),
        row("scan", None, 10, task="callmood.nightly_scan"),
    ]
    t = now - 1400  # KILLED and RETRYING were claimed on delivery
    calls = {"DONE": CallState("done", now - 400, now - 290),
             "KILLED": CallState("processing", now - 9000, t + 1),
             "RETRYING": CallState("processing", now - 1500, t + 1),
             "FORGOTTEN": CallState("pending", now - 200, now - 200),
             "STARTING": CallState("pending", now - 200, now - 200),
             "RESENT": CallState("pending", now - 30, now - 30),
             "QUEUED": CallState("pending", now - 60, now - 60)}
    plan = plan_delivered(delivered, frozenset({"QUEUED"}), calls, now, margin_s=300.0,
                          unclaimed_margin_s=120.0)
    assert [m.delivery_tag for m in plan.live] == ["retry", "starting", "scan"]
    assert [m.delivery_tag for m in plan.restore] == ["killed", "forgotten", "stranger"]
    assert [m.delivery_tag for m in plan.delete] == [
        "acked-done", "old-run", "retry-old", "resent", "queued-again", "rejected", "scan-old"]
    # if the workers holding RETRYING and STARTING are gone, both rows are stale by then:
    # the retry's countdown plus a busy pool's (default) hard limit, plus its own, plus the
    # margin
    assert plan.repair_due_s == now - 690 + TASK_HARD_TIME_LIMIT_S + 1000 + 300
    # a pending call's row is stale 2 minutes after delivery if no worker claims its call
    starting = plan_delivered(delivered[6:7], frozenset(), calls, now, margin_s=300.0,
                              unclaimed_margin_s=120.0)
    assert [m.delivery_tag for m in starting.live] == ["starting"]
    assert starting.repair_due_s == now - 5 + 120
    # a call claimed long after its stale row was delivered got another message since
    reclaimed = dict(calls, KILLED=CallState("processing", now - 9000, now - 200))
    again = plan_delivered(delivered, frozenset({"QUEUED"}), reclaimed, now, margin_s=300.0,
                           unclaimed_margin_s=120.0)
    assert [m.delivery_tag for m in again.restore] == ["forgotten", "stranger"]
    # claimed twice and killed both times (its row outlives the hard limit's ack): not
    # restored a third time; recovery then finds the call lost and fails it as stuck
    stuck = dict(calls, KILLED=CallState("processing", now - 9000, t + 1, attempts=2))
    third = plan_delivered(delivered, frozenset({"QUEUED"}), stuck, now, margin_s=300.0,
                           unclaimed_margin_s=120.0)
    assert [m.delivery_tag for m in third.restore] == ["forgotten", "stranger"]
    assert "killed" in [m.delivery_tag for m in third.delete]
    assert plan_delivered([], frozenset(), {}, now).delete == ()


def test_read_task_message_reads_the_payload_and_headers() -> None:
    import base64

    body = base64.b64encode(json.dumps([[], {"call_id": "X-1", "uri": "/a.wav"}, {}]).encode())
    raw = json.dumps({"body": body.decode(), "properties": {"body_encoding": "base64"},
                      "headers": {"task": ANALYZE_TASK_NAME, "timelimit": [185.0, 125.0],
                                  "eta": "2026-01-01T00:00:10+00:00"}})
    message = read_task_message(raw, "tag-1", 5.0)
    assert message == BrokerMessage("X-1", "tag-1", 5.0, 1767225610.0, 185.0, ANALYZE_TASK_NAME)
    other = json.dumps({"body": "", "headers": {"task": "callmood.nightly_scan",
                                                "timelimit": [None, None]}})
    assert read_task_message(other, "t") == BrokerMessage(None, "t", task="callmood.nightly_scan")
    assert read_task_message("not json", "t").call_id is None
    assert read_task_message(json.dumps({"headers": {"task": ANALYZE_TASK_NAME},
                                         "body": "!!"})).call_id is None


def test_calls_awaiting_a_worker(callmood_settings: Settings) -> None:
    from datetime import timedelta

    from worker import store
    from worker.db import session_scope
    from worker.schema import utcnow

    db.upgrade(callmood_settings.database_url)
    now = utcnow()
    with session_scope(callmood_settings) as s:
        def call(external_id: str, status: str, sent_s_ago: float | None,
                 updated_s_ago: float = 0.0) -> None:
            row = store.register_call(s, store.CallRequest(uri="/x.wav", external_call_id=external_id))
            row.status = status
            row.enqueued_at = None if sent_s_ago is None else now - timedelta(seconds=sent_s_ago)
            s.flush()
            row.updated_at = now - timedelta(seconds=updated_s_ago)  # after onupdate's stamp
            s.flush()

        call("sent-long-ago", "pending", 600)
        call("sent-just-now", "pending", 10)          # its producer may still be publishing
        call("never-sent", "pending", None)           # registered by `callmood run` or a send that failed
        call("claimed-long-ago", "processing", 9000, updated_s_ago=9000)
        call("claimed-recently", "processing", 9000, updated_s_ago=60)  # a worker is on it
        call("finished", "done", 600)
        awaiting = store.calls_awaiting_worker(s, sent_before=now - timedelta(seconds=120),
                                               claimed_before=now - timedelta(seconds=4200))
        assert [c.external_call_id for c in awaiting] == ["sent-long-ago", "claimed-long-ago"]
        sent_long_ago = awaiting[0]
        as_read = store.CallSendState(sent_long_ago.id, sent_long_ago.status,
                                      sent_long_ago.attempts, None, None,
                                      sent_long_ago.enqueued_at)
        assert store.claim_resend(s, [as_read]) == [as_read]
        # a second recovery that read it at once finds it sent again: not sent twice
        assert store.claim_resend(s, [as_read]) == []
        again = store.calls_awaiting_worker(s, sent_before=now - timedelta(seconds=120),
                                            claimed_before=now - timedelta(seconds=4200))
        assert [c.external_call_id for c in again] == ["claimed-long-ago"]


def test_beat_recovers_on_redis_and_database_brokers(tmp_path: Path) -> None:
    base = Settings.from_env({"CALLMOOD_DATA_DIR": str(tmp_path)})
    assert "callmood-recover-lost" not in beat_schedule(base.replace(broker_url="memory://"))
    for broker_url in ("redis://127.0.0.1:6379/0", base.broker_url):  # base: embedded SQLite
        entry = beat_schedule(base.replace(broker_url=broker_url))["callmood-recover-lost"]
        assert entry["task"] == "callmood.recover_lost" and entry["schedule"] == 300.0
        assert entry["options"]["queue"] == CONTROL_QUEUE


def test_recover_on_the_in_memory_broker_says_which_brokers_it_is_for(
        callmood_env: Settings, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.cli import main

    monkeypatch.setenv("CALLMOOD_BROKER_URL", "memory://")
    get_settings.cache_clear()
    assert main(["db", "upgrade"]) == 0
    assert main(["recover", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: recovery is for a Redis or database broker" in err, err


# --------------------------------------------------------------------------- real servers

def test_a_stuck_call_that_finishes_before_recovery_marks_it_stays_done(
        tmp_path: Path, postgres_url: str, redis_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery reads a call claimed twice and never finished, with no message left, and
    fails it as stuck; its worker stores the analysis between that read and the mark (it
    was slow, not dead). The analysis stands, and the report does not count the call."""
    from datetime import timedelta

    from tests.audio_fixtures import fake_analysis
    from worker import store
    from worker.db import session_scope
    from worker.schema import utcnow

    db.upgrade(postgres_url)
    env = callmood_env(postgres_url, fresh_redis_db(redis_url, 10), tmp_path,
                       tiny_model(tmp_path / "model"), tmp_path / "data")
    settings = Settings.from_env(env)
    with session_scope(settings) as s:
        for call_id in ("SLOW", "STUCK"):
            call = store.register_call(s, store.CallRequest(uri="/calls/a.wav",
                                                            external_call_id=call_id))
            call.status, call.attempts = "processing", 2
            call.enqueued_at = utcnow() - timedelta(hours=3)
            s.flush()
            call.updated_at = utcnow() - timedelta(hours=3)
        slow_id = store.calls_by_external_id(s, ["SLOW"])["SLOW"].id
    real_lock_calls = store.lock_calls

    def lock_calls(session: object, call_ids: list[int]) -> dict[int, Any]:
        if slow_id in call_ids:  # its worker commits first, before the marks lock the rows
            with session_scope(settings) as other:
                store.save_analysis(other, slow_id, fake_analysis(2))
        return real_lock_calls(session, call_ids)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "lock_calls", lock_calls)   # as store.mark_all_failed calls it
    report = recover(settings, min_age_s=0)
    assert (report.lost, report.failed) == ((), ("STUCK",))
    rows = call_rows(postgres_url)
    assert (rows["SLOW"][0], rows["STUCK"][0]) == ("done", "failed")


@pytest.mark.slow
@pytest.mark.usefixtures("pipeline_importable")
def test_recovery_resends_lost_restores_stranded_and_leaves_busy_messages(
        tmp_path: Path, postgres_url: str, redis_url: str, callmood_corpora: Path) -> None:
    import redis

    broker = fresh_redis_db(redis_url, 9)
    inbox = tmp_path / "recordings"
    paths = make_recordings(inbox, callmood_corpora, 6)
    db.upgrade(postgres_url)
    env = callmood_env(postgres_url, broker, inbox, tiny_model(tmp_path / "model"),
                       tmp_path / "data")
    settings = Settings.from_env(env)
    ids = ["LOST", "STRANDED", "UNCLAIMED", "QUEUED", "BUSY", "RUNNING"]
    for call_id, path in zip(ids, paths, strict=True):
        assert enqueue(str(path), call_id=call_id, agent_id="a-1", settings=settings).sent
    # STUCK: claimed twice by workers that died on it, long ago, and no message left.
    from datetime import timedelta

    from worker import store
    from worker.db import session_scope
    from worker.schema import utcnow

    with session_scope(settings) as s:
        stuck = store.register_call(s, store.CallRequest(uri=str(paths[0]), external_call_id="STUCK",
                                                         agent_id="a-1"))
        stuck.status, stuck.attempts = "processing", 2
        stuck.enqueued_at = utcnow() - timedelta(hours=3)
        s.flush()
        stuck.updated_at = utcnow() - timedelta(hours=3)
        store.claim_for_processing(s, store.calls_by_external_id(s, ["RUNNING"])["RUNNING"].id)

    app = make_celery(settings)
    client = redis.Redis.from_url(broker)
    try:
        census = broker_census(app)
        assert census is not None and not census.unacked
        assert sorted(m.call_id or "" for m in census.queued) == sorted(ids)
        raw = {read_task_message(item).call_id: item for item in client.lrange(TASK_QUEUE, 0, -1)}
        # popped by a worker as redis went down (redis-py takes bytes; its stub says str)
        client.lrem(TASK_QUEUE, 1, raw["LOST"])  # type: ignore[arg-type]
        # STRANDED: delivered 15 minutes ago, its hard limit ~3 minutes: Kombu itself would
        # wait for its visibility timeout (8100 s). UNCLAIMED: delivered 3 minutes ago, its
        # call still pending: its worker forgot it. RUNNING: as old, but its worker claimed
        # it and may run until its hard limit. BUSY: delivered a second ago.
        for call_id, age_s in (("STRANDED", 900.0), ("UNCLAIMED", 180.0), ("RUNNING", 180.0),
                               ("BUSY", 1.0)):
            client.lrem(TASK_QUEUE, 1, raw[call_id])  # type: ignore[arg-type]
            message = json.loads(raw[call_id])
            info = message["properties"]["delivery_info"]
            tag = f"tag-{call_id}"
            client.hset("unacked", tag, json.dumps([message, info["exchange"],
                                                    info["routing_key"]]))
            client.zadd("unacked_index", {tag: time.time() - age_s})

        # Another app's message on the same Redis database, long unacked: not ours to touch.
        foreign = json.loads(raw["QUEUED"])
        foreign["headers"]["task"] = "billing.charge"
        client.hset("unacked", "tag-foreign", json.dumps([foreign, "billing", "billing"]))
        client.zadd("unacked_index", {"tag-foreign": time.time() - 100_000})

        cli_env = dict(env, PYTHONPATH=str(PACKAGE_DIR.parent))
        dry = subprocess.run([sys.executable, "-m", "worker.cli", "recover", "--dry-run",
                              "--min-age-s", "0"], env=cli_env, capture_output=True, text=True,
                             timeout=120, cwd=os.getcwd())
        assert dry.returncode == 0, dry.stderr
        assert "lost      LOST: would send again" in dry.stdout, dry.stdout
        assert "stranded  STRANDED: would restore to the queue" in dry.stdout, dry.stdout
        assert "stranded  UNCLAIMED: would restore to the queue" in dry.stdout, dry.stdout
        assert "stuck     STUCK: would fail" in dry.stdout, dry.stdout
        assert "1 lost, 2 stranded, 1 stuck (dry run: nothing changed)" in dry.stderr
        assert sorted(m.call_id or "" for m in broker_census(app).queued) == ["QUEUED"]  # type: ignore[union-attr]

        report = recover(settings, min_age_s=0)
        assert (report.lost, sorted(report.stranded), report.failed) == (
            ("LOST",), ["STRANDED", "UNCLAIMED"], ("STUCK",))
        assert call_rows(postgres_url)["STUCK"][0] == "failed"
        assert "stuck: claimed 2 times" in (call_rows(postgres_url)["STUCK"][1] or "")
        after = broker_census(app)
        assert after is not None
        assert sorted(m.call_id or "" for m in after.queued) == ["LOST", "QUEUED", "STRANDED",
                                                                 "UNCLAIMED"]
        assert sorted(m.call_id or "" for m in after.unacked) == ["BUSY", "RUNNING"]
        again = recover(settings, min_age_s=0)
        assert (again.lost, again.stranded) == ((), ())
        assert client.hexists("unacked", "tag-foreign")
    finally:
        client.close()
        app.close()

    log_path = tmp_path / "worker.log"
    with celery_worker(env, log_path, concurrency=1):
        rows = wait_final(postgres_url, ids[:4], timeout_s=90, log_path=log_path)
    assert all(rows[c][0] == "done" and rows[c][2] == 1 for c in ids[:4]), rows
    assert call_rows(postgres_url)["BUSY"][0] == "pending"  # its worker still has it
    assert call_rows(postgres_url)["RUNNING"][0] == "processing"
    total, distinct, per_call = segment_stats(postgres_url)
    assert total == distinct and all(per_call[c] >= 1 for c in ids[:3])


# --------------------------------------------------------------------------- embedded broker

def _broker_rows(broker_path: Path) -> list[tuple[int, bool, str | None]]:
    """(row id, visible, call id) of every message in a SQLite broker, oldest first."""
    import sqlite3

    with sqlite3.connect(broker_path) as c:
        rows = c.execute("SELECT id, visible, payload FROM kombu_message ORDER BY id").fetchall()
    return [(int(i), bool(v), read_task_message(p).call_id) for i, v, p in rows]


def _broker_row_payloads(broker_path: Path) -> list[tuple[int, str | None, float | None,
                                                          float | None, bool]]:
    """(row id, task, delivered at, eta, visible) of every message in a SQLite broker (times
    in epoch s; the delivery stamp read as UTC)."""
    import sqlite3
    from datetime import UTC, datetime

    with sqlite3.connect(broker_path) as c:
        rows = c.execute("SELECT id, payload, timestamp, visible FROM kombu_message "
                         "ORDER BY id").fetchall()
    out = []
    for row_id, payload, stamp, visible in rows:
        message = read_task_message(payload)
        delivered = (datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
                     if stamp else None)
        out.append((int(row_id), message.task, delivered, message.eta_s, bool(visible)))
    return out


def _age_delivered_rows(broker_path: Path, by_s: float) -> None:
    """Move the delivery time Kombu stamped on every delivered row ``by_s`` into the past."""
    import sqlite3
    from datetime import datetime, timedelta

    with sqlite3.connect(broker_path) as c:
        for row_id, stamp in c.execute(
                "SELECT id, timestamp FROM kombu_message WHERE visible = 0").fetchall():
            older = datetime.fromisoformat(stamp) - timedelta(seconds=by_s)
            c.execute("UPDATE kombu_message SET timestamp = ? WHERE id = ?",
                      (older.isoformat(sep=" "), row_id))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_row_delivered_again_since_the_census_is_not_restored_twice(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Two recoveries at once (beat's and a worker start's) both plan to restore a row: the
    first does, a worker takes it again, and the second must leave it to that worker. On
    the embedded SQLite broker and on a PostgreSQL one."""
    from worker.celery_app import (
        RUN_QUEUE_PREFIX,
        database_broker_rows,
        delete_delivered,
        fresh_broker_connections_per_child,
        restore_delivered,
    )

    env = {"CALLMOOD_DATA_DIR": str(tmp_path)}
    if backend == "postgres":
        env["CALLMOOD_BROKER_URL"] = "sqla+" + request.getfixturevalue("postgres_url")
    settings = Settings.from_env(env)
    app = make_celery(settings, set_as_current=False)
    try:
        app.send_task(ANALYZE_TASK_NAME, kwargs={"call_id": "C-1", "uri": "/c.wav"},
                      queue=TASK_QUEUE)
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            assert channel.basic_get(TASK_QUEUE) is not None  # a killed worker's, never acked
            (seen,) = broker_census(app).unacked  # type: ignore[union-attr]
            assert seen.call_id == "C-1"
            assert restore_delivered(app, [str(seen.delivery_tag)]) == [seen.delivery_tag]
            assert channel.basic_get(TASK_QUEUE) is not None  # a live worker takes it again
            assert restore_delivered(app, [str(seen.delivery_tag)]) == []
            assert delete_delivered(app, [str(seen.delivery_tag)]) == 0
            (again,) = broker_census(app).unacked  # type: ignore[union-attr]
            assert again.delivery_tag != seen.delivery_tag
            assert delete_delivered(app, [str(again.delivery_tag)]) == 1
            assert broker_census(app) == BrokerCensus(queued=(), unacked=())
            # the purge by age: rows delivered before the cut, waiting ones never
            for call_id in ("C-2", "C-3"):
                app.send_task(ANALYZE_TASK_NAME, kwargs={"call_id": call_id, "uri": "/c.wav"},
                              queue=TASK_QUEUE)
            assert channel.basic_get(TASK_QUEUE) is not None
            cut_s = time.time() + 60
            assert database_broker_rows(app, cut_s - 3600, prefixes=(RUN_QUEUE_PREFIX,)) == 0
            assert database_broker_rows(app, cut_s, prefixes=(RUN_QUEUE_PREFIX,)) == 1
            assert database_broker_rows(app, cut_s, prefixes=(RUN_QUEUE_PREFIX,),
                                        delete=True) == 1
            after = broker_census(app)
            assert after is not None and not after.unacked
            assert [m.call_id for m in after.queued] == ["C-3"]
    finally:
        app.close()
    # a pool process forgets the engines (and pooled connections) it inherited
    from kombu.transport.sqlalchemy import Channel

    assert Channel._engines
    fresh_broker_connections_per_child()
    assert not Channel._engines


@pytest.mark.slow
@pytest.mark.usefixtures("pipeline_importable")
def test_embedded_broker_restores_a_killed_workers_call_and_deletes_delivered_rows(
        tmp_path: Path, callmood_corpora: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The embedded default (SQLite database and broker) with a real worker killed outright
    (SIGKILL to its process group) in the middle of a 30-minute call: Kombu's SQLAlchemy
    transport leaves that message delivered for ever, and every acked one too. Recovery at
    the next ``callmood worker`` start restores it once no worker can still be running it; a
    fresh worker analyses it; the next recovery leaves the broker table empty."""
    import signal
    from datetime import timedelta

    import soundfile as sf

    from worker import store
    from worker.celery_app import worker_command
    from worker.cli import main
    from worker.db import session_scope
    from worker.schema import utcnow

    inbox = tmp_path / "recordings"
    paths = make_recordings(inbox, callmood_corpora, 3)
    audio, sample_rate = sf.read(paths[0], dtype="float32")
    long_path = inbox / "long.wav"
    repeats = (1800 * sample_rate // len(audio) + 1,) + (1,) * (audio.ndim - 1)
    sf.write(str(long_path), np.tile(audio, repeats), sample_rate, format="WAV", subtype="ULAW")
    database_url = f"sqlite:///{tmp_path / 'callmood.sqlite'}"
    broker_path = tmp_path / "broker.sqlite"
    db.upgrade(database_url)
    env = callmood_env(database_url, f"sqla+sqlite:///{broker_path}", inbox,
                       tiny_model(tmp_path / "model"), tmp_path / "data")
    env["TZ"] = "America/New_York"  # the workers' local time is not UTC
    settings = Settings.from_env(env)
    log_path = tmp_path / "worker.log"

    def start_worker() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log_file:
            return subprocess.Popen(
                worker_command(1, "INFO", TASK_QUEUE, f"killed-{os.getpid()}@%h",
                               env["CALLMOOD_BROKER_URL"]),
                env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    assert enqueue(str(paths[0]), call_id="DONE", agent_id="a-1", settings=settings).sent
    worker = start_worker()
    try:
        wait_final(database_url, ["DONE"], timeout_s=90, log_path=log_path)
        for call_id, path in (("LONG", long_path), ("NEXT-1", paths[1]), ("NEXT-2", paths[2])):
            assert enqueue(str(path), call_id=call_id, agent_id="a-1", settings=settings).sent
        deadline = time.monotonic() + 60
        while call_rows(database_url)["LONG"][0] != "processing":
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.02)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # no warm shutdown: nothing is given back
        worker.wait()
    assert call_rows(database_url)["LONG"][:2] == ("processing", None)
    rows = _broker_rows(broker_path)
    assert [(visible, c) for _, visible, c in rows] == [
        (False, "DONE"), (False, "LONG"), (True, "NEXT-1"), (True, "NEXT-2")]

    # Kombu stamped the delivery in UTC although the worker ran in New York's zone
    long_row = _broker_row_payloads(broker_path)[1]
    assert long_row[2] is not None and abs(long_row[2] - time.time()) < 120, long_row

    # The worker is restarted at once: nothing is repaired yet (a live worker elsewhere could
    # still be running LONG), but a recovery is sent for when LONG's row will be stale.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    assert main(["status"]) == 0  # what an operator sees of it
    assert "queue callmood: 2 waiting, 2 delivered row(s) kept" in capsys.readouterr().out
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda _path, argv: started.append(argv))
    assert main(["worker"]) == 0 and started  # the recovery runs before Celery starts
    assert "recovery: again in" in capsys.readouterr().err
    (follow_up,) = [p for p in _broker_row_payloads(broker_path) if p[1] == RECOVERY_TASK_NAME]
    # LONG's hard limit (270 s) plus the 300 s margin after its delivery, plus a minute for
    # other hosts' clocks
    assert follow_up[3] is not None and 59 < follow_up[3] - long_row[2] - 570 < 120, follow_up
    assert [r for r in _broker_rows(broker_path) if r[2] is not None] == rows

    # An hour later (its hard limit is 270 s): the delivery stamps and LONG's claim aged.
    _age_delivered_rows(broker_path, 3600)
    with session_scope(settings) as session:
        long_call = store.calls_by_external_id(session, ["LONG"])["LONG"]
        long_call.updated_at = utcnow() - timedelta(seconds=3600)
    dry = recover(settings, min_age_s=0, dry_run=True)
    assert (dry.stranded, dry.deleted) == (("LONG",), 1)
    assert main(["worker"]) == 0
    assert ("recovery: 0 lost sent again, 1 restored, 0 stuck failed, 1 delivered broker "
            "row(s) deleted") in capsys.readouterr().err
    assert [(visible, c) for _, visible, c in _broker_rows(broker_path) if c is not None] == [
        (True, "LONG"), (True, "NEXT-1"), (True, "NEXT-2")]

    with celery_worker(env, log_path, concurrency=1, name="after"):
        final = wait_final(database_url, ["LONG", "NEXT-1", "NEXT-2"], timeout_s=120,
                           log_path=log_path)
    assert {c: final[c][0] for c in final} == {c: "done" for c in final}
    assert final["LONG"][2] == 2  # claimed by the killed worker, then by this one
    # Three hours on, every delivered row is past any worker's hold: only the follow-up
    # recovery is left, waiting (the worker held it for its countdown and gave it back).
    _age_delivered_rows(broker_path, 3 * 3600)
    dry = recover(settings, min_age_s=0, dry_run=True)  # counts each row once, changes none
    delivered = [r for r in _broker_rows(broker_path) if not r[1]]
    assert (dry.lost, dry.stranded, dry.deleted) == ((), (), len(delivered))
    assert len(delivered) >= 3
    report = recover(settings, min_age_s=0)
    assert (report.lost, report.stranded, report.deleted) == ((), (), len(delivered))
    assert [(visible, task) for _, task, _, _, visible in _broker_row_payloads(broker_path)] == [
        (True, RECOVERY_TASK_NAME)]


def test_two_recoveries_at_once_send_a_lost_call_once(tmp_path: Path, redis_url: str) -> None:
    """beat's recovery and an operator's `callmood recover` that read a lost call at once both
    published it: two messages, one call analysed twice at once (a review). The rows are
    marked on their lock before the send now; the second recovery finds it sent."""
    import threading
    from datetime import timedelta

    from worker import store
    from worker.db import session_scope
    from worker.recovery import recover
    from worker.schema import utcnow

    settings = Settings.from_env({"CALLMOOD_DATA_DIR": str(tmp_path / "data"),
                                  "CALLMOOD_INPUT_ROOTS": str(tmp_path),
                                  "CALLMOOD_BROKER_URL": fresh_redis_db(redis_url, 11)})
    db.upgrade(settings.database_url)
    with session_scope(settings) as s:   # a producer marked it sent, then died unpublished
        call = store.reserve_for_enqueue(s, store.CallRequest(
            uri=str(tmp_path / "a.wav"), external_call_id="LOST-1")).call
        call.enqueued_at = utcnow() - timedelta(minutes=10)
    sent: list[str] = []
    guard = threading.Lock()

    def send(requests: Any) -> list[str]:
        with guard:
            sent.extend(r.external_call_id for r in requests)
        return ["task"] * len(requests)

    reports: list[Any] = []
    threads = [threading.Thread(target=lambda: reports.append(recover(settings, send=send)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sent == ["LOST-1"]
    assert sorted(r.lost for r in reports) == [(), ("LOST-1",)]


def test_a_failed_resend_of_a_lost_claimed_call_leaves_it_lost_for_the_next_recovery(
        tmp_path: Path, redis_url: str) -> None:
    """A claimed call whose worker vanished, found lost: the re-send mark moved its claim's
    age (updated_at), and when the send failed nothing moved it back, so every recovery for
    another hard limit (~70 min) took it for busy (a review)."""
    from datetime import timedelta

    from sqlalchemy import update

    from worker import store
    from worker.db import session_scope
    from worker.errors import TransientError
    from worker.recovery import recover
    from worker.schema import Call, utcnow

    settings = Settings.from_env({"CALLMOOD_DATA_DIR": str(tmp_path / "data"),
                                  "CALLMOOD_INPUT_ROOTS": str(tmp_path),
                                  "CALLMOOD_BROKER_URL": fresh_redis_db(redis_url, 12)})
    db.upgrade(settings.database_url)
    claimed_at = utcnow() - timedelta(hours=2)
    with session_scope(settings) as s:
        call = store.reserve_for_enqueue(s, store.CallRequest(
            uri=str(tmp_path / "a.wav"), external_call_id="GONE-1")).call
        call_id = call.id
    with session_scope(settings) as s:   # a worker claimed it two hours ago, then vanished
        s.execute(update(Call).where(Call.id == call_id).values(
            status="processing", attempts=1, updated_at=claimed_at))

    def broker_down(requests: Any) -> list[str]:
        raise TransientError("broker unavailable (simulated)")

    assert recover(settings, dry_run=True).lost == ("GONE-1",)
    with pytest.raises(TransientError):
        recover(settings, send=broker_down)
    with session_scope(settings) as s:
        after = s.get(Call, call_id)
        assert after is not None and (after.status, after.attempts) == ("processing", 1)
        assert after.updated_at == claimed_at
    assert recover(settings, dry_run=True).lost == ("GONE-1",)   # the next one sends it
