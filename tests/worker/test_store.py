"""The store on a migrated database (SQLite and PostgreSQL): idempotent writes that never
commit, and the session scope that owns the transaction."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from bench.reserve_bench import counted_statements
from tests.audio_fixtures import fake_analysis
from tests.concurrency import errors_of_concurrent
from worker import db, store
from worker.errors import PayloadError, TransientError
from worker.schema import Batch, Call, Segment


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    db.upgrade(url)
    yield url


def _request(call_id: str = "CC-1", **changes: object) -> store.CallRequest:
    fields: dict[str, object] = dict(
        uri="/calls/a.wav", external_call_id=call_id, agent_id="agent-7", team="blue",
        queue="billing", customer_ref="cust-9",
        started_at=datetime(2026, 1, 31, 10, 15, tzinfo=timezone(timedelta(hours=1))),
        metadata={"campaign": "winter", "tags": ["vip"]})
    fields.update(changes)
    return store.CallRequest(**fields)  # type: ignore[arg-type]


def _count(url: str, model: type[Call] | type[Segment]) -> int:
    with db.session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_register_is_idempotent_by_external_id(db_url: str) -> None:
    with db.session_scope(db_url) as s:
        first = store.register_call(s, _request())
        first_id = first.id
    with db.session_scope(db_url) as s:
        again = store.register_call(s, _request(uri="/calls/other.wav", agent_id="x"))
        assert again.id == first_id
        assert again.source_uri == "/calls/a.wav"  # the existing row is returned unchanged
        other = store.register_call(s, _request("CC-2"))
        assert other.id != first_id
    assert _count(db_url, Call) == 2
    with db.session_scope(db_url) as s:
        call = s.get(Call, first_id)
        assert call is not None
        assert call.status == "pending" and call.attempts == 0
        assert call.started_at == datetime(2026, 1, 31, 9, 15, tzinfo=UTC)
        assert call.started_at.tzinfo is not None
        assert call.call_metadata == {"campaign": "winter", "tags": ["vip"]}
        assert call.created_at.tzinfo is not None


def test_a_reprocess_request_updates_the_calls_file_and_labels(db_url: str) -> None:
    with db.session_scope(db_url) as s:
        call_id = store.register_call(s, _request()).id
        store.mark_failed(s, store.claim_for_processing(s, call_id).id, "corrupt file")
    with db.session_scope(db_url) as s:
        # a plain duplicate is not sent and changes nothing
        kept = store.reserve_for_enqueue(s, _request(uri="/calls/b.wav", agent_id="x"))
        again = kept.call
        assert not kept.send and kept.before is None
        assert (again.source_uri, again.agent_id) == ("/calls/a.wav", "agent-7")
        # a reprocess request is the newer word: its file and agent; the labels it leaves
        # out keep their values, its metadata keys join the stored ones
        reserved = store.reserve_for_enqueue(s, _request(
            uri="/calls/b.wav", agent_id="agent-8", team=None, metadata={"fixed": True},
            reprocess=True))
        redo = reserved.call
        assert reserved.send and (redo.status, redo.attempts) == ("pending", 0)
        assert (redo.source_uri, redo.agent_id, redo.team) == ("/calls/b.wav", "agent-8", "blue")
        assert redo.source_uri_sha256 == store.uri_sha256("/calls/b.wav")
        assert redo.call_metadata == {"campaign": "winter", "tags": ["vip"], "fixed": True}
    assert _count(db_url, Call) == 1


def test_text_the_database_cannot_hold_is_made_printable(db_url: str) -> None:
    name = os.fsdecode(b"/in/\xe9t\xe9.wav")  # a Latin-1 name, as Python decodes it
    with db.session_scope(db_url) as s:
        call = store.record_rejected(s, "CC-9", name, f"{name} is empty (0 bytes)")
    with db.session_scope(db_url) as s:
        stored = store.find_call(s, "CC-9")
        assert stored is not None and stored.source_uri == "/in/\\xe9t\\xe9.wav"
        assert stored.failure_reason == "/in/\\xe9t\\xe9.wav is empty (0 bytes)"
    assert store.printable_text("d\ud800x") == "d\\ud800x" and call.id > 0
    # NUL: PostgreSQL's text refuses it, and the failure being recorded was lost with it
    with db.session_scope(db_url) as s:
        store.record_rejected(s, "CC-8", "/in/a\x00b.wav", "uri: '/in/a\x00b.wav' holds NUL")
    with db.session_scope(db_url) as s:
        stored = store.find_call(s, "CC-8")
        assert stored is not None and stored.source_uri == "/in/a\\x00b.wav"
        assert stored.failure_reason == "uri: '/in/a\\x00b.wav' holds NUL"


def test_calls_are_looked_up_by_tens_of_thousands_of_ids(db_url: str) -> None:
    """A recovery looks up every call a site delivered in the last hours: more ids than
    PostgreSQL's protocol takes bound parameters in one statement (65,535)."""
    with db.session_scope(db_url) as s:
        store.register_call(s, _request("CC-70000"))
    ids = [f"CC-{i}" for i in range(70_001)]
    with db.session_scope(db_url) as s:
        assert list(store.calls_by_external_id(s, ids)) == ["CC-70000"]
        assert store.calls_by_external_id(s, []) == {}


def test_register_twice_in_one_transaction_gives_one_row(db_url: str) -> None:
    with db.session_scope(db_url) as s:
        a = store.register_call(s, _request())
        b = store.register_call(s, _request())
        assert a is b
    assert _count(db_url, Call) == 1


def test_save_analysis_replaces_segments_on_rerun(db_url: str) -> None:
    with db.session_scope(db_url) as s:
        call_id = store.register_call(s, _request()).id
        store.claim_for_processing(s, call_id)
        store.save_analysis(s, call_id, fake_analysis(4, model_version="m1"))
    with db.session_scope(db_url) as s:
        claimed = store.claim_for_processing(s, call_id)  # a new run of a done call
        assert claimed.status == "processing" and claimed.attempts == 1
        assert store.claim_for_processing(s, call_id).attempts == 2  # redelivered mid-run
        store.save_analysis(s, call_id, fake_analysis(3, model_version="m2", sha256="cd" * 32))
    assert _count(db_url, Segment) == 3
    with db.session_scope(db_url) as s:
        call = s.get(Call, call_id)
        assert call is not None
        assert (call.status, call.model_version, call.content_sha256) == ("done", "m2", "cd" * 32)
        assert (call.channels, call.sample_rate, call.duration_s) == (2, 8000, 7.0)
        assert call.failure_reason is None and call.processed_at is not None
        segments = store.segments_for_call(s, call_id)
        assert [seg.start_s for seg in segments] == [0.0, 2.0, 4.0]
        assert [seg.role for seg in segments] == ["agent", "customer", "agent"]
        assert {seg.model_version for seg in segments} == {"m2"}
        assert segments[0].emotion == "angry"
        probs = segments[0].probabilities()
        assert probs["angry"] == pytest.approx(0.6)
        assert sum(probs.values()) == pytest.approx(1.0)


def test_content_holders_are_the_oldest_call_analysing_each_content(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inbox scan's "analysed already?" by content: every call holding an analysis, as
    the reports count them (one being re-analysed, or whose re-run failed with its analysis
    kept: a review found a copy sent during a bulk reprocess and counted twice), not a call
    with no analysis yet; the oldest where two analysed one recording; bounded IN lists."""
    monkeypatch.setattr(store, "LOOKUP_CHUNK", 2)
    with db.session_scope(db_url) as s:
        for name, content in (("old", "aa"), ("new", "aa"), ("other", "bb"), ("rerun", "cc"),
                              ("again", "ee")):
            call_id = store.register_call(s, _request(name)).id
            store.claim_for_processing(s, call_id)
            store.save_analysis(s, call_id, fake_analysis(1, sha256=content * 32))
        rerun = store.find_call(s, "rerun")
        assert rerun is not None
        store.claim_for_processing(s, rerun.id)
        assert store.mark_failed(s, rerun.id, "archived").status == "failed"
        assert store.reserve_for_enqueue(s, _request("again", reprocess=True)).send
        never = store.register_call(s, _request("never"))     # its first run failed
        store.mark_failed(s, store.claim_for_processing(s, never.id).id, "corrupt")
    with db.session_scope(db_url) as s:
        held = store.content_holders(s, [c * 32 for c in ("aa", "bb", "cc", "dd", "ee", "aa")])
        assert {c[:2]: call.external_call_id for c, call in held.items()} == {
            "aa": "old", "bb": "other", "cc": "rerun", "ee": "again"}
        assert store.find_call(s, "again").status == "pending"  # type: ignore[union-attr]


def _marks(url: str) -> dict[str, str | None]:
    """Each call's external id to the external id of the call counted for its recording."""
    with db.session_scope(url) as s:
        ids = {c.id: c.external_call_id for c in s.scalars(select(Call))}
        return {ids[i]: ids.get(mark) if mark else None
                for i, mark in s.execute(select(Call.id, Call.same_recording_as))}


def test_each_recording_is_counted_once_as_analyses_are_saved(db_url: str) -> None:
    """The inbox scan analysed a file under its content id, then a producer sent it under
    its own id: reports counted it twice (a review). Each save marks the content-id call
    with the first producer's id; two producer ids both count (two dead-air calls of one
    length hold the same bytes). A call re-analysed with other content leaves its old
    recording to the next in line."""
    digest, other = "aa" * 32, "bb" * 32

    def analyse(name: str, content: str) -> None:
        with db.session_scope(db_url) as s:
            call = store.find_call(s, name) or store.register_call(s, _request(name))
            store.claim_for_processing(s, call.id)
            store.save_analysis(s, call.id, fake_analysis(1, sha256=content))

    analyse(f"sha256-{digest}", digest)
    assert _marks(db_url) == {f"sha256-{digest}": None}
    analyse("CC-1", digest)
    analyse("CC-2", digest)
    assert _marks(db_url) == {f"sha256-{digest}": "CC-1", "CC-1": None, "CC-2": None}
    # a file of at most 8 KiB is registered by its path: that id gives way too (a review),
    # but a producer's id that merely starts like one is a producer's (a review)
    tiny = f"path-{'1' * 64}"
    analyse(tiny, digest)
    analyse("path-2026-12-07-001", digest)
    assert _marks(db_url)[tiny] == "CC-1" and _marks(db_url)["path-2026-12-07-001"] is None
    analyse("CC-1", digest)     # a redelivery: nothing moves
    assert _marks(db_url)[f"sha256-{digest}"] == "CC-1"
    analyse("CC-1", other)      # CC-1's file replaced and analysed again
    assert _marks(db_url) == {f"sha256-{digest}": "CC-2", "CC-1": None, "CC-2": None,
                              tiny: "CC-2", "path-2026-12-07-001": None}
    # two files of at most 8 KiB with the same bytes and no producer's call: each its own
    # call (two 0.5 s dead-air calls were one, a review)
    silent = "ee" * 32
    analyse(f"path-{'2' * 64}", silent)
    analyse(f"path-{'3' * 64}", silent)
    marks = _marks(db_url)
    assert marks[f"path-{'2' * 64}"] is None and marks[f"path-{'3' * 64}"] is None
    with db.session_scope(db_url) as s:     # its re-run fails: the analysis it keeps counts
        cc2 = store.find_call(s, "CC-2")
        assert cc2 is not None
        store.claim_for_processing(s, cc2.id)
        store.mark_failed(s, cc2.id, "archived")
    assert _marks(db_url)[f"sha256-{digest}"] == "CC-2"


@pytest.mark.postgres
def test_two_calls_of_one_recording_saved_at_once_count_once(postgres_url: str) -> None:
    """PostgreSQL, the inbox scan's and a producer's call of one recording saved at once:
    each would see only itself analysed and both would count. The second waits on the
    recording's lock and marks the scan's."""
    import threading

    db.upgrade(postgres_url)
    digest = "cc" * 32
    with db.session_scope(postgres_url) as s:
        ids = [store.claim_for_processing(s, store.register_call(s, _request(n)).id).id
               for n in (f"sha256-{digest}", "CC-1")]
    errors: list[BaseException] = []

    def save_second() -> None:
        try:
            with db.session_scope(postgres_url) as s:
                store.save_analysis(s, ids[1], fake_analysis(1, sha256=digest))
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    with db.session_scope(postgres_url) as first:
        store.save_analysis(first, ids[0], fake_analysis(1, sha256=digest))
        second = threading.Thread(target=save_second)
        second.start()
        time.sleep(1.0)     # the second save reaches the recording's lock and waits
        assert second.is_alive()
    second.join(timeout=60)
    assert not errors
    assert _marks(postgres_url) == {f"sha256-{digest}": "CC-1", "CC-1": None}


@pytest.mark.postgres
def test_a_producer_call_re_analysed_beside_its_scan_twin_does_not_deadlock(
        postgres_url: str) -> None:
    """PostgreSQL, as the worker saves (jobs.process_call): a producer's call re-analysed
    while the inbox scan's call of its recording is saved for the first time. The worker
    locked its call's row, then waited on the recording's lock that the other save held,
    whose settle then needed the first call's row: a deadlock, one run failed (a review).
    The recording's locks come first."""
    import threading

    db.upgrade(postgres_url)
    digest = "dd" * 32
    with db.session_scope(postgres_url) as s:
        a = store.register_call(s, _request("CC-1"))
        store.claim_for_processing(s, a.id)
        store.save_analysis(s, a.id, fake_analysis(1, sha256=digest))
        b = store.register_call(s, _request(f"sha256-{digest}"))
        store.claim_for_processing(s, b.id)
        store.claim_for_processing(s, a.id)            # CC-1 analysed again (reprocess)
        ids = {"A": a.id, "B": b.id}
    errors: list[tuple[str, BaseException]] = []

    def begin_save(name: str, session: Session) -> None:
        store.lock_recordings(session, ids[name], digest)       # as jobs.process_call does,
        store.lock_call(session, ids[name])                     # then the superseded check

    def save_b() -> None:
        try:
            with db.session_scope(postgres_url) as s:
                begin_save("B", s)
                store.save_analysis(s, ids["B"], fake_analysis(1, sha256=digest))
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(("B", e))

    try:
        with db.session_scope(postgres_url) as first:
            begin_save("A", first)          # CC-1's row held, as the worker holds it
            second = threading.Thread(target=save_b)
            second.start()
            time.sleep(1.0)                 # the scan's save gets as far as it can
            store.save_analysis(first, ids["A"], fake_analysis(1, sha256=digest))
    except TransientError as e:             # "deadlock detected", in the old order
        errors.append(("A", e))
    second.join(timeout=60)
    assert errors == []
    assert _marks(postgres_url) == {"CC-1": None, f"sha256-{digest}": "CC-1"}


def test_a_finished_batch_reopens_while_one_of_its_calls_is_retried(db_url: str) -> None:
    """``callmood retry`` runs a failed call again in its own batch: the batch was shown
    finished with a call pending, and its failed count kept it (a review). It is open until
    the new run ends, and finished again then; a retry whose send fails leaves it finished."""
    with db.session_scope(db_url) as s:
        batch_id = store.create_batch(s, "nightly").id
        for name in ("CC-1", "CC-2"):
            call = store.reserve_for_enqueue(s, _request(name), batch_id=batch_id).call
            store.claim_for_processing(s, call.id)
            store.mark_failed(s, call.id, "cut short")
        store.finish_batch_scan(s, batch_id, enqueued=2, skipped=0)
        failed_call = store.find_call(s, "CC-2")
        assert failed_call is not None
    with db.session_scope(db_url) as s:
        (batch,) = store.latest_batches(s)
        assert (batch.failed, batch.finished_at is not None) == (2, True)
        finished_at = batch.finished_at
        retry = store.reserve_for_enqueue(s, store.RetryRequest.of(failed_call))
        assert retry.send and retry.before is not None
    with db.session_scope(db_url) as s:
        (batch,) = store.latest_batches(s)
        assert (batch.failed, batch.pending, batch.finished_at) == (1, 1, None)
        stored = s.get(Batch, batch_id)
        assert stored is not None and (stored.failed_count, stored.finished_at) == (1, None)
        store.release_enqueue(s, [retry.before])     # the broker refused it: as before
    with db.session_scope(db_url) as s:
        (batch,) = store.latest_batches(s)
        # finished when it was: nothing ran (a review found the failed send's time there)
        assert (batch.failed, batch.pending, batch.finished_at) == (2, 0, finished_at)
        retried = store.find_call(s, "CC-2")
        assert retried is not None
        again = store.reserve_for_enqueue(s, store.RetryRequest.of(retried))
        assert again.send
        store.claim_for_processing(s, retried.id)
        store.refresh_batch_of(s, store.save_analysis(s, retried.id, fake_analysis()))
    with db.session_scope(db_url) as s:
        (batch,) = store.latest_batches(s)
        assert (batch.done, batch.failed, batch.pending) == (1, 1, 0)
        rerun = store.find_call(s, "CC-2")
        assert rerun is not None and rerun.processed_at is not None and finished_at is not None
        assert batch.finished_at == rerun.processed_at > finished_at


def test_a_call_that_moves_to_a_new_batch_leaves_the_old_one_recounted(db_url: str) -> None:
    """A call whose send failed is sent by the next scan's batch, a finished call can be
    reprocessed in another: the batch it leaves stops counting it at once (and finishes when
    that call was all it waited for)."""
    with db.session_scope(db_url) as s:
        first = store.create_batch(s, "nightly").id
        done = store.reserve_for_enqueue(s, _request("CC-1"), batch_id=first).call
        store.claim_for_processing(s, done.id)
        store.save_analysis(s, done.id, fake_analysis())
        unsent = store.reserve_for_enqueue(s, _request("CC-2"), batch_id=first)
        assert unsent.send and unsent.before is not None
        store.release_enqueue(s, [unsent.before])         # the broker refused its task
        store.finish_batch_scan(s, first, enqueued=1, skipped=0)
    with db.session_scope(db_url) as s:
        (old,) = store.latest_batches(s, 1)
        assert (old.done, old.pending) == (1, 1) and old.finished_at is None
        second = store.create_batch(s, "nightly").id
        assert store.reserve_for_enqueue(s, _request("CC-2"), batch_id=second).send
    with db.session_scope(db_url) as s:
        old_row = s.get(Batch, first)
        assert old_row is not None and old_row.finished_at is not None
        assert (old_row.done_count, old_row.failed_count) == (1, 0)
        # a reprocess in the second batch takes the done call away from the first too
        assert store.reserve_for_enqueue(s, _request("CC-1", reprocess=True),
                                         batch_id=second).send
    with db.session_scope(db_url) as s:
        old_row = s.get(Batch, first)
        assert old_row is not None and old_row.done_count == 0
        assert {c.external_call_id: c.batch_id for c in s.scalars(select(Call))} == {
            "CC-1": second, "CC-2": second}


def test_a_producer_sends_the_correction_of_a_payload_the_worker_rejected(db_url: str) -> None:
    """A rejected payload was never run: the producer's validated request for that call id is
    sent without ``reprocess`` and carries its file; a call that failed while running is not
    sent again unless asked."""
    with db.session_scope(db_url) as s:
        store.record_rejected(s, "CC-9", "", "started_at: expected a timezone-aware datetime")
        ran = store.reserve_for_enqueue(s, _request("CC-7")).call
        store.claim_for_processing(s, ran.id)
        store.mark_failed(s, ran.id, "decode error")
    with db.session_scope(db_url) as s:
        fixed = store.reserve_for_enqueue(s, _request("CC-9", uri="/calls/fixed.wav"))
        call = fixed.call
        assert fixed.send and (call.status, call.failure_reason) == ("pending", None)
        assert call.source_uri == "/calls/fixed.wav" and call.agent_id == "agent-7"
        assert not store.reserve_for_enqueue(s, _request("CC-9")).send     # sent once
        assert not store.reserve_for_enqueue(s, _request("CC-7")).send
        assert store.reserve_for_enqueue(s, _request("CC-7", reprocess=True)).send


def test_a_call_id_sent_for_another_file_is_a_conflict_not_a_duplicate(db_url: str) -> None:
    """A known call id with another file was skipped like a re-send of the same one (a
    review). The same path as a file:// URI is the same file; a content id (the inbox's
    ``sha256-...``) names the recording, wherever a copy of it lies."""
    from worker.store import content_call_id, content_of_call_id

    by_content = content_call_id("ab" * 32)
    with db.session_scope(db_url) as s:
        store.reserve_for_enqueue(s, _request("CC-1"))
        store.reserve_for_enqueue(s, _request(by_content, uri="/inbox/a.wav"))
    with db.session_scope(db_url) as s:
        other = store.reserve_for_enqueue(s, _request("CC-1", uri="/calls/b.wav"))
        assert not other.send and other.conflict == "/calls/a.wav"
        for same in ("/calls/a.wav", "file:///calls/a.wav"):
            again = store.reserve_for_enqueue(s, _request("CC-1", uri=same))
            assert not again.send and again.conflict is None
        copy = store.reserve_for_enqueue(s, _request(by_content, uri="/inbox/copy.wav"))
        assert not copy.send and copy.conflict is None
        replaced = store.reserve_for_enqueue(s, _request("CC-1", uri="/calls/b.wav",
                                                         reprocess=True))
        assert replaced.send and replaced.call.source_uri == "/calls/b.wav"
    assert content_of_call_id(by_content) == "ab" * 32
    for call_id in ("sha256-abc", "sha256" + "a" * 65, "CC-1", "x-" + "a" * 64):
        assert content_of_call_id(call_id) is None


def test_a_failed_send_puts_back_what_its_reservation_changed(db_url: str) -> None:
    """``retry`` or ``--reprocess`` while the broker is down: the failed call keeps its reason
    (``failures`` and ``retry`` still find it), the done call stays done in its batch (the
    reports keep it), and the next send works; a call a worker has claimed since is its."""
    with db.session_scope(db_url) as s:
        first = store.create_batch(s, "nightly").id
        failed = store.reserve_for_enqueue(s, _request("CC-1"), batch_id=first).call
        store.claim_for_processing(s, failed.id)
        store.mark_failed(s, failed.id, "decode error")
        done = store.reserve_for_enqueue(s, _request("CC-2"), batch_id=first).call
        store.claim_for_processing(s, done.id)
        store.save_analysis(s, done.id, fake_analysis())
        store.finish_batch_scan(s, first, enqueued=2, skipped=0)
        sent_at = done.enqueued_at
    with db.session_scope(db_url) as s:
        second = store.create_batch(s, "retry").id
        reserved = [store.reserve_for_enqueue(s, _request(c, reprocess=True), batch_id=second)
                    for c in ("CC-1", "CC-2")]
        assert [(r.call.status, r.call.batch_id) for r in reserved] == [("pending", second)] * 2
    with db.session_scope(db_url) as s:
        store.release_enqueue(s, [r.before for r in reserved if r.before is not None])
    with db.session_scope(db_url) as s:
        rows = {c.external_call_id: c for c in s.scalars(select(Call))}
        assert (rows["CC-1"].status, rows["CC-1"].attempts) == ("failed", 1)
        assert rows["CC-1"].failure_reason == "decode error"
        assert (rows["CC-2"].status, rows["CC-2"].enqueued_at) == ("done", sent_at)
        assert {c.batch_id for c in rows.values()} == {first}
        old = s.get(Batch, first)
        assert old is not None and (old.done_count, old.failed_count) == (1, 1)
        assert [c.external_call_id for c in store.list_calls(s, status="failed")] == ["CC-1"]
        again = store.reserve_for_enqueue(s, _request("CC-1", reprocess=True))
        assert again.send and again.before is not None
        store.claim_for_processing(s, again.call.id)     # published before the send failed
        store.release_enqueue(s, [again.before])
        assert (again.call.status, again.call.attempts) == ("processing", 1)


def test_a_call_whose_first_send_failed_takes_the_file_and_labels_of_the_one_sent(
        db_url: str) -> None:
    """Enqueued while the broker was down (registered, released), then enqueued again with
    another file and agent: the row describes what was published, for reports and for
    recovery's resend."""
    with db.session_scope(db_url) as s:
        first = store.reserve_for_enqueue(s, _request("RS-1", uri="/calls/wrong.wav",
                                                      agent_id="old"))
        assert first.before is not None
    with db.session_scope(db_url) as s:
        store.release_enqueue(s, [first.before])
    with db.session_scope(db_url) as s:
        again = store.reserve_for_enqueue(s, _request("RS-1", uri="/calls/right.wav",
                                                      agent_id="new", team=None))
        assert again.send
    with db.session_scope(db_url) as s:
        call = store.find_call(s, "RS-1")
        assert call is not None and call.enqueued_at is not None
        assert (call.source_uri, call.agent_id) == ("/calls/right.wav", "new")
        assert call.source_uri_sha256 == store.uri_sha256("/calls/right.wav")
        assert call.team == "blue"            # a label the new request leaves out is kept
        # a call already sent is not sent again, and keeps what was sent
        dup = store.reserve_for_enqueue(s, _request("RS-1", uri="/calls/other.wav"))
        assert not dup.send and call.source_uri == "/calls/right.wav"


@pytest.mark.postgres
def test_a_claim_counts_on_the_rows_committed_attempts_not_a_stale_copy(
        postgres_url: str) -> None:
    """Two deliveries of one call on PostgreSQL (SQLite's one writer cannot interleave them):
    the second claim's session loaded the row before the first claim committed; the lock
    re-reads it, so attempts count both."""
    db_url = postgres_url
    db.upgrade(db_url)
    with db.session_scope(db_url) as s:
        call_id = store.register_call(s, _request()).id
    with db.session_scope(db_url) as late:
        stale = late.get(Call, call_id)
        assert stale is not None and stale.attempts == 0
        with db.session_scope(db_url) as early:
            assert store.claim_for_processing(early, call_id).attempts == 1
        assert store.claim_for_processing(late, call_id).attempts == 2


def test_a_malformed_duplicate_leaves_a_running_or_failed_run_alone(db_url: str) -> None:
    with db.session_scope(db_url) as s:
        running = store.register_call(s, _request("CC-1")).id
        store.claim_for_processing(s, running)
        failed = store.register_call(s, _request("CC-2")).id
        store.claim_for_processing(s, failed)
        store.mark_failed(s, failed, "decode error")
        store.record_rejected(s, "CC-3", "", "agent_id: required")
    with db.session_scope(db_url) as s:
        assert store.record_rejected(s, "CC-1", "", "bad").status == "processing"
        kept = store.record_rejected(s, "CC-2", "", "bad")
        assert (kept.status, kept.failure_reason) == ("failed", "decode error")
        assert store.record_rejected(s, "CC-3", "", "team: bad").failure_reason == "team: bad"


def test_store_never_commits_the_callers_rollback_undoes_everything(db_url: str) -> None:
    with db.session_scope(db_url) as s:
        kept_id = store.register_call(s, _request("KEEP")).id
    with pytest.raises(RuntimeError, match="caller aborts"), db.session_scope(db_url) as s:
        call_id = store.register_call(s, _request("CC-1")).id
        store.claim_for_processing(s, call_id)
        store.save_analysis(s, call_id, fake_analysis(2))
        store.mark_failed(s, kept_id, "should be rolled back")
        raise RuntimeError("caller aborts")
    assert _count(db_url, Call) == 1
    assert _count(db_url, Segment) == 0
    with db.session_scope(db_url) as s:
        kept = s.get(Call, kept_id)
        assert kept is not None and kept.status == "pending" and kept.failure_reason is None


def test_mark_failed_counts_and_lists(db_url: str) -> None:
    with db.session_scope(db_url) as s:
        ids = [store.register_call(s, _request(f"C{i}")).id for i in range(4)]
        store.claim_for_processing(s, ids[1])
        store.mark_failed(s, ids[2], "x" * 5000)
        store.save_analysis(s, ids[3], fake_analysis(1))
    with db.session_scope(db_url) as s:
        assert store.counts_by_status(s) == {"pending": 1, "processing": 1, "done": 1,
                                             "failed": 1}
        (failed,) = store.list_calls(s, status="failed")
        assert failed.id == ids[2]
        assert failed.failure_reason is not None and len(failed.failure_reason) <= 2000
        assert [c.id for c in store.list_calls(s)] == ids
        assert [c.id for c in store.list_calls(s, limit=2, newest_first=True)] == ids[:1:-1]
        with pytest.raises(ValueError, match="status 'nope'"):
            store.list_calls(s, status="nope")
        with pytest.raises(PayloadError, match="no call with id"):
            store.mark_failed(s, 10_000, "missing")


def test_a_run_failing_after_a_concurrent_run_stored_the_call_leaves_it_done(
        db_url: str) -> None:
    with db.session_scope(db_url) as s:
        call_id = store.register_call(s, _request()).id
        store.claim_for_processing(s, call_id)  # the original run
        store.claim_for_processing(s, call_id)  # its redelivery, beside it
        store.save_analysis(s, call_id, fake_analysis(2, model_version="m1"))  # one finishes
    with db.session_scope(db_url) as s:
        # the other fails afterwards (a store error, a timeout): the analysis stands as done
        kept = store.mark_failed(s, call_id, "storing the analysis failed")
        assert (kept.status, kept.failure_reason) == ("done", None)
    with db.session_scope(db_url) as s:
        call = s.get(Call, call_id)
        assert call is not None and (call.status, call.model_version) == ("done", "m1")
        # a new run reopens it: its failure is recorded, the earlier analysis still kept
        store.claim_for_processing(s, call_id)
        failed = store.mark_failed(s, call_id, "decode error")
        assert failed.status == "failed"
        assert failed.failure_reason == "re-run failed, the analysis by m1 kept: decode error"
    assert _count(db_url, Segment) == 2


def test_two_scans_reading_one_failure_send_one_new_run(db_url: str) -> None:
    """The inbox scan's re-send of a failed call whose file changed: two scans read the call
    failed before either reserved it; the second reservation finds it sent (pending) on the
    locked row and sends nothing. It travels as a plain reprocess request."""
    with db.session_scope(db_url) as s:
        call = store.register_call(s, _request())
        store.mark_failed(s, store.claim_for_processing(s, call.id).id, "cut short")
        first, second = store.RetryRequest.of(call), store.RetryRequest.of(call)
        assert first.to_payload() == store.request_for_call(call, reprocess=True).to_payload()
        assert store.reserve_for_enqueue(s, first).before is not None
        assert store.reserve_for_enqueue(s, second).before is None
        assert call.status == "pending"


def test_deleting_a_call_cascades_to_its_segments(db_url: str) -> None:
    with db.session_scope(db_url) as s:
        call_id = store.register_call(s, _request()).id
        store.save_analysis(s, call_id, fake_analysis(3))
    with db.session_scope(db_url) as s:
        # A bulk DELETE: only the database's ON DELETE CASCADE can remove the segments.
        s.execute(delete(Call).where(Call.id == call_id))
    assert _count(db_url, Segment) == 0


def test_rejected_payload_does_not_overwrite_a_done_call(db_url: str) -> None:
    with db.session_scope(db_url) as s:
        call_id = store.register_call(s, _request()).id
        store.save_analysis(s, call_id, fake_analysis(1))
        assert store.record_rejected(s, "CC-1", "", "bad").status == "done"
        fresh = store.record_rejected(s, "CC-NEW", "/x" * 3000, "started_at: bad")
        assert fresh.status == "failed" and len(fresh.source_uri) <= 4096


def test_session_scope_maps_an_unreachable_database_to_transient_error() -> None:
    url = "postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=2"
    with pytest.raises(TransientError) as info, db.session_scope(url) as s:
        s.execute(select(1))
    assert "secret" not in str(info.value)  # credentials are redacted
    assert info.value.__cause__ is not None


def test_naive_timestamps_are_refused_by_the_column_type(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.sqlite'}"
    db.upgrade(url)
    with pytest.raises(StatementError, match="naive datetime"), db.session_scope(url) as s:
        call = store.register_call(s, _request())
        call.processed_at = datetime(2026, 1, 1)
        s.flush()


def _register_many(url: str, prefix: str, n: int) -> None:
    # Runs in a forked child: the parent's cached engine must not be reused across the fork.
    for i in range(n):
        with db.session_scope(url) as s:
            call = store.register_call(s, _request(f"{prefix}-{i % 10}"))
            store.claim_for_processing(s, call.id)


def test_sqlite_writers_in_two_processes_wait_instead_of_failing(tmp_path: Path) -> None:
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    db.upgrade(url)  # the parent holds a pooled connection when it forks
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_register_many, args=(url, "SAME", 40)) for _ in range(2)]
    for child in children:
        child.start()
    _register_many(url, "SAME", 20)
    for child in children:
        child.join(60)
        assert child.exitcode == 0, "a writer hit 'database is locked' or a duplicate key"
    with db.session_scope(url) as s:
        calls = store.list_calls(s)
        assert len(calls) == 10  # idempotent across processes: no duplicate external ids
        assert sum(c.attempts for c in calls) == 100


@pytest.mark.postgres
def test_a_redelivery_waiting_on_a_finishing_run_is_skipped_not_run_again(
        postgres_url: str, tmp_path: Path) -> None:
    """A second delivery of a call whose first run is committing (PostgreSQL: the runs
    interleave). It once read the call unlocked as processing, waited on the lock in its
    claim, then claimed the finished call for a whole new run; it now decides on the
    locked row and sees it done."""
    import threading
    import time

    from worker.jobs import CallOutcome, process_call
    from worker.settings import Settings

    db.upgrade(postgres_url)
    settings = Settings.from_env({"CALLMOOD_DATABASE_URL": postgres_url,
                                  "CALLMOOD_DATA_DIR": str(tmp_path / "data"),
                                  "CALLMOOD_INPUT_ROOTS": str(tmp_path)})
    with db.session_scope(postgres_url) as s:
        call_id = store.register_call(s, _request("RACE-1")).id
        store.claim_for_processing(s, call_id)          # the first run, under way
    outcomes: list[CallOutcome] = []
    with db.session_scope(postgres_url) as first:
        store.save_analysis(first, call_id, fake_analysis(2))   # row locked, not committed
        second = threading.Thread(target=lambda: outcomes.append(
            process_call(_request("RACE-1"), settings)))
        second.start()
        time.sleep(1.0)   # the redelivery reaches the row lock and waits on it
        assert not outcomes
    second.join(timeout=60)
    assert [o.status for o in outcomes] == ["skipped"]
    with db.session_scope(postgres_url) as s:
        call = s.get(Call, call_id)
        assert call is not None and (call.status, call.attempts) == ("done", 1)
    assert _count(postgres_url, Segment) == 2


@pytest.mark.postgres
def test_a_failing_run_waiting_on_a_finishing_run_leaves_the_call_done(postgres_url: str) -> None:
    """PostgreSQL, the runs interleaved: one run's analysis is stored and not yet committed
    while a concurrent run of the call fails. Read unlocked, the failing run saw
    'processing', waited on the row in its UPDATE and then overwrote the committed done; it
    now reads the locked row afresh and leaves it done."""
    import threading
    import time

    db.upgrade(postgres_url)
    with db.session_scope(postgres_url) as s:
        call_id = store.register_call(s, _request("RACE-2")).id
        store.claim_for_processing(s, call_id)
        store.claim_for_processing(s, call_id)   # two runs of it under way
    statuses: list[str] = []

    def fail() -> None:
        with db.session_scope(postgres_url) as other:
            statuses.append(store.mark_failed(other, call_id, "storing failed").status)

    with db.session_scope(postgres_url) as first:
        store.save_analysis(first, call_id, fake_analysis(2))   # row locked, not committed
        failing = threading.Thread(target=fail)
        failing.start()
        time.sleep(1.0)   # the failing run reaches the row lock and waits on it
        assert not statuses
    failing.join(timeout=60)
    assert statuses == ["done"]
    with db.session_scope(postgres_url) as s:
        call = s.get(Call, call_id)
        assert call is not None and (call.status, call.failure_reason) == ("done", None)


def _at_once(url: str, steps: dict[str, Callable[[Session], None]]) -> dict[str, str]:
    """Run each step in a transaction of its own, at once, in a thread named by its key:
    how each ended ("committed", or the TransientError a deadlock becomes)."""
    import threading

    outcome: dict[str, str] = {}

    def run(name: str, step: Callable[[Session], None]) -> None:
        try:
            with db.session_scope(url) as s:
                step(s)
            outcome[name] = "committed"
        except TransientError as e:
            outcome[name] = str(e)

    threads = [threading.Thread(target=run, args=item, name=item[0]) for item in steps.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcome


def test_a_scan_and_a_worker_finishing_a_call_of_its_batch_do_not_deadlock(
        postgres_url: str) -> None:
    """PostgreSQL: a scan's chunk inserts calls of batch B (a KEY SHARE lock on B's row, for
    the foreign key), then meets a copy of a file a worker is storing (the call row the
    worker holds); the worker then recounts B. With FOR UPDATE on B the two waited on each
    other and PostgreSQL killed the worker's store step (deadlock detected); the recount
    needs only FOR NO KEY UPDATE, which a foreign key's KEY SHARE does not block."""
    import threading
    import time

    db.upgrade(postgres_url)
    with db.session_scope(postgres_url) as s:
        batch_id = store.create_batch(s, "nightly").id
        store.reserve_for_enqueue(s, _request("sha256-x"), batch_id=batch_id)
        found = store.find_call(s, "sha256-x")
        assert found is not None
        call_id = store.claim_for_processing(s, found.id).id
    chunk_started, worker_locked = threading.Event(), threading.Event()

    def scan_chunk(s: Session) -> None:
        store.reserve_for_enqueue(s, _request("sha256-new", uri="/in/new.wav"),
                                  batch_id=batch_id)
        chunk_started.set()
        worker_locked.wait(10)
        time.sleep(0.3)                # the worker is at its recount by now
        store.reserve_for_enqueue(s, _request("sha256-x", uri="/in/copy.wav"),
                                  batch_id=batch_id)

    def worker_store_step(s: Session) -> None:
        chunk_started.wait(10)
        call = store.save_analysis(s, call_id, fake_analysis(2))
        worker_locked.set()
        store.refresh_batch_of(s, call)

    outcome = _at_once(postgres_url, {"scan": scan_chunk, "worker": worker_store_step})
    assert outcome == {"scan": "committed", "worker": "committed"}
    with db.session_scope(postgres_url) as s:
        batch = s.get(Batch, batch_id)
        assert batch is not None and batch.done_count == 1


def test_a_retry_beside_a_scan_resending_one_of_its_calls_does_not_deadlock(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: ``callmood retry c1 c2`` (one chunk, the calls' own batch B) locked c1 and
    recounted B (c1 runs again in it), then waited for c2; a scan re-sending modified c2 into
    its new batch held c2 and waited to recount B, the batch c2 leaves: deadlock detected,
    the scan's send failed (a review). Every transaction now locks its call rows first, in
    id order, and its batches after."""
    import threading
    import time

    db.upgrade(postgres_url)
    with db.session_scope(postgres_url) as s:
        old_batch = store.create_batch(s, "nightly").id
        for name in ("c1", "c2"):
            call = store.reserve_for_enqueue(s, _request(name), batch_id=old_batch).call
            store.mark_failed(s, store.claim_for_processing(s, call.id).id, "cut short")
        store.finish_batch_scan(s, old_batch, enqueued=2, skipped=0)
        failed = {c.external_call_id: c for c in store.list_calls(s)}
        new_batch = store.create_batch(s, "nightly").id
    retries = [store.RetryRequest.of(failed[name]) for name in ("c1", "c2")]
    retry_has_c1, scan_started = threading.Event(), threading.Event()
    real_reserve = store._reserve

    def reserve_slowly(request: store.CallRequest, batch_id: int | None,
                       call: Call) -> store.Reservation:
        if threading.current_thread().name == "retry" and request.external_call_id == "c2":
            retry_has_c1.set()                 # c1 reserved (and B recounted, before)
            scan_started.wait(10)
            time.sleep(0.5)                    # the scan holds c2 and recounts B by now
        return real_reserve(request, batch_id, call)

    monkeypatch.setattr(store, "_reserve", reserve_slowly)

    def scan(s: Session) -> None:
        retry_has_c1.wait(10)
        scan_started.set()
        store.reserve_for_enqueue(s, retries[1], batch_id=new_batch)

    def retry(s: Session) -> None:
        store.reserve_all(s, retries)

    outcome = _at_once(postgres_url, {"retry": retry, "scan": scan})
    assert outcome == {"retry": "committed", "scan": "committed"}
    with db.session_scope(postgres_url) as s:
        calls = {c.external_call_id: c for c in store.list_calls(s)}
        # the retry locks c1 and c2 before deciding either (store.lock_calls), so the scan
        # waits for it and then finds c2 sent again: c2 runs once, in the batch of whichever
        # transaction took it first (the scan's, before the lock order)
        assert calls["c1"].batch_id == old_batch
        assert calls["c2"].batch_id in (old_batch, new_batch)
        assert calls["c1"].status == calls["c2"].status == "pending"
        old = s.get(Batch, old_batch)
        assert old is not None and (old.failed_count, old.finished_at) == (0, None)


def test_a_rejected_payload_racing_a_good_one_for_a_new_call_id_is_recorded(
        postgres_url: str) -> None:
    """PostgreSQL: a malformed message for a call id that a good message is registering at
    that moment waits on the unique key, then violates it. It is recorded on the row the
    good message made, as when it comes second, instead of raising IntegrityError out of the
    task (the rejection was neither logged as one nor recorded)."""
    import threading
    import time

    db.upgrade(postgres_url)
    registered = threading.Event()
    outcome: dict[str, str] = {}

    def good_message() -> None:
        with db.session_scope(postgres_url) as s:
            store.register_call(s, _request("RACE-1"))
            registered.set()
            time.sleep(0.5)           # the rejection's insert is waiting on this row by now

    def malformed_message() -> None:
        registered.wait(10)
        try:
            with db.session_scope(postgres_url) as s:
                call = store.record_rejected(s, "RACE-1", "", "agent_id: required")
                outcome["status"] = call.status
        except Exception as e:  # noqa: BLE001 - the test reports what escaped
            outcome["error"] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=good_message), threading.Thread(target=malformed_message)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcome == {"status": "failed"}
    with db.session_scope(postgres_url) as s:
        calls = store.list_calls(s)
        assert [(c.external_call_id, c.status, c.failure_reason) for c in calls] == [
            ("RACE-1", "failed", "agent_id: required")]


def test_a_scan_error_quoting_an_undecodable_path_or_nul_is_stored(db_url: str) -> None:
    """The missing inbox folder's name in another encoding (or a NUL, refused by PostgreSQL)
    failed the write: the batch stayed "scanning" with no error (a review)."""
    error = "inbox folder(s) not found: /in/\udce9t\udce9 and /in/a\x00b"
    with db.session_scope(db_url) as s:
        batch_id = store.create_batch(s, "nightly").id
        store.finish_batch_scan(s, batch_id, enqueued=0, skipped=0, error=error)
    with db.session_scope(db_url) as s:
        batch = s.get(Batch, batch_id)
        assert batch is not None and batch.scanned_at is not None
        assert batch.scan_error == "inbox folder(s) not found: /in/\\xe9t\\xe9 and /in/a\\x00b"


@pytest.mark.postgres
def test_two_producers_reserving_the_same_calls_in_opposite_orders_both_commit(
        postgres_url: str) -> None:
    """A manifest beside a scan, or a retry beside a manifest: reserve_all locked call rows in
    its requests' order, and two of them over the same calls in opposite orders deadlocked,
    one failing as "database unavailable" (a review: every try)."""
    import threading

    db.upgrade(postgres_url)
    ids = [f"C-{i:03d}" for i in range(200)]
    with db.session_scope(postgres_url) as s:
        store.reserve_all(s, [_request(i, uri=f"/calls/{i}.wav") for i in ids])
    gate = threading.Barrier(2)

    def reserve(order: list[str], new: list[str]) -> None:
        gate.wait()
        with db.session_scope(postgres_url) as s:
            store.reserve_all(s, [_request(i, uri=f"/calls/{i}.wav", reprocess=True)
                                  for i in [*order, *new]])

    errors = errors_of_concurrent(lambda: reserve(ids, ["N-1", "N-2"]),
                                  lambda: reserve(ids[::-1], ["N-2", "N-1"]))
    assert errors == []
    with db.session_scope(postgres_url) as s:
        assert {c.status for c in store.list_calls(s)} == {"pending"}
        assert len(store.list_calls(s)) == 202


def test_segment_counts_take_more_ids_than_one_statement_can_carry(db_url: str) -> None:
    """PostgreSQL takes at most 65,535 parameters a statement: `callmood run` over 70,000
    files asked for every call's segments in one IN list and failed at its end as if the
    database were down (a review). The ids now go in chunks."""
    with db.session_scope(db_url) as s:
        call = store.register_call(s, _request())
        store.save_analysis(s, call.id, fake_analysis(2))
        call_id = call.id
    with db.session_scope(db_url) as s:
        counts = store.segment_counts(s, [*range(call_id + 1, call_id + 70_001), call_id])
    assert counts == {call_id: 2}


def test_the_scan_s_finished_lookup_reads_the_path_hash_index(tmp_path: Path) -> None:
    """The inbox scan asks, for every known file each night, whether its call finished
    before the file changed. With the status in the WHERE clause SQLite without table
    statistics walked the status index (every done call kept) per chunk, inside the scan's
    write lock: 30,000 known files held it past a worker's 30 s wait (a review). The query
    names the path hashes alone; the status is compared on the rows it returns."""
    from sqlalchemy.dialects import sqlite

    url = f"sqlite:///{tmp_path / 'plan.sqlite'}"
    db.upgrade(url)
    query = store.finished_lookup_query(["a" * 64, "b" * 64]).compile(
        dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    with db.make_engine(url).connect() as c:
        plan = " ".join(str(row[-1]) for row in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
    assert "INDEX ix_calls_source_uri_sha (source_uri_sha256=?)" in plan, plan
    # and what it returns is filtered as before: the done call finished before the change
    old = datetime(2026, 1, 1, tzinfo=UTC)
    with db.session_scope(url) as s:
        done = store.register_call(s, _request("CC-1", uri="/in/a.wav"))
        failed = store.register_call(s, _request("CC-2", uri="/in/b.wav"))
        store.save_analysis(s, store.claim_for_processing(s, done.id).id, fake_analysis(1))
        store.mark_failed(s, store.claim_for_processing(s, failed.id).id, "cut short")
        s.flush()
        done.processed_at = failed.processed_at = old
    later = {store.uri_sha256("/in/a.wav"): old + timedelta(days=1),
             store.uri_sha256("/in/b.wav"): old + timedelta(days=1)}
    with db.session_scope(url) as s:
        assert [c.external_call_id for c in store.finished_before(s, later, "done")] == ["CC-1"]
        assert [c.external_call_id for c in store.finished_before(s, later, "failed")] == ["CC-2"]
        earlier = {h: old - timedelta(days=1) for h in later}
        assert store.finished_before(s, earlier, "done") == []


def test_producers_reserve_a_chunk_of_calls_in_a_few_statements(db_url: str) -> None:
    """One call at a time, reserving took 7 statements a new call, 3 a duplicate and 5 a
    retry (5,000 new calls: 23 s on PostgreSQL). The chunk is registered, locked and
    written a list of ids at a time; the decisions are the ones taken call by call."""
    requests = [_request(f"N-{i:03d}", uri=f"/calls/{i}.wav") for i in range(300)]
    with db.session_scope(db_url) as s, counted_statements() as sent:
        new = store.reserve_all(s, [*requests, requests[0]])   # one id twice: sent once
    # SQLite inserts the new rows one by one (no ordered RETURNING for many rows); in-process
    inserts = sum(q.lstrip().upper().startswith("INSERT") for q in sent)
    assert len(sent) - inserts <= 12, sent
    assert [r.send for r in new] == [True] * 300 + [False]
    with db.session_scope(db_url) as s, counted_statements() as sent:
        again = store.reserve_all(s, requests)
    assert len(sent) <= 12 and not any(r.send for r in again), sent
    with db.session_scope(db_url) as s:
        for call in s.scalars(select(Call)):
            call.status, call.failure_reason = "failed", "decode error"
            call.processed_at = datetime(2026, 2, 1, tzinfo=UTC)
    with db.session_scope(db_url) as s:
        retries = [store.RetryRequest.of(c) for c in store.list_calls(s, status="failed")]
    with db.session_scope(db_url) as s, counted_statements() as sent:
        retried = store.reserve_all(s, retries)
        assert len(sent) <= 12, sent
        assert all(r.send and r.call.status == "pending" for r in retried)
        assert {r.call.failure_reason for r in retried} == {None}
    with db.session_scope(db_url) as s:
        assert [r.send for r in store.reserve_all(s, retries)] == [False] * 300  # run since


def test_a_recovery_claims_and_gives_back_its_lost_calls_in_a_few_statements(
        db_url: str) -> None:
    """Recovery claimed each lost call with a query of its own, holding the row locks of
    20,000 lost calls for 40 s on PostgreSQL (a review); a failed send gave them back the
    same way. Both now lock and read the calls a list of ids at a time."""
    with db.session_scope(db_url) as s:
        store.reserve_all(s, [_request(f"L-{i:03d}") for i in range(300)])
    with db.session_scope(db_url) as s:
        read = [store.CallSendState.of(c) for c in s.scalars(select(Call).order_by(Call.id))]
    with db.session_scope(db_url) as s, counted_statements() as sent:
        claimed = store.claim_resend(s, read)
    assert claimed == read and len(sent) <= 6, sent
    with db.session_scope(db_url) as s:
        assert store.claim_resend(s, read) == []     # marked sent again: a second recovery
        s.execute(delete(Call).where(Call.id == read[0].call_id))
    with db.session_scope(db_url) as s, counted_statements() as sent:
        store.release_enqueue(s, claimed)            # the deleted call is passed over
    assert len(sent) <= 6, sent
    with db.session_scope(db_url) as s:
        assert {c.enqueued_at for c in s.scalars(select(Call))} == {r.enqueued_at
                                                                   for r in read[1:]}


def test_a_bulk_registration_racing_another_producer_falls_back_call_by_call(
        postgres_url: str) -> None:
    """PostgreSQL: a producer registers one of a chunk's new call ids first and commits while
    the chunk's insert waits on its unique key. The chunk's insert fails in its savepoint,
    and the calls are registered one by one: the other producer's row stands, none is lost."""
    import threading

    db.upgrade(postgres_url)
    holding = threading.Event()

    def other(s: Session) -> None:
        store.register_call(s, _request("B-1", agent_id="first"))
        holding.set()
        time.sleep(0.5)                      # the chunk's insert waits on B-1's key by now

    def chunk(s: Session) -> None:
        holding.wait(10)
        rows = store.register_all(s, [_request(f"B-{i}", agent_id="chunk")
                                      for i in reversed(range(3))])
        assert [r.external_call_id for r in rows] == ["B-2", "B-1", "B-0"]

    assert _at_once(postgres_url, {"other": other, "chunk": chunk}) == {
        "other": "committed", "chunk": "committed"}
    with db.session_scope(postgres_url) as s:
        assert {c.external_call_id: c.agent_id for c in store.list_calls(s)} == {
            "B-0": "chunk", "B-1": "first", "B-2": "chunk"}


def test_a_bulk_registration_inserts_in_call_id_order(db_url: str) -> None:
    """An uncommitted insert holds its unique key: producers inserting overlapping new calls
    in their requests' orders deadlocked (a review), so a chunk goes in call-id order
    whatever order it was asked in (row ids follow the insert order)."""
    with db.session_scope(db_url) as s:
        rows = store.register_all(s, [_request(f"O-{i}") for i in (3, 1, 2, 1)])
        assert [r.external_call_id for r in rows] == ["O-3", "O-1", "O-2", "O-1"]
        assert rows[1] is rows[3]
        ids = {r.external_call_id: r.id for r in rows}
        assert ids["O-1"] < ids["O-2"] < ids["O-3"]


def test_a_call_row_deleted_between_its_lookup_and_its_lock_is_registered_again(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator purging a call row while a producer reserves it: the chunk failed with a
    bare KeyError (a review); one call at a time registered it anew, and so does the chunk."""
    with db.session_scope(db_url) as s:
        store.reserve_all(s, [_request("D-1"), _request("D-2")])
    real_lock_calls = store.lock_calls
    purged: list[int] = []

    def purge_first(session: Session, call_ids: list[int]) -> dict[int, Call]:
        if not purged:
            purged.extend(call_ids)
            session.execute(delete(Call).where(Call.external_call_id == "D-1"))
        return real_lock_calls(session, call_ids)

    monkeypatch.setattr(store, "lock_calls", purge_first)
    with db.session_scope(db_url) as s:
        reserved = store.reserve_all(s, [_request("D-1", reprocess=True),
                                         _request("D-2", reprocess=True)])
        assert [r.send for r in reserved] == [True, True]
        assert reserved[0].call.id not in purged and reserved[1].call.id in purged
    with db.session_scope(db_url) as s:
        assert sorted(c.external_call_id for c in store.list_calls(s)) == ["D-1", "D-2"]
