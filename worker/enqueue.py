"""The producer side: hand recordings to the workers, once per call id.

Three ways in (docs/production.md): :func:`enqueue` / :func:`enqueue_manifest` here, the
``callmood enqueue`` CLI over them, or a plain ``send_task("callmood.analyze_recording")``
from a process that imports nothing from callmood. The first two register the call before
sending (so ``callmood status`` sees it queued and a second enqueue of the same call id sends
nothing); the worker applies the same rule to plain sends (``store.is_duplicate_delivery``).
Only ids, URIs and labels travel through the broker; never audio.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

from worker.db import session_scope
from worker.errors import CallmoodError, PartialSendError, PayloadError
from worker.schema import Call
from worker.settings import Settings, get_settings
from worker.store import (
    LABEL_FIELDS,
    CallRequest,
    CallSendState,
    Reservation,
    RetryRequest,
    create_batch,
    finish_batch_scan,
    label_changes,
    list_calls,
    parse_timestamp,
    payload_rejected,
    printable_text,
    release_enqueue,
    reserve_all,
)
from worker.uris import uri_scheme

log = logging.getLogger(__name__)

Sender = Callable[[Sequence[CallRequest]], list[str]]
"""Sends one analysis task per request and returns the task ids (``tasks.send_analysis``)."""

MANIFEST_COLUMNS: tuple[str, ...] = ("uri", "call_id", "agent_id", "started_at", "team",
                                     "customer_ref", "queue", "metadata")
"""Columns (CSV) or keys (JSON lines) of a manifest; uri, call_id and agent_id are required."""
MANIFEST_REQUIRED: tuple[str, ...] = ("uri", "call_id", "agent_id")
MAX_REPORTED_ERRORS = 20


@dataclass(frozen=True)
class Enqueued:
    """What enqueueing one call did."""

    call_id: str
    """The external call id."""
    task_id: str | None
    """The Celery task id; None when nothing was sent."""
    reason: str | None = None
    """Why nothing was sent (a duplicate of a call already sent or analysed, or a refusal)."""
    refused: bool = False
    """True when the call could not be sent as asked (its call id stands for another file;
    its stored row cannot make a request, or was a rejected payload), as opposed to a
    duplicate, which is nothing to do."""

    @property
    def sent(self) -> bool:
        return self.task_id is not None


@dataclass(frozen=True)
class ManifestResult:
    """What a batch's send did (:func:`enqueue_manifest`, :func:`submit_batch`)."""

    batch_id: int
    results: tuple[Enqueued, ...]

    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.results)

    @property
    def skipped(self) -> int:
        return len(self.results) - self.sent

    @property
    def refused(self) -> int:
        """Calls not sent because they could not be sent as asked (among ``skipped``)."""
        return sum(r.refused for r in self.results)


@contextmanager
def celery_sender(settings: Settings) -> Iterator[Sender]:
    """A :data:`Sender` on a Celery app for ``settings`` (closed afterwards). The app is not
    made Celery's current one: a producer with a Celery app of its own keeps it."""
    from worker.celery_app import make_celery
    from worker.tasks import send_analysis

    app = make_celery(settings, set_as_current=False)
    try:
        yield lambda requests: send_analysis(app, requests)
    finally:
        app.close()


SUBMIT_CHUNK = 200
"""Calls marked sent per transaction by :func:`submit`, each chunk published at once after:
a chunk is published within seconds of its mark (~2 ms a call, the file header probe
included), so recovery (``worker.recovery``, 2-minute minimum age) never takes a call of a
long manifest that is only waiting its turn to be published for a lost one."""


def submit(requests: Sequence[CallRequest], settings: Settings, send: Sender,
           batch_id: int | None = None) -> list[Enqueued]:
    """Register each call and send the tasks of those not sent before (or ``reprocess``).

    The calls are marked sent in one transaction before anything is published, so two
    producers racing on a call id publish once; if publishing fails, whatever the error, they
    are unmarked and the error propagates (TransientError: enqueueing again later is safe; the
    chunks of SUBMIT_CHUNK calls published before stay sent). A call id already sent or
    worked on for another file is refused (``Enqueued.refused``), not skipped as a duplicate.
    """
    return [result for chunk in submit_chunks(requests, settings, send, batch_id)
            for result in chunk]


def submit_chunks(requests: Iterable[CallRequest], settings: Settings, send: Sender,
                  batch_id: int | None = None) -> Iterator[list[Enqueued]]:
    """``submit``, one chunk of SUBMIT_CHUNK results at a time: a caller that must account
    for what was sent before a TransientError (the inbox scan) has every finished chunk.
    ``requests`` is drawn a chunk at a time, so a generator that builds them (the inbox scan
    hashes each file) has its first chunk sent before it builds the next."""
    remaining = iter(requests)
    while chunk := list(islice(remaining, SUBMIT_CHUNK)):
        yield _submit_chunk(chunk, settings, send, batch_id)


def _published_before(error: BaseException) -> int:
    """Tasks a failed send published before it failed (:class:`PartialSendError`; 0 else)."""
    return len(error.task_ids) if isinstance(error, PartialSendError) else 0


def _submit_chunk(requests: Sequence[CallRequest], settings: Settings, send: Sender,
                  batch_id: int | None) -> list[Enqueued]:
    with session_scope(settings) as session:
        # why a call is not sent is read on its locked row, in the reserving transaction
        decided = [(request, reservation.before,
                    None if reservation.send else _not_sent(request, reservation))
                   for request, reservation
                   in zip(requests, reserve_all(session, requests, batch_id), strict=True)]
    to_send = [(request, before) for request, before, _ in decided if before is not None]
    try:
        task_ids = iter(send([request for request, _ in to_send]) if to_send else [])
    except BaseException as e:
        # any error, not only an unreachable broker's (kombu's TypeError on a broker URL it
        # cannot read, a Ctrl-C): left marked sent, the calls were never published, and the
        # next enqueue skipped them as sent while `status` did not count them as never sent (a
        # review). The tasks a PartialSendError says were published stay marked sent: unmarked,
        # recovery would not watch them and the next enqueue would publish them a second time.
        # Another error says nothing of what it published: all are released, since a second
        # message costs at most a second run (a finished call's duplicate is skipped, segments
        # are replaced), while a call marked and never sent is never analysed
        _release(settings, [before for _, before in to_send[_published_before(e):]])
        raise
    return [Enqueued(request.external_call_id, next(task_ids)) if not_sent is None else not_sent
            for request, _, not_sent in decided]


def _release(settings: Settings, reserved: Sequence[CallSendState]) -> None:
    """``release_enqueue`` after a failed send, never raising: the error that stopped the send
    is the one the caller raises (calls it could not release stay marked sent, and recovery
    sends them again once they are old enough)."""
    if not reserved:
        return
    try:
        with session_scope(settings) as session:
            release_enqueue(session, reserved)
    except Exception:
        log.exception("could not unmark the %d call(s) of a failed send", len(reserved))


FAILURE_SHOWN_CHARS = 200
"""Characters of a failed call's reason quoted when an enqueue or a retry skips it."""


def _shown_failure(reason: str | None) -> str:
    text = printable_text(reason or "no reason stored")
    return text if len(text) <= FAILURE_SHOWN_CHARS else text[:FAILURE_SHOWN_CHARS - 3] + "..."


def _not_sent(request: CallRequest, reservation: Reservation) -> Enqueued:
    """The result for a request :func:`reserve_all` did not send, and why."""
    call_id, call = request.external_call_id, reservation.call
    if isinstance(request, RetryRequest):
        return Enqueued(call_id, None, "no longer failed as read: sent again meanwhile, or run "
                                       "since")
    if reservation.conflict is not None:
        return Enqueued(call_id, None, refused=True, reason=(
            f"call id {call_id} is already the call of another file, "
            f"{printable_text(reservation.conflict)!r} ({call.status}), so "
            f"{printable_text(request.uri)!r} was not sent: send it under a new call id, or, "
            "if it replaces that recording, enqueue it with --reprocess (reprocess=True: the "
            "call takes the new file and is analysed again)"))
    if call.status == "failed":
        return Enqueued(call_id, None, (
            f"failed in its last run ({_shown_failure(call.failure_reason)}); to run it "
            f"again, enqueue it with --reprocess (reprocess=True) or run callmood retry "
            f"--call-id {call_id}"))
    changed = relabelled(call, request)
    if changed:
        # a correction sent again was skipped as a duplicate, exit 0, and the call kept the
        # old agent in every report (a review): say which labels differ, and refuse
        relabel = (f"run callmood relabel {call_id} with them (no new analysis), or "
                   if call.status in ("done", "failed") else "")   # a queued run undoes it
        return Enqueued(call_id, None, refused=True, reason=(
            f"already enqueued or analysed with other labels ({changed}), so nothing was "
            f"sent and the stored labels stand: to give the call these, {relabel}enqueue it "
            "with --reprocess (reprocess=True: it takes them and is analysed again)"))
    return Enqueued(call_id, None, "already enqueued or analysed; pass reprocess to run again")


def relabelled(call: Call, request: CallRequest) -> str:
    """The labels ``request`` gives that differ from ``call``'s stored ones
    (:func:`worker.store.label_changes`), as ``field 'stored' stored, 'sent' sent``; empty
    when none does."""
    changes = []
    given = {name: getattr(request, name) for name in LABEL_FIELDS}
    for name, (stored, sent) in label_changes(call, given).items():
        if isinstance(sent, datetime) and isinstance(stored, datetime):
            sent_text, stored_text = sent.isoformat(), stored.isoformat()
        else:
            sent_text, stored_text = str(sent), "none" if stored is None else str(stored)
        changes.append(f"{name} {printable_text(stored_text)!r} stored, "
                       f"{printable_text(sent_text)!r} sent")
    return "; ".join(changes)


def enqueue(uri: str, *, call_id: str, agent_id: str,
            started_at: datetime | str | None = None, team: str | None = None,
            customer_ref: str | None = None, queue: str | None = None,
            metadata: Mapping[str, Any] | None = None, reprocess: bool = False,
            settings: Settings | None = None, send: Sender | None = None) -> Enqueued:
    """Enqueue one recording for analysis; PayloadError names a bad field.

    A local path is made absolute (the worker resolves it against its input roots). Sending
    the same ``call_id`` again sends nothing unless ``reprocess``.
    """
    if not agent_id:
        raise PayloadError(f"agent_id: required (1-128 printable characters), got {agent_id!r}")
    settings = settings or get_settings()
    request = CallRequest(
        uri=absolute_uri(uri), external_call_id=call_id, agent_id=agent_id, team=team,
        queue=queue, customer_ref=customer_ref,
        started_at=parse_timestamp(started_at) if isinstance(started_at, str) else started_at,
        metadata={} if metadata is None else metadata, reprocess=reprocess)
    if send is not None:
        return submit([request], settings, send)[0]
    with celery_sender(settings) as sender:
        return submit([request], settings, sender)[0]


def enqueue_manifest(path: Path | str, *, reprocess: bool = False,
                     settings: Settings | None = None, send: Sender | None = None
                     ) -> ManifestResult:
    """Enqueue every row of a CSV or JSON-lines manifest as one batch (``manifest:NAME``).

    Every row is validated before anything is sent: one bad row fails the whole manifest
    with PayloadError naming each bad line (fix it and run again; nothing is sent twice).
    """
    settings = settings or get_settings()
    manifest = Path(path).expanduser().resolve()
    requests = read_manifest(manifest, reprocess=reprocess)
    with session_scope(settings) as session:
        batch_id = create_batch(session, f"manifest:{manifest.name}").id
    if send is not None:
        return submit_batch(requests, settings, send, batch_id)
    with celery_sender(settings) as sender:
        return submit_batch(requests, settings, sender, batch_id)


def submit_batch(requests: Iterable[CallRequest], settings: Settings, send: Sender,
                 batch_id: int, known: int | Callable[[], int] = 0,
                 problem: str | None = None) -> ManifestResult:
    """``submit`` the requests as batch ``batch_id`` and close its scan with what was sent
    and skipped (plus ``known``: files the caller skipped without asking; a callable is read
    when the scan closes, for files skipped while ``requests`` is drawn).

    A send that fails half-way (TransientError), or anything that stops ``requests`` being
    drawn (a task's time limit while the scan hashes), still closes the batch with the
    chunks published before it, not left "scanning" for ever, and the error that stopped it
    is the one raised, even if the database is gone too. ``problem``: what else the batch's
    row should say went wrong (inbox folders not found), kept with the error.
    """
    results: list[Enqueued] = []

    def close(partly_sent: int = 0, error: str | None = None) -> ManifestResult:
        done = ManifestResult(batch_id, tuple(results))
        said = "; ".join(e for e in (problem, _refusals(done), error and f"stopped sending: {error}")
                         if e)
        with session_scope(settings) as session:
            skipped_first = known if isinstance(known, int) else known()
            finish_batch_scan(session, batch_id, enqueued=done.sent + partly_sent,
                              skipped=skipped_first + done.skipped, error=said or None)
        return done

    try:
        for chunk in submit_chunks(requests, settings, send, batch_id):
            results += chunk
    except BaseException as e:
        try:
            # the failing chunk's tasks published before the broker went away are sent too
            # kept on the batch: `status` showed it like one that sent everything (a review)
            close(_published_before(e), _stop_reason(e))
        except Exception:
            log.exception("batch %d: could not record what the failed send sent", batch_id)
        raise
    return close()


def _refusals(result: ManifestResult) -> str | None:
    """The batch row's note of the calls it refused (``callmood status`` shows it): counted
    among the skipped, the batch looked like a quiet re-run (a review)."""
    refused = [r.call_id for r in result.results if r.refused]
    if not refused:
        return None
    more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
    return f"{len(refused)} refused (call id of another file): {', '.join(refused[:5])}{more}"


def _stop_reason(error: BaseException) -> str:
    """What stopped a batch's send, for its row: our errors say it themselves; another (a
    time limit while the scan hashes) by its type too."""
    if isinstance(error, CallmoodError) and str(error):
        return str(error)
    return f"{type(error).__name__}: {error}".rstrip(": ")


def retry_failed(settings: Settings, call_ids: Sequence[str] = (), all_failed: bool = False,
                 send: Sender | None = None) -> list[Enqueued]:
    """Enqueue failed calls again as a new run (``reprocess``); PayloadError when a named call
    is unknown or not failed, was a rejected payload (:func:`store.payload_rejected`: its row
    kept none of the payload's labels; the producer's corrected payload is its retry), or its
    stored row cannot make a valid request. With ``all_failed`` such a row is skipped, and
    reported with its reason (``refused``), so one rejection never blocks every other
    retry."""
    if not call_ids and not all_failed:
        raise PayloadError("name the calls to retry (call ids) or ask for all failed calls")
    with session_scope(settings) as session:
        failed = {c.external_call_id: c for c in list_calls(session, status="failed")}
        wanted = list(failed) if all_failed else list(dict.fromkeys(call_ids))
        missing = [c for c in wanted if c not in failed]
        if missing:
            raise PayloadError(f"not failed calls: {', '.join(missing[:MAX_REPORTED_ERRORS])}; "
                               "only failed calls are retried (see callmood failures)")
        requests: list[CallRequest] = []
        unusable: list[Enqueued] = []
        for call_id in wanted:
            call = failed[call_id]
            if payload_rejected(call):
                # run from its row, it was analysed without the agent, team and start time
                # the rejected payload carried, stored as done, and the corrected payload
                # then skipped as already analysed (a review)
                reason = _rejected_reason(call.failure_reason)
                if not all_failed:
                    raise PayloadError(f"call {call_id}: {reason}")
                unusable.append(Enqueued(call_id, None, reason=reason, refused=True))
                continue
            try:
                # checked on the locked row when sent: two retries that read the failure at
                # once send one run (a review found both publishing)
                requests.append(RetryRequest.of(call))
            except PayloadError as e:
                reason = (f"its stored row cannot be sent again ({e}); send a corrected "
                          "payload for this call id with callmood enqueue")
                if not all_failed:
                    raise PayloadError(f"call {call_id}: {reason}") from e
                unusable.append(Enqueued(call_id, None, reason=reason, refused=True))
    if not requests:
        return unusable
    if send is not None:
        return [*unusable, *submit(requests, settings, send)]
    with celery_sender(settings) as sender:
        return [*unusable, *submit(requests, settings, sender)]


def _rejected_reason(failure_reason: str | None) -> str:
    """Why a rejected payload's call is not retried, and what to do instead."""
    return (f"its stored row cannot be sent again: its payload was rejected before any run "
            f"({_shown_failure(failure_reason)}), and the row kept none of the payload's "
            "labels (agent, team, start time); send a corrected payload for this call id with "
            "callmood enqueue (no --reprocess needed)")


def absolute_uri(uri: str) -> str:
    """``uri`` unchanged if it has a scheme (file://...), else the absolute local path (as
    ``path_uri`` sends it)."""
    if not isinstance(uri, str) or not uri:
        raise PayloadError(f"uri: expected a path or file:// URI, got {uri!r}")
    if uri_scheme(uri):
        return uri
    # absolute, not resolved: the producer's symlinks need not exist where the worker runs
    return path_uri(Path(uri).expanduser().absolute())


def path_uri(path: Path) -> str:
    """The URI a local file is sent as: its path, or, for a name that is not UTF-8 (copied
    from a system with another encoding; Python holds it with surrogate escapes), the
    percent-encoded ``file://`` URI, which the database and the broker's JSON can carry and
    the worker's ``audio.resolve_input`` turns back into the same bytes."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return path.as_uri()
    return str(path)


def printable_path(path: Path | str) -> str:
    """``path`` as text any log, terminal or JSON column takes: bytes of the name that are
    not UTF-8 shown as ``\\xNN``."""
    return printable_text(os.fspath(path))


def read_manifest(path: Path, reprocess: bool = False) -> list[CallRequest]:
    """The validated requests of a manifest: ``.csv`` or JSON lines (``.jsonl``, ``.ndjson``).

    Relative paths are taken relative to the manifest's folder.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            rows = list(_csv_rows(path))
        elif suffix in (".jsonl", ".ndjson", ".json"):
            rows = list(_jsonl_rows(path))
        else:
            raise PayloadError(f"manifest {path.name}: use a .csv or .jsonl (.ndjson) file")
    except OSError as e:
        raise PayloadError(f"manifest {path}: cannot be read: {e}") from e
    except UnicodeDecodeError as e:
        raise PayloadError(f"manifest {path.name}: not UTF-8 (byte 0x{e.object[e.start]:02x} at "
                           f"offset {e.start}): save it as UTF-8 (Excel: \"CSV UTF-8\")") from e
    requests: list[CallRequest] = []
    errors: list[str] = []
    first: dict[str, tuple[int, CallRequest]] = {}
    for line, row in rows:
        try:
            request = _request_from_row(row, path.parent, reprocess)
        except PayloadError as e:
            errors.append(f"line {line}: {e}")
            continue
        seen_line, seen = first.setdefault(request.external_call_id, (line, request))
        if seen is request:
            requests.append(request)
        elif seen.uri != request.uri:
            # one call id for two files: the second would be skipped as sent, unanalysed
            errors.append(f"line {line}: call_id {request.external_call_id!r} names another "
                          f"file on line {seen_line}")
        elif seen != request:
            # which labels are the call's? With --reprocess both rows were sent, the call
            # analysed twice, its labels the later run's (a review)
            errors.append(f"line {line}: call_id {request.external_call_id!r} repeats line "
                          f"{seen_line} with other labels; keep one row per call")
        # a row repeated as it was is sent once
    if errors:
        more = len(errors) - MAX_REPORTED_ERRORS
        raise PayloadError(f"manifest {path.name}: {len(errors)} bad row(s), nothing sent; "
                           + "; ".join(errors[:MAX_REPORTED_ERRORS])
                           + (f"; and {more} more" if more > 0 else ""))
    if not requests:
        raise PayloadError(f"manifest {path.name}: no rows")
    return requests


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would otherwise
    # become part of the first column's name
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        # a column with no name holds nothing to read: Excel saves the empty columns after a
        # sheet's last one as ",,", which was refused as unknown columns '' (a review)
        columns = [c for c in reader.fieldnames or [] if c.strip()]
        _check_columns(path, columns)
        for row in reader:
            if not any((v or "").strip() for k, v in row.items() if k is not None) \
                    and not row.get(None):
                continue   # a row of empty cells (",,"): Excel's blank line
            if None in row:
                # DictReader files surplus cells under None: an unquoted comma in a value
                # would shift the labels after it, so the row is refused, not guessed at
                raise PayloadError(
                    f"manifest {path.name} line {reader.line_num}: "
                    f"{len(columns) + len(row[None])} cells for the {len(columns)} columns "
                    f"{', '.join(columns)}; quote a value that holds a comma, nothing sent")
            nameless = [v for k, v in row.items() if k is not None and not k.strip() and v]
            if nameless:
                raise PayloadError(f"manifest {path.name} line {reader.line_num}: "
                                   f"{nameless[0]!r} under a column with no name; name the "
                                   f"column ({', '.join(MANIFEST_COLUMNS)}) or empty it")
            # Empty cells are absent values (CSV has no null).
            yield reader.line_num, {k: v for k, v in row.items()
                                    if k and k.strip() and v not in (None, "")}


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise PayloadError(f"manifest {path.name} line {number}: not JSON: {e}") from e
            if not isinstance(row, dict):
                raise PayloadError(f"manifest {path.name} line {number}: expected a JSON "
                                   f"object with keys {', '.join(MANIFEST_COLUMNS)}")
            _check_columns(path, list(row), number)
            yield number, row


def _check_columns(path: Path, columns: Sequence[str], line: int | None = None) -> None:
    where = f"manifest {path.name}" + (f" line {line}" if line is not None else "")
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if unknown:
        hint = ""
        if any(sep in c for c in unknown for sep in ";\t|"):
            hint = " (columns are separated by commas, not semicolons or tabs)"
        elif any(c.strip() in MANIFEST_COLUMNS for c in unknown):
            hint = " (no spaces around the names)"
        raise PayloadError(f"{where}: unknown column(s) {', '.join(map(repr, unknown))}{hint}; "
                           f"accepted: {', '.join(MANIFEST_COLUMNS)}")
    if line is None:
        missing = [c for c in MANIFEST_REQUIRED if c not in columns]
        if missing:
            raise PayloadError(f"{where}: missing column(s) {', '.join(missing)}; required: "
                               f"{', '.join(MANIFEST_REQUIRED)}")


def _request_from_row(row: Mapping[str, Any], base: Path, reprocess: bool) -> CallRequest:
    for name in MANIFEST_REQUIRED:
        if row.get(name) in (None, ""):
            raise PayloadError(f"{name}: required")
    uri = row["uri"]
    if isinstance(uri, str) and not uri_scheme(uri):
        uri = path_uri((base / Path(uri).expanduser()).absolute())
    metadata = row.get("metadata")
    if isinstance(metadata, str):  # a CSV cell holds the object as JSON text
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as e:
            raise PayloadError(f"metadata: not a JSON object: {e}") from e
    payload = {**row, "uri": uri, "metadata": metadata, "reprocess": reprocess}
    return CallRequest.from_payload(payload)
