"""Helpers of the production-queue tests: short recordings, a real ``celery worker`` on
redis + PostgreSQL, a TCP proxy that can cut the database off, waiting for calls."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

from tests.audio_fixtures import make_call_wav, make_corrupt_file, pick_clips
from tests.model_fixtures import N_MELS, write_tiny_model
from worker.celery_app import TASK_QUEUE, worker_command
from worker.runner import stop_worker
from worker.settings import PACKAGE_DIR


def tiny_model(folder: Path) -> Path:
    """A small ONNX emotion model (the trained one may not exist yet); fast on 2 cores."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_tiny_model(folder, np.random.default_rng(7).normal(size=(N_MELS, 7)))


def make_recordings(folder: Path, corpora: Path, n: int, first_seed: int = 0) -> list[Path]:
    """``n`` distinct mono 8 kHz G.711 calls of two corpus clips each (about 8 s)."""
    # Quiet "sad" clips may hold no utterance the VAD keeps; these always do.
    clips = pick_clips(corpora, min(n, 12), emotions=("angry", "happy", "neutral"))
    paths = []
    for i in range(n):
        path = folder / f"call-{first_seed + i:03d}.wav"
        # A different noise seed per file: distinct bytes, so distinct content hashes.
        pair = [clips[i % len(clips)], clips[(i + 5) % len(clips)]]
        make_call_wav(path, [pair], seed=first_seed + i, gap_s=0.3)
        paths.append(path)
    return paths


def make_bad_recordings(folder: Path) -> dict[str, Path]:
    """An empty file, a corrupt WAV, a text file named .wav, random bytes named .flac."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = {"empty": folder / "bad-empty.wav", "corrupt": folder / "bad-corrupt.wav",
           "text": folder / "bad-text.wav", "noise": folder / "bad-noise.flac"}
    bad["empty"].write_bytes(b"")
    make_corrupt_file(bad["corrupt"])
    bad["text"].write_text("call notes: customer was happy\n" * 20)
    bad["noise"].write_bytes(np.random.default_rng(3).bytes(4096))
    return bad


def callmood_env(database_url: str, broker_url: str, input_root: Path, model_path: Path,
                 data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a callmood process (worker or CLI) for these servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLMOOD_")}
    env.update({
        "CALLMOOD_DATABASE_URL": database_url,
        "CALLMOOD_BROKER_URL": broker_url,
        "CALLMOOD_DATA_DIR": str(data_dir),
        "CALLMOOD_INPUT_ROOTS": str(input_root),
        "CALLMOOD_MODEL_PATH": str(model_path),
        "CALLMOOD_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(PACKAGE_DIR.parent),
    })
    env.update({f"CALLMOOD_{k.upper()}": v for k, v in extra.items()})
    return env


@contextmanager
def celery_worker(env: dict[str, str], log_path: Path, concurrency: int = 2,
                  name: str = "prod") -> Iterator[subprocess.Popen[bytes]]:
    """A real prefork ``celery worker`` subprocess; warm shutdown afterwards (exit code 0)."""
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            worker_command(concurrency, "INFO", TASK_QUEUE, f"{name}-{os.getpid()}@%h",
                           env["CALLMOOD_BROKER_URL"]),
            env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        yield process
    finally:
        code = stop_worker(process)
        assert code == 0, f"worker exited {code}:\n{log_path.read_text()[-3000:]}"


def call_rows(database_url: str) -> dict[str, tuple[str, str | None, int]]:
    """external_call_id -> (status, failure_reason, attempts), read straight from SQL."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            return {r[0]: (r[1], r[2], int(r[3])) for r in c.execute(text(
                "SELECT external_call_id, status, failure_reason, attempts FROM calls"))}
    finally:
        engine.dispose()


def wait_final(database_url: str, call_ids: Sequence[str], timeout_s: float = 120,
               log_path: Path | None = None) -> dict[str, tuple[str, str | None, int]]:
    """Poll until every call is done or failed; AssertionError (with the log) on timeout."""
    deadline = time.monotonic() + timeout_s
    rows: dict[str, tuple[str, str | None, int]] = {}
    while time.monotonic() < deadline:
        rows = call_rows(database_url)
        if all(c in rows and rows[c][0] in ("done", "failed") for c in call_ids):
            return rows
        time.sleep(0.3)
    pending = {c: rows.get(c) for c in call_ids if c not in rows or rows[c][0]
               not in ("done", "failed")}
    log = log_path.read_text()[-4000:] if log_path is not None else ""
    raise AssertionError(f"{len(pending)} call(s) not final after {timeout_s} s: "
                         f"{dict(list(pending.items())[:5])}\n{log}")


def segment_stats(database_url: str) -> tuple[int, int, dict[str, int]]:
    """(segment rows, distinct (call, channel, start) keys, segments per external call id)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            total, distinct = c.execute(text(
                "SELECT count(*), count(DISTINCT (call_id, channel, start_s)) FROM segments"
            )).one()
            per_call = {r[0]: int(r[1]) for r in c.execute(text(
                "SELECT c.external_call_id, count(s.id) FROM calls c "
                "LEFT JOIN segments s ON s.call_id = c.id GROUP BY c.external_call_id"))}
        return int(total), int(distinct), per_call
    finally:
        engine.dispose()


def flush_redis_db(url: str) -> None:
    """Empty one redis database (tests share the session's redis-server by db number)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def redis_db_url(redis_url: str, db: int) -> str:
    """``redis_url`` pointed at database ``db`` of the same server."""
    return f"{redis_url.rsplit('/', 1)[0]}/{db}"


def fresh_redis_db(redis_url: str, db: int) -> str:
    """The URL of database ``db`` of the session's redis-server, emptied: one number per
    test, so a test never sees another's messages."""
    url = redis_db_url(redis_url, db)
    flush_redis_db(url)
    return url


class TcpProxy:
    """A loopback TCP forwarder that can refuse and cut every connection for a while:
    the database seen by the worker "goes away" without touching the shared server."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by block() or close()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if listener is not self._listener:
                    # accepted just as block() ran: it must not outlive the outage
                    client.close()
                    upstream.close()
                    return
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in selector.select(timeout=1.0):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            a.close()
            b.close()

    def block(self) -> None:
        """Refuse new connections and reset the open ones (as a database restart does)."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            # close() alone does not wake a thread blocked in accept() on Linux: the socket
            # kept listening, and a connection made during the "outage" got through
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def unblock(self) -> None:
        self._listen()

    def close(self) -> None:
        self.block()
