"""Reads and writes of calls and segments. Every function takes the caller's Session and
never commits: the caller's ``session_scope`` owns the transaction (commit or roll back)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sqlalchemy import Select, and_, delete, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.constants import EMOTIONS, ROLES
from worker.errors import PayloadError
from worker.schema import (
    BATCH_SOURCE_MAX_CHARS,
    CALL_STATUSES,
    EXTERNAL_ID_MAX_CHARS,
    FAILURE_REASON_MAX_CHARS,
    FINAL_STATUSES,
    LABEL_MAX_CHARS,
    PROBABILITY_COLUMNS,
    URI_MAX_CHARS,
    Batch,
    Call,
    Segment,
    utcnow,
)
from worker.uris import local_path_text, uri_scheme

if TYPE_CHECKING:  # only the dataclasses; the pipeline's imports stay out of the DB edge
    from worker.pipeline import RecordingAnalysis

METADATA_MAX_BYTES = 16 * 1024
"""Largest accepted ``metadata`` payload, serialized as JSON."""

PAYLOAD_SCHEMA_VERSION = 1
"""Version of the task payload (docs/production.md). A payload without ``schema_version`` is
version 1; any other version is rejected, never guessed at."""

PAYLOAD_FIELDS: tuple[str, ...] = ("schema_version", "uri", "call_id", "agent_id", "team", "queue",
                                   "customer_ref", "started_at", "metadata", "reprocess")
"""Keyword arguments accepted by the ``callmood.analyze_recording`` task."""

_ID_RE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces


def check_uri(uri: object) -> None:
    """Raise PayloadError unless ``uri`` can travel as a call's recording URI (cheap: the
    inbox scan checks a path with it before hashing the file's content)."""
    if not isinstance(uri, str) or not 1 <= len(uri) <= URI_MAX_CHARS:
        raise PayloadError(f"uri: expected a path or file:// URI of 1-{URI_MAX_CHARS} "
                           f"characters, got {_describe(uri)}")
    # a file:// URI's path is percent-decoded before it is opened: %00 is a NUL there
    path = local_path_text(uri)
    if path is None:   # refused here, by the producer, rather than failed by every worker run
        raise PayloadError(f"uri: scheme {uri_scheme(uri)!r} is not one the worker reads: send "
                           "a local path or a file:// URI (mount network shares under "
                           "CALLMOOD_INPUT_ROOTS)")
    if "\x00" in uri or "\x00" in path:
        raise PayloadError("uri: contains a NUL character (or %00 in a file:// URI)")
    if not (PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute()):
        # resolved against wherever the worker was started, and again by every retry
        raise PayloadError(f"uri: {uri[:200]!r} is not an absolute path (relative, or ~); send "
                           "an absolute path or a file:/// URI (callmood enqueue makes paths "
                           "absolute)")
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError as e:
        # a file name in another encoding, decoded by Python with surrogate escapes: the
        # database and the broker's JSON carry text, so it must travel percent-encoded
        raise PayloadError("uri: not valid UTF-8 (a file name in another encoding?); send "
                           "it as a percent-encoded file:// URI (Path.as_uri())") from e


@dataclass(frozen=True)
class CallRequest:
    """A validated request to analyse one recording. Raises PayloadError when invalid."""

    uri: str
    external_call_id: str
    agent_id: str | None = None
    team: str | None = None
    queue: str | None = None
    customer_ref: str | None = None
    started_at: datetime | None = None
    """When the call began; timezone-aware."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    reprocess: bool = False
    """Analyse again even if the call was already analysed (or failed); else a duplicate
    request for a finished call is skipped."""

    def __post_init__(self) -> None:
        check_uri(self.uri)
        if not is_valid_external_id(self.external_call_id):
            raise PayloadError(f"call_id: expected 1-{EXTERNAL_ID_MAX_CHARS} printable ASCII "
                               f"characters without spaces, got {_describe(self.external_call_id)}")
        for name in ("agent_id", "team", "queue", "customer_ref"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str)
                                      or not 1 <= len(value) <= LABEL_MAX_CHARS
                                      or not value.isprintable()):
                raise PayloadError(f"{name}: expected null or 1-{LABEL_MAX_CHARS} printable "
                                   f"characters, got {_describe(value)}")
        if self.started_at is not None and (not isinstance(self.started_at, datetime)
                                            or self.started_at.utcoffset() is None):
            raise PayloadError("started_at: expected a timezone-aware datetime, got "
                               f"{_describe(self.started_at)}")
        if self.started_at is not None:
            try:
                # the column stores UTC: a start at the edge of the calendar has none
                self.started_at.astimezone(UTC)
            except OverflowError as e:
                raise PayloadError(f"started_at: {self.started_at.isoformat()} has no UTC time "
                                   "(out of range); expected e.g. 2026-01-31T09:15:00+00:00") from e
        if not isinstance(self.reprocess, bool):
            raise PayloadError(f"reprocess: expected true or false, got {_describe(self.reprocess)}")
        if not isinstance(self.metadata, Mapping) or not all(
                isinstance(k, str) for k in self.metadata):
            raise PayloadError("metadata: expected a JSON object with string keys, got "
                               f"{_describe(self.metadata)}")
        try:
            encoded = json.dumps(dict(self.metadata), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise PayloadError(f"metadata: must hold only JSON values (no NaN): {e}") from e
        if len(encoded.encode()) > METADATA_MAX_BYTES:
            raise PayloadError(f"metadata: {len(encoded.encode())} bytes as JSON, over the "
                               f"limit of {METADATA_MAX_BYTES}")
        # Frozen all the way down: a copy nobody else holds, read-only.
        object.__setattr__(self, "metadata", MappingProxyType(json.loads(encoded)))

    @classmethod
    def from_payload(cls, payload: Mapping[str, object]) -> CallRequest:
        """Build from task kwargs (``call_id`` is the external id, ``started_at`` ISO-8601)."""
        unknown = sorted(set(payload) - set(PAYLOAD_FIELDS))
        if unknown:
            raise PayloadError(f"unknown field(s) {', '.join(unknown)}; accepted: "
                               f"{', '.join(PAYLOAD_FIELDS)}")
        version = payload.get("schema_version", PAYLOAD_SCHEMA_VERSION)
        if version != PAYLOAD_SCHEMA_VERSION or isinstance(version, bool):
            raise PayloadError(f"schema_version: {_describe(version)} is not supported; this "
                               f"worker accepts {PAYLOAD_SCHEMA_VERSION} (or the field left out)")
        for required in ("uri", "call_id"):
            if payload.get(required) in (None, ""):
                raise PayloadError(f"{required}: required")
        started_at = payload.get("started_at")
        if started_at is not None:
            started_at = parse_timestamp(started_at)
        metadata = payload.get("metadata")
        return cls(
            uri=payload["uri"],  # type: ignore[arg-type]  # checked in __post_init__
            external_call_id=payload["call_id"],  # type: ignore[arg-type]
            agent_id=payload.get("agent_id"),  # type: ignore[arg-type]
            team=payload.get("team"),  # type: ignore[arg-type]
            queue=payload.get("queue"),  # type: ignore[arg-type]
            customer_ref=payload.get("customer_ref"),  # type: ignore[arg-type]
            started_at=started_at,
            metadata={} if metadata is None else metadata,  # type: ignore[arg-type]
            reprocess=payload.get("reprocess") or False,  # type: ignore[arg-type]
        )

    def to_payload(self) -> dict[str, Any]:
        """The task kwargs for this request (JSON-serializable; inverse of from_payload)."""
        return {
            "schema_version": PAYLOAD_SCHEMA_VERSION,
            "uri": self.uri,
            "call_id": self.external_call_id,
            "agent_id": self.agent_id,
            "team": self.team,
            "queue": self.queue,
            "customer_ref": self.customer_ref,
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
            "metadata": dict(self.metadata),
            "reprocess": self.reprocess,
        }


def parse_timestamp(value: object) -> datetime:
    """An aware datetime from an ISO-8601 string with a UTC offset (``Z`` allowed)."""
    if not isinstance(value, str) or len(value) > 64:
        raise PayloadError(f"started_at: expected an ISO-8601 string such as "
                           f"2026-01-31T09:15:00+00:00, got {_describe(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise PayloadError(f"started_at: {value!r} is not ISO-8601 (e.g. "
                           "2026-01-31T09:15:00+00:00)") from e
    if parsed.utcoffset() is None:
        raise PayloadError(f"started_at: {value!r} has no UTC offset; append +00:00 or Z")
    return parsed


def is_valid_external_id(value: object) -> bool:
    """Whether ``value`` can be a calls.external_call_id (printable ASCII, no spaces)."""
    return (isinstance(value, str) and 1 <= len(value) <= EXTERNAL_ID_MAX_CHARS
            and _ID_RE.match(value) is not None)


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def printable_text(text: str) -> str:
    """``text`` as UTF-8 the database takes: the surrogate escapes Python decodes a file name
    in another encoding into (in paths and in error messages that quote them) become
    ``\\xNN``, and so does NUL, which PostgreSQL's text columns refuse (the write, and with
    it the failure it recorded, would be lost)."""
    try:
        # valid UTF-8 round-trips unchanged; escaped bytes come back as \xNN
        out = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate outside U+DC80-U+DCFF (no byte behind it)
        out = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return out.replace("\x00", "\\x00")


def _clip(text: str, max_chars: int) -> str:
    text = printable_text(text)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def get_call(session: Session, call_id: int) -> Call:
    """The call with primary key ``call_id``; PayloadError when there is none."""
    call = session.get(Call, call_id)
    if call is None:
        raise PayloadError(f"call_id: no call with id {call_id}")
    return call


def find_call(session: Session, external_call_id: str) -> Call | None:
    return session.scalars(select(Call).where(Call.external_call_id == external_call_id)).first()


def uri_sha256(uri: str) -> str:
    """calls.source_uri_sha256 of ``uri`` (the inbox scan looks paths up by it)."""
    return hashlib.sha256(uri.encode("utf-8", "surrogateescape")).hexdigest()


def register_call(session: Session, request: CallRequest, batch_id: int | None = None) -> Call:
    """The call row for ``request.external_call_id``, inserted if new (idempotent).

    A second register with the same external id returns the existing row unchanged, also when
    two processes race: the loser's insert fails on the unique key inside a savepoint.
    """
    existing = find_call(session, request.external_call_id)
    if existing is not None:
        return existing
    call = _new_call(request, batch_id)
    try:
        with session.begin_nested():
            session.add(call)
    except IntegrityError:
        existing = find_call(session, request.external_call_id)
        if existing is None:
            raise
        return existing
    return call


def register_all(session: Session, requests: Sequence[CallRequest],
                 batch_id: int | None = None) -> list[Call]:
    """:func:`register_call` of each request (its row, in ``requests``' order), a chunk of
    calls a statement: the existing looked up by id lists, the new inserted at once in
    call-id order (an uncommitted insert holds its unique key, and producers inserting
    overlapping calls in opposite orders deadlocked). A producer that registered one of them
    meanwhile fails the bulk insert on the unique key; its savepoint rolls back and the new
    calls are registered one by one, as register_call races."""
    by_id = calls_by_external_id(session, sorted({r.external_call_id for r in requests}))
    first: dict[str, CallRequest] = {}   # the first request of each new call id, in id order
    for request in sorted(requests, key=lambda r: r.external_call_id):
        if request.external_call_id not in by_id:
            first.setdefault(request.external_call_id, request)
    if first:
        new = {external_id: _new_call(request, batch_id) for external_id, request in first.items()}
        try:
            with session.begin_nested():
                session.add_all(new.values())
        except IntegrityError:
            new = {external_id: register_call(session, request, batch_id)
                   for external_id, request in first.items()}
        by_id.update(new)
    return [by_id[request.external_call_id] for request in requests]


def _new_call(request: CallRequest, batch_id: int | None) -> Call:
    """The row a new call id's first request registers (pending, never sent)."""
    return Call(
        external_call_id=request.external_call_id,
        source_uri=request.uri,
        source_uri_sha256=uri_sha256(request.uri),
        batch_id=batch_id,
        agent_id=request.agent_id,
        team=request.team,
        queue=request.queue,
        customer_ref=request.customer_ref,
        started_at=request.started_at,
        status="pending",
        attempts=0,
        call_metadata=dict(request.metadata),
    )


def update_from_request(call: Call, request: CallRequest) -> Call:
    """Take ``request``'s URI and the labels it carries (agent, team, queue, customer,
    start time, metadata keys) into ``call``, for a request that is about to run it (a
    reprocess, or the corrected payload of a rejected call); a label the request leaves out
    keeps its stored value, so a reprocess request that names only the file does not erase
    the agent."""
    call.source_uri = request.uri
    call.source_uri_sha256 = uri_sha256(request.uri)
    for name in ("agent_id", "team", "queue", "customer_ref", "started_at"):
        value = getattr(request, name)
        if value is not None:
            setattr(call, name, value)
    # the request about to run the call is its newer word: a rejection it corrects is over
    call.call_metadata = {k: v for k, v in {**(call.call_metadata or {}),
                                            **request.metadata}.items()
                          if k != PAYLOAD_REJECTED_KEY}
    return call   # written by the caller's next flush (its next query, or the commit)


LABEL_FIELDS: Final[tuple[str, ...]] = ("agent_id", "team", "queue", "customer_ref",
                                         "started_at")
"""The labels a call carries that reports group and filter by (:func:`relabel_call` sets
them, :func:`label_changes` compares them)."""


def label_changes(call: Call, labels: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Of ``labels`` (names of :data:`LABEL_FIELDS` to values), those that differ from
    ``call``'s stored ones, as (stored, given), in the order given; a label given as None
    differs from nothing, and start times compare as instants."""
    return {name: (getattr(call, name), value) for name, value in labels.items()
            if value is not None and getattr(call, name) != value}


def check_labels(labels: Mapping[str, Any]) -> None:
    """PayloadError unless ``labels`` are :data:`LABEL_FIELDS` with values a request may
    carry (``started_at`` aware)."""
    unknown = sorted(set(labels) - set(LABEL_FIELDS))
    if unknown:
        raise PayloadError(f"{', '.join(unknown)}: not a label; labels: {', '.join(LABEL_FIELDS)}")
    CallRequest(uri="/relabel", external_call_id="relabel", **labels)   # the uri and id only pass


def relabel_call(session: Session, external_call_id: str, labels: Mapping[str, Any]
                 ) -> tuple[Call, dict[str, tuple[Any, Any]]]:
    """Give the stored call ``external_call_id`` the ``labels`` (:func:`check_labels`), its
    analysis and run left as they are; the call's row locked. Returns the call and each label
    that changed as (stored, new). A producer correcting an agent could only send the call
    again with --reprocess, a new analysis (sent again without it, it is refused).

    PayloadError for an unknown call, invalid labels, a call with a run outstanding (pending
    or processing: the run takes its message's labels when it starts or retries, and the
    relabel was undone without a word, a review) and a call whose payload was rejected (its
    corrected payload brings the labels)."""
    check_labels(labels)
    found = find_call(session, external_call_id)
    if found is None:
        raise PayloadError(f"call_id: no call {external_call_id!r}")
    call = lock_call(session, found.id)
    if call.status in ("pending", "processing"):
        raise PayloadError(
            f"call {external_call_id} has a run outstanding ({call.status}), whose message "
            "gives the call its labels when it starts: relabel it once it is done or failed, "
            "or send it again with these labels and --reprocess")
    if was_rejected(call):
        raise PayloadError(f"call {external_call_id} was refused for its payload and never "
                           "ran: send the corrected payload, with these labels")
    changed = label_changes(call, labels)
    for name, (_, value) in changed.items():
        setattr(call, name, value)
    session.flush()
    return call, changed


def record_rejected(session: Session, external_call_id: str, uri: str, reason: str) -> Call:
    """A failed call row for a payload that did not validate (so the rejection is visible).

    ``uri`` is clipped to fit. A call that has a run keeps it: a malformed duplicate message
    must not erase a good analysis, fail a call a worker is analysing, or overwrite the reason
    a run failed for (the task logs the rejection either way).
    """
    if not is_valid_external_id(external_call_id):
        raise PayloadError(f"call_id: {_describe(external_call_id)} is not a valid call id")
    call = find_call(session, external_call_id)
    if call is None:
        call = Call(external_call_id=external_call_id, source_uri=_clip(uri, URI_MAX_CHARS),
                    status="failed", attempts=0, call_metadata={})
        try:
            # as in register_call: a good message for the same new call id may insert it
            # first (PostgreSQL: this insert waits for it, then violates the unique key)
            with session.begin_nested():
                session.add(call)
        except IntegrityError:
            found = find_call(session, external_call_id)
            if found is None:
                raise
            call = found
    if call.status != "pending" and not was_rejected(call):
        return call  # done, being analysed, or failed in a run of its own
    call.status = "failed"
    call.failure_reason = _clip(reason, FAILURE_REASON_MAX_CHARS)
    call.processed_at = utcnow()
    call.call_metadata = {**(call.call_metadata or {}), PAYLOAD_REJECTED_KEY: True}
    session.flush()
    return call


PAYLOAD_REJECTED_KEY: Final = "payload_rejected"
"""Metadata key :func:`record_rejected` sets (True) on the row of a payload that did not
validate, until a request runs the call again (:func:`update_from_request`)."""


def payload_rejected(call: Call) -> bool:
    """Whether ``call`` is the row of a payload the worker rejected, its labels lost with it:
    :func:`was_rejected` holds too for a call failed before any claim for other reasons (a
    stopped ``callmood run``, a task that gave up before its claim), which a retry runs as
    they are, while this one needs the producer's corrected payload."""
    return was_rejected(call) and bool((call.call_metadata or {}).get(PAYLOAD_REJECTED_KEY))


def claim_for_processing(session: Session, call_id: int) -> Call:
    """Mark the call processing and count the attempt (row-locked on PostgreSQL).

    ``attempts`` counts the claims of the current run: claiming a done or failed call starts
    a new run at 1, so re-running a recording many times never looks like a poison loop.
    """
    call = lock_call(session, call_id)
    if call.status in FINAL_STATUSES:
        call.attempts = 0
    call.status = "processing"
    call.attempts += 1
    call.claims += 1
    call.failure_reason = None
    session.flush()
    return call


def mark_pending(call: Call) -> Call:
    """Queue the call again (a new run): status pending, attempts 0, reason cleared; segments
    kept until the new analysis replaces them. ``enqueued_at`` is cleared: the caller sends
    the task itself (``callmood run``, on a queue of its own), so broker recovery
    (``calls_awaiting_worker``) must not count it as sent to the main queue. ``call``: its
    row, locked; the caller's next flush writes it."""
    call.status = "pending"
    call.attempts = 0
    call.failure_reason = None
    call.enqueued_at = None
    return call


def superseded_by_newer_run(call: Call, uri: str, claim: int) -> bool:
    """Whether a run that took claim number ``claim`` of ``call`` (``calls.claims`` after its
    claim) for the file ``uri`` must not store its analysis (``call`` locked): the call names
    another file now (a reprocess with a new file came meanwhile), or a later claim's run
    stored its analysis already. A slow original finishing after such a run overwrote the
    newer analysis, the row naming the new file with the old file's segments (a review).
    Compared by claims, never reset: the attempt number starts again with each run, and a
    reprocess sent by a producer held the original's number (a second review)."""
    if not same_file_uri(uri, call.source_uri):
        return True
    return call.status == "done" and call.claims != claim


def save_analysis(session: Session, call_id: int, analysis: RecordingAnalysis) -> Call:
    """Replace the call's segments with ``analysis`` and mark it done.

    Deleting the old rows first makes a re-run (acks_late redelivery, a retry, a manual
    re-queue) replace its results instead of duplicating them. The call's row is locked
    first, so two runs of one call that finish together (a redelivery beside a slow
    original) replace in turn: under READ COMMITTED an unlocked DELETE would not see the
    other transaction's new rows, and both sets would stay.
    """
    recordings = lock_recordings(session, call_id, analysis.content_sha256)
    call = lock_call(session, call_id)
    rows = [_segment_row(call_id, segment) for segment in analysis.segments]
    session.execute(delete(Segment).where(Segment.call_id == call_id)
                    .execution_options(synchronize_session=False))
    if rows:
        session.execute(insert(Segment), rows)
    call.duration_s = float(analysis.duration_s)
    call.channels = int(analysis.channels)
    call.sample_rate = int(analysis.source_sample_rate)
    call.content_sha256 = analysis.content_sha256
    call.model_version = analysis.model_version
    call.processed_at = utcnow()
    call.status = "done"
    call.failure_reason = None
    session.flush()
    for digest in recordings:   # the new recording's, and the one the call held before
        settle_recording(session, digest)
    session.expire(call, ["segments"])
    return call


def lock_recordings(session: Session, call_id: int, content_sha256: str) -> list[str]:
    """Serialise the saves of one recording's analyses until the transaction ends, for the
    recording ``content_sha256`` a save of call ``call_id`` stores and the one the call held
    before; returns those hashes, sorted (PostgreSQL: an advisory lock keyed on each hash,
    taken in that order; SQLite's BEGIN IMMEDIATE serialises every write already). Without
    it two calls of one recording saved at once would each see only itself analysed, and
    both would count. A saving transaction takes them before any call's row lock: one that
    held its call's row and then waited here deadlocked with a save of the same recording
    whose settle touched that row (a review). Taking them again in one transaction is free."""
    stored = session.scalar(select(Call.content_sha256).where(Call.id == call_id))
    recordings = sorted({content_sha256, *([stored] if stored else [])})
    if session.get_bind().dialect.name == "postgresql":
        for digest in recordings:
            # 60 bits of the hash: a bigint key; another recording sharing them only waits
            session.execute(select(func.pg_advisory_xact_lock(int(digest[:15], 16))))
    return recordings


def settle_recording(session: Session, content_sha256: str) -> None:
    """Set ``same_recording_as`` on the analysed calls of one recording: on a call with an id
    callmood gave it (:func:`is_own_id`: the inbox scan's, ``callmood run``'s, ``analyze``'s
    without ``--call-id``, by content or, for a file of at most 8 KiB, by path; no agent,
    team or start time) the id of the call reports count instead, the first a producer sent
    (with its labels), else, for a content id, the first content id; NULL on every other
    call.
    The inbox scan analysed a file, the call-centre system sent it under its own id the next
    day, and every report counted the call twice (a review). Two producer ids both count:
    the call-centre system's word for a call is its id, and two calls can hold the same bytes
    (two dead-air calls of one length, a review). Rows already right are not written."""
    holders = list(session.scalars(
        select(Call).where(Call.content_sha256 == content_sha256, Call.model_version.is_not(None))
        .order_by(Call.id)))
    named = [c for c in holders if not is_own_id(c.external_call_id)]
    by_content = [c for c in holders if content_of_call_id(c.external_call_id) is not None]
    for call in holders:
        wanted = (None if call in named
                  else named[0].id if named
                  # no producer's: a path id stays its own call (files that small share
                  # their bytes, not a recording, and two dead-air calls of 0.5 s were one,
                  # a review); content ids give way to the first (a file replaced after its
                  # scan holds another's content)
                  else by_content[0].id if call in by_content and call is not by_content[0]
                  else None)
        if call.same_recording_as != wanted:
            call.same_recording_as = wanted
    session.flush()


def _segment_row(call_id: int, segment: Any) -> dict[str, Any]:
    probabilities: Mapping[str, float] = segment.probabilities
    if set(probabilities) != set(EMOTIONS):
        raise ValueError(f"segment probabilities have labels {sorted(probabilities)}; the "
                         f"segments table stores exactly {list(EMOTIONS)}")
    if segment.role not in ROLES:
        raise ValueError(f"segment role {segment.role!r} is not one of {', '.join(ROLES)}")
    row: dict[str, Any] = {
        "call_id": call_id,
        "channel": int(segment.channel),
        "role": segment.role,
        "start_s": float(segment.start_s),
        "end_s": float(segment.end_s),
        "emotion": segment.emotion,
        "confidence": float(segment.confidence),
        "model_version": segment.model_version,
    }
    for label, column in PROBABILITY_COLUMNS.items():
        p = float(probabilities[label])
        if not math.isfinite(p):
            raise ValueError(f"segment probability {label}={p} is not finite")
        row[column] = p
    return row


def mark_failed(session: Session, call_id: int, reason: str, *,
                keep_done: bool = True) -> Call:
    """Mark the call failed with a human-readable ``reason`` (clipped to fit the column).

    The segments of an earlier successful run are kept, and reports keep showing them
    (``analytics.queries.analysed``); the reason then says so first. With ``keep_done``, a
    call found ``done`` on the locked row is returned unchanged: the caller fails a run it
    claimed or a call it saw unfinished, and only :func:`save_analysis` sets done, so a
    concurrent run of the same call (a redelivery beside a slow original, a stuck call that
    finished after all) stored its analysis meanwhile, and that finished work stands. A new
    run reopens a done call by claiming it first. ``keep_done=False`` is for a requested
    re-run that may never have claimed the call: the done call then fails, its analysis
    kept, so the re-run that did not happen shows among the failures.
    """
    call = lock_call(session, call_id)
    if call.status == "done" and keep_done:
        return call
    reason = reason or "unknown failure"
    if call.model_version is not None:
        reason = f"re-run failed, the analysis by {call.model_version} kept: {reason}"
    call.status = "failed"
    call.failure_reason = _clip(reason, FAILURE_REASON_MAX_CHARS)
    call.processed_at = utcnow()
    session.flush()
    return call


def counts_by_status(session: Session) -> dict[str, int]:
    """Number of calls per status, every status present (zero when none)."""
    counts = dict.fromkeys(CALL_STATUSES, 0)
    for status, n in session.execute(select(Call.status, func.count()).group_by(Call.status)):
        counts[status] = int(n)
    return counts


def count_never_sent(session: Session) -> int:
    """Pending calls whose task was never handed to the broker (``enqueued_at`` unset): their
    send failed and was undone, or they were registered by a producer that stopped; no
    worker will take them until they are enqueued again (recovery watches sent calls only)."""
    query = (select(func.count()).select_from(Call)
             .where(Call.status == "pending").where(Call.enqueued_at.is_(None)))
    return int(session.scalar(query) or 0)


def list_calls(session: Session, status: str | None = None, limit: int | None = None,
               newest_first: bool = False, latest_finished_first: bool = False,
               agent_id: str | None = None, team: str | None = None) -> list[Call]:
    """Calls in registration (id) order (``newest_first``: reversed), or with
    ``latest_finished_first`` the last to finish first (calls never finished last), optionally
    only those with ``status``, ``agent_id`` and ``team``."""
    if status is not None and status not in CALL_STATUSES:
        raise ValueError(f"status {status!r}: use one of {', '.join(CALL_STATUSES)}")
    query = select(Call).order_by(
        *([Call.processed_at.desc().nulls_last()] if latest_finished_first else []),
        Call.id.desc() if newest_first or latest_finished_first else Call.id)
    if status is not None:
        query = query.where(Call.status == status)
    if agent_id is not None:
        query = query.where(Call.agent_id == agent_id)
    if team is not None:
        query = query.where(Call.team == team)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


T = TypeVar("T")

LOOKUP_CHUNK = 500
"""Values one statement's IN list names (:func:`in_chunks`)."""


def in_chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """``values`` in slices of :data:`LOOKUP_CHUNK`, for one bounded IN list each:
    PostgreSQL's protocol refuses a statement with over 65,535 bound parameters, and
    psycopg's error reads as an outage (a lookup of every call a busy site delivered, a
    `callmood run` over 70,000 files)."""
    for start in range(0, len(values), LOOKUP_CHUNK):
        yield values[start:start + LOOKUP_CHUNK]


def calls_by_external_id(session: Session, external_call_ids: Sequence[str]) -> dict[str, Call]:
    """The calls with these external ids (missing ones are absent from the result)."""
    found: dict[str, Call] = {}
    # a recovery may look up every call a busy site delivered in the last hours
    for chunk in in_chunks(list(external_call_ids)):
        query = select(Call).where(Call.external_call_id.in_(chunk))
        found.update((call.external_call_id, call) for call in session.scalars(query))
    return found


def content_holders(session: Session, content_sha256s: Sequence[str]) -> dict[str, Call]:
    """For each of ``content_sha256s`` (hex) analysed already, the call whose stored analysis
    is of it (``calls.content_sha256``: what the worker read, whatever the call's id says),
    the oldest where several are; the others are absent from the result. A call holding an
    analysis is one the reports count (``analytics.queries.analysed``), whatever its current
    run: being re-analysed, or its re-run failed with the analysis kept (a review found a
    copy sent during a bulk reprocess, then counted twice)."""
    found: dict[str, Call] = {}
    for chunk in in_chunks(sorted(set(content_sha256s))):
        query = (select(Call).where(Call.content_sha256.in_(chunk))
                 .where(Call.model_version.is_not(None)).order_by(Call.id))
        for call in session.scalars(query):
            if call.content_sha256 is not None:
                found.setdefault(call.content_sha256, call)
    return found


def segments_for_call(session: Session, call_id: int) -> list[Segment]:
    """The call's segments in time order (ties: channel)."""
    query = (select(Segment).where(Segment.call_id == call_id)
             .order_by(Segment.start_s, Segment.channel, Segment.id))
    return list(session.scalars(query))


def segment_counts(session: Session, call_ids: Sequence[int]) -> dict[int, int]:
    """Number of segments per call id (calls without segments are absent); the ids in
    :func:`in_chunks` (in one IN list ``callmood run`` over 70,000 files failed at its end
    as if the database were down, a review)."""
    counts: dict[int, int] = {}
    for chunk in in_chunks(list(call_ids)):
        query = (select(Segment.call_id, func.count()).where(Segment.call_id.in_(chunk))
                 .group_by(Segment.call_id))
        counts.update((int(call_id), int(n)) for call_id, n in session.execute(query))
    return counts


# --------------------------------------------------------------------------- enqueueing

def is_duplicate_delivery(call: Call, request: CallRequest) -> bool:
    """Whether a task for an already finished call should be skipped (no new work).

    A finished call is analysed again only when asked (``reprocess``). A call failed by a
    rejected payload (never claimed: attempts 0) is not finished work: a corrected payload
    for it runs.
    """
    if request.reprocess or call.status not in FINAL_STATUSES:
        return False
    return not was_rejected(call)


CONTENT_ID_PREFIX: Final = "sha256-"
"""What starts a :func:`content_call_id`."""

PATH_ID_PREFIX: Final = "path-"
"""What starts the id of a file keyed by its path (``worker.runner.path_call_id``: a file
too small for audio, or one that could not be read when it was registered)."""

OWN_ID_PREFIXES: Final = (CONTENT_ID_PREFIX, PATH_ID_PREFIX)
"""What starts the ids callmood gives a file itself (:func:`is_own_id`)."""


def is_own_id(external_call_id: str) -> bool:
    """Whether ``external_call_id`` is an id callmood gave a file itself (the inbox scan,
    ``callmood run``, ``analyze`` without ``--call-id``): one of :data:`OWN_ID_PREFIXES` and
    64 characters of hash, by shape (a producer's ``path-2026-12-07-001`` is a producer's: a
    prefix alone took it for callmood's, a review). Such a call carries no agent, team or
    start time; any other id is a producer's (:func:`settle_recording`)."""
    return any(external_call_id.startswith(prefix)
               and len(external_call_id) == len(prefix) + 64 for prefix in OWN_ID_PREFIXES)


def content_call_id(content_sha256: str) -> str:
    """The call id of a recording known by its content's sha256 (hex): the inbox scan's and
    ``callmood run``'s ids; every file sent under it holds the same recording."""
    return f"{CONTENT_ID_PREFIX}{content_sha256}"


def content_of_call_id(external_call_id: str) -> str | None:
    """The content sha256 (hex) a :func:`content_call_id` names; None for any other id."""
    digest = external_call_id.removeprefix(CONTENT_ID_PREFIX)
    return digest if digest != external_call_id and len(digest) == 64 else None


def names_other_file(call: Call, request: CallRequest) -> bool:
    """Whether ``request`` names another file than the one ``call`` stands for: its uri is
    not the stored one, and the call id does not name the content (a copy of an inbox file
    at another path is the same recording). Compared without reading either file: a path
    and the ``file://`` URI of that path are the same file."""
    return (not same_file_uri(request.uri, call.source_uri)
            and content_of_call_id(call.external_call_id) is None)


def same_file_uri(uri: str, other: str) -> bool:
    """Whether two uris name one file: the same path once ``..`` and ``.`` are collapsed, or,
    where this process sees both, one file through a link (a nightly re-send through a
    "today" folder link was refused as another file; a review)."""
    if uri == other:
        return True
    try:
        path, other_path = local_path_text(uri), local_path_text(other)
    except PayloadError:   # a stored uri no request could send: not this one
        return False
    if path is None or other_path is None:
        return False
    if os.path.normpath(path) == os.path.normpath(other_path):
        return True
    try:
        return os.path.samefile(path, other_path)
    except (OSError, ValueError):   # not here to see (a producer on another host): unknown
        return False


def was_rejected(call: Call) -> bool:
    """Whether the call failed on its payload before any run (never claimed: attempts 0);
    :data:`REJECTED` is the same test in SQL."""
    return call.status == "failed" and call.attempts == 0


REJECTED: Final = (Call.status == "failed") & (Call.attempts == 0)
""":func:`was_rejected` as a SQL condition on ``calls``."""


@dataclass(frozen=True)
class CallSendState:
    """The fields of a call that reserving a send changes, as they were before: what
    :func:`release_enqueue` puts back when the send fails."""

    call_id: int
    status: str
    attempts: int
    failure_reason: str | None
    batch_id: int | None
    enqueued_at: datetime | None
    updated_at: datetime | None = None
    """When the row last changed: a claimed call's age, which a recovery's re-send mark moves."""

    @classmethod
    def of(cls, call: Call) -> CallSendState:
        """``call``'s send state as it is now."""
        return cls(call_id=call.id, status=call.status, attempts=call.attempts,
                   failure_reason=call.failure_reason, batch_id=call.batch_id,
                   enqueued_at=call.enqueued_at, updated_at=call.updated_at)


@dataclass(frozen=True)
class Reservation:
    """What :func:`reserve_for_enqueue` decided for one call, and what undoes it."""

    call: Call
    before: CallSendState | None
    """The call's state before this reservation (None when nothing is to be sent)."""
    recount: tuple[int, ...] = ()
    """Batches whose counts the reservation changed: the one the call left (a reprocessed
    call, or one whose earlier send failed), or its own when a final call runs again in it
    (:func:`recount_batches`, once every call of the transaction is locked)."""
    conflict: str | None = None
    """The call's stored file (``source_uri``) when nothing is sent because the request names
    another file under a call id already sent or worked on: that id stands for the stored
    file, and the request is refused, not a duplicate (see :func:`names_other_file`)."""

    @property
    def send(self) -> bool:
        """Whether the caller is to publish the call's task now."""
        return self.before is not None


def reserve_for_enqueue(session: Session, request: CallRequest,
                        batch_id: int | None = None) -> Reservation:
    """Register the call and decide whether its task is to be sent now (:func:`reserve_all`
    for one call: its batches recounted before it returns)."""
    (reservation,) = reserve_all(session, [request], batch_id)
    return reservation


def reserve_all(session: Session, requests: Sequence[CallRequest],
                batch_id: int | None = None) -> list[Reservation]:
    """Register the calls and decide, for each, whether its task is to be sent now.

    A call already sent (``enqueued_at``) or already worked on is not sent again unless
    ``request.reprocess``; then it starts a new run (pending, attempts 0), as a call whose
    payload the worker rejected does without it. A call sent now takes ``request``'s file
    and labels (:func:`update_from_request`). A call sent with a ``batch_id`` joins that
    batch, and the batch it leaves is recounted, as is its own when a final call runs again
    in it. ``enqueued_at`` is set here, row-locked, so two producers racing on one call id
    send one task; a producer whose send then fails calls :func:`release_enqueue` with the
    reservations' ``before``.

    The batches are recounted after every call is locked, in id order: a worker, a scan and
    this all lock call rows before batch rows, so none waits on a batch row holding a call
    row another needs (recounting each call's batch as it was reserved deadlocked a retry
    beside a scan re-sending one of its calls, a review).
    """
    # every call registered in call-id order, then all locked in row-id order before any is
    # decided (_reserve is given its row registered and locked): two producers
    # locking overlapping calls in their requests' orders (a manifest beside a scan, a retry
    # beside a manifest) deadlocked on PostgreSQL, one failing "database unavailable" (a review)
    # a chunk of calls a statement (register_all, lock_calls, one flush at the end): one call
    # at a time, 5,000 new calls took 7 statements each (23 s on PostgreSQL)
    rows = register_and_lock(session, requests, batch_id)
    reservations = [_reserve(request, batch_id, row)
                    for request, row in zip(requests, rows, strict=True)]
    session.flush()
    recount_batches(session, [b for r in reservations for b in r.recount])
    return reservations


def register_and_lock(session: Session, requests: Sequence[CallRequest],
                      batch_id: int | None = None) -> list[Call]:
    """Each request's call row (:func:`register_all`), locked and read afresh
    (:func:`lock_calls`), in ``requests``' order (a call id given twice: its row twice). A row
    deleted between its lookup and its lock (an operator's purge) is registered again, as one
    call at a time did; the chunk failed on a KeyError (a review)."""
    registered = register_all(session, requests, batch_id)
    locked = lock_calls(session, [call.id for call in registered])
    gone = [request for request, call in zip(requests, registered, strict=True)
            if call.id not in locked]
    if gone:
        again = {call.external_call_id: call for call in register_all(session, gone, batch_id)}
        locked.update(lock_calls(session, [call.id for call in again.values()]))
        registered = [again.get(call.external_call_id, call) if call.id not in locked else call
                      for call in registered]
    return [locked[call.id] for call in registered]


def recount_batches(session: Session, batch_ids: Iterable[int]) -> None:
    """:func:`refresh_batch_counts` of each batch once, in ascending id order (the lock order
    every transaction that recounts several batches keeps)."""
    for batch_id in sorted(set(batch_ids)):
        refresh_batch_counts(session, batch_id)


def _reserve(request: CallRequest, batch_id: int | None, call: Call) -> Reservation:
    """:func:`reserve_all` of one call (``call``: its row, locked and read afresh), its batches
    named in ``recount``, not recounted, its changes not flushed."""
    if isinstance(request, RetryRequest) and (call.status != request.read_status
                                              or call.processed_at != request.failed_at):
        return Reservation(call, None)   # sent again meanwhile (another scan), or run since
    before = CallSendState.of(call)
    # a payload the worker rejected was never work done: the producer's request (validated
    # here) is its correction, sent without asking for a reprocess
    if request.reprocess or was_rejected(call):
        call.status = "pending"
        call.attempts = 0
        call.failure_reason = None
    elif call.enqueued_at is not None or call.status != "pending":
        # a call id reused for another recording was skipped as a duplicate, exit 0: the new
        # recording never analysed, and no row said so (a review)
        return Reservation(call, None,
                           conflict=call.source_uri if names_other_file(call, request) else None)
    # the request published now (a new run, or a call registered and never sent because its
    # send failed and was released): the row takes its file and labels, which reports and
    # recovery use
    update_from_request(call, request)
    if batch_id is not None:
        call.batch_id = batch_id
    call.enqueued_at = utcnow()
    recount: tuple[int, ...] = ()
    if before.batch_id is not None and before.batch_id != call.batch_id:
        # the batch it leaves counts it no more, or it keeps it among its done/failed and,
        # if it was its last unfinished call, never records its end
        recount = (before.batch_id,)
    elif call.batch_id is not None and before.status in FINAL_STATUSES:
        # run again in its own batch: no longer among its done/failed, and the batch is open
        recount = (call.batch_id,)
    return Reservation(call, before, recount)


def calls_awaiting_worker(session: Session, sent_before: datetime,
                          claimed_before: datetime) -> list[Call]:
    """Calls a worker should still get to: sent (``enqueued_at``) before ``sent_before`` and
    still pending, or claimed and not updated since ``claimed_before`` (a worker that started
    them is gone, or should have finished by its time limit). Oldest first."""
    query = (select(Call)
             .where(or_(and_(Call.status == "pending", Call.enqueued_at.is_not(None),
                             Call.enqueued_at <= sent_before),
                        and_(Call.status == "processing", Call.updated_at <= claimed_before)))
             .order_by(Call.id))
    return list(session.scalars(query))


def claim_resend(session: Session, read: Sequence[CallSendState]) -> list[CallSendState]:
    """Of the calls a recovery read as lost (``read``: each as it was then), those still so on
    the locked row, marked sent now (the age of a next recovery starts here); the others
    were sent again (another recovery that read them at once), claimed or finished since.
    A send that then fails gives the claimed ones back with :func:`release_enqueue`."""
    now = utcnow()
    # all locked and read in one query a chunk: locked and read one by one, 20,000 lost calls
    # held their row locks for 40 s on PostgreSQL (a review)
    locked = lock_calls(session, [state.call_id for state in read])
    claimed: list[CallSendState] = []
    for state in read:
        call = locked.get(state.call_id)
        if call is None or (call.status, call.attempts, call.enqueued_at) != (
                state.status, state.attempts, state.enqueued_at):
            continue   # deleted, or sent, claimed or finished since it was read
        call.enqueued_at = now
        claimed.append(state)
    session.flush()
    return claimed


def release_enqueue(session: Session, reserved: Sequence[CallSendState]) -> None:
    """Undo the reservations of a send that failed: each call gets back the state it had
    before (a failed call stays failed with its reason, so ``callmood failures`` and
    ``retry`` still find it; a done call sent for reprocessing stays done and in the
    reports), and a later enqueue sends it. A call a worker has claimed since (a send that
    failed half-way after publishing it) is left to that worker. Request fields the
    reservation updated (agent, team, ...) keep their new values.
    """
    recount: list[int] = []
    locked = lock_calls(session, [state.call_id for state in reserved])  # the order all keep
    for state in reserved:
        call = locked.get(state.call_id)
        if call is None:
            continue   # deleted since: nothing to give back
        if call.status == state.status == "processing" and call.attempts == state.attempts:
            # a claimed call a recovery found lost (:func:`claim_resend`): its mark moved the
            # claim's age, so the next recoveries took it for busy for another hard limit
            # (~70 min) although nothing had been sent (a review); both go back
            call.enqueued_at = state.enqueued_at
            if state.updated_at is not None:
                call.updated_at = state.updated_at
            continue
        if call.status != "pending" or call.attempts != 0:
            continue
        moved_from = call.batch_id
        call.status = state.status
        call.attempts = state.attempts
        call.failure_reason = state.failure_reason
        call.batch_id = state.batch_id
        call.enqueued_at = state.enqueued_at
        # the batches its reservation recounted (left, joined, or reopened) count it again
        recount += [b for b in (moved_from, state.batch_id) if b is not None]
    session.flush()
    recount_batches(session, recount)   # every call locked first, as reserve_all


def lock_call(session: Session, call_id: int) -> Call:
    """The call row, locked until the caller's transaction ends (PostgreSQL; SQLite's
    BEGIN IMMEDIATE holds the whole database) and read afresh: an object loaded before the
    lock must not keep its stale fields."""
    call = session.scalars(select(Call).where(Call.id == call_id).with_for_update()
                           .execution_options(populate_existing=True)).first()
    if call is None:
        raise PayloadError(f"call_id: no call with id {call_id}")
    return call


def mark_all_failed(session: Session, reasons: Mapping[int, str]) -> dict[int, Call]:
    """:func:`mark_failed` of each call (id to reason), the calls all locked first, in the
    order every transaction keeps (:func:`lock_calls`), and their batches recounted once
    after: failing a call, recounting its batch, then locking the next call deadlocked a
    worker saving that next call and then recounting the same batch (a review)."""
    lock_calls(session, reasons)
    marked = {call_id: mark_failed(session, call_id, reason)
              for call_id, reason in reasons.items()}
    recount_batches(session, [c.batch_id for c in marked.values() if c.batch_id is not None])
    return marked


def lock_calls(session: Session, call_ids: Iterable[int]) -> dict[int, Call]:
    """Lock the call rows, in ascending id order, until the transaction ends: the order every
    transaction that locks several calls keeps (register_and_lock, release_enqueue,
    claim_resend), so none waits on a row held by one waiting on its own.
    Returns the rows found, id to row, read afresh as :func:`lock_call` does."""
    locked: dict[int, Call] = {}
    for chunk in in_chunks(sorted(set(call_ids))):
        locked.update((call.id, call) for call in session.scalars(
            select(Call).where(Call.id.in_(chunk)).order_by(Call.id).with_for_update()
            .execution_options(populate_existing=True)))
    return locked


def request_for_call(call: Call, reprocess: bool = False) -> CallRequest:
    """The request that analyses ``call`` again from its stored fields (PayloadError if the
    stored row cannot make a valid one, e.g. a rejected payload without a usable uri)."""
    return CallRequest(uri=call.source_uri, external_call_id=call.external_call_id,
                       agent_id=call.agent_id, team=call.team, queue=call.queue,
                       customer_ref=call.customer_ref, started_at=call.started_at,
                       metadata=dict(call.call_metadata or {}), reprocess=reprocess)


@dataclass(frozen=True)
class RetryRequest(CallRequest):
    """A new run of a finished call, wanted only while the call stands as it was read: still
    ``read_status`` (failed; or done, for a file that changed after its analysis), finished at
    ``failed_at`` (the inbox scan's re-send of a file modified since; `callmood retry`).
    :func:`reserve_for_enqueue` checks that on the locked row, so two scans that read the
    call at once send one run. Travels as a plain reprocess request."""

    failed_at: datetime | None = None
    """When the run read finished (``processed_at``)."""
    read_status: str = "failed"

    @classmethod
    def of(cls, call: Call) -> RetryRequest:
        """The new run of finished ``call`` (PayloadError as :func:`request_for_call`)."""
        request = request_for_call(call, reprocess=True)
        return cls(**{f.name: getattr(request, f.name) for f in fields(CallRequest)},
                   failed_at=call.processed_at, read_status=call.status)


def enqueued_uri_hashes(session: Session, hashes: Sequence[str]) -> set[str]:
    """Those of ``hashes`` (source_uri_sha256) whose call was sent or worked on already; a
    call whose payload the worker rejected (:func:`was_rejected`) is not: the next scan sends
    the corrected payload, as ``callmood enqueue`` does."""
    found: set[str] = set()
    for chunk in in_chunks(sorted(set(hashes))):
        query = (select(Call.source_uri_sha256).where(Call.source_uri_sha256.in_(chunk))
                 .where((Call.enqueued_at.is_not(None)) | (Call.status != "pending"))
                 .where(~REJECTED))
        found.update(h for h in session.scalars(query) if h is not None)
    return found


def finished_before(session: Session, modified_at: Mapping[str, datetime],
                    status: str) -> list[Call]:
    """The calls of ``status`` (failed: a run's failure, not a rejected payload; done: the
    analysed ones) of the paths whose ``source_uri_sha256`` keys ``modified_at``, finished
    before their file's modification time there: a copy that was cut short when analysed and
    completed since, or a file re-exported after its run. Oldest call first."""
    changed: list[int] = []
    for chunk in in_chunks(sorted(modified_at)):
        changed += [call_id for call_id, uri_sha, processed_at, call_status
                    in session.execute(finished_lookup_query(chunk))
                    if call_status == status and uri_sha is not None and processed_at is not None
                    and processed_at < modified_at[uri_sha]]
    calls: list[Call] = []
    for ids in in_chunks(changed):
        calls += session.scalars(select(Call).where(Call.id.in_(ids)))
    return sorted(calls, key=lambda c: c.id)


def finished_lookup_query(hashes: Sequence[str]) -> Select[int, str | None, datetime | None,
                                                           str]:
    """(id, source_uri_sha256, processed_at, status) of the calls of those path hashes, less
    rejected payloads: read through the path-hash index. The status is compared by the
    caller, not here: given ``status = ?`` beside the IN list, SQLite without table statistics
    walked the status index, every done call a database keeps, for each chunk (0.4 s a chunk
    at 1M calls, inside the scan's write lock: 30,000 known files held it past a worker's
    30 s wait, a review), and the columns alone spare building a Call per known file."""
    return (select(Call.id, Call.source_uri_sha256, Call.processed_at, Call.status)
            .where(Call.source_uri_sha256.in_(hashes)).where(~REJECTED))


# --------------------------------------------------------------------------- batches

@dataclass(frozen=True)
class BatchCounts:
    """Where the calls of one batch are, counted from ``calls`` at the time of asking."""

    batch_id: int
    source: str
    started_at: datetime
    scanned_at: datetime | None
    finished_at: datetime | None
    enqueued: int
    skipped: int
    pending: int
    processing: int
    done: int
    failed: int
    scan_error: str | None = None
    """What went wrong with its scan or send (``batches.scan_error``); None when nothing did."""
    too_new: int = 0
    ignored: int = 0
    refused: int = 0
    """Inbox files the scan left: too new for it, of no recording's suffix, refused
    (``batches.*_count``, migration 0010)."""


def create_batch(session: Session, source: str) -> Batch:
    """A new batch row (counts zero) for a scan that is starting."""
    batch = Batch(source=_clip(source, BATCH_SOURCE_MAX_CHARS), started_at=utcnow())
    session.add(batch)
    session.flush()
    return batch


def finish_batch_scan(session: Session, batch_id: int, enqueued: int, skipped: int,
                      error: str | None = None) -> Batch:
    """Record what the scan sent and skipped (and ``error``, what went wrong with it), and
    recount its calls."""
    batch = _get_batch(session, batch_id)
    batch.enqueued_count = enqueued
    batch.skipped_count = skipped
    # as failure_reason: an error quoting a non-UTF-8 path (or NUL, on PostgreSQL) failed
    # the write, and the batch stayed "scanning" for ever with no error (a review)
    batch.scan_error = None if error is None else printable_text(error)
    batch.scanned_at = utcnow()
    session.flush()
    refresh_batch_counts(session, batch_id)
    return batch


def record_files_left(session: Session, batch_id: int, too_new: int, ignored: int,
                      refused: int) -> None:
    """Record the inbox files a scan did not send: left for the next scan (too new), of no
    recording's suffix, refused; ``callmood status`` shows them on the batch's line."""
    batch = _get_batch(session, batch_id)
    batch.too_new_count, batch.ignored_count, batch.refused_count = too_new, ignored, refused
    session.flush()


def refresh_batch_counts(session: Session, batch_id: int) -> BatchCounts:
    """Recount done/failed of the batch from ``calls`` (never incremented, so a redelivered
    task cannot count twice) and set ``finished_at`` once the scan is over and all are final.

    The batch row is locked first: concurrent finishers recount one after the other, the
    later one seeing the earlier one's commit (PostgreSQL READ COMMITTED). The lock is FOR
    NO KEY UPDATE (``key_share``), as an UPDATE of non-key columns takes: it excludes other
    recounts but not the KEY SHARE lock a producer's insert of the batch's calls holds for
    the foreign key, so a scan that then waits on a call row this transaction holds cannot
    deadlock with it (FOR UPDATE did).
    """
    batch = session.scalars(select(Batch).where(Batch.id == batch_id)
                            .with_for_update(key_share=True)
                            .execution_options(populate_existing=True)).first()
    if batch is None:
        raise PayloadError(f"batch_id: no batch with id {batch_id}")
    counts = _batch_status_counts(session, batch_id)
    batch.done_count = counts["done"]
    batch.failed_count = counts["failed"]
    unfinished = counts["pending"] + counts["processing"]
    if batch.scanned_at is not None and batch.finished_at is None and not unfinished:
        # when its last call finished (not now: a retry whose send failed reopens the batch
        # and closes it again, and its end stays where it was, a review), never before the
        # scan closed
        last = session.scalar(select(func.max(Call.processed_at))
                              .where(Call.batch_id == batch_id))
        batch.finished_at = batch.scanned_at if last is None else max(batch.scanned_at, last)
    elif batch.finished_at is not None and unfinished:
        # a call of the finished batch is run again in it (``callmood retry``): the batch is
        # open until that run ends, not shown finished with a call pending (a review)
        batch.finished_at = None
    session.flush()
    return _batch_counts(batch, counts)


def refresh_batch_of(session: Session, call: Call) -> None:
    """:func:`refresh_batch_counts` of the batch ``call`` belongs to (none: nothing): called
    in the transaction that gives the call its final status, so the counts never lag it."""
    if call.batch_id is not None:
        refresh_batch_counts(session, call.batch_id)


def latest_batches(session: Session, limit: int = 1) -> list[BatchCounts]:
    """The newest batches with their calls counted now."""
    query = select(Batch).order_by(Batch.id.desc()).limit(limit)
    return [_batch_counts(b, _batch_status_counts(session, b.id)) for b in session.scalars(query)]


FINISHED_STATUSES: tuple[str, ...] = tuple(s for s in CALL_STATUSES if s in FINAL_STATUSES)


def processed_since_query(since: datetime) -> Select[str, int]:
    """(status, calls) of the done and failed calls whose processing ended at or after
    ``since``: read from the (status, processed_at) index alone (migration 0008)."""
    return (select(Call.status, func.count()).where(Call.processed_at >= since)
            .where(Call.status.in_(FINISHED_STATUSES)).group_by(Call.status))


def counts_processed_since(session: Session, since: datetime) -> dict[str, int]:
    """done/failed calls whose processing ended at or after ``since``."""
    counts = dict.fromkeys(FINISHED_STATUSES, 0)
    for status, n in session.execute(processed_since_query(since)):
        counts[status] = int(n)
    return counts


def _get_batch(session: Session, batch_id: int) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise PayloadError(f"batch_id: no batch with id {batch_id}")
    return batch


def batch_status_query(batch_id: int) -> Select[str, int]:
    """(status, calls) of one batch: read from the (batch_id, status) index alone."""
    return (select(Call.status, func.count()).where(Call.batch_id == batch_id)
            .group_by(Call.status))


def _batch_status_counts(session: Session, batch_id: int) -> dict[str, int]:
    counts = dict.fromkeys(CALL_STATUSES, 0)
    for status, n in session.execute(batch_status_query(batch_id)):
        counts[status] = int(n)
    return counts


def _batch_counts(batch: Batch, counts: Mapping[str, int]) -> BatchCounts:
    return BatchCounts(batch_id=batch.id, source=batch.source, started_at=batch.started_at,
                       scanned_at=batch.scanned_at, finished_at=batch.finished_at,
                       enqueued=batch.enqueued_count, skipped=batch.skipped_count,
                       pending=counts["pending"], processing=counts["processing"],
                       done=counts["done"], failed=counts["failed"],
                       scan_error=batch.scan_error, too_new=batch.too_new_count,
                       ignored=batch.ignored_count, refused=batch.refused_count)
