"""The nightly batch: scan the inbox folders and enqueue each new recording exactly once.

Beat sends ``callmood.nightly_scan`` at CALLMOOD_NIGHTLY_AT (CALLMOOD_TIMEZONE); ``callmood
batch`` runs the same scan now. A file is new when no call was sent for its path (calls.
source_uri_sha256, cheap) nor for its content (call id ``sha256-<content hash>``, so a copy
or a renamed file is not analysed twice), and no call holds an analysis of its content under
another id (calls.content_sha256: a file replaced between its scan and its analysis). A file
too small to hold audio (:data:`worker.runner.NO_AUDIO_MAX_BYTES`) is a call of its path instead: empty or
header-only files share their bytes, not a recording, and each must fail with its own path. A
file whose call failed is sent again, as a new run of that call, once it is modified after
the failure (a copy that was cut short when analysed and has completed since, or a
recording exported again). Each scan is a row in ``batches``; its done/failed counts are
recounted from ``calls.batch_id`` as calls finish (``store.refresh_batch_counts``) and when
a call is sent again in a later batch (``store.reserve_for_enqueue``).
No Celery in here: the caller passes the sender.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy.orm import Session

from worker.constants import AUDIO_SUFFIXES
from worker.db import session_scope
from worker.enqueue import Sender, path_uri, printable_path, submit_batch
from worker.errors import ConfigError, PayloadError
from worker.runner import call_id_for, external_id_for
from worker.schema import Call
from worker.settings import Settings
from worker.store import (
    CallRequest,
    RetryRequest,
    calls_by_external_id,
    check_uri,
    content_call_id,
    content_holders,
    content_of_call_id,
    create_batch,
    enqueued_uri_hashes,
    finished_before,
    record_files_left,
    uri_sha256,
    was_rejected,
)
from worker.uris import local_path_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanReport:
    """What one scan found and sent."""

    batch_id: int
    seen: int
    """Audio files found under the inbox folders."""
    enqueued: int
    skipped: int
    """Files whose path or content was already sent (by this or an earlier scan)."""
    changed: int = 0
    """Failed calls whose file was modified since the failure, or moved to a new path (the
    worker found none at the old one), sent again as a new run of that call (counted in
    ``enqueued`` too, unless a scan running at the same time sent it first: then in
    ``skipped``)."""
    refused: int = 0
    """Files that cannot be sent at all (their path fails the payload's checks); each is
    logged with the reason, and the scan goes on without them."""
    too_new: int = 0
    """Files modified within ``Settings.inbox_min_age_s``: maybe still being written, left
    for the next scan (not sent, not marked)."""
    missing_folders: tuple[str, ...] = ()
    """Inbox folders that are not there (a typo in CALLMOOD_INBOX_DIRS, a share not mounted):
    the scan covers the others; ``callmood batch`` exits 1 naming them."""
    ignored: int = 0
    """Files under the inbox folders whose suffix is not a supported recording's (``.m4a``, a
    ``.txt`` sidecar): not in ``seen``, not sent; logged with a few names. Hidden files are
    partial uploads, not counted here."""

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "seen": self.seen, "enqueued": self.enqueued,
                "skipped": self.skipped, "changed": self.changed, "refused": self.refused,
                "too_new": self.too_new, "ignored": self.ignored,
                "missing_folders": list(self.missing_folders)}


def settled(paths: Sequence[Path], min_age_s: float,
            now_s: float) -> tuple[dict[Path, datetime | None], int]:
    """(the paths last modified ``min_age_s`` or more before ``now_s`` (epoch seconds), each
    with the time its content last changed in UTC, how many were newer). A path whose time
    cannot be read is kept, with None: hashing it will say why.

    The age is the modification time's: a copy in progress keeps it current. The time
    returned is the later of it and the inode's change time: ``cp -p``, ``rsync -t`` and
    SMB copies set the source's modification time once they complete, which can be before
    a failure of the cut-short copy, and the completed file was never sent again (a
    review); the change time is when that happened."""
    ready: dict[Path, datetime | None] = {}
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            ready[path] = None
            continue
        if now_s - stat.st_mtime >= min_age_s:
            ready[path] = datetime.fromtimestamp(max(stat.st_mtime, stat.st_ctime), UTC)
    return ready, len(paths) - len(ready)


def grown_since_analysis(analysed: Sequence[Call], content_ids: Mapping[str, str]) -> list[Call]:
    """Of done calls whose file was modified after their analysis, those whose file's content
    (``content_ids``: path hash to the call id of the content now) is not the content they
    analysed: a copy taken half-written (a WAV whose writer left its length open, an MP3:
    neither can be told cut short) and completed since. It was stored as done with part of
    the call and never looked at again (a review); it is run again, as a failed call whose
    file changed is. A file only touched, or whose mode or owner changed, is left alone."""
    grown = [c for c in analysed if c.content_sha256 is not None
             and content_ids.get(c.source_uri_sha256 or "") != content_call_id(c.content_sha256)]
    for call in grown:
        log.warning("call %s: its file changed after its analysis (a copy completed since?); "
                    "analysed again", call.external_call_id)
    return grown


def changed_failures(session: Session, call_ids: Mapping[str, str],
                     failed: Sequence[Call]) -> tuple[list[RetryRequest], int, set[str]]:
    """(new runs of the ``failed`` calls, how many of them cannot be sent, the path hashes of
    both: the scan counts them so, not as already known). A changed file whose content
    another call already holds (the completed copy sent meanwhile under another name, or
    analysed by a call of another id) is not run again, and stays known: that call has it.
    ``call_ids``: each failed call's path hash (``source_uri_sha256``) to the call id the
    scan gives its file now (:func:`call_id_for`: a file too small for audio is held by no
    other call), hashed before (outside any transaction)."""
    retries: list[RetryRequest] = []
    refused = 0
    paths: set[str] = set()
    # looked up together, as sort_new_files does: by call id, and by the analysed content
    wanted = sorted(set(call_ids.values()))
    by_id = calls_by_external_id(session, wanted)
    holders = content_holders(session, [d for i in wanted if (d := content_of_call_id(i))])
    for call in failed:
        digest = call.source_uri_sha256 or ""
        call_id = call_ids[digest]
        holder = by_id.get(call_id) or holders.get(content_of_call_id(call_id) or "")
        if holder is not None and holder.id != call.id:
            log.info("call %s not sent again: its file's content is call %s's",
                     call.external_call_id, holder.external_call_id)
            continue
        paths.add(digest)
        try:
            retries.append(RetryRequest.of(call))
        except PayloadError as e:   # its stored row no longer makes a valid request
            refused += 1
            log.warning("call %s not sent again: %s", call.external_call_id, e)
    return retries, refused, paths


def moved_failure(call: Call | None, request: CallRequest) -> RetryRequest | None:
    """A new run, from ``request``'s path, of ``call`` (the call of ``request``'s id, None if
    there is none) if it failed and its own file is gone: moved or renamed after the scan sent
    it, the worker failed it (no such file), and every later scan counted the file at its new
    path as known, never analysed (a review). None otherwise (the call is known as it is)."""
    if call is None or call.status != "failed" or was_rejected(call):
        return None
    try:
        stored = local_path_text(call.source_uri)
    except PayloadError:   # a file:// URI of another host: not this scan's to judge
        return None
    if stored is None or Path(stored).exists():
        return None
    try:
        retry = RetryRequest.of(call)
    except PayloadError:   # its stored row no longer makes a valid request: known as it is
        return None
    log.info("call %s: its file moved from %r to %r; sent again from there",
             call.external_call_id, stored, request.uri)
    return replace(retry, uri=request.uri)


SCAN_LOOKUP_FILES = 100
"""New files hashed before the scan looks them up in the database, in one session: their
calls (a moved failure) and the calls already holding their content. At most
``enqueue.SUBMIT_CHUNK`` (200), so a chunk of hashed files is still sent before the next is
hashed."""


@dataclass(frozen=True)
class NewFiles:
    """What a chunk of new files becomes: the requests to send, how many of them are moved
    failures sent again, and how many files were skipped for their content is analysed."""

    requests: tuple[CallRequest, ...]
    moved: int
    held: int


def sort_new_files(session: Session, requests: Sequence[CallRequest]) -> NewFiles:
    """The new (never sent by path) files' ``requests``, looked up together: a file whose
    content a call's stored analysis is of, under another id, is not sent (a file replaced between its
    scan and its analysis is stored under the old content's id; a copy of what the worker read
    was then analysed again, a review); a failed call whose file moved is sent again from the
    new path (:func:`moved_failure`); the rest as they are."""
    calls = calls_by_external_id(session, [r.external_call_id for r in requests])
    holders = content_holders(session, [d for r in requests
                                        if (d := content_of_call_id(r.external_call_id))])
    kept: list[CallRequest] = []
    moved = held = 0
    for request in requests:
        holder = holders.get(content_of_call_id(request.external_call_id) or "")
        if holder is not None and holder.external_call_id != request.external_call_id:
            held += 1
            log.info("%r not sent: call %s analysed its content already", request.uri,
                     holder.external_call_id)
            continue
        retry = moved_failure(calls.get(request.external_call_id), request)
        moved += retry is not None
        kept.append(request if retry is None else retry)
    return NewFiles(tuple(kept), moved, held)


def inbox_request(path: Path, source: str) -> CallRequest:
    """The request for one scanned file (call id: :func:`call_id_for`); PayloadError if its
    path cannot travel (e.g. longer than the URI limit), raised before the content is read:
    a refused file stays in the inbox and is met again every night."""
    uri = path_uri(path)
    check_uri(uri)
    return CallRequest(uri=uri, external_call_id=call_id_for(path),
                       metadata={"source": source, "file_name": printable_path(path.name)[:200]})


def _entries(folder: Path) -> list[Path]:
    """Every file under ``folder`` (any entry but a folder), sorted, symlinked folders not
    entered (as ``rglob``). A subfolder that cannot be listed (a stale network handle, no
    permission) is logged and skipped: ``rglob`` raised it (ESTALE) and the whole scan ended
    in a traceback, nothing sent (a review)."""
    def skipped(error: OSError) -> None:
        log.warning("inbox folder %r not scanned: %s", error.filename, error.strerror or error)

    found: list[Path] = []
    for root, dirs, files in os.walk(folder, onerror=skipped):
        for name in dirs:
            if (Path(root) / name).is_symlink():
                # not entered (a link may loop, or lead out of the input roots), but said:
                # a linked day folder was skipped without a word (a review)
                log.warning("inbox folder link %r not followed: link its files, or name its "
                            "target in CALLMOOD_INBOX_DIRS", str(Path(root) / name))
        # os.walk lists a link to a folder among the folders: it is no file either way
        found.extend(Path(root) / name for name in files)
    return sorted(found)


@dataclass(frozen=True)
class InboxListing:
    """What the inbox folders hold: the recordings to scan, and the files left for their
    suffix."""

    files: tuple[Path, ...]
    """Audio files (by suffix), sorted, symlinks resolved, each once."""
    ignored: tuple[Path, ...]
    """Files of any other suffix, as found: a format the worker does not read (``.m4a``),
    a sidecar (``.txt``)."""


def list_inbox(folders: Sequence[Path]) -> InboxListing:
    """The files under ``folders``, hidden ones left out (partial uploads)."""
    seen: set[Path] = set()
    files: list[Path] = []
    ignored: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            log.warning("inbox folder %s does not exist (CALLMOOD_INBOX_DIRS); skipped", folder)
            continue
        for path in _entries(folder):
            # Hidden files, and every file in a hidden folder, are partial uploads by
            # convention: not ready yet (scp's .name, rsync's .name.XXXXXX temporaries, its
            # --partial-dir=.rsync-partial and --delay-updates .~tmp~ folders).
            if any(part.startswith(".") for part in path.relative_to(folder).parts):
                continue
            if path.suffix.lower() not in AUDIO_SUFFIXES:
                # counted and named: a folder of .m4a recordings did nothing, without a word
                # (a review)
                ignored.append(path)
                continue
            try:
                resolved = path.resolve()
                # is_file() raises for a stat the OS refuses (EACCES: a link into a folder
                # the worker may not enter); it only answers False for a missing file
                is_file = resolved.is_file()
            except (OSError, RuntimeError) as e:
                # a symlink loop (RuntimeError before Python 3.13) or an unreadable entry must
                # not stop the scan: the rest of the inbox is still sent
                log.warning("inbox file %r skipped: %s", str(path), e)
                continue
            if not is_file:
                # a dangling link, a FIFO or a device named like a recording: left out without
                # a word, the scan's "N file(s) seen" short of the folder's count (a review)
                log.warning("inbox entry %r skipped: not a regular file (a link to nothing, a "
                            "pipe or a device)", str(path))
            elif resolved not in seen:
                seen.add(resolved)
                files.append(resolved)
    return InboxListing(tuple(files), tuple(ignored))


IGNORED_EXAMPLES: Final[int] = 3
"""Names of ignored files the scan's log line gives: enough to tell a format from a sidecar."""


def log_ignored(ignored: Sequence[Path], seen: int) -> None:
    """One line naming how many files the scan left for their suffix, a few of them, and the
    suffixes it reads. A warning when the scan found no recording at all (the folder did
    nothing, and this is why), else information: sidecars beside recordings are normal."""
    if not ignored:
        return
    examples = ", ".join(repr(printable_path(p)) for p in ignored[:IGNORED_EXAMPLES])
    more = f" and {len(ignored) - IGNORED_EXAMPLES} more" if len(ignored) > IGNORED_EXAMPLES else ""
    log.log(logging.WARNING if seen == 0 else logging.INFO,
            "%d inbox file(s) ignored: not a supported recording suffix (%s): %s%s",
            len(ignored), " ".join(AUDIO_SUFFIXES), examples, more)


def scan_inboxes(settings: Settings, source: str, send: Sender) -> ScanReport:
    """Register and enqueue every recording in the inbox folders not sent before.

    Running it twice (or two at once) sends each recording once: the calls are marked sent,
    row-locked, before the tasks are published (``enqueue.submit``).
    """
    if not settings.inbox_dirs:
        raise ConfigError("CALLMOOD_INBOX_DIRS is not set: name the folders to scan, "
                          "separated by the OS path separator")
    missing_folders = tuple(str(d) for d in settings.inbox_dirs if not d.is_dir())
    listing = list_inbox(settings.inbox_dirs)
    found = list(listing.files)
    log_ignored(listing.ignored, len(found))
    files, too_new = settled(found, settings.inbox_min_age_s, time.time())
    if too_new:
        log.info("%d inbox file(s) modified in the last %.0f s left for the next scan (still "
                 "being written?)", too_new, settings.inbox_min_age_s)
    by_hash = {uri_sha256(path_uri(path)): path for path in files}
    with session_scope(settings) as session:
        known = enqueued_uri_hashes(session, list(by_hash))
        # the times settled() read, of the paths sent before (a file it could not stat: none)
        modified_at = {digest: mtime for digest in known
                       if (mtime := files[by_hash[digest]]) is not None}
        failed = finished_before(session, modified_at, "failed")
        analysed = finished_before(session, modified_at, "done")
    # hashed between transactions: SQLite's writers hold the database's write lock from BEGIN
    # IMMEDIATE, and every worker storing a call would wait on files of any size being read
    content_ids = {digest: external_id_for(by_hash[digest])
                   for digest in {c.source_uri_sha256 for c in (*failed, *analysed)}
                   if digest is not None}
    grown = grown_since_analysis(analysed, content_ids)
    # a failed file too small for audio is matched by its path's id, as a new one is sent:
    # by content, an empty file rewritten empty met whichever empty file's call came first
    call_ids = {digest: call_id_for(by_hash[digest], content_id)
                for digest, content_id in content_ids.items()}
    with session_scope(settings) as session:
        # each retry is checked on its locked row when sent (a run since: not sent)
        retries, refused, retried_paths = changed_failures(session, call_ids,
                                                           [*failed, *grown])
        batch_id = create_batch(session, source).id

    moves = held = 0

    def sorted_chunk(chunk: Sequence[CallRequest]) -> tuple[CallRequest, ...]:
        nonlocal moves, held
        with session_scope(settings) as session:
            new = sort_new_files(session, chunk)
        moves, held = moves + new.moved, held + new.held
        return new.requests

    roots = [root.resolve() for root in settings.input_roots]

    def new_requests() -> Iterator[CallRequest]:
        # Hashing the content is the expensive step: only for paths never sent, and drawn a
        # chunk at a time by the sender, so a large backlog is sent as it is hashed (a scan
        # stopped by its time limit has sent what it hashed, and its batch is closed)
        nonlocal refused
        chunk: list[CallRequest] = []
        for digest, path in by_hash.items():
            if digest in known:
                continue
            if not any(path.is_relative_to(root) for root in roots):
                # a link in the inbox to a file outside the input roots: the worker would
                # refuse it, and fail the call for good (a review); it stays here, refused
                refused += 1
                log.warning("batch %d: %r not sent: outside CALLMOOD_INPUT_ROOTS", batch_id,
                            str(path))
                continue
            try:
                chunk.append(inbox_request(path, source))
            except PayloadError as e:
                # one file that cannot travel must not keep the rest of the inbox waiting
                refused += 1
                log.warning("batch %d: %r not sent: %s", batch_id, str(path), e)
                continue
            if len(chunk) == SCAN_LOOKUP_FILES:
                yield from sorted_chunk(chunk)
                chunk = []
        if chunk:
            yield from sorted_chunk(chunk)

    def requests() -> Iterator[CallRequest]:
        yield from retries
        yield from new_requests()

    known_left = len(known - retried_paths)
    result = submit_batch(requests(), settings, send, batch_id,
                          known=lambda: known_left + held,
                          problem=(f"inbox folder(s) not found: {', '.join(missing_folders)} "
                                   "(CALLMOOD_INBOX_DIRS; a share not mounted?)"
                                   if missing_folders else None))
    enqueued, skipped = result.sent, known_left + result.skipped + held
    if too_new or refused or listing.ignored:
        # not in enqueued or skipped: the batch looked like a quiet night (a review)
        with session_scope(settings) as session:
            record_files_left(session, batch_id, too_new, len(listing.ignored), refused)
    log.info("batch %d (%s): %d files, %d enqueued (%d run before and changed since), %d "
             "already seen, %d refused, %d too new, %d ignored", batch_id, source, len(found),
             enqueued, len(retries) + moves, skipped, refused, too_new, len(listing.ignored))
    return ScanReport(batch_id=batch_id, seen=len(found), enqueued=enqueued, skipped=skipped,
                      changed=len(retries) + moves, refused=refused, too_new=too_new,
                      missing_folders=missing_folders, ignored=len(listing.ignored))
