"""The task's contract, run eagerly in-process: payload validation, and the retry policy
(InputError fails, TransientError retries, anything else fails) recorded in the database."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from tests.audio_fixtures import fake_analysis
from worker import db, jobs, store, tasks
from worker.celery_app import app as celery_app
from worker.celery_app import broker_transport_options
from worker.errors import AudioDecodeError, ModelError, PayloadError, TransientError
from worker.schema import Call
from worker.settings import Settings

GOOD: dict[str, Any] = {"uri": "/calls/a.wav", "call_id": "CC-100", "agent_id": "a-1",
                        "team": "blue", "queue": "billing", "customer_ref": "c-9",
                        "started_at": "2026-01-31T09:15:00Z", "metadata": {"k": [1, 2]}}


@pytest.mark.parametrize(("change", "field"), [
    ({"uri": None}, "uri"),
    ({"uri": 42}, "uri"),
    ({"uri": "x" * 5000}, "uri"),
    # opened percent-decoded: a NUL the OS refuses before any decode error could name it
    ({"uri": "file:///rec/a%00.wav"}, "uri: contains a NUL"),
    ({"uri": "file://nas/rec/a.wav"}, "uri: the file:// URI names host 'nas'"),
    # resolved against the worker's working directory, and every retry's
    ({"uri": "calls/a.wav"}, "is not an absolute path"),
    ({"uri": "~/a.wav"}, "is not an absolute path"),
    ({"uri": "file:calls/a.wav"}, "is not an absolute path"),
    ({"call_id": None}, "call_id"),
    ({"call_id": "has space"}, "call_id"),
    ({"call_id": "é"}, "call_id"),
    ({"call_id": "x" * 129}, "call_id"),
    ({"agent_id": 7}, "agent_id"),
    ({"team": "t" * 129}, "team"),
    ({"customer_ref": "a\nb"}, "customer_ref"),
    ({"started_at": "2026-01-31T09:15:00"}, "started_at"),
    ({"started_at": "yesterday"}, "started_at"),
    ({"started_at": 1700000000}, "started_at"),
    # valid ISO-8601, but before year 1 in UTC: the column could not store it
    ({"started_at": "0001-01-01T00:00:00+01:00"}, "started_at: .* [(]out of range[)]"),
    ({"metadata": [1, 2]}, "metadata"),
    ({"metadata": {"x": float("nan")}}, "metadata"),
    ({"metadata": {"x": "y" * 20_000}}, "metadata"),
    ({"audio": "AAAA"}, "unknown field"),
    ({"schema_version": 2}, "schema_version"),
    ({"schema_version": "1"}, "schema_version"),
    ({"schema_version": True}, "schema_version"),
    ({"reprocess": "yes"}, "reprocess"),
])
def test_bad_payloads_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadError, match=field):
        store.CallRequest.from_payload({**GOOD, **change})


def test_good_payload_round_trips() -> None:
    request = store.CallRequest.from_payload(GOOD)
    assert request.started_at == datetime(2026, 1, 31, 9, 15, tzinfo=UTC)
    assert store.CallRequest.from_payload(request.to_payload()) == request
    with pytest.raises(TypeError):
        request.metadata["k"] = 1  # type: ignore[index]  # frozen all the way down
    minimal = store.CallRequest.from_payload({"uri": "/a.wav", "call_id": "X"})
    assert minimal.metadata == {} and minimal.started_at is None and not minimal.reprocess
    payload = request.to_payload()
    assert payload["schema_version"] == store.PAYLOAD_SCHEMA_VERSION == 1
    assert set(payload) == set(store.PAYLOAD_FIELDS)


def test_retry_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(1)
    delays = [tasks.retry_delay_s(n, rng) for n in range(12)]
    for n, d in enumerate(delays):
        ceiling = min(tasks.RETRY_CAP_S, tasks.RETRY_BASE_S * 2 ** n)
        assert ceiling / 2 <= d <= ceiling
    assert len({round(d, 6) for d in delays[-3:]}) == 3  # jittered, not one fixed value


def _run(**payload: Any) -> dict[str, Any]:
    result: dict[str, Any] = tasks.analyze_recording.apply(kwargs=payload).get()
    return result


def _call(settings: Settings, external_id: str) -> Call | None:
    with db.session_scope(settings) as s:
        return store.find_call(s, external_id)


@pytest.fixture()
def migrated(callmood_env: Settings) -> Settings:
    db.upgrade(callmood_env.database_url)
    return callmood_env


def test_task_stores_the_analysis(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def analyze(uri: str, settings: Settings) -> Any:
        seen.append(uri)
        return fake_analysis(3)

    monkeypatch.setattr(jobs, "_analyze", analyze)
    assert _run(**GOOD) == {"status": "done", "call_id": "CC-100", "segments": 3,
                            "reason": None}
    # A second send of a finished call (a duplicate, or a redelivery whose ack was lost after
    # the commit) does no work; reprocess=true runs it again and replaces, not duplicates.
    again = _run(**GOOD)
    assert again["status"] == "skipped" and "reprocess" in again["reason"]
    assert seen == ["/calls/a.wav"]
    assert _run(**GOOD, reprocess=True)["status"] == "done"
    assert seen == ["/calls/a.wav"] * 2
    call = _call(migrated, "CC-100")
    assert call is not None
    assert (call.status, call.attempts, call.agent_id, call.team) == ("done", 1, "a-1", "blue")
    with db.session_scope(migrated) as s:
        assert len(store.segments_for_call(s, call.id)) == 3
    # a reprocess sent straight to the queue (no producer API) that moves the file and
    # corrects the agent: the row follows it; the team it leaves out stays
    moved = {k: v for k, v in GOOD.items() if k != "team"}
    assert _run(**{**moved, "uri": "/calls/moved.wav", "agent_id": "a-2"},
                reprocess=True)["status"] == "done"
    assert seen[-1] == "/calls/moved.wav"
    call = _call(migrated, "CC-100")
    assert call is not None and (call.source_uri, call.agent_id, call.team) == (
        "/calls/moved.wav", "a-2", "blue")


def test_a_task_for_a_registered_pending_call_stores_the_file_it_analysed(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call registered by a producer whose send failed, then sent straight to the queue
    with another file and agent: the row names what was analysed."""
    monkeypatch.setattr(jobs, "_analyze", lambda uri, settings: fake_analysis(2))
    with db.session_scope(migrated) as s:
        store.register_call(s, store.CallRequest(uri="/calls/wrong.wav",
                                                 external_call_id="CC-100", agent_id="old"))
    assert _run(**GOOD)["status"] == "done"
    call = _call(migrated, "CC-100")
    assert call is not None and (call.source_uri, call.agent_id) == (GOOD["uri"], GOOD["agent_id"])


def test_input_error_fails_without_retry(migrated: Settings,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def analyze(uri: str, settings: Settings) -> Any:
        raise AudioDecodeError("a.wav could not be decoded (truncated or corrupt?)")

    monkeypatch.setattr(jobs, "_analyze", analyze)
    result = _run(**GOOD)
    assert result["status"] == "failed" and "truncated" in result["reason"]
    call = _call(migrated, "CC-100")
    assert call is not None
    assert (call.status, call.attempts) == ("failed", 1)
    assert call.failure_reason == "a.wav could not be decoded (truncated or corrupt?)"


def test_a_failed_rerun_keeps_the_last_analysis_in_the_reports(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reprocess after a model upgrade whose recording was archived since: the call fails
    (and says why, and that its analysis was kept), but it stays in every report with the
    segments of its last good run, rather than vanishing from the history."""
    from analytics.reports import build_report

    monkeypatch.setattr(jobs, "_analyze", _scripted([
        fake_analysis(3, model_version="m-1"),
        AudioDecodeError("cannot open /calls/a.wav: No such file or directory")]))
    assert _run(**GOOD)["status"] == "done"
    with db.session_scope(migrated) as s:
        before = build_report("calls", s)
    result = _run(**GOOD, reprocess=True)
    assert result["status"] == "failed" and "No such file" in result["reason"]
    call = _call(migrated, "CC-100")
    assert call is not None and (call.status, call.model_version) == ("failed", "m-1")
    assert call.failure_reason == ("re-run failed, the analysis by m-1 kept: cannot open "
                                   "/calls/a.wav: No such file or directory")
    with db.session_scope(migrated) as s:
        after = build_report("calls", s)
        assert len(store.segments_for_call(s, call.id)) == 3
    assert after["call"].tolist() == ["CC-100"]
    pd.testing.assert_frame_equal(after, before)
    # a call that never had an analysis is not reported, whatever its status
    monkeypatch.setattr(jobs, "_analyze", _scripted([AudioDecodeError("truncated")]))
    assert _run(**{**GOOD, "call_id": "CC-101"})["status"] == "failed"
    with db.session_scope(migrated) as s:
        assert build_report("calls", s)["call"].tolist() == ["CC-100"]


def _scripted(outcomes: list[Any]) -> Any:
    """An ``_analyze`` that raises or returns ``outcomes`` in turn, one per attempt."""
    def analyze(uri: str, settings: Settings) -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return analyze


def test_transient_error_retries_then_succeeds(migrated: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes: list[Any] = [TransientError("db down"), TransientError("db down"),
                           fake_analysis(2)]

    monkeypatch.setattr(jobs, "_analyze", _scripted(outcomes))
    assert _run(**GOOD)["status"] == "done"
    assert outcomes == []
    call = _call(migrated, "CC-100")
    assert call is not None and (call.status, call.attempts) == ("done", 3)


def test_transient_error_gives_up_after_bounded_retries(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def analyze(uri: str, settings: Settings) -> Any:
        calls.append(1)
        raise TransientError("broker gone")

    monkeypatch.setattr(jobs, "_analyze", analyze)
    result = _run(**GOOD)
    assert result["status"] == "failed" and "gave up" in result["reason"]
    assert len(calls) == tasks.MAX_RETRIES + 1
    call = _call(migrated, "CC-100")
    assert call is not None and call.status == "failed"
    assert call.failure_reason is not None and "broker gone" in call.failure_reason


def test_giving_up_after_a_redelivery_stored_the_call_leaves_it_done(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last retry of a run meets an outage while its redelivery stores the analysis: the
    give-up keeps the done call and says so. A requested reprocess that gives up still
    fails the call (its analysis kept): it may never have run, and the failures list is
    where an operator finds it to retry."""
    state = {"runs": 0}

    def analyze(uri: str, settings: Settings) -> Any:
        state["runs"] += 1
        if state["runs"] == tasks.MAX_RETRIES + 1:  # the last retry: the redelivery finishes
            monkeypatch.setattr(jobs, "_analyze", lambda uri, settings: fake_analysis(2))
            assert _run(**GOOD)["status"] == "done"
        raise TransientError("broker gone")

    monkeypatch.setattr(jobs, "_analyze", analyze)
    result = _run(**GOOD)
    assert result["status"] == "skipped" and "gave up" in result["reason"]
    assert "concurrent run" in result["reason"]
    call = _call(migrated, "CC-100")
    assert call is not None and (call.status, call.failure_reason) == ("done", None)

    def process_call(request: Any, settings: Settings, **options: Any) -> Any:
        raise TransientError("database unavailable (postgresql://db/callmood)")

    monkeypatch.setattr("worker.tasks.process_call", process_call)
    assert _run(**GOOD, reprocess=True)["status"] == "failed"
    call = _call(migrated, "CC-100")
    assert call is not None and call.status == "failed"
    assert call.failure_reason is not None and call.failure_reason.startswith(
        "re-run failed, the analysis by ")


def test_a_database_outage_longer_than_the_retries_keeps_the_call(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer's send_task made no row, and the database stays down past the bounded
    retries: the failure cannot be written, so acking would lose the call from the broker
    and the database alike. It waits at the backoff cap instead, and runs once the database
    answers."""
    down_for = tasks.MAX_RETRIES + 3
    attempts: list[int] = []
    from worker.db import session_scope as real_scope
    from worker.jobs import process_call as real_process_call


    def process_call(request: Any, settings: Settings, **options: Any) -> Any:
        attempts.append(1)
        if len(attempts) <= down_for:
            raise TransientError("database unavailable (postgresql://db/callmood)")
        return real_process_call(request, settings)

    def session_scope(settings: Settings) -> Any:
        if len(attempts) <= down_for:
            raise TransientError("database unavailable (postgresql://db/callmood)")
        return real_scope(settings)

    delays: list[float] = []
    real_retry = tasks.analyze_recording.retry

    def retry(*args: Any, **kwargs: Any) -> Any:
        delays.append(kwargs.get("countdown", 0.0))
        return real_retry(*args, **kwargs)

    monkeypatch.setattr("worker.tasks.process_call", process_call)
    monkeypatch.setattr("worker.tasks.session_scope", session_scope)
    monkeypatch.setattr(tasks.analyze_recording, "retry", retry)
    monkeypatch.setattr(jobs, "_analyze", lambda uri, settings: fake_analysis(2))
    assert _run(**GOOD)["status"] == "done"
    assert len(attempts) == down_for + 1
    assert delays[tasks.MAX_RETRIES:] == [tasks.RETRY_CAP_S] * (down_for - tasks.MAX_RETRIES)
    call = _call(migrated, "CC-100")
    assert call is not None and call.status == "done"
    # held at most OUTAGE_MAX_HELD_RETRIES past the bounded ones: an error that is not an
    # outage (a read-only SQLite file) cannot hold a call for ever
    monkeypatch.setattr(tasks, "OUTAGE_MAX_HELD_RETRIES", 2)
    attempts.clear()
    down_for = 10 ** 6
    assert _run(**{**GOOD, "call_id": "CC-101"})["status"] == "failed"
    assert len(attempts) == tasks.MAX_RETRIES + 2 + 1


def test_giving_up_on_a_call_that_never_got_a_row_records_it_failed(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer's send_task whose every claim met a database error (no row was made) and the
    database answers again at the give-up: the call is written as failed with the reason, so
    `callmood failures` and `retry` see it, not acked into nothing."""
    def process_call(request: Any, settings: Settings, **options: Any) -> Any:
        raise TransientError("database unavailable (postgresql://db/callmood)")

    monkeypatch.setattr("worker.tasks.process_call", process_call)
    assert _call(migrated, "CC-100") is None
    result = _run(**GOOD)
    assert result["status"] == "failed"
    call = _call(migrated, "CC-100")
    assert call is not None and call.status == "failed"
    assert call.source_uri == GOOD["uri"]
    assert call.failure_reason is not None and call.failure_reason.startswith(
        f"gave up after {tasks.MAX_RETRIES} retries: database unavailable")


def test_a_broken_model_is_retried_not_blamed_on_the_call(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad deploy (a card for another file) fails no call while it is fixed in time; left
    broken, the call fails after the bounded retries with the model named as the reason."""
    outcomes: list[Any] = [ModelError("model card emotion-v1.card.json describes another "
                                      "file"), fake_analysis(2)]

    monkeypatch.setattr(jobs, "_analyze", _scripted(outcomes))
    assert _run(**GOOD)["status"] == "done" and outcomes == []

    def broken(uri: str, settings: Settings) -> Any:
        raise ModelError("emotion model not found: /models/x.onnx (set CALLMOOD_MODEL_PATH)")

    monkeypatch.setattr(jobs, "_analyze", broken)
    result = _run(**{**GOOD, "call_id": "CC-101"})
    assert result["status"] == "failed"
    assert result["reason"].startswith(f"gave up after {tasks.MAX_RETRIES} retries: emotion "
                                       "model not found")


def test_a_broken_installation_is_retried_not_blamed_on_the_call(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime (or webrtcvad, soxr) that cannot be imported failed every call for good
    as 'ImportError: ...', at once (a review): it is the worker's fault, retried as a
    broken model is, and named as such when the retries run out."""
    import sys

    monkeypatch.setitem(sys.modules, "worker.pipeline", None)   # its import now fails
    result = _run(**GOOD)
    assert result["status"] == "failed"
    assert result["reason"].startswith(f"gave up after {tasks.MAX_RETRIES} retries: the "
                                       "analysis cannot be imported")


def test_unexpected_error_fails_the_call_not_the_worker(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def analyze(uri: str, settings: Settings) -> Any:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(jobs, "_analyze", analyze)
    result = _run(**GOOD)
    assert result["status"] == "failed"
    call = _call(migrated, "CC-100")
    assert call is not None and call.failure_reason == "ZeroDivisionError: boom"


def test_a_call_past_its_soft_time_limit_fails_saying_so(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason was 'SoftTimeLimitExceeded: SoftTimeLimitExceeded()', logged as an
    unexpected error with a traceback (a review): it names the limit and the way out."""
    from celery.exceptions import SoftTimeLimitExceeded

    def analyze(uri: str, settings: Settings) -> Any:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(jobs, "_analyze", analyze)
    # as a sent task carries its limits (tasks.send_analysis sizes them from the header)
    monkeypatch.setattr(tasks.analyze_recording, "soft_time_limit", 135.0)
    result = _run(**GOOD)
    assert result["status"] == "failed"
    call = _call(migrated, "CC-100")
    assert call is not None and call.status == "failed"
    assert call.failure_reason is not None and call.failure_reason.startswith(
        "the analysis ran past its time limit of 135 s")
    assert "callmood retry runs it again" in call.failure_reason


def test_a_run_failing_after_its_redelivery_stored_the_call_leaves_it_done(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """acks_late redelivers a slow call to a second worker: that run stores the analysis
    while the first is still busy, and the first then fails. The call stays done with the
    stored analysis; the failing run reports why it did not count."""
    outcomes: list[Any] = [fake_analysis(2, model_version="m-1")]

    def analyze(uri: str, settings: Settings) -> Any:
        if outcomes:  # the original run: its redelivery runs and finishes meanwhile
            redelivery = outcomes.pop()
            monkeypatch.setattr(jobs, "_analyze", lambda uri, settings: redelivery)
            assert _run(**GOOD)["status"] == "done"
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(jobs, "_analyze", analyze)
    result = _run(**GOOD)
    assert result["status"] == "skipped" and "concurrent run" in result["reason"]
    call = _call(migrated, "CC-100")
    assert call is not None
    assert (call.status, call.model_version, call.failure_reason) == ("done", "m-1", None)
    with db.session_scope(migrated) as s:
        assert len(store.segments_for_call(s, call.id)) == 2


def test_an_analysis_the_schema_cannot_hold_fails_the_call(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    def analyze(uri: str, settings: Settings) -> Any:
        analysis = fake_analysis(2)
        bad = dataclasses.replace(analysis.segments[0], probabilities={"calm": 1.0})
        return dataclasses.replace(analysis, segments=(bad, *analysis.segments[1:]))

    monkeypatch.setattr(jobs, "_analyze", analyze)
    assert _run(**GOOD)["status"] == "failed"
    call = _call(migrated, "CC-100")
    assert call is not None and call.status == "failed"
    assert call.failure_reason is not None and "calm" in call.failure_reason
    with db.session_scope(migrated) as s:
        assert store.segments_for_call(s, call.id) == []  # nothing half-written


def test_a_rejected_call_of_a_scan_finishes_its_batch_and_is_sent_again_next_scan(
        migrated: Settings) -> None:
    """A scan registered and sent the call; the worker rejects its payload (a sidecar's bad
    started_at): the batch is finished, not left open with nothing pending, and the next scan
    does not count the file as known, so the corrected payload is sent."""
    with db.session_scope(migrated) as s:
        batch_id = store.create_batch(s, "nightly").id
        request = store.CallRequest.from_payload(GOOD)
        store.reserve_for_enqueue(s, request, batch_id=batch_id)
        store.finish_batch_scan(s, batch_id, enqueued=1, skipped=0)
        hashes = [store.uri_sha256(request.uri)]
        assert store.enqueued_uri_hashes(s, hashes) == set(hashes)
    assert _run(**{**GOOD, "started_at": "31/01/2026"})["status"] == "rejected"
    with db.session_scope(migrated) as s:
        (counts,) = store.latest_batches(s, 1)
        assert (counts.failed, counts.pending) == (1, 0) and counts.finished_at is not None
        assert store.enqueued_uri_hashes(s, hashes) == set()


def test_bad_payload_records_a_failed_row_when_it_has_a_call_id(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def analyze(uri: str, settings: Settings) -> Any:
        raise AssertionError("a rejected payload must never reach the pipeline")

    monkeypatch.setattr(jobs, "_analyze", analyze)
    result = _run(**{**GOOD, "started_at": "2026-01-31 09:15"})
    assert result["status"] == "rejected"
    call = _call(migrated, "CC-100")
    assert call is not None and call.status == "failed" and call.attempts == 0
    assert call.failure_reason is not None and "started_at" in call.failure_reason
    assert _run(uri="/a.wav", call_id="bad id")["status"] == "rejected"
    assert _call(migrated, "bad id") is None
    with db.session_scope(migrated) as s:
        assert store.counts_by_status(s)["failed"] == 1


def test_a_future_schema_version_is_rejected_once_and_never_retried(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "_analyze", lambda uri, settings: fake_analysis(1))
    result = _run(**{**GOOD, "schema_version": 2})
    assert result["status"] == "rejected" and "accepts 1" in result["reason"]
    call = _call(migrated, "CC-100")
    assert call is not None and (call.status, call.attempts) == ("failed", 0)
    assert call.failure_reason is not None and "schema_version" in call.failure_reason
    # The producer fixes its payload: a rejected call was never worked on, so it runs, and
    # the row takes the corrected payload's labels (reports filter on them).
    assert call.agent_id is None and call.started_at is None
    assert _run(**GOOD)["status"] == "done"
    call = _call(migrated, "CC-100")
    assert call is not None and (call.status, call.agent_id, call.team) == ("done", "a-1", "blue")
    assert call.started_at is not None and call.source_uri == GOOD["uri"]


def test_only_json_travels_and_acks_are_late() -> None:
    conf = celery_app.conf
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_max_tasks_per_child == 200
    assert conf.task_soft_time_limit < conf.task_time_limit
    redis_options = broker_transport_options("redis://localhost:6379/0")
    # a held countdown retry, another task's hard limit, then its own run
    assert redis_options["visibility_timeout"] >= 2 * conf.task_time_limit + tasks.RETRY_CAP_S
    assert tasks.analyze_recording.name == "callmood.analyze_recording"


def test_a_recording_that_keeps_killing_its_worker_is_failed_not_looped(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "_analyze", lambda uri, settings: fake_analysis(1))
    with db.session_scope(migrated) as s:
        call_id = store.register_call(s, store.CallRequest.from_payload(GOOD)).id
        for _ in range(jobs.MAX_ATTEMPTS):  # each claim ended by a lost worker process
            store.claim_for_processing(s, call_id)
    result = _run(**GOOD)
    assert result["status"] == "failed" and "gave up" in result["reason"]
    call = _call(migrated, "CC-100")
    assert call is not None and call.status == "failed"
    assert call.attempts == jobs.MAX_ATTEMPTS + 1


def test_time_limits_scale_with_the_recording_and_stay_under_the_ceiling() -> None:
    from worker.celery_app import (
        TASK_HARD_TIME_LIMIT_S,
        TASK_MIN_SOFT_TIME_LIMIT_S,
        TASK_SOFT_TIME_LIMIT_S,
        time_limits_s,
    )

    assert time_limits_s(None) == (TASK_SOFT_TIME_LIMIT_S, TASK_HARD_TIME_LIMIT_S)
    short_soft, short_hard = time_limits_s(120.0)
    long_soft, _ = time_limits_s(3600.0)
    assert TASK_MIN_SOFT_TIME_LIMIT_S < short_soft < long_soft < TASK_SOFT_TIME_LIMIT_S
    assert short_hard > short_soft
    assert time_limits_s(100 * 3600.0)[0] == TASK_SOFT_TIME_LIMIT_S  # capped: visibility timeout


def test_sent_tasks_carry_time_limits_sized_from_the_file_header(tmp_path: Any) -> None:
    import numpy as np
    import soundfile as sf
    from celery import Celery

    from worker.celery_app import TASK_QUEUE, time_limits_s
    from worker.store import CallRequest

    wav = tmp_path / "call.wav"
    sf.write(str(wav), np.zeros((8000 * 90, 2), dtype=np.int16), 8000, subtype="ULAW")
    app = Celery("probe", broker=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    requests = [CallRequest(uri=str(wav), external_call_id="T-1"),
                CallRequest(uri=str(tmp_path / "not-visible-here.wav"), external_call_id="T-2")]
    assert len(tasks.send_analysis(app, requests)) == 2
    with app.connection() as conn:
        queue = conn.SimpleQueue(TASK_QUEUE)
        limits = []
        for _ in requests:
            message = queue.get(timeout=10)
            limits.append(tuple(message.headers["timelimit"]))
            message.ack()
        queue.close()
    soft, hard = time_limits_s(90.0)
    default_soft, default_hard = time_limits_s(None)
    assert limits == [(hard, soft), (default_hard, default_soft)]   # Celery: (hard, soft)


def test_pool_processes_pin_blas_to_one_thread() -> None:
    import subprocess
    import sys

    # In a fresh interpreter, as in a Celery child after worker_process_init fires.
    code = ("import numpy; from threadpoolctl import threadpool_info; "
            "from worker.celery_app import one_blas_thread_per_child; "
            "one_blas_thread_per_child(); "
            "print(max(i['num_threads'] for i in threadpool_info()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "2"})
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize(("newer_uri", "through_producer"), [
    ("/calls/new.wav", False), ("/calls/a.wav", False), ("/calls/a.wav", True)])
def test_a_slow_run_does_not_overwrite_a_newer_runs_analysis(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch, newer_uri: str,
        through_producer: bool) -> None:
    """A reprocess (another file, or a model upgrade of the same file) claimed the call while
    its original run was still analysing, and stored first; the original then replaced that
    analysis, the row naming the new file with the old file's segments (a review). Sent by a
    producer, the reprocess restarts the attempt count, and held the original's attempt
    number (a second review): runs are told apart by their claims."""
    import threading
    import time

    newer_stored = threading.Event()

    def analyze(uri: str, settings: Settings) -> Any:
        if threading.current_thread().name == "original":
            assert newer_stored.wait(timeout=60)
            return fake_analysis(3, model_version="m-1", sha256="aa" * 32)
        return fake_analysis(5, model_version="m-2", sha256="bb" * 32)

    monkeypatch.setattr(jobs, "_analyze", analyze)
    original = store.CallRequest(uri="/calls/a.wav", external_call_id="CC-7", agent_id="a")
    newer = store.CallRequest(uri=newer_uri, external_call_id="CC-7", agent_id="a",
                              reprocess=True)
    outcomes: dict[str, jobs.CallOutcome] = {}
    thread = threading.Thread(name="original", target=lambda: outcomes.setdefault(
        "original", jobs.process_call(original, migrated)))
    thread.start()
    deadline = time.monotonic() + 60
    while (claimed := _call(migrated, "CC-7")) is None or claimed.status != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if through_producer:
        with db.session_scope(migrated) as s:
            (reserved,) = store.reserve_all(s, [newer])
            assert reserved.send and reserved.call.attempts == 0
    assert jobs.process_call(newer, migrated).status == "done"
    newer_stored.set()
    thread.join(timeout=60)
    assert outcomes["original"].status == "skipped" and outcomes["original"].superseded
    call = _call(migrated, "CC-7")
    assert call is not None
    assert (call.status, call.source_uri, call.model_version, call.content_sha256) == (
        "done", newer_uri, "m-2", "bb" * 32)
    with db.session_scope(migrated) as s:
        assert len(store.segments_for_call(s, call.id)) == 5


def test_a_message_reusing_a_done_calls_id_for_another_file_says_so(
        migrated: Settings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """send_task straight to the queue with a known call id and another file was skipped as
    a duplicate with an INFO line: the new recording was never analysed, and nothing said
    why (a review). It is still not analysed without reprocess, but says so as an error."""
    monkeypatch.setattr(jobs, "_analyze", lambda uri, settings: fake_analysis(2))
    assert _run(**GOOD)["status"] == "done"
    with caplog.at_level("ERROR", logger="worker.jobs"):
        other = _run(**{**GOOD, "uri": "/calls/other-day.wav"})
    assert other["status"] == "skipped"
    assert "another file (/calls/a.wav)" in other["reason"] and "reprocess" in other["reason"]
    assert "a message naming another file (/calls/other-day.wav)" in caplog.text
    same = _run(**GOOD)   # the same file again: the quiet duplicate it always was
    assert same["status"] == "skipped" and "another file" not in same["reason"]
