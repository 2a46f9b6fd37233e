"""The enqueue contract on a real redis-server and PostgreSQL: what travels (JSON, versioned,
no audio), that a call id is sent once unless reprocess, manifests, a broker that is down,
and the CLI round trip (enqueue, status, failures, retry) through a real celery worker."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.worker.prod_support import (
    callmood_env,
    celery_worker,
    fresh_redis_db,
    make_recordings,
    tiny_model,
    wait_final,
)
from worker import db, store
from worker.celery_app import TASK_QUEUE, make_celery, queue_stats
from worker.cli import main
from worker.enqueue import absolute_uri, enqueue, enqueue_manifest, path_uri, retry_failed
from worker.errors import PayloadError, TransientError
from worker.settings import Settings, get_settings


@pytest.fixture()
def producer(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Settings]:
    """Settings of a producer on redis db 5 (emptied) and a migrated PostgreSQL database."""
    broker = fresh_redis_db(redis_url, 5)
    db.upgrade(postgres_url)
    (tmp_path / "recordings").mkdir()
    env = callmood_env(postgres_url, broker, tmp_path / "recordings", tmp_path / "model.onnx",
                       tmp_path / "data")
    yield Settings.from_env(env)


def _queued(settings: Settings) -> list[dict[str, Any]]:
    """The messages waiting in the callmood queue, decoded as the worker would see them."""
    client = redis.Redis.from_url(settings.broker_url)
    try:
        raw = client.lrange(TASK_QUEUE, 0, -1)
    finally:
        client.close()
    messages = []
    for item in raw:
        envelope = json.loads(item)
        assert envelope["content-type"] == "application/json"
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "args": args, "kwargs": kwargs})
    return messages


def _depth(settings: Settings) -> int:
    app = make_celery(settings)
    try:
        return queue_stats(app).queued
    finally:
        app.close()


def test_enqueue_sends_versioned_json_once_per_call_id(producer: Settings) -> None:
    first = enqueue("/recordings/a.wav", call_id="CC-1", agent_id="agent-7", team="blue",
                    started_at="2026-01-31T09:15:00+01:00", customer_ref="cust-1",
                    metadata={"campaign": "winter"}, settings=producer)
    assert first.sent and first.task_id
    (message,) = _queued(producer)
    assert message["task"] == "callmood.analyze_recording" and message["args"] == []
    assert message["kwargs"] == {
        "schema_version": 1, "uri": "/recordings/a.wav", "call_id": "CC-1",
        "agent_id": "agent-7", "team": "blue", "queue": None, "customer_ref": "cust-1",
        "started_at": "2026-01-31T09:15:00+01:00", "metadata": {"campaign": "winter"},
        "reprocess": False}
    assert set(message["kwargs"]) == set(store.PAYLOAD_FIELDS)

    second = enqueue("/recordings/a.wav", call_id="CC-1", agent_id="agent-7", settings=producer)
    assert not second.sent and "reprocess" in (second.reason or "")
    assert _depth(producer) == 1  # the duplicate sent nothing

    third = enqueue("/recordings/a.wav", call_id="CC-1", agent_id="agent-7", reprocess=True,
                    settings=producer)
    assert third.sent and third.task_id != first.task_id
    assert _depth(producer) == 2
    assert sorted(m["kwargs"]["reprocess"] for m in _queued(producer)) == [False, True]
    with db.session_scope(producer) as s:
        call = store.find_call(s, "CC-1")
        assert call is not None and call.status == "pending" and call.enqueued_at is not None
        assert call.source_uri_sha256 == store.uri_sha256("/recordings/a.wav")
        assert len(store.list_calls(s)) == 1


def test_a_bad_request_is_refused_before_anything_is_sent(producer: Settings) -> None:
    with pytest.raises(PayloadError, match="call_id"):
        enqueue("/recordings/a.wav", call_id="has space", agent_id="a", settings=producer)
    with pytest.raises(PayloadError, match="started_at"):
        enqueue("/recordings/a.wav", call_id="X", agent_id="a", started_at="2026-01-31 09:15",
                settings=producer)
    with pytest.raises(PayloadError, match="agent_id: required"):
        enqueue("/recordings/a.wav", call_id="X", agent_id="", settings=producer)
    assert _depth(producer) == 0
    with db.session_scope(producer) as s:
        assert store.list_calls(s) == []


def test_local_paths_travel_absolute_and_names_in_other_encodings_percent_encoded(
        tmp_path: Path) -> None:
    real = tmp_path / "recordings"
    real.mkdir()
    (tmp_path / "mount").symlink_to(real)
    # a producer's symlinks are not resolved: the worker's machine may mount it otherwise
    assert absolute_uri(str(tmp_path / "mount" / "a.wav")) == str(tmp_path / "mount" / "a.wav")
    assert absolute_uri("a.wav") == str(Path.cwd() / "a.wav")
    assert absolute_uri("file:///srv/x%20y.wav") == "file:///srv/x%20y.wav"  # a URI: as given
    latin1 = real / os.fsdecode(b"\xe9t\xe9.wav")
    assert path_uri(latin1) == latin1.as_uri() and path_uri(latin1).endswith("/%E9t%E9.wav")


def test_racing_producers_send_a_call_once(producer: Settings) -> None:
    def send(_: int) -> bool:
        return enqueue("/recordings/r.wav", call_id="RACE", agent_id="a", settings=producer).sent

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(send, range(6)))  # re-raises any thread's exception
    assert sorted(results) == [False] * 5 + [True]
    assert _depth(producer) == 1


def test_manifests_csv_and_json_lines(producer: Settings, tmp_path: Path) -> None:
    folder = producer.input_roots[0]
    csv_path = folder / "m.csv"
    # with the byte-order mark Excel's "CSV UTF-8" writes
    csv_path.write_text("\ufeffuri,call_id,agent_id,started_at,team,customer_ref\n"
                        "a.wav,M-1,ag-1,2026-01-31T09:00:00Z,blue,c-1\n"
                        "/elsewhere/b.wav,M-2,ag-2,,,\n")
    result = enqueue_manifest(csv_path, settings=producer)
    assert (result.sent, result.skipped) == (2, 0)
    kwargs = {m["kwargs"]["call_id"]: m["kwargs"] for m in _queued(producer)}
    assert kwargs["M-1"]["uri"] == str(folder / "a.wav")  # relative to the manifest
    assert kwargs["M-1"]["started_at"] == "2026-01-31T09:00:00+00:00"
    assert kwargs["M-2"]["uri"] == "/elsewhere/b.wav" and kwargs["M-2"]["team"] is None

    jsonl = folder / "m.jsonl"
    jsonl.write_text("\ufeff" + json.dumps({"uri": "c.wav", "call_id": "M-3", "agent_id": "ag-3",
                                 "metadata": {"lang": "de"}}) + "\n\n"
                     + json.dumps({"uri": "a.wav", "call_id": "M-1", "agent_id": "ag-1"}) + "\n")
    result = enqueue_manifest(jsonl, settings=producer)
    assert (result.sent, result.skipped) == (1, 1)  # M-1 was sent by the CSV already
    assert _depth(producer) == 3
    with db.session_scope(producer) as s:
        call = store.find_call(s, "M-3")
        assert call is not None and call.call_metadata == {"lang": "de"}
        assert call.batch_id == result.batch_id
        (batch,) = store.latest_batches(s, 1)
        assert (batch.source, batch.enqueued, batch.skipped) == ("manifest:m.jsonl", 1, 1)


def test_an_excel_manifest_and_a_repeated_row_are_read_as_meant(producer: Settings) -> None:
    """Excel saves the empty columns after a sheet's last one (",,") and blank lines as rows
    of empty cells: both refused the whole manifest (unknown columns '', 'uri: required'). A
    row repeated as it was is sent once, even with --reprocess (it was sent twice)."""
    path = producer.input_roots[0] / "excel.csv"
    path.write_text("\ufeffuri,call_id,agent_id,,\r\n"
                    "a.wav,E-1,ag-1,,\r\n"
                    ",,,,\r\n"
                    "b.wav,E-2,ag-2,,\r\n"
                    "a.wav,E-1,ag-1,,\r\n")
    result = enqueue_manifest(path, settings=producer, reprocess=True)
    assert (result.sent, result.skipped) == (2, 0)
    assert sorted(m["kwargs"]["call_id"] for m in _queued(producer)) == ["E-1", "E-2"]


def test_a_manifest_whose_send_fails_half_way_closes_its_batch_with_what_it_sent(
        producer: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import enqueue as enqueue_module

    monkeypatch.setattr(enqueue_module, "SUBMIT_CHUNK", 1)
    path = producer.input_roots[0] / "half.csv"
    path.write_text("uri,call_id,agent_id\na.wav,H-1,ag\nb.wav,H-2,ag\nc.wav,H-3,ag\n")
    sent: list[str] = []

    def broker_fails_after_one(requests: Sequence[store.CallRequest]) -> list[str]:
        if sent:
            raise TransientError("broker unreachable")
        sent.extend(r.external_call_id for r in requests)
        return ["task-1"]

    with pytest.raises(TransientError, match="broker unreachable"):
        enqueue_manifest(path, settings=producer, send=broker_fails_after_one)
    with db.session_scope(producer) as s:
        (batch,) = store.latest_batches(s, 1)
        assert batch.scanned_at is not None and (batch.enqueued, batch.skipped) == (1, 0)
        # kept for `callmood status`: it showed the batch like one that sent everything
        assert batch.scan_error == "stopped sending: broker unreachable"
        # H-1 was sent, H-2 registered and released; H-3 was never reached
        assert (batch.pending, batch.source) == (2, "manifest:half.csv")
        unsent = store.find_call(s, "H-2")
        assert unsent is not None and unsent.enqueued_at is None  # the next run sends it
    result = enqueue_manifest(path, settings=producer, send=lambda rs: ["t"] * len(rs))
    assert (result.sent, result.skipped) == (2, 1)
    with db.session_scope(producer) as s:
        assert [b.scan_error for b in store.latest_batches(s, 2)] == [
            None, "stopped sending: broker unreachable"]


def test_a_send_that_fails_within_a_chunk_keeps_what_it_published_marked_sent(
        producer: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker goes away after the first of a chunk's tasks is published (Redis, real):
    that call stays marked sent, so broker recovery watches it and the next run does not
    publish it twice; only the two never published are released and sent by the next run.
    All three were released until 2026-12-06, the published one included."""
    from kombu.exceptions import OperationalError as KombuOperationalError

    from worker.tasks import send_analysis

    path = producer.input_roots[0] / "part.csv"
    path.write_text("uri,call_id,agent_id\na.wav,P-1,ag\nb.wav,P-2,ag\nc.wav,P-3,ag\n")
    app = make_celery(producer, set_as_current=False)
    publish = app.send_task
    published: list[str] = []

    def connection_lost_after_one(*args: Any, **kwargs: Any) -> Any:
        if published:
            raise KombuOperationalError("Connection reset by peer")
        published.append(kwargs["kwargs"]["call_id"])
        return publish(*args, **kwargs)

    monkeypatch.setattr(app, "send_task", connection_lost_after_one)
    try:
        with pytest.raises(TransientError, match="after sending 1 of 3"):
            enqueue_manifest(path, settings=producer, send=lambda rs: send_analysis(app, rs))
    finally:
        app.close()
    assert published == ["P-1"] and [m["kwargs"]["call_id"] for m in _queued(producer)] == ["P-1"]
    with db.session_scope(producer) as s:
        sent = {c.external_call_id: c.enqueued_at is not None for c in store.list_calls(s)}
        assert sent == {"P-1": True, "P-2": False, "P-3": False}
        (batch,) = store.latest_batches(s, 1)
        assert (batch.enqueued, batch.pending) == (1, 3)
    result = enqueue_manifest(path, settings=producer)
    assert (result.sent, result.skipped) == (2, 1)
    assert sorted(m["kwargs"]["call_id"] for m in _queued(producer)) == ["P-1", "P-2", "P-3"]


@pytest.mark.parametrize(("text", "message"), [
    ("uri,call_id\na.wav,X\n", "missing column(s) agent_id"),
    ("uri,call_id,agent_id,colour\na.wav,X,a,red\n", "unknown column(s) 'colour'"),
    ("uri;call_id;agent_id\na.wav;X;a\n", "separated by commas, not semicolons or tabs"),
    ("uri, call_id, agent_id\na.wav,X,a\n", "(no spaces around the names)"),
    # one call id for two files: the second was skipped as "already enqueued", unanalysed
    ("uri,call_id,agent_id\na.wav,X,a\nb.wav,X,b\na.wav,X,a\n",
     "1 bad row(s), nothing sent; line 3: call_id 'X' names another file on line 2"),
    # one call id, one file, two teams: with --reprocess both were sent, the call analysed
    # twice and labelled by whichever ran last (a review)
    ("uri,call_id,agent_id,team\na.wav,X,a,blue\na.wav,X,a,\n",
     "1 bad row(s), nothing sent; line 3: call_id 'X' repeats line 2 with other labels"),
    ("uri,call_id,agent_id,\na.wav,X,a,red\n", "line 2: 'red' under a column with no name"),
    ("uri,call_id,agent_id\na.wav,X,a\nb.wav,,a\nc.wav,bad id,a\n",
     "2 bad row(s), nothing sent; line 3: call_id: required; line 4: call_id"),
    ("uri,call_id,agent_id,started_at\na.wav,X,a,yesterday\n", "line 2: started_at"),
    # an unquoted comma shifts the cells after it: refused, not filed under the wrong labels
    ("uri,call_id,agent_id,team,queue\na.wav,C1,a7,Billing, EMEA,q-sales\n",
     "line 2: 6 cells for the 5 columns"),
    # urllib cannot split the first (an unclosed "["); the second names another machine
    ("uri,call_id,agent_id\nfile://[nas/a.wav,X,a\nfile://nas/calls/b.wav,Y,a\n",
     "2 bad row(s), nothing sent; line 2: uri: not a valid file:// URI (Invalid IPv6 URL); "
     "line 3: uri: the file:// URI names host 'nas'"),
])
def test_a_bad_manifest_sends_nothing(producer: Settings, text: str, message: str) -> None:
    path = producer.input_roots[0] / "bad.csv"
    path.write_text(text)
    with pytest.raises(PayloadError) as info:
        enqueue_manifest(path, settings=producer)
    assert message in str(info.value)
    assert _depth(producer) == 0
    with db.session_scope(producer) as s:
        assert store.list_calls(s) == [] and store.latest_batches(s) == []


def test_a_broker_that_is_down_is_transient_and_nothing_is_marked_sent(
        producer: Settings) -> None:
    from tests.conftest import free_port

    down = producer.replace(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(TransientError, match="broker unavailable"):
        enqueue("/recordings/d.wav", call_id="DOWN-1", agent_id="a", settings=down)
    with db.session_scope(producer) as s:
        call = store.find_call(s, "DOWN-1")
        assert call is not None and call.enqueued_at is None  # released: send it again later
        # told apart from calls waiting in the queue (`callmood status`: a review found it
        # counted among them, and recovery does not watch it)
        assert (store.count_never_sent(s), store.counts_by_status(s)["pending"]) == (1, 1)
    assert enqueue("/recordings/d.wav", call_id="DOWN-1", agent_id="a", settings=producer).sent
    assert _depth(producer) == 1
    with db.session_scope(producer) as s:
        assert store.count_never_sent(s) == 0


def test_a_producers_own_celery_app_stays_its_current_app(producer: Settings) -> None:
    from celery import Celery, current_app

    theirs = Celery("call-centre", set_as_current=True)
    try:
        assert enqueue("/recordings/x.wav", call_id="OWN-1", agent_id="a", settings=producer).sent
        assert current_app.main == "call-centre"
    finally:
        theirs.close()


def test_retry_names_only_failed_calls(producer: Settings) -> None:
    enqueue("/recordings/p.wav", call_id="PENDING-1", agent_id="a", settings=producer)
    with pytest.raises(PayloadError, match="not failed calls: PENDING-1"):
        retry_failed(producer, call_ids=["PENDING-1"])
    with pytest.raises(PayloadError, match="name the calls"):
        retry_failed(producer)
    assert retry_failed(producer, all_failed=True) == []


def test_retry_all_failed_skips_a_rejection_it_cannot_resend(producer: Settings) -> None:
    """A payload rejected for a missing uri is a failed call no row can send again: it is
    reported and skipped, and the other failed calls are still retried."""
    with db.session_scope(producer) as s:
        store.record_rejected(s, "BAD-1", "", "uri: expected a path or file:// URI")
        call = store.register_call(s, store.CallRequest(uri="/recordings/f.wav",
                                                        external_call_id="FAILED-1"))
        store.mark_failed(s, store.claim_for_processing(s, call.id).id, "database gone")
        # a run's failure whose stored uri no longer travels (sent before a rule refused it)
        old = store.register_call(s, store.CallRequest(uri="/recordings/g.wav",
                                                       external_call_id="OLD-1"))
        store.mark_failed(s, store.claim_for_processing(s, old.id).id, "database gone")
        old.source_uri = "relative/g.wav"
    sent: list[str] = []

    def send(requests: Sequence[store.CallRequest]) -> list[str]:
        sent.extend(r.external_call_id for r in requests)
        return [f"task-{r.external_call_id}" for r in requests]

    results = {r.call_id: r for r in retry_failed(producer, all_failed=True, send=send)}
    assert sent == ["FAILED-1"] and results["FAILED-1"].sent
    assert not results["BAD-1"].sent and "corrected payload" in (results["BAD-1"].reason or "")
    assert results["OLD-1"].refused and "not an absolute path" in (results["OLD-1"].reason or "")
    with pytest.raises(PayloadError, match="call BAD-1: its stored row cannot be sent again"):
        retry_failed(producer, call_ids=["BAD-1"], send=send)
    with pytest.raises(PayloadError, match="call OLD-1: its stored row cannot be sent again"):
        retry_failed(producer, call_ids=["OLD-1"], send=send)


def test_retry_leaves_a_rejected_payload_to_its_corrected_enqueue(producer: Settings) -> None:
    """A payload rejected for one bad field (started_at) keeps none of its labels: `retry
    --all-failed` analysed it without agent, team or start time and stored it done, and the
    corrected payload (docs/production.md) was then skipped as analysed (a review)."""
    with db.session_scope(producer) as s:
        store.record_rejected(s, "CC-1", "/recordings/call-1.wav",
                              "started_at: '31/01/2026' is not ISO-8601")
    sent: list[str] = []

    def send(requests: Sequence[store.CallRequest]) -> list[str]:
        sent.extend(r.external_call_id for r in requests)
        return [f"task-{r.external_call_id}" for r in requests]

    (skipped,) = retry_failed(producer, all_failed=True, send=send)
    assert sent == [] and not skipped.sent and skipped.refused
    reason = skipped.reason or ""
    assert "payload was rejected" in reason and "'31/01/2026' is not ISO-8601" in reason
    assert "send a corrected payload for this call id with callmood enqueue" in reason
    with pytest.raises(PayloadError, match=r"call CC-1: .*payload was rejected .*callmood enqueue"):
        retry_failed(producer, call_ids=["CC-1"], send=send)
    assert sent == []
    fixed = enqueue("/recordings/call-1.wav", call_id="CC-1", agent_id="agent-7", team="billing",
                    started_at="2026-01-31T09:15:00Z", settings=producer, send=send)
    assert fixed.sent and sent == ["CC-1"]
    with db.session_scope(producer) as s:
        call = store.find_call(s, "CC-1")
        assert call is not None and (call.status, call.agent_id, call.team) == (
            "pending", "agent-7", "billing")


def test_retry_sends_a_call_failed_before_its_claim_that_was_no_rejection(
        producer: Settings) -> None:
    """A stopped `callmood run` (or a task that gave up before its claim) fails calls no
    worker claimed (attempts 0): the first version of the rejected-payload rule refused them
    too, while the run's own message sent the operator to `retry --all-failed` (a review)."""
    sent: list[str] = []

    def send(requests: Sequence[store.CallRequest]) -> list[str]:
        sent.extend(r.external_call_id for r in requests)
        return [f"task-{r.external_call_id}" for r in requests]

    assert enqueue("/recordings/call-2.wav", call_id="CC-2", agent_id="agent-7",
                   settings=producer, send=send).sent
    with db.session_scope(producer) as s:
        call = store.find_call(s, "CC-2")
        assert call is not None
        store.mark_failed(s, call.id, "callmood run was stopped before this call finished")
        assert store.was_rejected(call) and not store.payload_rejected(call)
    (retried,) = retry_failed(producer, all_failed=True, send=send)
    assert retried.sent and not retried.refused and sent == ["CC-2", "CC-2"]
    # and a corrected payload ends a rejection's mark with it
    with db.session_scope(producer) as s:
        assert store.payload_rejected(store.record_rejected(s, "CC-3", "", "agent_id: bad"))
    assert enqueue("/recordings/call-3.wav", call_id="CC-3", agent_id="agent-7",
                   settings=producer, send=send).sent
    with db.session_scope(producer) as s:
        fixed = store.find_call(s, "CC-3")
        assert fixed is not None and "payload_rejected" not in (fixed.call_metadata or {})


def test_the_same_file_under_another_spelling_of_its_path_is_a_quiet_duplicate(
        producer: Settings, tmp_path: Path) -> None:
    """A nightly re-send through a "today" folder link, or a path with '..', was refused as
    another file (exit 1) by the first version of the reused-id check (a review)."""
    day = tmp_path / "2026-01-31"
    day.mkdir()
    (day / "call.wav").write_bytes(b"RIFF")
    (tmp_path / "today").symlink_to(day)
    assert enqueue(str(day / "call.wav"), call_id="CC-7", agent_id="a",
                   settings=producer).sent
    for spelling in (str(tmp_path / "today" / "call.wav"),
                     f"{day}/../{day.name}/call.wav",
                     (tmp_path / "today" / "call.wav").as_uri()):
        again = enqueue(spelling, call_id="CC-7", agent_id="a", settings=producer)
        assert not again.sent and not again.refused, (spelling, again.reason)
    (tmp_path / "other.wav").write_bytes(b"RIFF")
    assert enqueue(str(tmp_path / "other.wav"), call_id="CC-7", agent_id="a",
                   settings=producer).refused


def test_a_call_id_reused_for_another_file_is_refused_and_a_resend_skipped_quietly(
        producer: Settings) -> None:
    """Call ids recycled daily, a copy-pasted row: a second enqueue or manifest naming a known
    call id with another file was skipped as "already enqueued or analysed", exit 0, and the
    new recording never analysed (a review). The same file sent again stays a quiet
    duplicate (a nightly re-run, a redelivery)."""
    first = enqueue("/recordings/d1/call.wav", call_id="DAY-0001", agent_id="agent-1",
                    settings=producer)
    assert first.sent
    for same in ("/recordings/d1/call.wav", "file:///recordings/d1/call.wav"):
        again = enqueue(same, call_id="DAY-0001", agent_id="agent-1", settings=producer)
        assert not again.sent and not again.refused
        assert again.reason == "already enqueued or analysed; pass reprocess to run again"
    other = enqueue("/recordings/d2/call.wav", call_id="DAY-0001", agent_id="agent-2",
                    settings=producer)
    assert not other.sent and other.refused
    reason = other.reason or ""
    assert "another file, '/recordings/d1/call.wav' (pending)" in reason
    assert "'/recordings/d2/call.wav' was not sent" in reason
    assert "new call id" in reason and "--reprocess" in reason

    manifest = producer.input_roots[0] / "d2.csv"
    manifest.write_text("uri,call_id,agent_id\n/recordings/d2/call.wav,DAY-0001,agent-2\n"
                        "/recordings/d2/next.wav,DAY-0002,agent-2\n")
    result = enqueue_manifest(manifest, settings=producer)
    assert (result.sent, result.skipped, result.refused) == (1, 1, 1)
    assert [r.call_id for r in result.results if r.refused] == ["DAY-0001"]
    with db.session_scope(producer) as s:
        (batch,) = store.latest_batches(s, 1)
        # `callmood status` shows it: the batch looked like a quiet re-run
        assert batch.scan_error is not None and "1 refused" in batch.scan_error
        assert "DAY-0001" in batch.scan_error
        call = store.find_call(s, "DAY-0001")
        assert call is not None and (call.source_uri, call.agent_id) == (
            "/recordings/d1/call.wav", "agent-1")
    assert _depth(producer) == 2

    replaced = enqueue("/recordings/d2/call.wav", call_id="DAY-0001", agent_id="agent-2",
                       reprocess=True, settings=producer)
    assert replaced.sent and _depth(producer) == 3
    with db.session_scope(producer) as s:
        call = store.find_call(s, "DAY-0001")
        assert call is not None and call.source_uri == "/recordings/d2/call.wav"


def test_a_known_call_sent_again_with_other_labels_is_refused_naming_them(
        producer: Settings) -> None:
    """A correction sent again (the agent's name fixed) was skipped as "already enqueued or
    analysed", exit 0, and the call kept the old agent in every report (a review). It is
    refused, naming each label stored and sent; a label left out, or a start time given in
    another offset for the same instant, is no difference; --reprocess takes the labels."""
    first = enqueue("/recordings/x/xl-1.wav", call_id="XL-1", agent_id="Jos\u00e9 P\u00e9rez",
                    started_at="2026-11-03T09:00:00+01:00", settings=producer)
    assert first.sent
    same = enqueue("/recordings/x/xl-1.wav", call_id="XL-1", agent_id="Jos\u00e9 P\u00e9rez",
                   started_at="2026-11-03T08:00:00Z", settings=producer)
    assert not same.sent and not same.refused
    fixed = enqueue("/recordings/x/xl-1.wav", call_id="XL-1", agent_id="ag-anna", team="blue",
                    started_at="2026-11-03T09:30:00+01:00", settings=producer)
    assert not fixed.sent and fixed.refused
    assert fixed.reason == (
        "already enqueued or analysed with other labels (agent_id 'Jos\u00e9 P\u00e9rez' stored, "
        "'ag-anna' sent; team 'none' stored, 'blue' sent; started_at "
        "'2026-11-03T08:00:00+00:00' stored, '2026-11-03T09:30:00+01:00' sent), so nothing was "
        "sent and the stored labels stand: to give the call these, enqueue it with "
        "--reprocess (reprocess=True: it takes them and is analysed again)")
    # a finished call can take them without a new analysis: the refusal says how
    with db.session_scope(producer) as s:
        finished = store.find_call(s, "XL-1")
        assert finished is not None
        finished.status = "done"
    done = enqueue("/recordings/x/xl-1.wav", call_id="XL-1", agent_id="ag-anna",
                   settings=producer)
    assert done.refused and "run callmood relabel XL-1 with them (no new analysis), or " in (
        done.reason or "")
    with db.session_scope(producer) as s:
        pending = store.find_call(s, "XL-1")
        assert pending is not None
        pending.status = "pending"
    manifest = producer.input_roots[0] / "fix.csv"
    manifest.write_text("uri,call_id,agent_id\n/recordings/x/xl-1.wav,XL-1,ag-anna\n")
    assert enqueue_manifest(manifest, settings=producer).refused == 1
    assert _depth(producer) == 1
    assert enqueue("/recordings/x/xl-1.wav", call_id="XL-1", agent_id="ag-anna",
                   reprocess=True, settings=producer).sent
    with db.session_scope(producer) as s:
        call = store.find_call(s, "XL-1")
        assert call is not None and call.agent_id == "ag-anna"


def test_a_failed_call_enqueued_again_says_it_failed_and_how_to_run_it(
        producer: Settings) -> None:
    """The skip said "already enqueued or analysed" of a call whose run failed."""
    with db.session_scope(producer) as s:
        call = store.register_call(s, store.CallRequest(uri="/recordings/f.wav",
                                                        external_call_id="FAIL-1"))
        store.mark_failed(s, store.claim_for_processing(s, call.id).id,
                          "not a readable audio file")
    skipped = enqueue("/recordings/f.wav", call_id="FAIL-1", agent_id="a", settings=producer)
    assert not skipped.sent and not skipped.refused
    reason = skipped.reason or ""
    assert reason.startswith("failed in its last run (not a readable audio file)")
    assert "--reprocess" in reason and "callmood retry --call-id FAIL-1" in reason
    assert _depth(producer) == 0


def test_a_send_that_fails_unexpectedly_unmarks_its_calls_and_raises_its_error(
        producer: Settings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """kombu raises TypeError for a broker URL it cannot read (``?password=``): the call
    stayed marked sent, the next enqueue skipped it as "already enqueued" and `status` did
    not count it as never sent (a review). Any error now unmarks, and is raised as it was."""
    import logging

    from worker import enqueue as enqueue_module

    def unreadable_url(requests: Sequence[store.CallRequest]) -> list[str]:
        raise TypeError("__init__() got multiple values for keyword argument 'password'")

    with pytest.raises(TypeError, match="password"):
        enqueue("/recordings/q.wav", call_id="PW-1", agent_id="a", settings=producer,
                send=unreadable_url)
    manifest = producer.input_roots[0] / "pw.csv"
    manifest.write_text("uri,call_id,agent_id\na.wav,PW-2,a\n")
    with pytest.raises(TypeError, match="password"):
        enqueue_manifest(manifest, settings=producer, send=unreadable_url)
    with db.session_scope(producer) as s:
        assert {c.external_call_id: c.enqueued_at for c in store.list_calls(s)} == {
            "PW-1": None, "PW-2": None}
        assert store.count_never_sent(s) == 2
        (batch,) = store.latest_batches(s, 1)
        assert (batch.enqueued, batch.scan_error) == (
            0, "stopped sending: TypeError: __init__() got multiple values for keyword "
               "argument 'password'")
    assert enqueue("/recordings/q.wav", call_id="PW-1", agent_id="a", settings=producer).sent

    def database_gone(*args: object) -> None:
        raise TransientError("database unavailable")

    # the unmarking failing too: the send's own error is still the one raised
    monkeypatch.setattr(enqueue_module, "release_enqueue", database_gone)
    with caplog.at_level(logging.ERROR, logger="worker.enqueue"), \
            pytest.raises(TypeError, match="password"):
        enqueue("/recordings/q3.wav", call_id="PW-3", agent_id="a", settings=producer,
                send=unreadable_url)
    assert "could not unmark the 1 call(s) of a failed send" in caplog.text


def test_two_retries_that_read_the_failure_at_once_send_one_run(
        producer: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `callmood retry` runs (or --all-failed chunks) that both read a call as failed
    both published it: two messages, one call analysed twice at once (a review)."""
    import worker.enqueue

    with db.session_scope(producer) as s:
        call = store.register_call(s, store.CallRequest(uri="/recordings/f.wav",
                                                        external_call_id="FAILED-2"))
        store.mark_failed(s, store.claim_for_processing(s, call.id).id, "database gone")
    with db.session_scope(producer) as s:
        as_read = store.list_calls(s, status="failed")       # what the slower retry read
    sent: list[str] = []

    def send(requests: Sequence[store.CallRequest]) -> list[str]:
        sent.extend(r.external_call_id for r in requests)
        return [f"task-{len(sent)}" for _ in requests]

    assert [r.sent for r in retry_failed(producer, call_ids=["FAILED-2"], send=send)] == [True]
    monkeypatch.setattr(worker.enqueue, "list_calls", lambda *a, **k: as_read)
    late = retry_failed(producer, call_ids=["FAILED-2"], send=send)
    assert sent == ["FAILED-2"]
    assert not late[0].sent and "no longer failed as read" in (late[0].reason or "")


# --------------------------------------------------------------------------- CLI round trip

@pytest.mark.slow
@pytest.mark.usefixtures("pipeline_importable")
def test_cli_enqueue_status_failures_retry_round_trip(
        tmp_path: Path, postgres_url: str, redis_url: str, callmood_corpora: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    broker = fresh_redis_db(redis_url, 6)
    inbox = tmp_path / "recordings"
    good, spare = make_recordings(inbox, callmood_corpora, 2)
    broken = inbox / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    # PostgreSQL trusts loopback here, so a password in the URL is accepted and ignored:
    # what matters is that no command prints it.
    url = postgres_url.replace("postgres@", "postgres:s3cret-pw@", 1)
    assert "s3cret-pw" in url
    env = callmood_env(url, broker, inbox, tiny_model(tmp_path / "model"), tmp_path / "data")
    for key, value in env.items():
        if key.startswith("CALLMOOD_"):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()

    def cli(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert "s3cret-pw" not in out + err
        return code, out + err

    assert cli("db", "upgrade")[0] == 0
    code, out = cli("enqueue", str(good), "--call-id", "CLI-1")
    assert code == 2 and "--agent" in out  # usage error: nothing registered, nothing sent
    code, out = cli("enqueue", str(good), "--call-id", "CLI-1", "--agent", "ag-1", "--team",
                    "blue", "--started-at", "2026-01-31T09:15:00Z", "--customer-ref", "c-1")
    assert code == 0 and "enqueued CLI-1: task " in out
    assert cli("enqueue", str(broken), "--call-id", "CLI-2", "--agent", "ag-2")[0] == 0
    code, out = cli("enqueue", str(good), "--call-id", "CLI-1", "--agent", "ag-1")
    assert code == 0 and "skipped CLI-1" in out
    # labels beside a manifest were ignored without a word: its rows carry their own
    manifest = inbox / "m.csv"
    manifest.write_text(f"uri,call_id,agent_id\n{spare},CLI-9,ag-9\n")
    code, out = cli("enqueue", "--manifest", str(manifest), "--team", "billing")
    assert code == 2 and "give no --team with it" in out and "team" in out

    code, out = cli("status")
    assert code == 0 and "queue callmood: 2 waiting, 0 delivered and unacked" in out
    assert "calls: 2 pending, 0 processing, 0 done, 0 failed" in out
    assert "postgres:***@" in out

    log_path = tmp_path / "worker.log"
    with celery_worker(env, log_path, concurrency=1, name="cli"):
        rows = wait_final(url, ["CLI-1", "CLI-2"], timeout_s=90, log_path=log_path)
        assert rows["CLI-1"][0] == "done" and rows["CLI-2"][0] == "failed"

        code, out = cli("failures")
        (line,) = [ln for ln in out.splitlines() if ln.startswith("CLI-2")]
        assert "attempts=1" in line and "broken.wav" in line
        assert "not a readable audio file" in line and "CLI-1" not in out
        assert " UTC\t" in line     # when it failed, in the site's zone (UTC here), named

        code, out = cli("status")
        assert "queue callmood: 0 waiting" in out
        assert "calls: 0 pending, 0 processing, 1 done, 1 failed" in out
        assert "1 done, 1 failed" in out.split("today")[1]

        # The recording is replaced by a good one; retry runs it again as a new run.
        broken.write_bytes(spare.read_bytes())
        assert cli("retry")[0] == 2  # neither --call-id nor --all-failed
        code, out = cli("retry", "--call-id", "CLI-1")
        assert code == 1 and "not failed calls: CLI-1" in out
        code, out = cli("retry", "--all-failed")
        assert code == 0 and "enqueued CLI-2" in out
        rows = wait_final(url, ["CLI-2"], timeout_s=60, log_path=log_path)
    assert rows["CLI-2"] == ("done", None, 1), rows  # a new run: attempts start again
    assert cli("failures")[1].count("CLI-") == 0
    with db.session_scope(url) as s:
        call = store.find_call(s, "CLI-1")
        assert call is not None and (call.agent_id, call.team, call.customer_ref) == \
            ("ag-1", "blue", "c-1")
    get_settings.cache_clear()


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16"])
def test_a_manifest_that_is_not_utf8_says_so(producer: Settings, encoding: str) -> None:
    """Excel's plain "CSV" on Windows is cp1252: a raw UnicodeDecodeError traceback before."""
    path = producer.input_roots[0] / "excel.csv"
    path.write_bytes("uri,call_id,agent_id,team\na.wav,X,a,Kundenbüro\n".encode(encoding))
    with pytest.raises(PayloadError, match=r"excel.csv: not UTF-8 \(byte 0x.. at offset \d+\): "
                                           r"save it as UTF-8"):
        enqueue_manifest(path, settings=producer)
    assert _depth(producer) == 0
