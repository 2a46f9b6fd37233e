"""The production queue for real: redis-server broker, PostgreSQL database and real
``celery worker`` subprocesses (a tiny ONNX model keeps the analysis fast on 2 cores).

A batch with bad recordings among good ones; redis restarted while tasks are queued; the
database cut off while the worker is busy. In each: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import free_port, unavailable
from tests.worker.prod_support import (
    TcpProxy,
    call_rows,
    callmood_env,
    celery_worker,
    fresh_redis_db,
    make_bad_recordings,
    make_recordings,
    segment_stats,
    tiny_model,
    wait_final,
)
from worker import db, store
from worker.celery_app import broker_census, make_celery
from worker.enqueue import enqueue, enqueue_manifest
from worker.recovery import UNCLAIMED_MARGIN_S, recover
from worker.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("pipeline_importable")]


def _settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def test_a_batch_with_bad_recordings_through_a_real_worker(
        tmp_path: Path, postgres_url: str, redis_url: str, callmood_corpora: Path) -> None:
    broker = fresh_redis_db(redis_url, 3)
    inbox = tmp_path / "recordings"
    good = make_recordings(inbox, callmood_corpora, 50)
    bad = make_bad_recordings(inbox)
    manifest = tmp_path / "recordings" / "tonight.csv"
    lines = ["uri,call_id,agent_id,team,started_at"]
    lines += [f"{p.name},G-{i:03d},agent-{i % 5},blue,2026-01-31T09:{i % 60:02d}:00Z"
              for i, p in enumerate(good)]
    lines += [f"{p},B-{kind},agent-9,," for kind, p in bad.items()]
    manifest.write_text("\n".join(lines) + "\n")

    db.upgrade(postgres_url)
    env = callmood_env(postgres_url, broker, inbox, tiny_model(tmp_path / "model"),
                       tmp_path / "data")
    settings = _settings(env)
    log_path = tmp_path / "worker.log"
    started = time.monotonic()
    with celery_worker(env, log_path, concurrency=2):
        result = enqueue_manifest(manifest, settings=settings)
        assert (result.sent, result.skipped) == (54, 0)
        # The same manifest again: every call id is known, nothing is sent twice.
        again = enqueue_manifest(manifest, settings=settings)
        assert (again.sent, again.skipped) == (0, 54)
        ids = [f"G-{i:03d}" for i in range(50)] + [f"B-{k}" for k in bad]
        rows = wait_final(postgres_url, ids, timeout_s=150, log_path=log_path)
    elapsed = time.monotonic() - started

    log = log_path.read_text()[-3000:]
    assert all(rows[f"G-{i:03d}"][0] == "done" for i in range(50)), (rows, log)
    assert rows["B-empty"][0] == "failed" and "empty (0 bytes)" in (rows["B-empty"][1] or "")
    for kind in ("corrupt", "text", "noise"):
        status, reason, attempts = rows[f"B-{kind}"]
        assert status == "failed" and bad[kind].name in (reason or ""), (kind, reason)
        assert attempts == 1  # an InputError is never retried
    assert len(rows) == 54
    total, distinct, per_call = segment_stats(postgres_url)
    assert total == distinct > 0  # no segment stored twice
    assert all(per_call[f"G-{i:03d}"] >= 1 for i in range(50))
    assert all(per_call[f"B-{k}"] == 0 for k in bad)
    with db.session_scope(postgres_url) as s:
        first, second = sorted(store.latest_batches(s, 2), key=lambda b: b.batch_id)
        call = store.find_call(s, "G-007")
        assert call is not None and call.agent_id == "agent-2" and call.team == "blue"
        assert call.source_uri == str(good[7]) and call.batch_id == first.batch_id
    assert (first.enqueued, first.done, first.failed, first.pending) == (54, 50, 4, 0)
    assert first.finished_at is not None and first.source == "manifest:tonight.csv"
    assert (second.enqueued, second.skipped, second.done) == (0, 54, 0)
    assert elapsed < 120, f"the batch took {elapsed:.0f} s"


# --------------------------------------------------------------------------- redis restart

class RedisServer:
    """A redis-server of this test alone, with an append-only file (as in docker-compose.yml),
    so it can be stopped and started again on the same port with its queue intact."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server not found")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir),
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # shutdown: the AOF is flushed
            self.process.wait(timeout=20)
        self.process = None


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.workdir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_restart_while_tasks_are_queued_loses_nothing(
        tmp_path: Path, postgres_url: str, own_redis: RedisServer,
        callmood_corpora: Path) -> None:
    inbox = tmp_path / "recordings"
    # enough that the queue outlasts redis's shutdown: with 16, the worker once finished the
    # last 14 (the tiny model takes ~0.1 s a call) while redis was still flushing its AOF
    paths = make_recordings(inbox, callmood_corpora, 48)
    db.upgrade(postgres_url)
    env = callmood_env(postgres_url, own_redis.url, inbox, tiny_model(tmp_path / "model"),
                       tmp_path / "data")
    settings = _settings(env)
    ids = [f"R-{i:02d}" for i in range(len(paths))]
    log_path = tmp_path / "worker.log"
    # Every call is queued before the worker starts: a worker that keeps pace with a slow
    # producer (a busy machine) once finished each call as it came, leaving no queue to lose.
    for call_id, path in zip(ids, paths, strict=True):
        assert enqueue(str(path), call_id=call_id, agent_id="a-1", settings=settings).sent
    with celery_worker(env, log_path, concurrency=1) as worker:
        deadline = time.monotonic() + 60
        while sum(r[0] == "done" for r in call_rows(postgres_url).values()) < 2:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        # The worker (its whole process group) is paused while redis shuts down, so the queue
        # cannot drain during a shutdown that a busy machine drags out; it wakes to a broker
        # that has gone away, with the message it holds unacked and the rest queued in the AOF.
        os.killpg(worker.pid, signal.SIGSTOP)
        try:
            own_redis.stop()
            stopped_at = time.monotonic()  # every message still unacked was delivered before
            done_while_down = sum(r[0] == "done" for r in call_rows(postgres_url).values())
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
        assert done_while_down < len(ids), "the queue drained before redis went away"
        time.sleep(2)
        own_redis.start()
        # A message the worker popped just as redis stopped is gone from redis (Kombu records
        # it as unacked only after the pop), while its call stays pending: once the worker has
        # drained the queue, the recovery beat runs every 5 minutes sends such calls again.
        wait_drained(settings, timeout_s=120, log_path=log_path)
        report = recover(settings, min_age_s=0)
        print(f"recovery after the restart: {report}")  # shown with -s, or on failure
        assert set(report.lost) <= set(ids), report
        try:
            rows = wait_final(postgres_url, ids, timeout_s=90, log_path=log_path)
        except AssertionError:
            # A message the worker had taken but not started when the connection dropped:
            # Celery forgets its reserved requests on connection loss, and the message waits
            # in Redis's unacked hash, its call never claimed. The recovery beat restores it
            # once UNCLAIMED_MARGIN_S has passed since its delivery: run it as the beat would.
            pending = {c for c, r in call_rows(postgres_url).items() if r[0] == "pending"}
            time.sleep(max(0.0, stopped_at + UNCLAIMED_MARGIN_S + 1 - time.monotonic()))
            late = recover(settings, min_age_s=0)
            print(f"recovery of never-claimed messages: {late}")
            assert pending and set(late.stranded) == pending, (late, pending)
            rows = wait_final(postgres_url, ids, timeout_s=120, log_path=log_path)
        # Sending the same calls again after the restart sends nothing.
        assert not any(enqueue(str(p), call_id=c, agent_id="a-1", settings=settings).sent
                       for c, p in zip(ids, paths, strict=True))
    log = log_path.read_text()
    assert all(rows[c][0] == "done" for c in ids), (rows, log[-3000:])
    assert "Connection to broker lost" in log or "Cannot connect to redis" in log, log[-3000:]
    total, distinct, per_call = segment_stats(postgres_url)
    assert total == distinct and all(per_call[c] >= 1 for c in ids)


def wait_drained(settings: Settings, timeout_s: float, log_path: Path) -> None:
    """Poll until the broker's queue is empty (every message delivered to the worker)."""
    app = make_celery(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            census = broker_census(app)
            if census is not None and not census.queued:
                return
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
    finally:
        app.close()


# --------------------------------------------------------------------------- database outage

def test_database_outage_while_processing_is_retried_with_backoff(
        tmp_path: Path, postgres_url: str, redis_url: str, callmood_corpora: Path) -> None:
    broker = fresh_redis_db(redis_url, 4)
    inbox = tmp_path / "recordings"
    paths = make_recordings(inbox, callmood_corpora, 16)
    db.upgrade(postgres_url)
    url = make_url(postgres_url)
    proxy = TcpProxy(int(url.port or 5432))
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    model = tiny_model(tmp_path / "model")
    env = callmood_env(proxied, broker, inbox, model, tmp_path / "data")
    # The producer talks to PostgreSQL directly, the worker only through the proxy: work sent
    # while the proxy is blocked is certain to meet the outage, however fast the worker is.
    producer = _settings(callmood_env(postgres_url, broker, inbox, model, tmp_path / "producer"))
    ids = [f"P-{i:02d}" for i in range(len(paths))]
    log_path = tmp_path / "worker.log"
    try:
        with celery_worker(env, log_path, concurrency=2):
            for call_id, path in zip(ids[:2], paths[:2], strict=True):
                assert enqueue(str(path), call_id=call_id, agent_id="a-1",
                               settings=producer).sent
            wait_final(postgres_url, ids[:2], timeout_s=60, log_path=log_path)
            proxy.block()
            for call_id, path in zip(ids[2:], paths[2:], strict=True):
                assert enqueue(str(path), call_id=call_id, agent_id="a-1",
                               settings=producer).sent
            time.sleep(6)  # longer than the first retries' backoff
            met_outage = [c for c in ids[2:] if f"call {c}: database unavailable"
                          in log_path.read_text()]
            assert met_outage, "no call met the outage: " + log_path.read_text()[-3000:]
            proxy.unblock()
            rows = wait_final(postgres_url, ids, timeout_s=150, log_path=log_path)
    finally:
        proxy.close()
    log = log_path.read_text()
    assert all(rows[c][0] == "done" for c in ids), (rows, log[-3000:])
    assert "database unavailable" in log and "retry 1/" in log, log[-3000:]
    total, distinct, per_call = segment_stats(postgres_url)
    assert total == distinct and all(per_call[c] >= 1 for c in ids)
