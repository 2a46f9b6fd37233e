"""The nightly batch: scan the inbox folders and enqueue each new recording exactly once.

Beat sends ``callmood.nightly_scan`` at CALLMOOD_NIGHTLY_AT (CALLMOOD_TIMEZONE); ``callmood
batch`` runs the same scan now. A file is new when no call was sent for its path (calls.
source_uri_sha256, cheap) nor for its content (call id ``sha256-<content hash>``, so a copy
or a renamed file is not analysed twice). Each scan is a row in ``batches``; its done/failed
counts are recounted from ``calls.batch_id`` as calls finish (``store.refresh_batch_counts``).
No Celery in here: the caller passes the sender.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.constants import AUDIO_SUFFIXES
from worker.db import session_scope
from worker.enqueue import Sender, submit
from worker.errors import ConfigError
from worker.runner import external_id_for
from worker.settings import Settings
from worker.store import (
    CallRequest,
    create_batch,
    enqueued_uri_hashes,
    finish_batch_scan,
    uri_sha256,
)

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

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "seen": self.seen, "enqueued": self.enqueued,
                "skipped": self.skipped}


def inbox_files(folders: Sequence[Path]) -> Iterator[Path]:
    """Audio files (by suffix) under ``folders``, sorted, symlinks resolved, each once."""
    seen: set[Path] = set()
    for folder in folders:
        if not folder.is_dir():
            log.warning("inbox folder %s does not exist (CALLMOOD_INBOX_DIRS); skipped", folder)
            continue
        for path in sorted(folder.rglob("*")):
            # Hidden files are partial uploads by convention (rsync, scp): not ready yet.
            if path.name.startswith(".") or path.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            resolved = path.resolve()
            if resolved.is_file() and resolved not in seen:
                seen.add(resolved)
                yield resolved


def scan_inboxes(settings: Settings, source: str, send: Sender) -> ScanReport:
    """Register and enqueue every recording in the inbox folders not sent before.

    Running it twice (or two at once) sends each recording once: the calls are marked sent,
    row-locked, before the tasks are published (``enqueue.submit``).
    """
    if not settings.inbox_dirs:
        raise ConfigError("CALLMOOD_INBOX_DIRS is not set: name the folders to scan, "
                          "separated by the OS path separator")
    files = list(inbox_files(settings.inbox_dirs))
    by_hash = {uri_sha256(str(path)): path for path in files}
    with session_scope(settings) as session:
        known = enqueued_uri_hashes(session, list(by_hash))
        batch_id = create_batch(session, source).id
    # Hashing the content is the expensive step: only for paths never sent.
    candidates = [path for digest, path in by_hash.items() if digest not in known]
    requests = [CallRequest(uri=str(path), external_call_id=external_id_for(path),
                            metadata={"source": source, "file_name": path.name[:200]})
                for path in candidates]
    results = submit(requests, settings, send, batch_id=batch_id) if requests else []
    enqueued = sum(r.sent for r in results)
    with session_scope(settings) as session:
        finish_batch_scan(session, batch_id, enqueued=enqueued, skipped=len(files) - enqueued)
    log.info("batch %d (%s): %d files, %d enqueued, %d already seen", batch_id, source,
             len(files), enqueued, len(files) - enqueued)
    return ScanReport(batch_id=batch_id, seen=len(files), enqueued=enqueued,
                      skipped=len(files) - enqueued)
