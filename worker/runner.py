"""Embedded batch mode (``callmood run DIR``): a folder through a real Celery worker.

The same path as production, on the embedded defaults: the files are registered as calls in
the database, one task per call goes through the broker (Kombu's SQLAlchemy transport on a
SQLite file unless CALLMOOD_BROKER_URL says otherwise) to a ``celery worker`` subprocess, and
the runner polls the database until every call is done or failed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from sqlalchemy.exc import SQLAlchemyError

from worker.audio import file_sha256
from worker.celery_app import RUN_QUEUE_PREFIX, make_celery, purge_queue, worker_command
from worker.db import prepare_database, session_scope
from worker.enqueue import path_uri, printable_path
from worker.errors import CallmoodError, ConfigError, TransientError
from worker.schema import FINAL_STATUSES
from worker.settings import PACKAGE_DIR, Settings
from worker.store import (
    PATH_ID_PREFIX,
    CallRequest,
    calls_by_external_id,
    content_call_id,
    mark_all_failed,
    mark_pending,
    recount_batches,
    register_and_lock,
    segment_counts,
)
from worker.tasks import send_analysis

log = logging.getLogger(__name__)

STOP_GRACE_S = 15.0
"""How long a stopped worker may finish its current task (warm shutdown) before SIGKILL."""


@dataclass(frozen=True)
class FileResult:
    """Outcome of one input file."""

    path: Path
    external_call_id: str
    status: str
    """done or failed; pending/processing only if the run ended before the call did."""
    reason: str | None
    segments: int


@dataclass(frozen=True)
class RunSummary:
    """What ``run_recordings`` did: counts of calls, per-file outcomes and the worker's log
    file. Files of one content are one call (``files`` holds each, ``done``/``failed`` count
    the call once)."""

    done: int
    failed: int
    files: tuple[FileResult, ...]
    elapsed_s: float
    worker_log: Path
    timed_out: bool
    worker_exit_code: int | None


def external_id_for(path: Path) -> str:
    """A stable call id for a local file: its content hash (a re-run reuses the call row).
    Not for what is no regular file (a FIFO, a link to a device named like a recording):
    hashing one blocked, or read /dev/zero for ever (`callmood analyze`, a review); the
    worker fails it with its reason, keyed by its path."""
    try:
        if not path.is_file():
            return path_call_id(path)
        return content_call_id(file_sha256(path))
    except OSError:
        # Unreadable: still a call (the worker records why it failed), keyed by its path
        return path_call_id(path)


NO_AUDIO_MAX_BYTES: Final[int] = 8192
"""A file of at most this many bytes is registered under its path's call id, not its
content's (:func:`call_id_for`). Measured with libsndfile 1.2.2, the worker's decoder, closing
a file it wrote no frames to: WAV 44 (PCM), 58 (G.711), up to 112 (float, extensible), RF64
104, Ogg Opus 869, Ogg Vorbis up to 4,362 (stereo 44.1/48 kHz: its codebooks), FLAC and MP3
nothing; doubled, to a power of two, for other writers' extra chunks. Audio this small is
under 1 s of 8 kHz G.711 mono, or about 8 s of 8 kbit/s MP3: a copy of such a recording is
analysed once per path, the price of no empty file hiding behind another."""


def path_call_id(path: Path) -> str:
    """The call id of a file keyed by its path's bytes, in the form ``external_id_for`` gives
    a file it cannot read (a name in another encoding than UTF-8 is still a name)."""
    return f"{PATH_ID_PREFIX}{hashlib.sha256(os.fsencode(path)).hexdigest()}"


def too_small_for_audio(path: Path) -> bool:
    """Whether ``path`` holds at most :data:`NO_AUDIO_MAX_BYTES`; False when it cannot be
    read (``external_id_for`` keys such a file by its path already)."""
    try:
        return path.stat().st_size <= NO_AUDIO_MAX_BYTES
    except OSError:
        return False


def call_id_for(path: Path, content_id: str | None = None) -> str:
    """The call id the inbox scan, ``callmood run`` and ``callmood analyze`` register ``path``
    under: its content's, so a copy or a renamed recording is one call; its path's when the
    file is too small to hold audio. Identical bytes are the same recording only when there is
    audio in them: three 0-byte files (or two header-only WAVs of one recorder) were one call,
    and the others were counted known, with no failed row and no reason anywhere (a review).
    Size is what the scan can tell without decoding; a no-audio file larger than the bound (a
    tag with cover art) still shares the call of its content. ``content_id``: the file's
    :func:`external_id_for`, when the caller hashed it already."""
    if too_small_for_audio(path):
        return path_call_id(path)
    return content_id or external_id_for(path)


MAX_RUN_ROOTS = 64
"""Folders ``callmood run`` adds to the input roots one by one; more become their common
ancestor. The roots reach the worker in one environment variable, which Linux caps at 128 KiB:
a tree of one folder per agent and day (3,600 leaf folders in a review, 147 KB) failed to
start the worker at all."""


def worker_settings(settings: Settings, paths: Sequence[Path]) -> Settings:
    """``settings`` with the files' folders added to the input roots: each folder not under a
    root already or under another added one, or their common ancestor when there are more
    than :data:`MAX_RUN_ROOTS` (the run's worker reads only the files this run sends it)."""
    roots = list(settings.input_roots)
    folders = sorted({p.parent for p in paths if not any(p.is_relative_to(r) for r in roots)})
    cover: list[Path] = []
    for folder in folders:
        # sorted by parts, the folders under one come right after it: the last kept is the
        # only one that can hold this one
        if not cover or not folder.is_relative_to(cover[-1]):
            cover.append(folder)
    if len(cover) > MAX_RUN_ROOTS:
        cover = [Path(os.path.commonpath(cover))]
    return settings.replace(input_roots=tuple(dict.fromkeys([*roots, *cover])))


def worker_environment(settings: Settings) -> dict[str, str]:
    """The environment of the worker subprocess: ours, with every setting spelled out."""
    env = dict(os.environ)
    env.update(settings.extra)
    env.update({
        "CALLMOOD_DATA_DIR": str(settings.data_dir),
        "CALLMOOD_DATABASE_URL": settings.database_url,
        "CALLMOOD_BROKER_URL": settings.broker_url,
        "CALLMOOD_INPUT_ROOTS": os.pathsep.join(str(p) for p in settings.input_roots),
        "CALLMOOD_CORPORA_DIR": str(settings.corpora_dir),
        "CALLMOOD_MODEL_PATH": str(settings.model_path),
        "CALLMOOD_CHANNEL_ROLES": ",".join(settings.channel_roles),
        "CALLMOOD_ONNX_THREADS": str(settings.onnx_threads),
        "CALLMOOD_MAX_DURATION_S": repr(settings.max_duration_s),
        "CALLMOOD_MAX_FILE_BYTES": str(settings.max_file_bytes),
        "CALLMOOD_LOG_LEVEL": settings.log_level,
    })
    # The worker must import this very checkout of the package, wherever it is started.
    source_root = str(PACKAGE_DIR.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    return env


Progress = Callable[[int, int, int], None]
"""Called on every poll with (done, failed, total) calls."""


def run_recordings(paths: Sequence[Path], settings: Settings, concurrency: int = 1,
                   timeout_s: float = 900.0, poll_interval_s: float = 0.5,
                   progress: Progress | None = None) -> RunSummary:
    """Analyse ``paths`` through a Celery worker subprocess; wait for all, then stop it."""
    if concurrency < 1:
        raise ConfigError(f"concurrency={concurrency}: use 1 or more worker processes")
    started = time.monotonic()
    files = [Path(p).expanduser().resolve() for p in paths]
    settings = worker_settings(settings, files)
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    queue = f"{RUN_QUEUE_PREFIX}{uuid.uuid4().hex[:12]}"
    log_path = log_dir / f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{queue}.log"

    prepare_database(settings.database_url)
    # two empty files were one call, and b.wav's line said "a.wav is empty" (a review)
    ids = {path: call_id_for(path) for path in files}
    requests = _register(ids, settings)
    if not requests:
        return _summary([], started, log_path, timed_out=False, exit_code=None)

    # Send before the worker starts: the sender creates the broker tables, so the two
    # processes never race to create them.
    celery = make_celery(settings)
    try:
        send_analysis(celery, list(requests.values()), queue=queue)
    finally:
        celery.close()

    node = f"run-{os.getpid()}-{queue[-6:]}@%h"
    try:
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                worker_command(concurrency, "WARNING", queue, node, settings.broker_url),
                env=worker_environment(settings), stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=settings.data_dir, start_new_session=True)
    except OSError as e:
        # no worker will ever read the run's queue: empty it and fail the calls with why,
        # or they stay pending with their messages stranded on a queue of no one's
        _drop_private_queue(settings, queue)
        results = _collect(ids, requests, settings, False, None, timeout_s, log_path,
                           cause=f"the celery worker could not be started: {e}")
        return _summary(results, started, log_path, timed_out=False, exit_code=None)
    timed_out = False
    exit_code: int | None = None
    interrupted: BaseException | None = None
    try:
        with _signals_stop_the_run():
            timed_out, exit_code = _wait_for_calls(process, list(requests), settings,
                                                   timeout_s, poll_interval_s, progress)
    except (KeyboardInterrupt, SystemExit) as e:
        interrupted = e
    finally:
        stopped_code = stop_worker(process)
        exit_code = stopped_code if exit_code is None else exit_code
        _drop_private_queue(settings, queue)
    if interrupted is not None:
        # the calls the stopped worker did not finish are failed with why, not left pending
        # or "processing" behind a run that is gone
        cause = "callmood run was stopped before this call finished"
        results = _collect(ids, requests, settings, False, None, timeout_s, log_path,
                           cause=cause)
        # a re-run's reason says first that the analysis before it was kept
        unfinished = {r.external_call_id for r in results
                      if r.status == "failed" and (r.reason or "").endswith(cause)}
        # said where the operator looks: the run printed nothing and exited 143 (a review).
        # Not `callmood retry`: it sends to the shared queue, which no run's worker reads
        log.warning("callmood run stopped (%s): its celery worker was stopped; %d call(s) it "
                    "had not finished are failed ('%s'); callmood run on the same files runs "
                    "them again", _interruption(interrupted), len(unfinished), cause)
        raise interrupted

    results = _collect(ids, requests, settings, timed_out, exit_code, timeout_s, log_path)
    return _summary(results, started, log_path, timed_out, exit_code)


def _interruption(error: BaseException) -> str:
    """'Ctrl-C', or the signal a SystemExit of :func:`_signals_stop_the_run` stands for."""
    if isinstance(error, SystemExit) and isinstance(error.code, int) and error.code > 128:
        try:
            return signal.Signals(error.code - 128).name
        except ValueError:
            return f"exit {error.code}"
    return "Ctrl-C" if isinstance(error, KeyboardInterrupt) else type(error).__name__


@contextmanager
def _signals_stop_the_run() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit inside the block, as Ctrl-C raises
    KeyboardInterrupt: Python's default ends the process without running ``finally``, and
    the run's Celery worker, in a session of its own, ran on after a `timeout`, a cron kill
    or a dropped SSH session (a review). Signals are the main thread's only: elsewhere the
    block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    # a signal ignored on the way in stays ignored: `nohup callmood run` must outlive the
    # terminal it was started from (a review)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _summary(results: list[FileResult], started: float, log_path: Path, timed_out: bool,
             exit_code: int | None) -> RunSummary:
    """The run's summary of its files' results (``started``: its time.monotonic())."""
    calls = {r.external_call_id: r.status for r in results}   # a copy is its original's call
    return RunSummary(done=sum(s == "done" for s in calls.values()),
                      failed=sum(s == "failed" for s in calls.values()),
                      files=tuple(results), elapsed_s=time.monotonic() - started,
                      worker_log=log_path, timed_out=timed_out, worker_exit_code=exit_code)


def _drop_private_queue(settings: Settings, queue: str) -> None:
    """Delete what the run's queue still holds once its worker stopped (its process group is
    gone, so no one takes them): the run reports calls it did not reach as failed, and a
    database broker keeps every delivered row, and the queue's ``kombu_queue`` row, for
    ever otherwise. Best effort: a failure costs only those rows, never the run's result."""
    celery = make_celery(settings, set_as_current=False)
    try:
        purge_queue(celery, queue)
    except (CallmoodError, SQLAlchemyError) as e:
        log.warning("could not empty the run's queue %s: %s", queue, e)
    finally:
        celery.close()


def _register(ids: dict[Path, str], settings: Settings) -> dict[str, CallRequest]:
    requests: dict[str, CallRequest] = {}
    for path, external_id in ids.items():
        requests.setdefault(external_id, CallRequest(
            uri=path_uri(path), external_call_id=external_id,
            metadata={"source": "callmood run", "file_name": printable_path(path.name)[:200]}))
    with session_scope(settings) as session:
        # registered in call-id order, then every call locked before any batch, in the order
        # all keep (store.register_and_lock): two runs inserting new calls in opposite orders
        # deadlocked on their unique keys, and a call, its batch, then the next call
        # deadlocked a worker saving that next call and recounting the same batch (a review)
        locked = register_and_lock(session, list(requests.values()))
        # a re-run: the poll must not see last run's status (nor its batch count it)
        batches = [mark_pending(call).batch_id for call in locked]
        session.flush()
        recount_batches(session, [b for b in batches if b is not None])
    return requests


def _wait_for_calls(process: subprocess.Popen[bytes], external_ids: list[str],
                    settings: Settings, timeout_s: float, poll_interval_s: float,
                    progress: Progress | None = None) -> tuple[bool, int | None]:
    """Poll until every call is final; (timed out?, worker exit code if it died early)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with session_scope(settings) as session:
                calls = calls_by_external_id(session, external_ids)
                statuses = [c.status for c in calls.values()]
                if progress is not None:
                    progress(statuses.count("done"), statuses.count("failed"), len(external_ids))
                if all(s in FINAL_STATUSES for s in statuses):
                    return False, None
        except TransientError as e:  # the worker holds the write lock a while: poll again
            log.debug("poll skipped: %s", e)
        code = process.poll()
        if code is not None:
            return False, code
        if time.monotonic() >= deadline:
            return True, None
        time.sleep(poll_interval_s)


def stop_worker(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM (Celery's warm shutdown), wait ``grace_s``, then SIGKILL its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("celery worker %d ignored SIGTERM for %.0f s; killing it", process.pid,
                        grace_s)
    # The pool children share the worker's session/process group (start_new_session=True).
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return process.wait()


def _collect(ids: dict[Path, str], requests: dict[str, CallRequest], settings: Settings,
             timed_out: bool, exit_code: int | None, timeout_s: float,
             log_path: Path, cause: str | None = None) -> list[FileResult]:
    if cause is None:
        cause = (f"not finished within {timeout_s:g} s (callmood run timeout)" if timed_out
                 else f"the celery worker exited (code {exit_code}) first; see {log_path}")
    results: list[FileResult] = []
    with session_scope(settings) as session:
        calls = calls_by_external_id(session, list(requests))
        # The worker is gone: leaving "processing" behind would be a lie. The batch of a call
        # a scan sent is recounted: its own message now finds it final.
        mark_all_failed(session, {call.id: cause for call in calls.values()
                                  if call.status not in FINAL_STATUSES})
        counts = segment_counts(session, [c.id for c in calls.values()])
        for path, external_id in ids.items():
            call = calls[external_id]
            results.append(FileResult(path=path, external_call_id=external_id,
                                      status=call.status, reason=call.failure_reason,
                                      segments=counts.get(call.id, 0)))
    return results
