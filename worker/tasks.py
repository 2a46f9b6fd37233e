"""The Celery task: ids and URIs in, a row in the database out. Never audio through the broker.

Retry policy follows the error hierarchy alone: PayloadError and InputError fail the call
(retrying cannot help), TransientError retries with capped exponential backoff and jitter,
anything unexpected fails the call with its type and message.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as KombuOperationalError

from worker.audio import probe_duration_s
from worker.celery_app import (
    ANALYZE_TASK_NAME,
    NIGHTLY_SCAN_TASK_NAME,
    RECOVERY_TASK_NAME,
    REDIS_MAX_HELD_COUNTDOWN_S,
    TASK_QUEUE,
    app,
    time_limits_s,
)
from worker.db import session_scope
from worker.errors import ModelError, PartialSendError, PayloadError, TransientError
from worker.jobs import MAX_TASK_RETRIES, CallOutcome, process_call
from worker.settings import Settings, get_settings, redact_url
from worker.store import (
    CallRequest,
    find_call,
    is_valid_external_id,
    mark_failed,
    record_rejected,
    refresh_batch_of,
    register_call,
)

log = logging.getLogger(__name__)

TASK_NAME = ANALYZE_TASK_NAME
MAX_RETRIES = MAX_TASK_RETRIES
RETRY_BASE_S = 2.0
RETRY_CAP_S = float(REDIS_MAX_HELD_COUNTDOWN_S)  # the visibility timeout allows for it
OUTAGE_MAX_HELD_RETRIES = 288
"""Retries at RETRY_CAP_S (24 h) a call is held for past its bounded retries while its
failure cannot be written (the database still down); then it is acked and logged, so an
error that is not an outage (a SQLite file made read-only) cannot hold it for ever."""
SEND_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.5, "interval_step": 1.0,
                     "interval_max": 2.0}
"""Publishing retries of a producer: a broker restart of a few seconds is ridden out."""


def retry_delay_s(retries: int, rng: random.Random | None = None) -> float:
    """Backoff before retry number ``retries`` + 1: capped exponential, jittered to 50-100 %."""
    ceiling = min(RETRY_CAP_S, RETRY_BASE_S * 2.0 ** retries)
    return ceiling * (rng or random).uniform(0.5, 1.0)


# Celery ships no type hints; the decorator returns a Task around the typed function.
@app.task(name=TASK_NAME, bind=True, max_retries=MAX_RETRIES)  # type: ignore[untyped-decorator]
def analyze_recording(self: Task[Any, Any], **payload: Any) -> dict[str, Any]:
    """Analyse one recording named by ``uri`` and store the result under ``call_id``."""
    try:
        request = CallRequest.from_payload(payload)
    except PayloadError as e:
        return _reject(payload, str(e)).as_dict()
    settings = get_settings()
    try:
        return process_call(request, settings, interrupts=(SoftTimeLimitExceeded,)).as_dict()
    except SoftTimeLimitExceeded:
        # failed as an 'unexpected error' named only "SoftTimeLimitExceeded()" (a review)
        soft_s = (self.request.timelimit or (None, None))[1] or self.app.conf.task_soft_time_limit
        reason = (f"the analysis ran past its time limit of {float(soft_s):g} s (the limit "
                  "grows with the recording's length: a stuck decode or an overloaded worker?);"
                  " callmood retry runs it again")
        log.error("call %s: %s", request.external_call_id, reason)
        status = _fail_quietly(settings, request, reason)
        if status == "done":
            return CallOutcome.superseded_run(request.external_call_id, reason).as_dict()
        return CallOutcome("failed", request.external_call_id, reason=reason).as_dict()
    except (TransientError, ModelError) as e:
        if self.request.retries >= MAX_RETRIES:
            reason = f"gave up after {MAX_RETRIES} retries: {e}"
            log.error("call %s: %s", request.external_call_id, reason)
            status = _fail_quietly(settings, request, reason)
            if status == "done":
                return CallOutcome.superseded_run(request.external_call_id, reason).as_dict()
            if (status is not None
                    or self.request.retries >= MAX_RETRIES + OUTAGE_MAX_HELD_RETRIES):
                return CallOutcome("failed", request.external_call_id, reason=reason).as_dict()
            # The failure cannot be written either: the database is down. Acked now, the call
            # would be in neither the broker nor the database (a producer's send_task made no
            # row), so it waits at the backoff cap until the database answers, and then runs.
            log.error("call %s: kept in the queue, retried every %.0f s until the database "
                      "answers", request.external_call_id, RETRY_CAP_S)
            # (Celery reads max_retries=None as the task's own limit: one more, each time)
            raise self.retry(exc=e, countdown=RETRY_CAP_S,
                             max_retries=self.request.retries + 1) from e
        delay_s = retry_delay_s(self.request.retries)
        log.warning("call %s: %s; retry %d/%d in %.1f s", request.external_call_id, e,
                    self.request.retries + 1, MAX_RETRIES, delay_s)
        raise self.retry(exc=e, countdown=delay_s) from e


def _fail_quietly(settings: Settings, request: CallRequest, reason: str) -> str | None:
    """Mark the call failed with ``reason``, registering it first when it has no row (a
    producer's send_task whose every claim met a database error: acked without a row, it
    would be in neither the broker nor the database, where `callmood retry` finds failed
    calls). The call's status after it: ``done`` when a concurrent run stored the analysis
    meanwhile (kept; a requested reprocess that gave up fails all the same, since it may
    never have run); None when the database cannot be reached to write it."""
    try:
        with session_scope(settings) as session:
            call = find_call(session, request.external_call_id) or register_call(session,
                                                                                  request)
            call = mark_failed(session, call.id, reason, keep_done=not request.reprocess)
            refresh_batch_of(session, call)
            return call.status
    except TransientError as e:
        log.error("call %s: could not record the failure either: %s",
                  request.external_call_id, e)
        return None


def _reject(payload: Mapping[str, Any], reason: str) -> CallOutcome:
    """A payload that did not validate: record a failed row when it names a usable call id."""
    call_id = payload.get("call_id")
    usable = is_valid_external_id(call_id)
    log.error("rejected payload for call %r: %s", call_id if usable else None, reason)
    if not usable:
        return CallOutcome("rejected", None, reason=reason)
    uri = payload.get("uri")
    settings = get_settings()
    try:
        with session_scope(settings) as session:
            # a scan's call: its batch may be finished now
            refresh_batch_of(session, record_rejected(session, str(call_id),
                                                      uri if isinstance(uri, str) else "",
                                                      reason))
    except TransientError as e:
        log.error("call %s: could not record the rejection: %s", call_id, e)
    return CallOutcome("rejected", str(call_id), reason=reason)


def send_analysis(celery: Celery, requests: Sequence[CallRequest],
                  queue: str = TASK_QUEUE) -> list[str]:
    """Enqueue one analysis task per request by name; returns the Celery task ids.

    A broker that cannot be reached raises PartialSendError, a TransientError that carries the
    ids of the tasks published before it (Celery's own publish retry, a few attempts within
    seconds, has run out by then).
    """
    ids: list[str] = []
    try:
        with celery.producer_or_acquire() as producer:
            for request in requests:
                soft_s, hard_s = time_limits_s(probe_duration_s(request.uri))
                result = celery.send_task(TASK_NAME, kwargs=request.to_payload(), queue=queue,
                                          producer=producer, retry=True,
                                          retry_policy=SEND_RETRY_POLICY,
                                          soft_time_limit=soft_s, time_limit=hard_s)
                ids.append(str(result.id))
    except (KombuOperationalError, OSError) as e:
        raise PartialSendError(
            f"broker unavailable ({redact_url(celery.conf.broker_url or '')}) after sending "
            f"{len(ids)} of {len(requests)}: {e}", ids) from e
    return ids


# Thin like analyze_recording: the scan itself is worker.batch.scan_inboxes. On Redis, acks_late
# and the recovery make a scan cut short by a lost worker run again; the database broker's
# recovery restores analyses only, so there the next night's scan covers the rest. Either way
# safe: the scan enqueues each file once.
@app.task(name=NIGHTLY_SCAN_TASK_NAME, autoretry_for=(TransientError,),  # type: ignore[untyped-decorator]
          max_retries=MAX_RETRIES, retry_backoff=RETRY_BASE_S, retry_backoff_max=RETRY_CAP_S,
          retry_jitter=True)
def nightly_scan() -> dict[str, Any]:
    """Scan the inbox folders and enqueue every recording not seen before (beat runs it)."""
    from worker.batch import scan_inboxes

    report = scan_inboxes(get_settings(), source="nightly",
                          send=lambda requests: send_analysis(app, requests))
    return report.as_dict()


@app.task(name=RECOVERY_TASK_NAME, autoretry_for=(TransientError,),  # type: ignore[untyped-decorator]
          max_retries=2, retry_backoff=RETRY_BASE_S, retry_jitter=True)
def recover_lost() -> dict[str, Any]:
    """Send again calls whose message the broker lost; restore stranded ones (beat runs it)."""
    from worker.recovery import recover

    report = recover(get_settings(), send=lambda requests: send_analysis(app, requests), app=app)
    return report.as_dict()
