"""End to end through real Celery worker processes: the embedded mode (``callmood run``:
SQLite database, Kombu's SQLAlchemy transport on SQLite) and the production shape
(redis-server broker, PostgreSQL database, a producer that imports nothing from callmood)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.audio_fixtures import fake_analysis, make_call_wav, make_corrupt_file, pick_clips
from tests.concurrency import errors_of_concurrent
from worker import db, store
from worker.celery_app import RUN_QUEUE_PREFIX, TASK_QUEUE, worker_command
from worker.runner import external_id_for, run_recordings, stop_worker
from worker.schema import Batch, Call
from worker.settings import PACKAGE_DIR, Settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("pipeline_importable", "emotion_model")]


def test_a_run_that_gives_up_on_a_scanned_call_finishes_that_calls_batch(
        callmood_settings: Settings, tmp_path: Path) -> None:
    """A nightly scan sent A and B in one batch; A finished, then a ``callmood run`` over B's
    file claimed B and timed out. The run fails B, and B's batch is recounted in that
    transaction: B's own queued message now finds it final and skips it, so nothing else
    would ever recount the batch, which stayed 'running' with B uncounted."""
    from worker import runner
    from worker.enqueue import path_uri

    settings = callmood_settings
    db.upgrade(settings.database_url)
    a_path, b_path = (settings.input_roots[0] / name for name in ("a.wav", "b.wav"))
    for path in (a_path, b_path):
        path.write_bytes(f"not audio: {path.name}".encode())   # keys the call; never decoded
    ids = {path: external_id_for(path) for path in (a_path, b_path)}
    assert len(set(ids.values())) == 2
    with db.session_scope(settings) as s:
        batch_id = store.create_batch(s, "nightly").id
        for path, external_id in ids.items():
            store.reserve_for_enqueue(s, store.CallRequest(
                uri=path_uri(path), external_call_id=external_id, agent_id="ag"),
                batch_id=batch_id)
        a = store.find_call(s, ids[a_path])
        assert a is not None
        store.claim_for_processing(s, a.id)
        store.save_analysis(s, a.id, fake_analysis())
        store.finish_batch_scan(s, batch_id, enqueued=2, skipped=0)
    run_ids = {b_path: ids[b_path]}
    requests = runner._register(run_ids, settings)     # the run takes B over ...
    with db.session_scope(settings) as s:
        b = store.find_call(s, ids[b_path])
        assert b is not None and b.batch_id == batch_id
        store.claim_for_processing(s, b.id)            # ... its worker claims it, then times out
    (result,) = runner._collect(run_ids, requests, settings, timed_out=True, exit_code=None,
                                timeout_s=1.0, log_path=tmp_path / "run.log")
    assert result.status == "failed" and "not finished within" in (result.reason or "")
    with db.session_scope(settings) as s:
        batch = s.get(Batch, batch_id)
        assert batch is not None
        assert (batch.done_count, batch.failed_count) == (1, 1)
        assert batch.finished_at is not None


@pytest.fixture()
def recordings(callmood_settings: Settings, callmood_corpora: Path) -> dict[str, Path]:
    """A stereo G.711 call, a mono FLAC call and a corrupt file under the input root."""
    input_dir = callmood_settings.input_roots[0]
    clips = pick_clips(callmood_corpora, 6)
    stereo = input_dir / "2026-01-31" / "call-stereo.wav"
    make_call_wav(stereo, [clips[0:2], clips[2:4]])
    mono = input_dir / "2026-01-31" / "call-mono.flac"
    make_call_wav(mono, [clips[4:6]], sample_rate=16000, subtype="PCM_16")
    corrupt = input_dir / "2026-01-31" / "corrupt.wav"
    make_corrupt_file(corrupt)
    return {"stereo": stereo, "mono": mono, "corrupt": corrupt}


def _check_done(session: object, call: Call, path: Path, n_channels: int) -> None:
    assert call.status == "done", call.failure_reason
    assert call.channels == n_channels
    assert call.content_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert call.model_version and call.processed_at is not None
    segments = store.segments_for_call(session, call.id)  # type: ignore[arg-type]
    assert len(segments) >= 2
    roles = {s.role for s in segments}
    assert roles == ({"agent", "customer"} if n_channels == 2 else {"unknown"})
    for s in segments:
        assert 0 <= s.start_s < s.end_s <= (call.duration_s or 0) + 0.01
        assert sum(s.probabilities().values()) == pytest.approx(1.0, abs=1e-3)
        assert s.emotion == max(s.probabilities(), key=s.probabilities().__getitem__)


def test_run_folder_through_a_real_worker_on_the_embedded_broker(
        callmood_settings: Settings, recordings: dict[str, Path]) -> None:
    paths = sorted(recordings.values())
    seen: list[tuple[int, int, int]] = []
    summary = run_recordings(paths, callmood_settings, concurrency=2, timeout_s=180,
                             progress=lambda *counts: seen.append(counts))
    assert not summary.timed_out, summary.worker_log.read_text()[-3000:]
    assert seen and seen[-1] == (2, 1, 3)        # the last poll saw every call finished
    by_path = {f.path: f for f in summary.files}
    assert (summary.done, summary.failed) == (2, 1), by_path
    corrupt = by_path[recordings["corrupt"]]
    assert corrupt.status == "failed" and corrupt.reason and "corrupt.wav" in corrupt.reason
    assert callmood_settings.broker_url.startswith("sqla+sqlite:///")
    assert (callmood_settings.data_dir / "broker.sqlite").is_file()
    # The run's private queue is emptied once its worker stopped: Kombu's SQLAlchemy
    # transport would keep each delivered message's row for ever.
    with sqlite3.connect(callmood_settings.data_dir / "broker.sqlite") as broker:
        assert broker.execute("SELECT count(*) FROM kombu_message").fetchone() == (0,)
        # nor its private queue's row (the worker's own control queues are Kombu's to keep)
        assert broker.execute("SELECT count(*) FROM kombu_queue WHERE name LIKE ?",
                              (RUN_QUEUE_PREFIX + "%",)).fetchone() == (0,)

    with db.session_scope(callmood_settings) as s:
        calls = store.calls_by_external_id(s, [external_id_for(p) for p in paths])
        _check_done(s, calls[external_id_for(recordings["stereo"])], recordings["stereo"], 2)
        _check_done(s, calls[external_id_for(recordings["mono"])], recordings["mono"], 1)
        first_counts = {f.external_call_id: f.segments for f in summary.files}

    # Running the folder again replaces the rows: same calls, same segment counts. A copy of
    # a recording beside it is the same call, counted once (it was counted twice, a review).
    copy = recordings["mono"].with_name("mono-copy.wav")
    copy.write_bytes(recordings["mono"].read_bytes())
    again = run_recordings([*paths, copy], callmood_settings, concurrency=1, timeout_s=180)
    assert (again.done, again.failed, len(again.files)) == (2, 1, 4)
    assert {f.external_call_id: f.segments for f in again.files} == first_counts
    copy.unlink()
    with db.session_scope(callmood_settings) as s:
        assert store.counts_by_status(s) == {"pending": 0, "processing": 0, "done": 2,
                                             "failed": 1}
        assert {c.attempts for c in store.list_calls(s)} == {1}  # a new run, not a retry
    assert again.worker_exit_code == 0


@pytest.fixture()
def production_worker(postgres_url: str, redis_url: str, callmood_settings: Settings,
                      tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """`callmood db upgrade` then a prefork worker on redis + PostgreSQL (2 children, or
    indirect-parametrized)."""
    db.upgrade(postgres_url)  # the compose file's one-shot migrate service
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLMOOD_")}
    env.update({
        "CALLMOOD_DATABASE_URL": postgres_url,
        "CALLMOOD_BROKER_URL": redis_url,
        "CALLMOOD_DATA_DIR": str(tmp_path / "worker-data"),
        "CALLMOOD_INPUT_ROOTS": str(callmood_settings.input_roots[0]),
        "CALLMOOD_MODEL_PATH": str(callmood_settings.model_path),
        "PYTHONPATH": str(PACKAGE_DIR.parent),
    })
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            worker_command(int(getattr(request, "param", 2)), "INFO", TASK_QUEUE,
                           f"pg-{os.getpid()}@%h", redis_url),
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {"log": str(log_path), "pid": str(process.pid)}
    finally:
        assert stop_worker(process) == 0, log_path.read_text()[-3000:]


def test_redis_and_postgres_through_a_real_worker(
        production_worker: dict[str, str], postgres_url: str, redis_url: str,
        recordings: dict[str, Path]) -> None:
    # The producer is what the call-centre system runs: plain Celery, nothing from callmood.
    script = f"""
import celery
client = celery.Celery(broker={redis_url!r})
send = lambda **kw: client.send_task("callmood.analyze_recording", kwargs=kw, queue="callmood",
                                     serializer="json")
send(uri={str(recordings["stereo"])!r}, call_id="CC-STEREO", agent_id="agent-7", team="blue",
     queue="billing", customer_ref="cust-1", started_at="2026-01-31T09:15:00+01:00",
     metadata={{"campaign": "winter"}})
send(uri={str(recordings["corrupt"])!r}, call_id="CC-CORRUPT")
send(uri="/etc/passwd", call_id="CC-OUTSIDE")
send(uri={str(recordings["mono"])!r}, call_id="CC-BADTIME", started_at="31/01/2026")
import sys; assert "worker" not in sys.modules and "worker.tasks" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd="/",
                   env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})

    expected = {"CC-STEREO", "CC-CORRUPT", "CC-OUTSIDE", "CC-BADTIME"}
    engine = create_engine(postgres_url)
    deadline = time.monotonic() + 180
    rows: dict[str, tuple[str, str | None]] = {}
    while time.monotonic() < deadline:
        with engine.connect() as c:
            rows = {r[0]: (r[1], r[2]) for r in c.execute(text(
                "SELECT external_call_id, status, failure_reason FROM calls"))}
        if set(rows) == expected and all(s in ("done", "failed") for s, _ in rows.values()):
            break
        time.sleep(0.5)
    engine.dispose()
    log = Path(production_worker["log"]).read_text()[-3000:]
    assert set(rows) == expected, log
    assert rows["CC-STEREO"][0] == "done", (rows, log)
    assert rows["CC-CORRUPT"][0] == "failed" and "corrupt.wav" in (rows["CC-CORRUPT"][1] or "")
    assert rows["CC-OUTSIDE"][0] == "failed" and "input roots" in (rows["CC-OUTSIDE"][1] or "")
    assert rows["CC-BADTIME"][0] == "failed" and "started_at" in (rows["CC-BADTIME"][1] or "")

    with db.session_scope(postgres_url) as s:
        call = store.find_call(s, "CC-STEREO")
        assert call is not None
        assert (call.agent_id, call.team, call.queue) == ("agent-7", "blue", "billing")
        assert call.started_at is not None and call.started_at.isoformat() == \
            "2026-01-31T08:15:00+00:00"
        assert call.call_metadata == {"campaign": "winter"}
        _check_done(s, call, recordings["stereo"], 2)


def _send(redis_url: str, **kwargs: object) -> None:
    import celery

    client = celery.Celery(broker=redis_url)
    try:
        client.send_task("callmood.analyze_recording", kwargs=kwargs, queue="callmood")
    finally:
        client.close()


def _wait_for(postgres_url: str, external_id: str, statuses: set[str],
              timeout_s: float = 120) -> tuple[str, int, str | None]:
    engine = create_engine(postgres_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with engine.connect() as c:
                row = c.execute(text("SELECT status, attempts, failure_reason FROM calls "
                                     "WHERE external_call_id = :id"), {"id": external_id}).first()
            if row is not None and row[0] in statuses:
                return str(row[0]), int(row[1]), row[2]
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError(f"call {external_id} never reached {statuses} (last: {row})")


@pytest.mark.parametrize("production_worker", [1], indirect=True)
def test_a_killed_pool_process_requeues_its_recording(
        production_worker: dict[str, str], postgres_url: str, redis_url: str,
        recordings: dict[str, Path], tmp_path: Path) -> None:
    """acks_late + task_reject_on_worker_lost: the message outlives the process running it,
    and the second run replaces, not duplicates, the first one's rows."""
    # A FIFO holds the first attempt inside the decoder (open() blocks until a writer comes),
    # so the pool process can be killed mid-task deterministically.
    target = recordings["stereo"].with_name("held.wav")
    os.mkfifo(target)
    _send(redis_url, uri=str(target), call_id="CC-HELD")
    status, attempts, _ = _wait_for(postgres_url, "CC-HELD", {"processing"})
    assert attempts == 1
    os.replace(recordings["stereo"], target)  # what the retry will read; the FIFO is unlinked
    worker_pid = int(production_worker["pid"])
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    assert len(children) == 1, children
    os.kill(int(children[0]), 9)
    status, attempts, reason = _wait_for(postgres_url, "CC-HELD", {"done", "failed"})
    log = Path(production_worker["log"]).read_text()[-3000:]
    assert (status, attempts) == ("done", 2), (reason, log)
    assert "WorkerLostError" in Path(production_worker["log"]).read_text(), log
    with db.session_scope(postgres_url) as s:
        call = store.find_call(s, "CC-HELD")
        assert call is not None
        _check_done(s, call, target, 2)


def test_a_run_over_many_folders_starts_its_worker_or_fails_its_calls(
        callmood_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One folder per agent and day: every file's folder went into the worker's
    CALLMOOD_INPUT_ROOTS, which passed Linux's 128 KiB limit for one variable, so the worker
    never started (E2BIG) and the calls stayed pending with their messages on a queue no one
    reads. The roots are now the folders' common ancestor past MAX_RUN_ROOTS, and a worker
    that cannot start fails the run's calls with why and empties its queue."""
    from worker import runner
    from worker.celery_app import make_celery, queue_stats

    archive = callmood_settings.input_roots[0].parent / "archive"
    files = [archive / f"2026-01-{day:02d}" / f"agent-{agent:05d}" / "call.wav"
             for day in range(1, 31) for agent in range(120)]
    for i, path in enumerate(files[:3]):
        path.parent.mkdir(parents=True)
        path.write_bytes(f"call {i}".encode())
    settings = runner.worker_settings(callmood_settings, files)
    assert settings.input_roots[-1] == archive
    assert len(settings.input_roots) <= len(callmood_settings.input_roots) + 1
    assert len(runner.worker_environment(settings)["CALLMOOD_INPUT_ROOTS"]) < 4096
    # a few folders stay themselves, one under another counted once
    few = runner.worker_settings(callmood_settings, [archive / "a" / "x.wav",
                                                     archive / "a" / "b" / "y.wav"])
    assert few.input_roots[len(callmood_settings.input_roots):] == (archive / "a",)

    def cannot_start(*_: object, **__: object) -> None:
        raise OSError(7, "Argument list too long")

    monkeypatch.setattr(subprocess, "Popen", cannot_start)     # as worker.runner calls it
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=0x5EED))
    queue = f"{RUN_QUEUE_PREFIX}{uuid.UUID(int=0x5EED).hex[:12]}"
    summary = run_recordings(files[:3], callmood_settings, timeout_s=30)
    assert (summary.done, summary.failed) == (0, 3)
    assert all("could not be started: [Errno 7] Argument list too long" in (r.reason or "")
               for r in summary.files)
    app = make_celery(runner.worker_settings(callmood_settings, files[:3]))
    try:
        assert queue_stats(app, queue).queued == 0   # nothing stranded on the run's queue
    finally:
        app.close()


def test_a_run_stopped_by_sigterm_stops_its_worker_and_fails_what_it_left(
        callmood_settings: Settings, recordings: dict[str, Path], tmp_path: Path) -> None:
    """`timeout`, a cron kill or a dropped SSH session send SIGTERM/SIGHUP: Python's default
    ended `callmood run` without its cleanup, and the Celery worker, in a session of its own,
    ran on polling the broker (a review). The run here waits for ever once its worker is up
    (its wait replaced), so the signal lands mid-run."""
    pid_file = tmp_path / "worker.pid"
    script = (
        "import sys, time\n"
        "import worker.runner as runner\n"
        "def wait_forever(process, *args, **kwargs):\n"
        "    open(sys.argv[2], 'w').write(str(process.pid))\n"
        "    while True:\n"
        "        time.sleep(0.1)\n"
        "runner._wait_for_calls = wait_forever\n"
        "from worker.settings import Settings\n"
        "runner.run_recordings([sys.argv[1]], Settings.from_env(), timeout_s=600)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLMOOD_")}
    env.update(callmood_settings.extra)
    env["PYTHONPATH"] = str(PACKAGE_DIR.parent)
    run = subprocess.Popen([sys.executable, "-c", script, str(recordings["mono"]),
                            str(pid_file)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert run.poll() is None and time.monotonic() < deadline, run.stderr
            time.sleep(0.2)
        worker_pid = int(pid_file.read_text())
        run.send_signal(15)
        assert run.wait(timeout=120) == 128 + 15
        assert run.stderr is not None
        # said on stderr: the run printed nothing and exited 143 (a review)
        assert "callmood run stopped (SIGTERM): its celery worker was stopped" in \
            run.stderr.read().decode()
    finally:
        if run.poll() is None:
            run.kill()
    # the worker and its pool are gone (the run waited for it: no zombie left either)
    assert not Path(f"/proc/{worker_pid}").exists()
    with db.session_scope(callmood_settings) as s:
        call = store.find_call(s, external_id_for(recordings["mono"].resolve()))
        assert call is not None and call.status in ("done", "failed")
        assert call.status == "done" or "callmood run was stopped" in (call.failure_reason or "")


def test_a_run_under_nohup_keeps_ignoring_sighup() -> None:
    """The stop handlers replaced SIGHUP's inherited SIG_IGN: `nohup callmood run` stopped
    when its terminal closed, failing every unfinished call (a review)."""
    import signal

    from worker.runner import _signals_stop_the_run

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with _signals_stop_the_run():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert callable(signal.getsignal(signal.SIGTERM))
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_two_runs_registering_the_same_new_calls_in_opposite_orders_both_commit(
        postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: an uncommitted insert holds its unique key, and two `callmood run` (or a
    run beside a scan) registering new calls in opposite file orders deadlocked (a review).
    Registration goes in call-id order (store.register_all), as reserve_all's; the run
    that waited on the other's keys falls back to registering its calls one by one."""
    from worker import runner

    db.upgrade(postgres_url)
    settings = Settings.from_env({"CALLMOOD_DATABASE_URL": postgres_url,
                                  "CALLMOOD_DATA_DIR": str(tmp_path),
                                  "CALLMOOD_INPUT_ROOTS": "/in"})
    real_register = store.register_all

    def slow_register(session: object, requests: list[store.CallRequest],
                      batch_id: int | None = None) -> list[Call]:
        calls = real_register(session, requests, batch_id)  # type: ignore[arg-type]
        time.sleep(0.5)   # holding the new calls' keys while the other run inserts
        return calls

    monkeypatch.setattr(store, "register_all", slow_register)   # as register_and_lock calls it
    a, b = "sha256-" + "a" * 64, "sha256-" + "b" * 64
    orders = {"run1": {Path("/in/a.wav"): a, Path("/in/b.wav"): b},
              "run2": {Path("/in/b.wav"): b, Path("/in/a.wav"): a}}
    errors = errors_of_concurrent(*(lambda ids=ids: runner._register(ids, settings)
                                    for ids in orders.values()), timeout_s=60)
    assert errors == []
    with db.session_scope(postgres_url) as s:
        assert sorted(c.external_call_id for c in store.list_calls(s)) == [a, b]
