"""The Celery application: broker and delivery policy. Tasks live in ``worker.tasks``.

Start a worker with ``celery -A worker.celery_app worker`` (what ``callmood worker`` runs).
Results are never stored in Celery: the outcome of every task is its row in our database.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.schedules import crontab
from celery.signals import worker_process_init
from kombu.exceptions import ChannelError
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError as SQLInterfaceError
from sqlalchemy.exc import OperationalError as SQLOperationalError

from worker.errors import ConfigError, TransientError
from worker.settings import Settings, get_settings, redact_url

TASK_QUEUE = "callmood"
"""Queue the analysis task is routed to; producers outside callmood send with queue=TASK_QUEUE."""
CONTROL_QUEUE = "callmood.control"
"""Queue of the beat tasks (nightly scan, recovery), consumed by every ``callmood worker``
beside TASK_QUEUE: behind a backlog of recordings in TASK_QUEUE they would wait for hours
(and expire). Kombu's Redis transport rotates between a worker's queues, so they are taken
within one recording's time."""

TASK_SOFT_TIME_LIMIT_S = 3600
"""A recording still running after this is failed (SoftTimeLimitExceeded, caught by the task)."""
TASK_HARD_TIME_LIMIT_S = TASK_SOFT_TIME_LIMIT_S + 300
TASK_MIN_SOFT_TIME_LIMIT_S = 120
"""Floor of a recording's time limit: model load in a fresh child, a busy database."""
SLOWEST_CALL_S_PER_WALL_S = 20.0
"""Time limits assume the worker analyses at least this many call-seconds per wall second:
25-30x below the 530-620 call-s per CPU-s that ``python -m bench throughput`` measures end
to end on one thread, margin for a loaded machine. Below it, something is stuck."""
TASK_HARD_AFTER_SOFT_S = 60
"""Grace between the soft limit (the task records the failure) and the hard kill."""
REDIS_MAX_HELD_COUNTDOWN_S = 300
"""Longest countdown a worker holds a retry for (``tasks.RETRY_CAP_S`` is this): the six
backoff retries wait at most 64 s, a call held through a database outage past them 300 s
at a time (``tasks.OUTAGE_MAX_HELD_RETRIES``)."""
REDIS_VISIBILITY_TIMEOUT_S = 2 * TASK_HARD_TIME_LIMIT_S + REDIS_MAX_HELD_COUNTDOWN_S
"""Redis redelivers an unacked message after this; it must outlast the longest wait of a
delivered message: a held countdown retry, then a busy pool process's task, then its own
run (300 + 3900 + 3900 s; twice the hard limit alone fell 64 s short of that)."""
RUN_QUEUE_PREFIX = "callmood-run-"
"""Prefix of the private queue each ``callmood run`` sends its calls on (``worker.runner``)."""
ANALYZE_TASK_NAME = "callmood.analyze_recording"
"""The analysis task: the name producers outside callmood send by (``worker.tasks``)."""
NIGHTLY_SCAN_TASK_NAME = "callmood.nightly_scan"
"""The beat-scheduled inbox scan (``worker.batch``)."""
NIGHTLY_SCHEDULE_ENTRY = "callmood-nightly-scan"
RECOVERY_TASK_NAME = "callmood.recover_lost"
"""The beat-scheduled recovery of lost or stranded messages (``worker.recovery``)."""
RECOVERY_SCHEDULE_ENTRY = "callmood-recover-lost"
RECOVERY_INTERVAL_S = 300
"""How often beat runs the recovery: a message lost in a Redis restart is sent again within
minutes instead of after REDIS_VISIBILITY_TIMEOUT_S (hours); on a database broker, the
message of a worker killed outright is restored and delivered rows are deleted."""
MAX_TASKS_PER_CHILD = 200
"""Recordings one pool process analyses before it is replaced by a fresh one."""
MAX_MEMORY_PER_CHILD_KIB = 900_000
"""Resident memory after which a pool process is replaced once its task ends."""
SQLITE_BROKER_TIMEOUT_S = 30
"""How long the SQLite broker waits on another process's write lock."""
SQLA_BROKER_POLLING_INTERVAL_S = 0.2
"""Pause between polls of an empty queue on a database (SQLAlchemy) broker."""
DATABASE_BROKER_MAX_HELD_S = REDIS_VISIBILITY_TIMEOUT_S + 300
"""A message a database broker delivered longer ago than this is held by no live worker (the
longest wait of a delivered message, as for Redis's visibility timeout, plus recovery's
5-minute STRANDED_MARGIN_S): recovery deletes its row unread. Kombu's SQLAlchemy transport
keeps every delivered row (it records no ack), so without that the table, and every poll of
it, grows with each call."""
DELETE_BATCH_ROWS = 400
"""Delivered rows a database broker recovery deletes per statement by (id, version): 800
bound parameters, under SQLite's oldest limit (999)."""
PURGE_BATCH_ROWS = 5000
"""Rows past DATABASE_BROKER_MAX_HELD_S deleted per transaction: a fraction of a second of
SQLite's write lock each (``python -m bench broker``), far under the 30 s a worker's poll
waits for it."""


def time_limits_s(duration_s: float | None) -> tuple[float, float]:
    """(soft, hard) time limit in seconds for a recording of ``duration_s`` (None: unknown).

    Scaled to the recording so a stuck 2-minute call is caught in minutes, not after the
    one-hour ceiling that only the longest recordings need (and that the Redis visibility
    timeout is sized for).
    """
    if duration_s is None:
        return float(TASK_SOFT_TIME_LIMIT_S), float(TASK_HARD_TIME_LIMIT_S)
    soft = min(float(TASK_SOFT_TIME_LIMIT_S),
               TASK_MIN_SOFT_TIME_LIMIT_S + max(0.0, duration_s) / SLOWEST_CALL_S_PER_WALL_S)
    return soft, soft + TASK_HARD_AFTER_SOFT_S


def is_sqla_broker(broker_url: str) -> bool:
    return broker_url.startswith(("sqla+", "sqlalchemy+"))


def is_redis_broker(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://"))


def broker_transport_options(broker_url: str) -> dict[str, Any]:
    """Transport options per broker kind (Kombu passes the SQLAlchemy ones to create_engine)."""
    if is_redis_broker(broker_url):
        return {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S}
    if broker_url.startswith("sqla+sqlite"):
        # The CLI sends while the worker polls the same file: wait for the lock, don't fail.
        return {"connect_args": {"timeout": SQLITE_BROKER_TIMEOUT_S}}
    return {}


def poll_database_broker_faster() -> None:
    """Shorten Kombu's pause between polls of an empty queue on a database broker, and make
    it stamp deliveries in UTC.

    Its default pause (1 s) left the worker idle up to a second after every call. The
    transport hands every transport option to ``create_engine``, so ``polling_interval``
    cannot be passed as one; it is the transport class's attribute, set here. A poll is one
    indexed SELECT: five a second cost nothing measurable.

    Kombu stamps a row with ``datetime.now()`` when it delivers it: the host's naive local
    time, which repeats an hour at the autumn clock change and differs between hosts in
    other zones, so recovery could take a message a worker took seconds ago for one taken
    an hour before. The stamp is naive UTC instead (:func:`utc_naive_now`): set on the
    model's mixin column, which each channel copies when it first declares the table (Kombu
    declares it once per process, after callmood's app configured the transport).
    """
    from kombu.transport import sqlalchemy as kombu_sqla
    from kombu.transport.sqlalchemy import models
    from sqlalchemy import Column, DateTime

    kombu_sqla.Transport.polling_interval = SQLA_BROKER_POLLING_INTERVAL_S
    if "Message" not in models.class_registry:
        models.Message.sent_at = Column("timestamp", DateTime, nullable=True, index=True,
                                        onupdate=utc_naive_now)


def utc_naive_now() -> datetime:
    """The current UTC time without a zone: a database broker's delivery stamp."""
    return datetime.now(UTC).replace(tzinfo=None)


def delivered_at_s(stamp: datetime) -> float:
    """Epoch seconds of a delivery stamp (naive UTC, :func:`utc_naive_now`)."""
    return stamp.replace(tzinfo=UTC).timestamp()


@worker_process_init.connect  # type: ignore[untyped-decorator]
def one_blas_thread_per_child(**_: Any) -> None:
    """Pin numpy's BLAS to one thread in each pool process (run by Celery after the fork).

    A worker runs one pool process per core; BLAS's default of one thread per core in every
    child would oversubscribe the machine (ONNX Runtime is pinned by CALLMOOD_ONNX_THREADS).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def fresh_broker_connections_per_child(**_: Any) -> None:
    """Drop the database broker's engines a pool process inherited from the worker.

    Kombu's SQLAlchemy transport caches its engines per URL in a class attribute, so a forked
    child (a beat task sending calls, or running recovery) would reuse the parent's pooled
    connection: one SQLite handle or PostgreSQL socket in two processes. ``close=False``
    leaves the parent's connections open for the parent.
    """
    from kombu.transport.sqlalchemy import Channel

    for engine, _session in Channel._engines.values():
        engine.dispose(close=False)
    Channel._engines.clear()


def make_celery(settings: Settings, set_as_current: bool = True) -> Celery:
    """A Celery app for ``settings`` (no result backend; JSON only). ``set_as_current=False``
    for a short-lived app inside a worker, which must not replace the worker's own."""
    app = Celery("callmood", broker=settings.broker_url, include=["worker.tasks"],
                 set_as_current=set_as_current)
    sqla = is_sqla_broker(settings.broker_url)
    # always, not only for a database broker URL here: a worker given another broker on its
    # command line (celery -b sqla+...) must stamp deliveries in UTC too
    poll_database_broker_faster()
    app.conf.update(
        # Results live in our database; a result backend would only be a second, stale copy.
        task_ignore_result=True,
        result_backend=None,
        # Ack after the task finished, so a worker that dies mid-recording leaves the message
        # to be redelivered; safe because save_analysis replaces a call's rows (idempotent).
        task_acks_late=True,
        # Recordings take seconds to minutes: a worker must not hoard messages that an idle
        # sibling could take, nor lose more than one on a crash.
        worker_prefetch_multiplier=1,
        # A child killed by the OS (OOM on a huge file) requeues its message instead of
        # acking it; the attempts counter in the calls table stops a poison recording looping.
        task_reject_on_worker_lost=True,
        # Decoding hour-long recordings fragments the heap: a fresh child every
        # MAX_TASKS_PER_CHILD bounds that, for one model load (about a second) per child.
        worker_max_tasks_per_child=MAX_TASKS_PER_CHILD,
        # ... and a child whose resident memory passed this (KiB) is replaced after its task:
        # ~7x the 124 MB peak the throughput benchmark measures for a fresh process, room
        # for the whole-file decode of a 10-minute 48 kHz call (~370 MB, docs/streaming.md).
        worker_max_memory_per_child=MAX_MEMORY_PER_CHILD_KIB,
        # JSON only: pickle would let anyone who can write to the broker run code here.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_default_queue=TASK_QUEUE,
        task_routes={NIGHTLY_SCAN_TASK_NAME: {"queue": CONTROL_QUEUE},
                     RECOVERY_TASK_NAME: {"queue": CONTROL_QUEUE}},
        task_soft_time_limit=TASK_SOFT_TIME_LIMIT_S,
        task_time_limit=TASK_HARD_TIME_LIMIT_S,
        broker_transport_options=broker_transport_options(settings.broker_url),
        broker_connection_retry_on_startup=True,
        # Kombu's SQLAlchemy transport has no fanout, which remote control and events need.
        worker_enable_remote_control=not sqla,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
        # Message timestamps stay UTC (enable_utc); the zone is what beat's crontab reads.
        timezone=settings.timezone,
        beat_schedule=beat_schedule(settings),
    )
    return app


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The nightly inbox scan at ``CALLMOOD_NIGHTLY_AT`` (none without inbox folders) and,
    on a Redis or database broker, the recovery of lost messages every RECOVERY_INTERVAL_S."""
    schedule: dict[str, dict[str, Any]] = {}
    if settings.inbox_dirs:
        hour, minute = settings.nightly_at
        schedule[NIGHTLY_SCHEDULE_ENTRY] = {
            "task": NIGHTLY_SCAN_TASK_NAME,
            "schedule": crontab(hour=hour, minute=minute),
            # A scan nobody ran before the next one is due is pointless: the next scan sees the
            # same files. Expire it instead of letting a backlog run twice in a row.
            "options": {"queue": CONTROL_QUEUE, "expires": 12 * 3600},
        }
    if is_redis_broker(settings.broker_url) or is_sqla_broker(settings.broker_url):
        schedule[RECOVERY_SCHEDULE_ENTRY] = {
            "task": RECOVERY_TASK_NAME,
            "schedule": float(RECOVERY_INTERVAL_S),
            # The next run does the same job: never let a backlog of them pile up.
            "options": {"queue": CONTROL_QUEUE, "expires": RECOVERY_INTERVAL_S},
        }
    return schedule


@dataclass(frozen=True)
class QueueStats:
    """What the broker holds for one queue (None: this broker cannot tell)."""

    queued: int
    """Messages waiting for a worker."""
    unacked: int | None
    """Delivered to a worker, not yet acknowledged (running, prefetched or retry-countdown);
    Redis only (its ``unacked`` hash), all queues together."""
    delivered: int | None = None
    """Database broker only: rows it keeps for delivered messages of callmood's queues, acked
    or not (it records no ack); recovery deletes the stale ones."""


@contextmanager
def _broker_channel(app: Celery, write: bool = False) -> Iterator[Any]:
    """The default channel of a fresh connection to the app's broker; TransientError (URL
    redacted) when the broker cannot be reached or fails while in use."""
    try:
        with (app.connection_for_write() if write else app.connection_for_read()) as connection:
            connection.ensure_connection(max_retries=1)
            yield connection.default_channel
    except (KombuOperationalError, OSError, RedisError, SQLOperationalError,
            SQLInterfaceError) as e:  # the last two: a database broker's
        raise TransientError(f"broker unavailable ({redact_url(str(app.conf.broker_url))}): "
                             f"{e}") from e


def queue_stats(app: Celery, queue: str = TASK_QUEUE) -> QueueStats:
    """Depth of ``queue`` on the app's broker; TransientError when it cannot be reached."""
    with _broker_channel(app) as channel:
        try:
            queued = int(channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:  # never declared: nobody sent to it yet
            queued = 0
        unacked: int | None = None
        if is_redis_broker(str(app.conf.broker_url)):
            unacked = int(channel.client.hlen(channel.unacked_key))
    delivered: int | None = None
    if is_sqla_broker(str(app.conf.broker_url)):
        # every delivered row: a cut a day ahead leaves none out, whatever the clocks say
        delivered = database_broker_rows(app, time.time() + 86_400.0,
                                         prefixes=(RUN_QUEUE_PREFIX,))
    return QueueStats(queued=queued, unacked=unacked, delivered=delivered)


@dataclass(frozen=True)
class BrokerMessage:
    """An analysis task message held by a Redis broker, as much as recovery needs of it."""

    call_id: str | None
    """The payload's external call id (None: another task, or a body that does not decode)."""
    delivery_tag: str | None = None
    """Unacked messages only: Kombu's delivery tag, the key it is restored by (on a database
    broker, the message row's id)."""
    delivered_at_s: float | None = None
    """Unacked messages only: when a worker took it (epoch s: Kombu's unacked index on Redis,
    the row's timestamp, which Kombu sets on delivery, on a database broker)."""
    eta_s: float | None = None
    """When a countdown retry is due (epoch s), from the task headers; None: at once."""
    hard_limit_s: float | None = None
    """The task's own hard time limit (s) from its headers; None: the app's default."""
    task: str | None = None
    """The task name from the headers (None: unreadable)."""


@dataclass(frozen=True)
class BrokerCensus:
    """Every analysis message a Redis broker holds for one queue, read in one transaction."""

    queued: tuple[BrokerMessage, ...]
    """Waiting in the queue (any priority)."""
    unacked: tuple[BrokerMessage, ...]
    """Delivered to a worker and not acknowledged: running, waiting for a countdown, or
    stranded by a worker that lost its broker connection before it could ack."""

    @property
    def call_ids(self) -> frozenset[str]:
        return frozenset(m.call_id for m in (*self.queued, *self.unacked) if m.call_id)


def read_task_message(raw: str | bytes, delivery_tag: str | None = None,
                      delivered_at_s: float | None = None) -> BrokerMessage:
    """The recovery fields of one Kombu message (the JSON Kombu stores in Redis).

    Any task's name, countdown and time limit; the call id of the analysis task only.
    Anything unreadable gives ``call_id=None``: such a message is never counted as a call.
    """
    try:
        payload = json.loads(raw)
    except ValueError:  # json.JSONDecodeError
        return BrokerMessage(None, delivery_tag, delivered_at_s)
    return _task_message(payload, delivery_tag, delivered_at_s)


def _task_message(payload: Any, delivery_tag: str | None,
                  delivered_at_s: float | None) -> BrokerMessage:
    """:func:`read_task_message` of an already decoded message."""
    try:
        headers: Mapping[str, Any] = payload.get("headers") or {}
        task = headers.get("task")
        eta = headers.get("eta")
        limits = headers.get("timelimit") or (None, None)
        message = BrokerMessage(
            call_id=None, delivery_tag=delivery_tag, delivered_at_s=delivered_at_s,
            eta_s=datetime.fromisoformat(eta).timestamp() if isinstance(eta, str) else None,
            hard_limit_s=float(limits[0]) if limits[0] is not None else None,
            task=task if isinstance(task, str) else None)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        # a bad ISO date or time limit is a ValueError; a payload that is no dict, others
        return BrokerMessage(None, delivery_tag, delivered_at_s)
    if message.task != ANALYZE_TASK_NAME:
        return message
    try:
        body = payload["body"]
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        call_id = kwargs.get("call_id")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return message
    return replace(message, call_id=call_id if isinstance(call_id, str) else None)


def broker_census(app: Celery, queue: str = TASK_QUEUE) -> BrokerCensus | None:
    """What the broker holds for callmood: the messages waiting in ``queue`` and the unacked
    ones of callmood's tasks routed to ``queue`` or CONTROL_QUEUE (Kombu keeps one unacked
    hash for every app on the Redis database: other apps' messages are not ours to judge).
    None: not a Redis broker, which cannot lose a delivered message this way; TransientError
    when it cannot be reached; ConfigError for a global key prefix, which Kombu applies to
    some commands only (a census would read empty keys and count every call lost).

    The queue lists and the unacked hash are read in one MULTI/EXEC, so a message moving
    from one to the other is not missed (only the instant a worker holds it between the
    two, which the caller covers by looking twice).
    """
    if is_sqla_broker(str(app.conf.broker_url)):
        return _database_census(app, queue)
    if not is_redis_broker(str(app.conf.broker_url)):
        return None
    with _broker_channel(app) as channel:
        if getattr(channel, "global_keyprefix", ""):
            raise ConfigError("broker recovery does not support Kombu's global_keyprefix "
                              "transport option")
        keys = sorted({channel._q_for_pri(queue, pri) for pri in channel.priority_steps})
        pipe = channel.client.pipeline(transaction=True)
        for key in keys:
            pipe.lrange(key, 0, -1)
        pipe.hgetall(channel.unacked_key)
        pipe.zrange(channel.unacked_index_key, 0, -1, withscores=True)
        *lists, unacked, index = pipe.execute()
    delivered = {_text(tag): float(score) for tag, score in index}
    held = []
    for tag, value in unacked.items():
        try:
            raw, _exchange, routing_key = json.loads(value)
        except (ValueError, TypeError):
            continue  # not Kombu's [message, exchange, routing key]: not ours either
        message = _task_message(raw, _text(tag), delivered.get(_text(tag)))
        if routing_key in (queue, CONTROL_QUEUE) and (message.task or "").startswith("callmood."):
            held.append(message)
    return BrokerCensus(queued=tuple(read_task_message(item) for items in lists for item in items),
                        unacked=tuple(held))


def restore_unacked(app: Celery, delivery_tags: Sequence[str]) -> int:
    """Move these unacked messages back to their queue (Kombu's own restore, one MULTI each,
    as its visibility timeout would); returns how many were asked for."""
    with _broker_channel(app, write=True) as channel:
        for tag in delivery_tags:
            channel.qos.restore_by_tag(tag)
    return len(delivery_tags)


@contextmanager
def _broker_tables(app: Celery) -> Iterator[tuple[Any, Any, Any]]:
    """(session, message table, queue table) of a database broker's Kombu channel, in one
    transaction committed on success; TransientError (from :func:`_broker_channel`) when its
    database cannot be reached."""
    with _broker_channel(app, write=True) as channel:
        session = channel.session
        try:
            yield session, channel.message_cls.__table__, channel.queue_cls.__table__
            session.commit()
        except BaseException:
            session.rollback()
            raise


def _database_census(app: Celery, queue: str) -> BrokerCensus:
    """:func:`broker_census` of a database broker: waiting rows are the queue, delivered rows
    (read with their delivery time) stand for the unacked ones."""
    from sqlalchemy import select

    with _broker_tables(app) as (session, messages, queues):
        rows = session.execute(
            select(messages.c.id, messages.c.version, messages.c.visible, messages.c.timestamp,
                   messages.c.payload, queues.c.name)
            .join(queues, messages.c.queue_id == queues.c.id)
            .where(queues.c.name.in_((queue, CONTROL_QUEUE))).order_by(messages.c.id)).all()
    queued, held = [], []
    for row_id, version, visible, delivered_at, payload, queue_name in rows:
        if visible:
            # waiting: only the main queue's are "in the queue" (as Redis reads one list)
            if queue_name == queue:
                queued.append(read_task_message(payload))
            continue
        # the tag carries the row's version, which Kombu bumps on every delivery: a repair
        # of this row touches it only as this census saw it (see restore_delivered)
        message = read_task_message(
            payload, f"{row_id}:{version}",
            delivered_at_s(delivered_at) if isinstance(delivered_at, datetime) else None)
        if (message.task or "").startswith("callmood."):
            held.append(message)
    return BrokerCensus(queued=tuple(queued), unacked=tuple(held))


def database_broker_rows(app: Celery, delivered_before_s: float,
                         queues: Sequence[str] = (TASK_QUEUE, CONTROL_QUEUE),
                         prefixes: Sequence[str] = (), delete: bool = False) -> int:
    """Count (or ``delete``) the delivered rows of these queues (and of queues whose name
    starts with one of ``prefixes``) that a worker took before ``delivered_before_s`` (epoch
    s). Waiting rows are never touched. Deleted PURGE_BATCH_ROWS per transaction, so a
    table grown for weeks never holds SQLite's write lock longer than a worker waits for it
    (SQLITE_BROKER_TIMEOUT_S; a poll that times out makes Celery restore every unacked
    message)."""
    from sqlalchemy import delete as sql_delete
    from sqlalchemy import func, or_, select

    cutoff = datetime.fromtimestamp(delivered_before_s, UTC).replace(tzinfo=None)
    total = 0
    while True:
        with _broker_tables(app) as (session, messages, queues_table):
            named = or_(queues_table.c.name.in_(list(queues)),
                        *(queues_table.c.name.startswith(p, autoescape=True) for p in prefixes))
            queue_ids = select(queues_table.c.id).where(named).scalar_subquery()
            where = (messages.c.queue_id.in_(queue_ids), messages.c.visible.is_(False),
                     messages.c.timestamp < cutoff)
            if not delete:
                return int(session.execute(select(func.count()).select_from(messages)
                                           .where(*where)).scalar_one())
            batch = select(messages.c.id).where(*where).limit(PURGE_BATCH_ROWS)
            done = int(session.execute(sql_delete(messages).where(
                messages.c.id.in_(batch.scalar_subquery()))).rowcount)
        total += done
        if done < PURGE_BATCH_ROWS:
            return total


def _row_versions(tags: Sequence[str]) -> list[tuple[int, int]]:
    """(row id, version) of database broker delivery tags (``"id:version"``)."""
    pairs = []
    for tag in tags:
        row_id, _, version = tag.partition(":")
        pairs.append((int(row_id), int(version)))
    return pairs


def restore_delivered(app: Celery, tags: Sequence[str]) -> list[str]:
    """Make these delivered rows of a database broker waiting messages again (as Redis's
    restore of an unacked message); returns the tags restored. A row is restored only as the
    census saw it: one delivered again since (after another recovery restored it) has a new
    version and is left to its worker."""
    from sqlalchemy import update

    restored = []
    with _broker_tables(app) as (session, messages, _queues):
        for tag, (row_id, version) in zip(tags, _row_versions(tags), strict=True):
            if session.execute(
                    update(messages).where(messages.c.id == row_id,
                                           messages.c.version == version,
                                           messages.c.visible.is_(False))
                    # timestamp back to NULL, as Kombu writes a new row (it orders by it)
                    .values(visible=True, timestamp=None,
                            version=messages.c.version + 1)).rowcount:
                restored.append(tag)
    return restored


def delete_delivered(app: Celery, tags: Sequence[str]) -> int:
    """Delete these delivered rows of a database broker, each only as the census saw it
    (Kombu never reads a delivered row again: an unacked message it requeues is written as a
    new row); returns how many."""
    from sqlalchemy import delete as sql_delete
    from sqlalchemy import tuple_

    pairs = _row_versions(tags)
    done = 0
    with _broker_tables(app) as (session, messages, _queues):
        for start in range(0, len(pairs), DELETE_BATCH_ROWS):
            done += int(session.execute(sql_delete(messages).where(
                messages.c.visible.is_(False),
                tuple_(messages.c.id, messages.c.version).in_(
                    pairs[start:start + DELETE_BATCH_ROWS]))).rowcount)
    return done


def purge_queue(app: Celery, queue: str) -> int:
    """Delete every message of ``queue`` (a ``callmood run`` private queue once its worker
    stopped: nobody else consumes it); on a database broker its delivered rows, and its
    ``kombu_queue`` row (Kombu's SQLAlchemy transport deletes no queue: each run left one)."""
    with _broker_channel(app, write=True) as channel:
        purged = int(channel.queue_purge(queue) or 0)
    if is_sqla_broker(str(app.conf.broker_url)):
        from sqlalchemy import delete as sql_delete

        with _broker_tables(app) as (session, messages, queues):
            # a row sent since the purge keeps its queue (the foreign key would refuse anyway)
            session.execute(sql_delete(queues).where(
                queues.c.name == queue,
                ~queues.c.id.in_(messages.select().with_only_columns(messages.c.queue_id))))
    return purged


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def worker_command(concurrency: int = 1, loglevel: str = "WARNING", queue: str = TASK_QUEUE,
                   node_name: str | None = None, broker_url: str | None = None) -> list[str]:
    """argv of a prefork Celery worker for this app (used by ``callmood worker`` and ``run``)."""
    # The main queue comes with the control queue (beat's tasks); a private queue
    # (``callmood run``) alone.
    queues = f"{queue},{CONTROL_QUEUE}" if queue == TASK_QUEUE else queue
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", loglevel,
            "--queues", queues]
    # Mingle asks the other workers for revoked task ids at start-up and waits ~1 s for their
    # replies; callmood revokes nothing, and that second was a third of a fresh worker's
    # time to its first result on Redis (python -m bench throughput).
    argv.append("--without-mingle")
    if broker_url is None or is_sqla_broker(broker_url):
        # Gossip and heartbeats are broadcast; the SQLAlchemy transport cannot fan out.
        argv += ["--without-gossip", "--without-heartbeat"]
    if node_name is not None:
        argv += ["--hostname", node_name]
    return argv


def beat_command(schedule_path: str, loglevel: str = "INFO") -> list[str]:
    """argv of Celery beat for this app (``callmood beat``); run exactly one per deployment,
    or the nightly scan is sent once per beat (harmless, as the scan is idempotent)."""
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat",
            "--loglevel", loglevel, "--schedule", schedule_path]


app = make_celery(get_settings())
