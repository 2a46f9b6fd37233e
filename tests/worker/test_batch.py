"""The nightly batch: settings, the beat schedule, ``callmood beat``, and the inbox scan run
twice (beat's task on a real worker, then ``callmood batch``) enqueueing each recording once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import celery
import numpy as np
import pytest

from tests.worker.prod_support import (
    call_rows,
    callmood_env,
    celery_worker,
    fresh_redis_db,
    make_bad_recordings,
    make_recordings,
    redis_db_url,
    tiny_model,
    wait_final,
)
from worker import batch, db, enqueue, runner, store
from worker.audio import resolve_input
from worker.batch import scan_inboxes
from worker.celery_app import (
    CONTROL_QUEUE,
    NIGHTLY_SCAN_TASK_NAME,
    NIGHTLY_SCHEDULE_ENTRY,
    RECOVERY_SCHEDULE_ENTRY,
    TASK_QUEUE,
    beat_schedule,
    make_celery,
    queue_stats,
)
from worker.cli import main
from worker.enqueue import celery_sender
from worker.errors import ConfigError, PayloadError, TransientError
from worker.runner import external_id_for
from worker.settings import PACKAGE_DIR, Settings, get_settings


def external_id_for_bytes(content: bytes) -> str:
    """The scan's call id of a file holding ``content``."""
    import hashlib

    from worker.store import content_call_id

    return content_call_id(hashlib.sha256(content).hexdigest())


def recording(content: bytes) -> bytes:
    """``content`` as a stand-in recording: past ``runner.NO_AUDIO_MAX_BYTES`` (zeros first,
    so distinct contents stay distinct), so the scan keys it by content, as a real one."""
    return bytes(runner.NO_AUDIO_MAX_BYTES) + content


def test_inbox_settings_are_validated(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    s = Settings.from_env({"CALLMOOD_DATA_DIR": str(tmp_path / "d"),
                           "CALLMOOD_INBOX_DIRS": f"{inbox}{os.pathsep}{tmp_path / 'other'}",
                           "CALLMOOD_NIGHTLY_AT": "3:05", "CALLMOOD_TIMEZONE": "Europe/Berlin"})
    assert s.inbox_dirs == (inbox.resolve(), (tmp_path / "other").resolve())
    assert set(s.inbox_dirs) <= set(s.input_roots)  # the worker may read what is enqueued
    assert (s.nightly_at, s.timezone) == ((3, 5), "Europe/Berlin")
    defaults = Settings.from_env({"CALLMOOD_DATA_DIR": str(tmp_path / "d")})
    assert (defaults.inbox_dirs, defaults.nightly_at, defaults.timezone) == ((), (2, 0), "UTC")


@pytest.mark.parametrize(("env", "message"), [
    ({"CALLMOOD_NIGHTLY_AT": "25:00"}, "CALLMOOD_NIGHTLY_AT='25:00': expected HH:MM"),
    ({"CALLMOOD_NIGHTLY_AT": "2am"}, "00:00-23:59"),
    ({"CALLMOOD_TIMEZONE": "Mars/Olympus"}, "CALLMOOD_TIMEZONE='Mars/Olympus': expected an IANA"),
    ({"CALLMOOD_INPUT_ROOTS": "/srv/a", "CALLMOOD_INBOX_DIRS": "/srv/b/inbox"},
     "CALLMOOD_INBOX_DIRS: /srv/b/inbox not under any of CALLMOOD_INPUT_ROOTS"),
])
def test_bad_inbox_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value)


def test_the_scan_skips_partial_uploads_in_hidden_files_and_folders(tmp_path: Path) -> None:
    """scp and rsync write a transfer under a hidden name or folder and rename it when it is
    complete: only the renamed file is a recording. A hidden folder above the inbox is not
    the inbox's business."""
    inbox = tmp_path / ".config" / "inbox"
    for name in ["day/call-1.wav", "call-2.WAV", ".call-3.wav", ".call-4.wav.Ab12Cd",
                 ".rsync-partial/call-5.wav", "day/.~tmp~/call-6.wav", ".hidden/deep/call-7.mp3",
                 "notes.txt"]:
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_bytes(b"RIFF")
    listing = batch.list_inbox([inbox])
    found = [p.relative_to(inbox.resolve()).as_posix() for p in listing.files]
    assert found == ["call-2.WAV", "day/call-1.wav"]


def test_a_subfolder_that_cannot_be_listed_is_skipped_not_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A stale network handle (ESTALE) on one subfolder ended the whole scan in a traceback,
    nothing sent, and the nightly task was not retried (a review)."""
    import errno

    inbox = tmp_path / "inbox"
    for name in ["a/call-1.wav", "stale/call-2.wav", "z/call-3.wav"]:
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_bytes(b"RIFF")
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path).name == "stale":
            raise OSError(errno.ESTALE, "Stale file handle", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level("WARNING"):
        listing = batch.list_inbox([inbox])
        found = [p.relative_to(inbox.resolve()).as_posix() for p in listing.files]
    assert found == ["a/call-1.wav", "z/call-3.wav"]
    assert "stale" in caplog.text and "Stale file handle" in caplog.text


def test_an_entry_that_is_no_regular_file_is_named_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A dangling link, a FIFO or a link to a device named like a recording was left out
    without a word, the scan's count short of the folder's (a review)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "call-1.wav").write_bytes(b"RIFF")
    (inbox / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    os.mkfifo(inbox / "pipe.wav")
    (inbox / "zero.wav").symlink_to("/dev/zero")
    with caplog.at_level("WARNING"):
        listing = batch.list_inbox([inbox])
    assert [p.name for p in listing.files] == ["call-1.wav"]
    for name in ("gone.wav", "pipe.wav", "zero.wav"):
        assert f"{name}' skipped: not a regular file" in caplog.text, name


def test_beat_schedules_the_scan_at_the_configured_local_time(tmp_path: Path) -> None:
    s = Settings.from_env({"CALLMOOD_DATA_DIR": str(tmp_path), "CALLMOOD_INBOX_DIRS": str(tmp_path),
                           "CALLMOOD_NIGHTLY_AT": "03:30", "CALLMOOD_TIMEZONE": "Europe/Berlin"})
    app = make_celery(s)
    entry = app.conf.beat_schedule[NIGHTLY_SCHEDULE_ENTRY]
    assert entry["task"] == NIGHTLY_SCAN_TASK_NAME == "callmood.nightly_scan"
    assert entry["options"]["queue"] == CONTROL_QUEUE != TASK_QUEUE  # not behind a backlog
    schedule = entry["schedule"]
    assert (schedule.hour, schedule.minute) == ({3}, {30})
    assert str(app.conf.timezone) == "Europe/Berlin" and app.conf.enable_utc
    assert NIGHTLY_SCHEDULE_ENTRY not in beat_schedule(s.replace(inbox_dirs=()))
    app.close()


def _beat_log_until(env: dict[str, str], log_path: Path, entry: str) -> str:
    """Run ``callmood beat`` until its DEBUG log lists schedule ``entry``; the log."""
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "worker.cli", "beat", "--loglevel",
                                    "DEBUG"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while entry not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=20)
    return log_path.read_text()


def test_callmood_beat_execs_celery_beat(tmp_path: Path, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLMOOD_")}
    env.update({"CALLMOOD_DATA_DIR": str(tmp_path / "data"), "CALLMOOD_INBOX_DIRS": str(tmp_path),
                "CALLMOOD_BROKER_URL": redis_db_url(redis_url, 7),
                "PYTHONPATH": str(PACKAGE_DIR.parent)})
    text = _beat_log_until(env, tmp_path / "beat.log", NIGHTLY_SCHEDULE_ENTRY)
    assert "beat: Starting" in text and "callmood.nightly_scan" in text
    assert list((tmp_path / "data").glob("celerybeat-schedule*"))
    # without inbox folders a Redis broker still gets its recovery of lost messages
    env.pop("CALLMOOD_INBOX_DIRS")
    text = _beat_log_until(env, tmp_path / "beat-recovery.log", RECOVERY_SCHEDULE_ENTRY)
    assert NIGHTLY_SCHEDULE_ENTRY not in text
    # ... and so does the embedded database broker (a worker killed outright, delivered rows)
    env["CALLMOOD_BROKER_URL"] = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    text = _beat_log_until(env, tmp_path / "beat-embedded.log", RECOVERY_SCHEDULE_ENTRY)
    assert NIGHTLY_SCHEDULE_ENTRY not in text
    # nothing to schedule at all: no inbox folders and a broker without recovery
    env["CALLMOOD_BROKER_URL"] = "memory://"
    refused = subprocess.run([sys.executable, "-m", "worker.cli", "beat"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "CALLMOOD_INBOX_DIRS" in refused.stderr and "redis://" in refused.stderr


def test_a_file_that_cannot_travel_or_a_broker_outage_does_not_wedge_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    deep = inbox / ("d" * 120)
    deep.mkdir(parents=True)
    for folder, name in ((inbox, "a.wav"), (inbox, "b.wav"), (deep, "c.wav")):
        (folder / name).write_bytes(recording(name.encode()))  # distinct contents and ids
    latin1 = inbox / os.fsdecode(b"\xe9t\xe9.wav")
    latin1.write_bytes(recording(b"latin-1 name"))
    loop = inbox / "loop.wav"
    loop.symlink_to(loop)  # a symlink loop is skipped (logged), not the end of the scan
    settings = Settings.from_env({"CALLMOOD_DATA_DIR": str(tmp_path / "data"),
                                  "CALLMOOD_INBOX_DIRS": str(inbox),
                                  "CALLMOOD_INBOX_MIN_AGE_S": "0"})   # files written just now
    db.upgrade(settings.database_url)
    # c.wav's path is over the payload's URI limit: it is refused, the others still go
    monkeypatch.setattr(store, "URI_MAX_CHARS", len(str(inbox)) + 60)
    monkeypatch.setattr(enqueue, "SUBMIT_CHUNK", 1)
    monkeypatch.setattr(batch, "SCAN_LOOKUP_FILES", 1)   # as the defaults: <= SUBMIT_CHUNK
    sent: list[store.CallRequest] = []
    hashed: list[str] = []

    def hashing(path: Path) -> str:
        hashed.append(path.name)
        return external_id_for(path)

    monkeypatch.setattr(batch, "external_id_for", hashing)
    monkeypatch.setattr(runner, "external_id_for", hashing)   # runner.call_id_for's hash

    hashed_when_sent: list[int] = []

    def broker_fails_after_two(requests: Sequence[store.CallRequest]) -> list[str]:
        hashed_when_sent.append(len(hashed))
        if len(sent) == 2:
            raise TransientError("broker unreachable")
        sent.extend(requests)
        return [f"task-{len(sent)}"]

    with pytest.raises(TransientError):
        scan_inboxes(settings, source="nightly", send=broker_fails_after_two)
    assert [r.uri for r in sent] == [str(inbox.resolve() / n) for n in ("a.wav", "b.wav")]
    # each chunk went out as soon as it was hashed, not after the whole inbox was
    assert hashed_when_sent == [1, 2, 3]
    with db.session_scope(settings) as s:
        (first,) = store.latest_batches(s, 1)
    # closed with the two it sent, not left "scanning"; the unsent one was released
    assert first.scanned_at is not None and (first.enqueued, first.skipped) == (2, 0)

    # The retry (a new scan): the two sent are known by path, the Latin-1 name goes now,
    # percent-encoded, and the worker's resolver finds the same file from that URI.
    retried: list[store.CallRequest] = []

    def broker_back(requests: Sequence[store.CallRequest]) -> list[str]:
        retried.extend(requests)
        return [f"retry-{i}" for i in range(len(requests))]

    report = scan_inboxes(settings, source="nightly", send=broker_back)
    assert (report.seen, report.enqueued, report.skipped, report.refused) == (4, 1, 2, 1)
    assert report.as_dict()["refused"] == 1
    assert "loop.wav" in caplog.text
    # the refused file's content was never read: it is met (and refused) every night
    assert "c.wav" not in hashed and "a.wav" in hashed
    assert [r.uri for r in retried] == [latin1.resolve().as_uri()]
    assert resolve_input(retried[0].uri, [inbox]).read_bytes() == recording(b"latin-1 name")
    with pytest.raises(PayloadError, match="percent-encoded file:// URI"):
        store.CallRequest(uri=str(latin1), external_call_id="x")


@pytest.mark.slow
@pytest.mark.usefixtures("pipeline_importable")
def test_the_nightly_scan_twice_enqueues_each_recording_once(
        tmp_path: Path, postgres_url: str, redis_url: str, callmood_corpora: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    broker = fresh_redis_db(redis_url, 8)
    inbox = tmp_path / "inbox"
    good = make_recordings(inbox / "2026-01-31", callmood_corpora, 6)
    # a name in Latin-1 (copied from an old system): Python decodes it with surrogate escapes
    latin1 = good[5].with_name(os.fsdecode(b"appel-client-\xe9t\xe9.wav"))
    good[5] = good[5].rename(latin1)
    bad = make_bad_recordings(inbox / "2026-01-31")
    shutil.copy(good[0], inbox / "copy-of-call-000.wav")  # same content, another name
    (inbox / ".uploading.wav").write_bytes(good[1].read_bytes())  # partial upload: hidden
    (inbox / "notes.txt").write_text("not a recording")
    db.upgrade(postgres_url)
    env = callmood_env(postgres_url, broker, tmp_path, tiny_model(tmp_path / "model"),
                       tmp_path / "data", inbox_dirs=str(inbox), inbox_min_age_s="0")
    settings = Settings.from_env(env)
    # the bad files are too small for audio: a call each, by path (the empty one's reason is
    # its own)
    expected = {runner.call_id_for(p.resolve()) for p in [*good, *bad.values()]}

    log_path = tmp_path / "worker.log"
    with celery_worker(env, log_path, concurrency=2, name="nightly"):
        # What beat sends at CALLMOOD_NIGHTLY_AT, from a client that knows only the name.
        client = celery.Celery(broker=broker)
        client.send_task(NIGHTLY_SCAN_TASK_NAME, queue=TASK_QUEUE)
        client.close()
        deadline = time.monotonic() + 60
        while set(call_rows(postgres_url)) != expected:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        rows = wait_final(postgres_url, sorted(expected), timeout_s=90, log_path=log_path)

        # The second scan (the CLI's) finds every file known, by path or by content.
        for key, value in env.items():
            if key.startswith("CALLMOOD_"):
                monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        assert main(["batch"]) == 0
        assert "11 file(s) seen, 0 enqueued, 11 already known" in capsys.readouterr().out
        get_settings.cache_clear()

    assert set(call_rows(postgres_url)) == expected  # no call added by the second scan
    with db.session_scope(postgres_url) as s:
        latin1_call = store.find_call(s, external_id_for(latin1))
        assert latin1_call is not None and latin1_call.status == "done"
        # sent as the percent-encoded URI; the worker opened the same bytes
        assert latin1_call.source_uri == latin1.as_uri() and "%E9t%E9.wav" in latin1.as_uri()
    assert sum(r[0] == "done" for r in rows.values()) == 6
    assert sum(r[0] == "failed" for r in rows.values()) == 4
    with db.session_scope(postgres_url) as s:
        second, first = store.latest_batches(s, 2)
    assert (first.source, first.enqueued, first.skipped) == ("nightly", 10, 1)
    assert (first.done, first.failed, first.pending, first.processing) == (6, 4, 0, 0)
    assert first.finished_at is not None
    assert (second.source, second.enqueued, second.skipped, second.done) == ("cli", 0, 11, 0)

    # A new file arrives: the next scan sends it, and only it.
    (new,) = make_recordings(inbox / "2026-02-01", callmood_corpora, 1, first_seed=100)
    with celery_sender(settings) as send:
        report = scan_inboxes(settings, source="nightly", send=send)
    assert (report.seen, report.enqueued, report.skipped, report.ignored) == (12, 1, 11, 1)
    app = make_celery(settings)
    try:
        assert queue_stats(app).queued == 1  # no worker now: the one message waits
    finally:
        app.close()
    with db.session_scope(postgres_url) as s:
        call = store.find_call(s, external_id_for(new))
        assert call is not None and call.batch_id == report.batch_id
        assert call.status == "pending" and call.source_uri == str(new.resolve())


def test_an_entry_the_os_refuses_to_stat_is_skipped_not_the_end_of_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """is_file() raises PermissionError where stat is refused (a link into a folder the worker
    may not enter). Tests run as root, whom no permission stops, so the refusal is simulated."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("a.wav", "locked.wav", "z.wav"):
        (inbox / name).write_bytes(name.encode())
    real_is_file = Path.is_file

    def refusing(self: Path) -> bool:
        if self.name == "locked.wav":
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", refusing)
    with caplog.at_level("WARNING", logger="callmood"):
        found = [p.name for p in batch.list_inbox([inbox]).files]
    assert found == ["a.wav", "z.wav"]
    assert "locked.wav" in caplog.text and "Permission denied" in caplog.text


def _aged_inbox(tmp_path: Path, files: dict[str, bytes], age_s: float
               ) -> tuple[dict[str, Path], Settings, list[store.CallRequest], Any]:
    """An inbox holding ``files`` (name: content) last modified ``age_s`` ago, its migrated
    settings, and a sender that records what it sends."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    paths = {name: inbox / name for name in files}
    then = time.time() - age_s
    for name, content in files.items():
        paths[name].write_bytes(content)
        os.utime(paths[name], (then, then))
    settings = Settings.from_env({"CALLMOOD_DATA_DIR": str(tmp_path / "data"),
                                  "CALLMOOD_INBOX_DIRS": str(inbox)})
    db.upgrade(settings.database_url)
    sent: list[store.CallRequest] = []

    def send(requests: Sequence[store.CallRequest]) -> list[str]:
        sent.extend(requests)
        return [f"task-{len(sent)}-{i}" for i in range(len(requests))]

    return paths, settings, sent, send


def test_a_failed_file_modified_since_is_sent_again_as_a_new_run_of_its_call(
        tmp_path: Path) -> None:
    """A copy that stalled past CALLMOOD_INBOX_MIN_AGE_S was sent cut short and its call
    failed; every later scan skipped the path as sent, so the completed recording was never
    analysed unless someone ran callmood retry. A scan now sends a failed call again, as a
    new run of that call, once its file is modified after the failure; never otherwise."""

    from worker.schema import utcnow

    paths, settings, sent, send = _aged_inbox(
        tmp_path, {"stalled.wav": recording(b"the first part"),
                   "corrupt.wav": recording(b"not audio at all")}, 7200)
    stalled = paths["stalled.wav"]
    first = scan_inboxes(settings, source="nightly", send=send)
    assert (first.enqueued, first.changed) == (2, 0)
    ids = {Path(r.uri).name: r.external_call_id for r in sent}
    with db.session_scope(settings) as s:   # both failed by the worker just now
        for call in store.calls_by_external_id(s, list(ids.values())).values():
            store.mark_failed(s, store.claim_for_processing(s, call.id).id, "cut short")
            call.processed_at = utcnow()
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 0
    # the copy completes, keeping its source's modification time (`cp -p`, `rsync -t`, SMB:
    # an hour ago, before the failure: a review found such a copy never sent again); the
    # corrupt file is left as it was
    stalled.write_bytes(recording(b"the first part and the rest of the call"))
    an_hour_ago = time.time() - 3600
    os.utime(stalled, (an_hour_ago, an_hour_ago))
    again = scan_inboxes(settings, source="nightly", send=send)
    assert (again.enqueued, again.changed, again.skipped) == (1, 1, 1)
    assert again.as_dict()["changed"] == 1
    (retry,) = sent[2:]
    assert (retry.external_call_id, retry.reprocess) == (ids["stalled.wav"], True)
    with db.session_scope(settings) as s:
        call = store.calls_by_external_id(s, [ids["stalled.wav"]])[ids["stalled.wav"]]
        assert (call.status, call.batch_id) == ("pending", again.batch_id)
    # sent once: a later scan sees it pending, not failed
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 0


def test_a_file_completed_after_its_analysis_is_analysed_again_a_touched_one_is_not(
        tmp_path: Path) -> None:
    """A copy taken half-written that the worker cannot tell cut short (a WAV whose writer
    left its length open, an MP3) was stored as done with part of the call, and every later
    scan skipped its path: the rest was lost without a word (a review). A done call whose
    file's content changed after its analysis is run again; one only touched is not."""
    import hashlib
    from datetime import timedelta

    from worker.schema import utcnow

    paths, settings, sent, send = _aged_inbox(
        tmp_path, {"half.wav": recording(b"the first part"),
                   "touched.wav": recording(b"a whole call")}, 7200)
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 2
    ids = {Path(r.uri).name: r.external_call_id for r in sent}
    with db.session_scope(settings) as s:   # the worker analysed both as they were
        for name, call_id in ids.items():
            call = store.find_call(s, call_id)
            assert call is not None
            call.status, call.processed_at = "done", utcnow() - timedelta(seconds=30)
            call.content_sha256 = hashlib.sha256(paths[name].read_bytes()).hexdigest()
            call.model_version = "m"
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 0
    # the copy completes, keeping its source's older modification time (cp -p); the other
    # file is only touched back to its own time (its inode change time moves, its content not)
    an_hour_ago = time.time() - 3600
    paths["half.wav"].write_bytes(recording(b"the first part and the rest of the call"))
    for path in paths.values():
        os.utime(path, (an_hour_ago, an_hour_ago))
    again = scan_inboxes(settings, source="nightly", send=send)
    assert (again.enqueued, again.changed) == (1, 1)
    (rerun,) = sent[2:]
    assert (rerun.external_call_id, rerun.reprocess) == (ids["half.wav"], True)
    with db.session_scope(settings) as s:
        call = store.find_call(s, ids["half.wav"])
        assert call is not None and (call.status, call.batch_id) == ("pending", again.batch_id)
    # sent once: a later scan sees it pending, not done
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 0


def test_changed_failed_files_are_counted_by_path_and_not_sent_as_a_second_copy(
        tmp_path: Path) -> None:
    """Two failed calls of one path (the scan's and a producer's own call id for the same
    file) are both sent again without the batch's counts going negative (the scan failed on
    its CHECK constraint after sending); a changed file whose completed content another call
    already holds (re-uploaded under another name meanwhile) is not analysed a second time."""

    from worker.schema import utcnow

    paths, settings, sent, send = _aged_inbox(
        tmp_path, {"shared.wav": recording(b"the first part of one call"),
                   "stalled.wav": recording(b"the first part of another")}, 7200)
    shared, stalled = paths["shared.wav"], paths["stalled.wav"]
    inbox = shared.parent
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 2
    with db.session_scope(settings) as s:
        store.reserve_for_enqueue(s, store.CallRequest(uri=str(shared.resolve()),
                                                       external_call_id="crm-42"))
        for call in store.list_calls(s):
            store.mark_failed(s, store.claim_for_processing(s, call.id).id, "cut short")
            call.processed_at = utcnow()
    an_hour_ago = time.time() - 3600
    copy = inbox / "stalled (1).wav"            # the complete recording, uploaded again
    copy.write_bytes(recording(b"the first part of another and the rest"))
    os.utime(copy, (an_hour_ago, an_hour_ago))
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 1   # the copy
    shared.write_bytes(recording(b"the first part of one call and the rest"))
    stalled.write_bytes(copy.read_bytes())      # then the stalled copy completes too
    for path in (shared, stalled):
        os.utime(path, (an_hour_ago, an_hour_ago))
    shared_ids = {"crm-42", external_id_for_bytes(recording(b"the first part of one call"))}
    now = scan_inboxes(settings, source="nightly", send=send)
    assert (now.enqueued, now.changed, now.skipped) == (2, 2, 2)
    assert {r.external_call_id for r in sent[-2:]} == shared_ids
    assert all(r.reprocess for r in sent[-2:])


def test_a_file_moved_after_its_scan_is_sent_again_from_its_new_path(tmp_path: Path) -> None:
    """The operator moved inbox/call-1.wav into inbox/day/ before a worker ran it: the worker
    failed the call (no such file), every later scan counted the file at its new path as
    known (its content is the call's id), and callmood retry sent the old path again: the
    recording was never analysed (a review)."""
    paths, settings, sent, send = _aged_inbox(
        tmp_path, {"call-1.wav": recording(b"one call's audio")}, 7200)
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 1
    (first,) = sent
    moved = paths["call-1.wav"].parent / "day" / "call-1.wav"
    moved.parent.mkdir()
    paths["call-1.wav"].rename(moved)
    with db.session_scope(settings) as s:   # the worker found nothing at the old path
        call = store.find_call(s, first.external_call_id)
        assert call is not None
        store.mark_failed(s, store.claim_for_processing(s, call.id).id, "No such file")
    again = scan_inboxes(settings, source="nightly", send=send)
    assert (again.enqueued, again.changed) == (1, 1)
    (retry,) = sent[1:]
    assert (retry.external_call_id, retry.reprocess) == (first.external_call_id, True)
    assert Path(retry.uri) == moved.resolve()
    with db.session_scope(settings) as s:
        call = store.find_call(s, first.external_call_id)
        assert call is not None and (call.status, Path(call.source_uri)) == ("pending",
                                                                             moved.resolve())
    # sent once: the next scan finds it pending at its new path
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 0
    # a failed call whose file is still where it was is known as it is
    (tmp_path / "other").mkdir()
    paths2, settings2, sent2, send2 = _aged_inbox(tmp_path / "other",
                                                  {"a.wav": recording(b"audio")}, 7200)
    assert scan_inboxes(settings2, source="nightly", send=send2).enqueued == 1
    with db.session_scope(settings2) as s:
        call = store.find_call(s, sent2[0].external_call_id)
        assert call is not None
        store.mark_failed(s, store.claim_for_processing(s, call.id).id, "corrupt")
    copy = paths2["a.wav"].parent / "copy-of-a.wav"
    copy.write_bytes(recording(b"audio"))
    os.utime(copy, (time.time() - 7200, time.time() - 7200))
    assert scan_inboxes(settings2, source="nightly", send=send2).enqueued == 0


def test_a_file_replaced_before_its_analysis_is_not_analysed_again_as_a_copy(
        tmp_path: Path, callmood_corpora: Path) -> None:
    """inbox/a.wav was replaced by another recording between the scan that sent it and its
    analysis: the worker stored what it read under the old content's call id, and a copy of
    that recording under another name was analysed a second time, counted twice in every
    report (a review). The scan now also looks a new file's content up in what finished calls
    analysed (calls.content_sha256), and counts the copy as skipped."""
    from worker.jobs import process_call

    first, second, third = make_recordings(tmp_path / "made", callmood_corpora, 3)
    paths, settings, sent, send = _aged_inbox(tmp_path, {"a.wav": first.read_bytes()}, 7200)
    settings = settings.replace(model_path=tiny_model(tmp_path / "model"),
                                input_roots=(paths["a.wav"].parent.resolve(),))
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 1
    (request,) = sent
    paths["a.wav"].write_bytes(second.read_bytes())   # replaced before a worker read it
    os.utime(paths["a.wav"], (time.time() - 7200, time.time() - 7200))
    assert process_call(request, settings).status == "done"
    with db.session_scope(settings) as s:
        call = store.find_call(s, request.external_call_id)
        assert call is not None
        assert external_id_for_bytes(second.read_bytes()) == f"sha256-{call.content_sha256}"
        assert external_id_for_bytes(first.read_bytes()) == call.external_call_id
    copy = paths["a.wav"].parent / "b.wav"             # the second recording, uploaded again
    copy.write_bytes(second.read_bytes())
    os.utime(copy, (time.time() - 7200, time.time() - 7200))
    again = scan_inboxes(settings, source="nightly", send=send)
    assert (again.enqueued, again.skipped) == (0, 2)   # a.wav by its path, b.wav by content
    assert len(sent) == 1
    with db.session_scope(settings) as s:
        (batch,) = store.latest_batches(s)
        assert (batch.batch_id, batch.enqueued, batch.skipped) == (again.batch_id, 0, 2)
    # a recording no call holds is sent as before
    other = paths["a.wav"].parent / "c.wav"
    other.write_bytes(third.read_bytes())
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 1
    assert sent[-1].external_call_id == external_id_for_bytes(third.read_bytes())


def test_new_files_are_looked_up_a_chunk_at_a_time(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan looked each new file up in a session of its own (moved failures); now one
    session per SCAN_LOOKUP_FILES hashed files does both lookups, and every file is sent."""
    # a chunk of hashed files is sent before the next is hashed (a scan cut short by its time
    # limit has sent what it hashed)
    assert batch.SCAN_LOOKUP_FILES <= enqueue.SUBMIT_CHUNK
    opened: list[int] = []
    real_sort = batch.sort_new_files

    def counting(session: Any, requests: Sequence[store.CallRequest]) -> batch.NewFiles:
        opened.append(len(requests))
        return real_sort(session, requests)

    monkeypatch.setattr(batch, "sort_new_files", counting)
    monkeypatch.setattr(batch, "SCAN_LOOKUP_FILES", 3)
    files = {f"call-{i}.wav": recording(f"recording {i}".encode()) for i in range(7)}
    _, settings, sent, send = _aged_inbox(tmp_path, files, 7200)
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 7
    assert opened == [3, 3, 1]
    assert {r.external_call_id for r in sent} == {external_id_for_bytes(c)
                                                  for c in files.values()}


def test_changed_failed_files_are_hashed_outside_the_write_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan hashed every failed file modified since its failure inside its first
    transaction, which on SQLite holds the database's write lock from BEGIN IMMEDIATE: each
    worker storing a call waited while a night's re-exported recordings were read (a review).
    Every file is now hashed with the database free for another writer."""
    import sqlite3

    from sqlalchemy.engine import make_url

    from worker.schema import utcnow

    paths, settings, sent, send = _aged_inbox(
        tmp_path, {"a.wav": recording(b"first part of a"),
                   "b.wav": recording(b"first part of b")}, 7200)
    assert scan_inboxes(settings, source="nightly", send=send).enqueued == 2
    with db.session_scope(settings) as s:
        for call in store.list_calls(s):
            store.mark_failed(s, store.claim_for_processing(s, call.id).id, "cut short")
            call.processed_at = utcnow()
    an_hour_ago = time.time() - 3600
    for path in paths.values():
        path.write_bytes(path.read_bytes() + b" and the rest")
        os.utime(path, (an_hour_ago, an_hour_ago))
    database = make_url(settings.database_url).database
    assert database is not None
    lock_free: list[bool] = []

    def hashing(path: Path) -> str:
        other = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")   # another writer (a worker storing a call)
            other.execute("ROLLBACK")
            lock_free.append(True)
        except sqlite3.OperationalError:       # database is locked
            lock_free.append(False)
        finally:
            other.close()
        return external_id_for(path)

    monkeypatch.setattr(batch, "external_id_for", hashing)
    again = scan_inboxes(settings, source="nightly", send=send)
    assert (again.enqueued, again.changed) == (2, 2)
    assert lock_free == [True, True]
    assert [r.reprocess for r in sent] == [False, False, True, True]


def test_empty_and_header_only_files_each_fail_as_a_call_of_their_own(
        tmp_path: Path, callmood_corpora: Path) -> None:
    """Three 0-byte files and two header-only WAVs share their bytes, not a recording: keyed by
    content they were two calls, and three files were counted known with no failed row and no
    reason anywhere; once the first empty file was replaced by a recording, ``failures`` showed
    none while the others sat in the inbox (a review). A file too small for audio is now a
    call of its own path; a recording copied twice is still one call."""
    import soundfile as sf

    from worker.jobs import process_call

    real, replacement = make_recordings(tmp_path / "made", callmood_corpora, 2)
    header_path = tmp_path / "made" / "header-only.wav"   # a recorder that died after the header
    sf.write(header_path, np.zeros((0, 2)), 8000, subtype="ULAW")
    broken = {"agent7 0915.wav": b"", "agent7 1002.wav": b"", "agent9 1130.wav": b"",
              "hdr-a.wav": header_path.read_bytes(), "hdr-b.wav": header_path.read_bytes()}
    paths, settings, sent, send = _aged_inbox(
        tmp_path, {**broken, "call-1.wav": real.read_bytes(),
                   "copy-of-call-1.wav": real.read_bytes()}, 7200)
    settings = settings.replace(model_path=tiny_model(tmp_path / "model"))
    first = scan_inboxes(settings, source="nightly", send=send)
    assert (first.seen, first.enqueued, first.skipped) == (7, 6, 1)   # the copy, by content
    by_name = {Path(r.uri).name: r for r in sent}
    assert set(by_name) == {*broken, "call-1.wav"}
    assert len({r.external_call_id for r in sent}) == 6
    for name in broken:   # the worker fails each, naming its own file
        outcome = process_call(by_name[name], settings)
        assert outcome.status == "failed" and outcome.reason and name in outcome.reason

    # the first empty file is replaced by a recording: sent again; the others stay failed
    paths["agent7 0915.wav"].write_bytes(replacement.read_bytes())
    an_hour_ago = time.time() - 3600
    os.utime(paths["agent7 0915.wav"], (an_hour_ago, an_hour_ago))
    again = scan_inboxes(settings, source="nightly", send=send)
    assert (again.enqueued, again.changed) == (1, 1)
    assert sent[-1].external_call_id == by_name["agent7 0915.wav"].external_call_id
    with db.session_scope(settings) as s:
        failed = {Path(c.source_uri).name: c.failure_reason
                  for c in store.list_calls(s, status="failed")}
    assert set(failed) == set(broken) - {"agent7 0915.wav"}
    assert all(name in (reason or "") for name, reason in failed.items())


def test_files_of_an_unsupported_suffix_are_counted_and_named(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder of .m4a and .gsm recordings did nothing without a word: "0 file(s) seen", exit
    0 (a review). The scan counts them (``ignored``) and names a few with the suffixes it
    reads; not an error: a .txt sidecar beside each recording is normal."""
    import logging

    paths, settings, _, send = _aged_inbox(
        tmp_path, {"call-1.m4a": b"m4a", "call-2.gsm": b"gsm", ".uploading.m4a": b"partial"},
        7200)
    with caplog.at_level(logging.INFO, logger="worker.batch"):
        report = scan_inboxes(settings, source="nightly", send=send)
    assert (report.seen, report.enqueued, report.ignored) == (0, 0, 2)
    assert report.as_dict()["ignored"] == 2
    (line,) = [r for r in caplog.records if "ignored:" in r.getMessage()]
    message = line.getMessage()
    assert line.levelname == "WARNING"   # the scan found nothing else: this is why
    assert message.startswith("2 inbox file(s) ignored")
    assert "call-1.m4a" in message and "call-2.gsm" in message
    assert "(.wav .flac .ogg .opus .oga .mp3)" in message and "uploading" not in message

    # beside a recording, sidecars are said, not warned of; three names, then a count
    inbox = paths["call-1.m4a"].parent
    for name in ("call-3.wav", "call-3.txt", "notes.txt"):
        (inbox / name).write_bytes(recording(name.encode()))
        os.utime(inbox / name, (time.time() - 7200, time.time() - 7200))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.batch"):
        report = scan_inboxes(settings, source="nightly", send=send)
    assert (report.seen, report.enqueued, report.ignored) == (1, 1, 4)
    (line,) = [r for r in caplog.records if "ignored:" in r.getMessage()]
    assert line.levelname == "INFO" and line.getMessage().endswith(" and 1 more")


def test_the_files_a_scan_left_are_kept_on_its_batch(tmp_path: Path) -> None:
    """Files still being copied in (too new), of another suffix, or refused were only in the
    worker's log: `callmood status` showed the batch as "0 enqueued, 0 skipped", a quiet
    night (a review). The batch keeps them (migration 0010)."""
    paths, settings, _, send = _aged_inbox(
        tmp_path, {"old.wav": recording(b"old"), "call.m4a": b"m4a"}, 7200)
    inbox = paths["old.wav"].parent
    for name in ("new-1.wav", "new-2.wav"):              # modified just now
        (inbox / name).write_bytes(recording(name.encode()))
    report = scan_inboxes(settings, source="nightly", send=send)
    assert (report.enqueued, report.too_new, report.ignored) == (1, 2, 1)
    with db.session_scope(settings) as session:
        (counts,) = store.latest_batches(session, 1)
    assert (counts.enqueued, counts.too_new, counts.ignored, counts.refused) == (1, 2, 1, 0)
