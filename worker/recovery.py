"""Recovering what a broker can lose: calls sent but no longer in a Redis broker, messages
stranded in its unacked hash, and the delivered rows of a database broker.

Kombu's Redis transport pops a message (BRPOP) and only then records it as unacked; a Redis
that stops in between, or restarts without persistence, loses the message while our calls
table still says the call was sent (``enqueued_at``) and is pending. A worker that loses its
broker connection mid-task cannot ack, and its message waits in the unacked hash for the
visibility timeout, which must outlast the longest recording (hours). Celery has no remedy
for either (celery/celery#1789, celery/kombu#305); this module is ours, run every
RECOVERY_INTERVAL_S by beat and on demand by ``callmood recover``:

    census 1 ── calls awaiting a worker (database) ── census 2 (a moment later)
       │                                                   │
       └── stranded: unacked past its own hard time limit, ┴── lost: in neither census
           or unacked and its call never claimed              -> send again
             -> restore to the queue (Kombu's restore)

Both repairs are safe to get wrong: the task is idempotent (a second delivery of a finished
call is skipped; a second run replaces the call's rows in one transaction).

A database broker (Kombu's SQLAlchemy transport, the embedded default) loses nothing in
transit but records no acknowledgement: a delivered message stays a row with
``visible = false`` and the time a worker took it, acked or not. A worker killed outright
(``kill -9``, OOM, power) leaves its message there for ever, and every acked one piles up
beside it (the transport's polls slow as the table grows). The same census reads those rows
as unacked messages and :func:`plan_delivered` sorts them by the same staleness rules: the
current message of an unfinished call no worker can still hold is made waiting again, every
other stale row is deleted, and rows older than DATABASE_BROKER_MAX_HELD_S are deleted
unread first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from celery import Celery

from worker.celery_app import (
    ANALYZE_TASK_NAME,
    DATABASE_BROKER_MAX_HELD_S,
    RUN_QUEUE_PREFIX,
    TASK_HARD_TIME_LIMIT_S,
    BrokerCensus,
    BrokerMessage,
    broker_census,
    database_broker_rows,
    delete_delivered,
    is_sqla_broker,
    make_celery,
    restore_delivered,
    restore_unacked,
)
from worker.db import session_scope
from worker.enqueue import Sender, celery_sender
from worker.errors import ConfigError, PayloadError
from worker.schema import utcnow
from worker.settings import Settings
from worker.store import (
    CallSendState,
    calls_awaiting_worker,
    calls_by_external_id,
    claim_resend,
    is_valid_external_id,
    mark_all_failed,
    release_enqueue,
    request_for_call,
)

log = logging.getLogger(__name__)

RECOVERY_MIN_AGE_S = 120.0
"""A pending call sent less than this ago is never counted lost: its producer marks it sent
just before publishing, and may still be publishing a long manifest."""
STRANDED_MARGIN_S = 300.0
"""An unacked message counts as stranded this long after it can last have finished in a
live worker (see :func:`stranded_messages`); the margin covers host clocks and a pool
that starts a task a moment after taking it."""
STUCK_MAX_CLAIMS = 2
"""A lost call already claimed this many times in its run (status ``processing``, no
message left) is failed instead of sent again: twice a worker took it and never finished
(killed at its hard time limit, or by the OS; or, rarer, a TransientError retry that the
broker lost while both it and the database were down, which the reason names too), so a third
run would most likely burn another hour the same way. ``callmood retry`` sends it again when
someone decides to."""
UNCLAIMED_MARGIN_S = 120.0
"""An unacked analysis message whose call no worker is processing counts as stranded this long
after delivery (see :func:`unclaimed_messages`). A worker claims the call in its first
transaction, seconds after taking the message; the margin covers a fresh pool child and a
database slow to answer (SQLite's 30 s busy timeout). Restoring too early costs a second
delivery, which the idempotent task absorbs."""
UNFINISHED = ("pending", "processing")
"""Call statuses a worker still has to finish."""
CENSUS_RECHECK_S = 1.0
"""Pause between the two censuses: a message is in neither the queue nor the unacked hash
only for the instant a worker holds it between BRPOP and HSET, never for a second."""


@dataclass(frozen=True)
class RecoveryReport:
    """What one recovery found, and did unless ``dry_run``."""

    lost: tuple[str, ...]
    """External ids of calls awaiting a worker whose message the broker no longer holds."""
    stranded: tuple[str, ...]
    """External ids (or delivery tags, for messages without a readable call id) of unacked
    messages past their time limit, or whose call no worker claimed."""
    dry_run: bool
    failed: tuple[str, ...] = ()
    """Lost calls failed instead of sent again (claimed STUCK_MAX_CLAIMS times already)."""
    deleted: int = 0
    """Database broker: delivered rows deleted (acknowledged, or of finished calls), or that
    a dry run would delete."""
    repair_due_s: float | None = None
    """Database broker: when (epoch s) the rows unfinished calls' workers hold now will all
    be stale if those workers are gone (:attr:`DeliveredPlan.repair_due_s`)."""

    def as_dict(self) -> dict[str, Any]:
        return {"lost": list(self.lost), "stranded": list(self.stranded),
                "failed": list(self.failed), "deleted": self.deleted, "dry_run": self.dry_run}


def stranded_after_s(message: BrokerMessage, margin_s: float = STRANDED_MARGIN_S,
                     default_hard_limit_s: float = TASK_HARD_TIME_LIMIT_S) -> float | None:
    """When (epoch s) no live worker can still be running this delivered message (pure;
    None: it has no delivery time).

    A message without a countdown starts at delivery (a worker takes one only with a free
    pool process: prefetch 1, late acks): stranded once its own hard limit (or
    ``default_hard_limit_s``) plus ``margin_s`` has passed since. A countdown retry is held
    by its worker until due and may then wait for a busy pool process, up to another task's
    hard limit: ``default_hard_limit_s`` more.
    """
    if message.delivered_at_s is None:
        return None
    limit_s = message.hard_limit_s if message.hard_limit_s is not None else default_hard_limit_s
    start_s = message.delivered_at_s
    if message.eta_s is not None:
        start_s = max(start_s, message.eta_s) + default_hard_limit_s
    return start_s + limit_s + margin_s


def stranded_messages(unacked: Sequence[BrokerMessage], now_s: float,
                      margin_s: float = STRANDED_MARGIN_S,
                      default_hard_limit_s: float = TASK_HARD_TIME_LIMIT_S) -> list[BrokerMessage]:
    """Unacked messages no live worker can still be running (pure; see
    :func:`stranded_after_s`). Messages without a delivery tag or time are left alone."""
    out = []
    for message in unacked:
        after_s = stranded_after_s(message, margin_s, default_hard_limit_s)
        if message.delivery_tag is not None and after_s is not None and now_s > after_s:
            out.append(message)
    return out


def unclaimed_messages(unacked: Sequence[BrokerMessage], now_s: float,
                       processing: frozenset[str],
                       margin_s: float = UNCLAIMED_MARGIN_S) -> list[BrokerMessage]:
    """Unacked analysis messages, due at once, delivered over ``margin_s`` ago, whose call is
    not in ``processing`` (pure).

    With prefetch 1 and late acks a worker takes a message only for a free pool process, which
    claims the call (status ``processing``) at once. A call still pending (or finished) long
    after delivery was never started: its worker forgot the request when its broker
    connection dropped (Celery drops reserved requests then), and Kombu would keep the
    message unacked until its hard limit or the visibility timeout. Countdown retries and
    messages without a readable call id are left to :func:`stranded_messages`.
    """
    return [m for m in unacked
            if (after_s := unclaimed_after_s(m, processing, margin_s)) is not None
            and now_s > after_s]


def unclaimed_after_s(message: BrokerMessage, processing: frozenset[str],
                      margin_s: float = UNCLAIMED_MARGIN_S) -> float | None:
    """When (epoch s) :func:`unclaimed_messages` counts this message as never started (pure;
    None: that rule does not apply to it)."""
    if (message.delivery_tag is None or message.delivered_at_s is None
            or message.eta_s is not None or message.task != ANALYZE_TASK_NAME
            or message.call_id is None or message.call_id in processing):
        return None
    return message.delivered_at_s + margin_s


def stale_after_s(message: BrokerMessage, processing: frozenset[str],
                  margin_s: float = STRANDED_MARGIN_S,
                  unclaimed_margin_s: float = UNCLAIMED_MARGIN_S) -> float | None:
    """When (epoch s) a delivered message becomes stranded or unclaimed, whichever rule
    comes first (pure; None: neither applies)."""
    times = [t for t in (stranded_after_s(message, margin_s)
                         if message.delivery_tag is not None else None,
                         unclaimed_after_s(message, processing, unclaimed_margin_s))
             if t is not None]
    return min(times) if times else None


def lost_calls(awaiting: Sequence[str], censuses: Sequence[BrokerCensus]) -> list[str]:
    """Call ids in ``awaiting`` that none of the censuses saw in the broker (pure; order kept)."""
    seen = frozenset().union(*(c.call_ids for c in censuses))
    return [call_id for call_id in awaiting if call_id not in seen]


def split_stuck(lost: Sequence[str], claims: Mapping[str, int],
                max_claims: int = STUCK_MAX_CLAIMS) -> tuple[list[str], list[str]]:
    """(send again, fail) of the ``lost`` call ids, by the claims of their current run
    (pure; ``claims`` holds the attempts of calls in ``processing``, pending ones are absent)."""
    fail = [c for c in lost if claims.get(c, 0) >= max_claims]
    return [c for c in lost if c not in fail], fail


@dataclass(frozen=True)
class CallState:
    """What recovery reads of a call to judge its delivered messages (times in epoch s)."""

    status: str
    enqueued_at_s: float | None
    """When it was last sent to the main queue (None: never, or handed to ``callmood run``)."""
    updated_at_s: float
    """Its last write: for a processing call, its claim."""
    attempts: int = 0
    """Claims of its current run (a processing call's; see :data:`STUCK_MAX_CLAIMS`)."""

    def took(self, message: BrokerMessage, slack_s: float) -> bool:
        """Whether ``message`` is this call's current one: a pending call sent to the main
        queue no later than the message's delivery, or a processing call claimed no later
        than (soon after) it. Later sends and claims came from newer messages."""
        if message.delivered_at_s is None:
            return False
        if self.status == "pending":
            return (self.enqueued_at_s is not None
                    and self.enqueued_at_s <= message.delivered_at_s + slack_s)
        return (self.status == "processing"
                and self.updated_at_s <= message.delivered_at_s + slack_s)


@dataclass(frozen=True)
class DeliveredPlan:
    """What a database broker's delivered rows call for (:func:`plan_delivered`)."""

    live: tuple[BrokerMessage, ...]
    """Rows a live worker may still hold: their calls are not lost."""
    restore: tuple[BrokerMessage, ...]
    """One row per unfinished call that no worker can still hold and that has no other
    message: made a waiting message again (Redis's restore of a stranded message)."""
    delete: tuple[BrokerMessage, ...]
    """The other rows no worker can still hold: acknowledged ones (Kombu's SQLAlchemy
    transport records no ack and never reads a delivered row again), those of finished
    calls, of beat's tasks, and older copies of a restored call's message."""
    repair_due_s: float | None = None
    """When (epoch s) the last live row of an unfinished call will be stale, if its worker
    is gone: a recovery then repairs every call held now (None: no such row)."""


def plan_delivered(delivered: Sequence[BrokerMessage], queued_call_ids: frozenset[str],
                   calls: Mapping[str, CallState], now_s: float,
                   margin_s: float = STRANDED_MARGIN_S,
                   unclaimed_margin_s: float = UNCLAIMED_MARGIN_S,
                   max_claims: int = STUCK_MAX_CLAIMS) -> DeliveredPlan:
    """Sort a database broker's delivered rows (oldest first) into live, restore and delete
    (pure). ``calls``: the state of each row's call (absent: no such call).

    A row is stale by the same rules as an unacked Redis message (:func:`stranded_messages`,
    :func:`unclaimed_messages`); Kombu keeps a delivered row whether or not it was acked, so
    only the call tells a lost message from an acked one. The newest stale row of a call is
    restored when the call has no waiting or live message and the row is its current one:
    the call is pending or processing and took it (:meth:`CallState.took`), or the database
    does not know the call and the row names a valid call id (a producer's ``send_task``
    whose worker died before registering it; a payload the worker rejects is recorded as a
    failed call, so it is not sent round again). Every other stale row is deleted, that of a
    processing call claimed ``max_claims`` times too: Kombu keeps the row of a task killed at
    its hard time limit (acked on Redis, where the call is then lost and failed as stuck), so
    restoring it would run a hung call until the task's attempt cap, ~9 hard limits; without
    the row the call is lost, and :func:`split_stuck` fails it as it does on Redis.
    """
    processing = frozenset(c for c, call in calls.items() if call.status == "processing")
    due = {m.delivery_tag: stale_after_s(m, processing, margin_s, unclaimed_margin_s)
           for m in delivered}
    stale = {tag for tag, after_s in due.items() if after_s is not None and now_s > after_s}
    live = tuple(m for m in delivered if m.delivery_tag not in stale)
    covered = queued_call_ids | {m.call_id for m in live if m.call_id is not None}
    newest: dict[str, BrokerMessage] = {}
    for m in delivered:
        if m.delivery_tag in stale and m.task == ANALYZE_TASK_NAME and m.call_id is not None:
            newest[m.call_id] = m  # rows come oldest first: the last one stays

    def current(call_id: str, message: BrokerMessage) -> bool:
        if call_id in calls:
            call = calls[call_id]
            stuck = call.status == "processing" and call.attempts >= max_claims
            return not stuck and call.took(message, unclaimed_margin_s)
        return is_valid_external_id(call_id)

    restore = tuple(m for call_id, m in newest.items()
                    if call_id not in covered and current(call_id, m))
    kept = {m.delivery_tag for m in restore}
    held = [after_s for m in live
            if m.call_id is not None and (m.call_id not in calls
                                          or calls[m.call_id].status in UNFINISHED)
            and (after_s := due[m.delivery_tag]) is not None]
    return DeliveredPlan(live=live, restore=restore, delete=tuple(
        m for m in delivered if m.delivery_tag in stale and m.delivery_tag not in kept),
        repair_due_s=max(held) if held else None)


def _plan_database(settings: Settings, first: BrokerCensus, second: BrokerCensus,
                   now_s: float, margin_s: float, unclaimed_margin_s: float,
                   held_after_s: float) -> DeliveredPlan:
    """:func:`plan_delivered` of a database broker's second census, with its calls' states
    read after it (a row delivered between the censuses has its call read too). Rows
    delivered before ``held_after_s`` are left out: a run has deleted them already, and a
    dry run counted them as deleted."""
    delivered = [m for m in second.unacked
                 if m.delivered_at_s is None or m.delivered_at_s >= held_after_s]
    with session_scope(settings) as session:
        calls = calls_by_external_id(session, sorted({
            m.call_id for m in delivered if m.call_id is not None}))
        states = {call_id: CallState(
            status=call.status,
            enqueued_at_s=call.enqueued_at.timestamp() if call.enqueued_at else None,
            updated_at_s=call.updated_at.timestamp(),
            attempts=call.attempts) for call_id, call in calls.items()}
    queued = frozenset(m.call_id for m in (*first.queued, *second.queued) if m.call_id)
    return plan_delivered(delivered, queued, states, now_s, margin_s, unclaimed_margin_s)


def recover(settings: Settings, min_age_s: float = RECOVERY_MIN_AGE_S,
            margin_s: float = STRANDED_MARGIN_S, dry_run: bool = False,
            send: Sender | None = None, app: Celery | None = None,
            unclaimed_margin_s: float = UNCLAIMED_MARGIN_S) -> RecoveryReport:
    """Restore stranded messages and send lost calls again (see the module docstring); on a
    database broker, also delete the delivered rows no worker can still hold.

    ``app``: the Celery app to read the broker with (the worker's own, in the task); by
    default a short-lived one for ``settings``. ConfigError on a broker that keeps nothing
    to recover (the in-memory one); TransientError when the broker or the database cannot be
    reached (nothing done then, run it again).
    """
    own_app = app is None
    app = app if app is not None else make_celery(settings, set_as_current=False)
    database = is_sqla_broker(str(app.conf.broker_url))
    deleted = 0
    held_after_s = time.time() - DATABASE_BROKER_MAX_HELD_S
    try:
        if database:
            # rows no worker can hold by any rule, deleted unread: the census stays small
            deleted = database_broker_rows(app, held_after_s, prefixes=(RUN_QUEUE_PREFIX,),
                                           delete=not dry_run)
        first = broker_census(app)
        if first is None:
            raise ConfigError("recovery is for a Redis or database broker (CALLMOOD_BROKER_URL "
                              "redis://... or sqla+...); this one keeps no message to recover")
        now = utcnow()
        with session_scope(settings) as session:
            awaiting = calls_awaiting_worker(
                session, sent_before=now - timedelta(seconds=min_age_s),
                claimed_before=now - timedelta(seconds=TASK_HARD_TIME_LIMIT_S + margin_s))
            requests, read = {}, {}
            claims = {c.external_call_id: c.attempts for c in awaiting if c.status == "processing"}
            held_calls = calls_by_external_id(session, sorted({
                m.call_id for m in first.unacked if m.call_id is not None}))
            processing = frozenset(c for c, call in held_calls.items()
                                   if call.status == "processing")
            for call in awaiting:
                try:
                    requests[call.external_call_id] = request_for_call(call)
                except PayloadError as e:  # one bad stored row must not stop every recovery
                    log.error("call %s cannot be sent again: %s", call.external_call_id, e)
                    continue
                read[call.external_call_id] = CallSendState.of(call)
        time.sleep(CENSUS_RECHECK_S)
        second = broker_census(app)
        assert second is not None  # same broker as the first census
        now_s = time.time()
        if database:
            plan = _plan_database(settings, first, second, now_s, margin_s, unclaimed_margin_s,
                                  held_after_s)
            stranded = list(plan.restore)
            censuses = [BrokerCensus(queued=(*first.queued, *second.queued),
                                     unacked=(*plan.live, *plan.restore))]
        else:
            still_held = {m.delivery_tag for m in second.unacked}
            due = {m.delivery_tag for m in (
                *stranded_messages(first.unacked, now_s, margin_s),
                *unclaimed_messages(first.unacked, now_s, processing, unclaimed_margin_s))}
            stranded = [m for m in first.unacked if m.delivery_tag in due & still_held]
            censuses = [first, second]
        lost, stuck = split_stuck(lost_calls(list(requests), censuses), claims)
        tags = [str(m.delivery_tag) for m in stranded]
        if database and not dry_run:
            # each row only as the census saw it: another recovery may have got there first
            done = set(restore_delivered(app, tags))
            stranded = [m for m in stranded if m.delivery_tag in done]
            deleted += delete_delivered(app, [str(m.delivery_tag) for m in plan.delete])
        elif database:
            deleted += len(plan.delete)
        elif tags and not dry_run:
            restore_unacked(app, tags)
        report = RecoveryReport(lost=tuple(lost), stranded=tuple(
            m.call_id or str(m.delivery_tag) for m in stranded), dry_run=dry_run,
            failed=tuple(stuck), deleted=deleted,
            repair_due_s=plan.repair_due_s if database else None)
        if dry_run:
            return report
        if stranded:
            log.warning("restored %d stranded message(s) to the queue: %s", len(stranded),
                        ", ".join(report.stranded))
        if not (lost or stuck):
            return report
    finally:
        if own_app:
            app.close()
    if stuck:
        with session_scope(settings) as session:
            marked = mark_all_failed(session, {read[external_id].call_id: (
                f"stuck: claimed {claims[external_id]} times and never finished (a worker "
                "killed at the hard time limit or by the OS, or a retry the broker lost); "
                "not sent again, use callmood retry") for external_id in stuck})
        # not one that finished after the census after all
        failed = [e for e in stuck if marked[read[e].call_id].status == "failed"]
        report = replace(report, failed=tuple(failed))
        if failed:
            log.error("failed %d call(s) that keep getting stuck: %s", len(failed),
                      ", ".join(failed))
    if lost:
        # Marked first, on the locked rows, then sent: two recoveries that read a call lost at
        # once (beat's and an operator's) sent it twice (a review). A send that fails gives
        # the marks back, so the next recovery sends them; a crash in between leaves them
        # pending and unsent, which the next recovery past min_age_s finds lost again.
        with session_scope(settings) as session:
            claimed = claim_resend(session, [read[c] for c in lost])
        mine = {state.call_id for state in claimed}
        taken = [c for c in lost if read[c].call_id not in mine]
        lost = [c for c in lost if read[c].call_id in mine]
        if taken:
            log.info("not sent again, sent or claimed meanwhile: %s", ", ".join(taken))
            report = replace(report, lost=tuple(lost))
    if lost:
        try:
            if send is not None:
                send([requests[c] for c in lost])
            else:
                with celery_sender(settings) as sender:
                    sender([requests[c] for c in lost])
        except Exception:
            # not sent (or part of it: those the next census sees in the queue, not lost)
            with session_scope(settings) as session:
                release_enqueue(session, claimed)
            raise
        log.warning("sent %d lost call(s) again: %s", len(lost), ", ".join(lost))
    return report
