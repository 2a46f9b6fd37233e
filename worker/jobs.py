"""Processing one call, without Celery: register, claim, analyse, store or fail.

The Celery task (``worker.tasks``) and ``callmood analyze`` (in-process) both call
:func:`process_call`, so the embedded CLI and production run the same steps. Retrying is the
caller's decision: TransientError propagates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from worker.db import session_scope
from worker.errors import InputError, ModelError, TransientError
from worker.settings import Settings
from worker.store import (
    CallRequest,
    claim_for_processing,
    is_duplicate_delivery,
    lock_call,
    lock_recordings,
    mark_failed,
    names_other_file,
    refresh_batch_of,
    register_call,
    save_analysis,
    superseded_by_newer_run,
    update_from_request,
    was_rejected,
)

if TYPE_CHECKING:
    from worker.pipeline import RecordingAnalysis

log = logging.getLogger(__name__)

MAX_TASK_RETRIES = 6
"""Retries of a TransientError by the Celery task (worker.tasks) before the call fails."""
MAX_ATTEMPTS = MAX_TASK_RETRIES + 3
"""Claims within one run of a call beyond this fail it: a recording that keeps killing its
worker (redelivered by task_reject_on_worker_lost) must not loop forever."""

def _analyze(uri: str, settings: Settings) -> RecordingAnalysis:
    # Imported here: the pipeline pulls in numpy/onnxruntime, which the producer side and the
    # store never need. A broken import is the installation's fault, not the call's: retried
    # as a broken model is (it failed every call for good, a review).
    try:
        from worker.pipeline import analyze_file
    except ImportError as e:
        raise ModelError(f"the analysis cannot be imported ({e}): this worker's installation "
                         "is broken; reinstall callmood") from e
    return analyze_file(uri, settings)


@dataclass(frozen=True)
class CallOutcome:
    """How processing one call ended (the task returns it as a dict)."""

    status: str
    """done, failed, skipped (already finished: reprocess not asked for, or a concurrent
    run of the call stored its analysis before this one failed), or rejected (the payload
    did not validate)."""
    external_call_id: str | None
    segments: int = 0
    reason: str | None = None
    superseded: bool = False
    """This run failed after a concurrent run of the call stored its analysis (status
    skipped): ``reason`` says why this run failed."""

    @classmethod
    def superseded_run(cls, external_call_id: str, reason: str) -> CallOutcome:
        """This run failed for ``reason``, and a concurrent run of the call stored its
        analysis first (``store.mark_failed`` kept it done)."""
        return cls("skipped", external_call_id,
                   reason=f"this run failed ({reason}); a concurrent run of the call stored its "
                          "analysis first, which stands", superseded=True)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "call_id": self.external_call_id,
                "segments": self.segments, "reason": self.reason}


def process_call(request: CallRequest, settings: Settings,
                 transient: Literal["raise", "fail"] = "raise",
                 interrupts: tuple[type[BaseException], ...] = ()) -> CallOutcome:
    """Register, claim, analyse and store one call; no Celery in here.

    InputError and unexpected errors fail the call (recorded in the database); TransientError
    propagates, so the caller decides whether and when to try again. With ``transient="fail"``
    (a caller with no retry to offer: ``callmood analyze``) a TransientError while reading or
    storing the recording fails the claimed call with its reason instead, so it is not left
    "processing"; one while the call is registered or claimed (the database away) propagates.
    ``interrupts``: exceptions the caller handles itself (the task's soft time limit, which
    would otherwise fail the call as an unexpected error named only by its class).
    """
    with session_scope(settings) as session:
        # decided on the locked row: a run of this call committing meanwhile (a redelivery
        # beside a slow original) is seen as done and skipped, not claimed for a new run
        call = lock_call(session, register_call(session, request).id)
        if is_duplicate_delivery(call, request):
            if names_other_file(call, request):
                # a message sent straight to the queue reusing a call id for another
                # recording: not a duplicate, and not analysed without reprocess; said loudly
                # (enqueue refuses it at the producer; a review)
                log.error("call %s already %s with %s; a message naming another file (%s) "
                          "is not analysed: send reprocess=true to replace it, or a new call "
                          "id", request.external_call_id, call.status, call.source_uri,
                          request.uri)
                return CallOutcome("skipped", request.external_call_id,
                                   reason=f"already {call.status} with another file "
                                          f"({call.source_uri}); send reprocess=true to "
                                          "replace it, or a new call id")
            # A second send of a finished call (or a redelivery after its run committed):
            # no new work and no new rows; reprocess=true asks for a new run.
            log.info("call %s already %s; skipped (reprocess not requested)",
                     request.external_call_id, call.status)
            return CallOutcome("skipped", request.external_call_id,
                               reason=f"already {call.status}; send reprocess=true to analyse "
                                      "it again")
        if request.reprocess or was_rejected(call) or call.status == "pending":
            # the newer word on the call (a reprocess, the corrected payload of a rejected
            # call, or a task sent straight to the queue for a call registered before): the
            # file analysed now and its labels, so reports and retries use them
            update_from_request(call, request)
        call = claim_for_processing(session, call.id)
        call_id, attempts, claim = call.id, call.attempts, call.claims
        if attempts > MAX_ATTEMPTS:
            reason = f"gave up after {attempts - 1} attempts (worker lost or retries exhausted)"
            refresh_batch_of(session, mark_failed(session, call_id, reason))
            return CallOutcome("failed", request.external_call_id, reason=reason)
    try:
        analysis = _analyze(request.uri, settings)
    except InputError as e:
        return _fail(settings, call_id, request.external_call_id, str(e))
    except TransientError as e:
        if transient == "fail":
            return _fail_transient(settings, call_id, request.external_call_id, e)
        raise
    except ModelError:
        # a broken model (a bad deploy, a card for another file) is the worker's fault, not
        # the call's: the task retries with backoff, so fixing the model saves the queue
        raise
    except interrupts:
        raise
    except Exception as e:  # any other failure fails this call, never the worker
        log.exception("call %s: unexpected error", request.external_call_id)
        return _fail(settings, call_id, request.external_call_id, f"{type(e).__name__}: {e}")
    try:
        with session_scope(settings) as session:
            # the recording's locks before the call's row, the order save_analysis keeps
            lock_recordings(session, call_id, analysis.content_sha256)
            if superseded_by_newer_run(lock_call(session, call_id), request.uri, claim):
                log.warning("call %s: a newer run of the call claimed it since this run did "
                            "(or it names another file now); this run's analysis is not stored",
                            request.external_call_id)
                return CallOutcome("skipped", request.external_call_id, superseded=True,
                                   reason="a newer run of the call stored its analysis or "
                                          "took another file meanwhile; this run's is dropped")
            refresh_batch_of(session, save_analysis(session, call_id, analysis))
    except TransientError as e:
        if transient == "fail":
            return _fail_transient(settings, call_id, request.external_call_id, e)
        raise
    except interrupts:
        raise
    except Exception as e:  # e.g. a label the schema lacks: rolled back, the call fails
        log.exception("call %s: could not store the analysis", request.external_call_id)
        return _fail(settings, call_id, request.external_call_id,
                     f"storing the analysis failed: {type(e).__name__}: {e}")
    return CallOutcome("done", request.external_call_id, segments=len(analysis.segments))


def _fail_transient(settings: Settings, call_id: int, external_call_id: str,
                    error: TransientError) -> CallOutcome:
    """Fail a claimed call on a temporary error no retry will follow; if the database cannot
    record that either, the original error propagates (the call stays claimed, as before)."""
    reason = (f"{error} (a temporary error, not retried here: callmood analyze --reprocess "
              "runs it again)")
    try:
        return _fail(settings, call_id, external_call_id, reason)
    except TransientError as unrecorded:
        raise error from unrecorded


def _fail(settings: Settings, call_id: int, external_call_id: str, reason: str) -> CallOutcome:
    with session_scope(settings) as session:
        call = mark_failed(session, call_id, reason)
        refresh_batch_of(session, call)
        if call.status == "done":
            # a concurrent run of this call (a redelivery beside a slow original) stored its
            # analysis after this run claimed it: that finished work stands
            log.warning("call %s: this run failed (%s), but a concurrent run stored its "
                        "analysis first; kept as done", external_call_id, reason)
            return CallOutcome.superseded_run(external_call_id, reason)
    log.warning("call %s failed: %s", external_call_id, reason)
    return CallOutcome("failed", external_call_id, reason=reason)


