"""``callmood``: the command line. Each subcommand is a thin shell over a library function.

Exit codes: 0 all good; 1 some recordings failed (each with its reason in the database), or a
request was refused or a server unreachable (reason on stderr); 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from worker.cli_args import seconds, whole_number
from worker.constants import AUDIO_SUFFIXES
from worker.errors import CallmoodError, ConfigError, PayloadError, TransientError
from worker.settings import Settings, redact_url, zone_for

log = logging.getLogger(__name__)

FOLLOW_UP_SLACK_S = 60.0
"""Margin added to the follow-up recovery a worker start sends: delivery stamps come from
other hosts' clocks (and the dead worker's)."""


PROCESSES = whole_number(1, "processes")
"""argparse type of ``--concurrency``."""
TIMEOUT_S = seconds(0.0, above=True)
"""argparse type of ``--timeout-s`` (nan never timed out: no time compares as past it)."""


def _expand(paths: Sequence[str]) -> list[Path]:
    """Files as given, directories expanded to the audio files below them (sorted);
    ConfigError when a path names nothing at all, or when that leaves no file."""
    files: list[Path] = []
    missing = [raw for raw in paths if not os.path.lexists(Path(raw).expanduser())]
    if missing:
        # a mistyped folder was taken for a file: `run` started a worker and stored a
        # failed call for good under the typo (a review); nothing there to record
        raise ConfigError(f"no such file or folder: {', '.join(missing[:5])}"
                          + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES))
        else:
            files.append(path)
    if not files:
        raise ConfigError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {list(paths)}")
    return files


def require_model(settings: Settings) -> None:
    """ConfigError (exit 2) unless the analysis imports and the emotion model and its card
    load: a missing model, a card for another file or a broken installation would fail every
    call, and a command that claimed one first left it 'processing' for ever (``analyze``),
    or retried each for minutes (``run``)."""
    from worker.errors import ModelError

    try:
        # the analysis's own imports (onnxruntime, webrtcvad, soxr) and the ONNX session:
        # a broken installation passed the card check and failed every call (a review)
        import worker.pipeline  # noqa: F401
        from worker.emotion import load_model

        load_model(settings.model_path, settings.onnx_threads)
    except ImportError as e:
        raise ConfigError(f"the analysis cannot be imported ({e}): this installation is "
                          "broken; reinstall callmood and its dependencies (README: pip "
                          "install -e .)") from e
    except ModelError as e:
        # named once: the model's own message may name the setting already
        where = "" if "CALLMOOD_MODEL_PATH" in str(e) else " (CALLMOOD_MODEL_PATH)"
        raise ConfigError(f"{e}{where}") from e


def cmd_analyze(args: argparse.Namespace, settings: Settings) -> int:
    """Run the whole pipeline in-process on each file and store the results."""
    from worker.db import prepare_database
    from worker.runner import worker_settings

    files = _expand(args.files)
    for option, value in (("--call-id", args.call_id), ("--started-at", args.started_at)):
        if value and len(files) != 1:
            raise ConfigError(f"{option} names one call: give exactly one FILE with it")
    started_at = _started_at_option(args.started_at)
    require_model(settings)
    settings = worker_settings(settings, [f.resolve() for f in files])
    prepare_database(settings.database_url)
    # each failure has its FAILED line: the worker's log line said it a second time
    quiet: AbstractContextManager[None] = (
        nullcontext() if "CALLMOOD_LOG_LEVEL" in settings.extra
        else _logger_level("worker.jobs", logging.ERROR))
    with quiet:
        failed = sum(not _analyze_file(path, args, settings, started_at) for path in files)
    return 1 if failed else 0


def _started_at_option(text: str | None) -> datetime | None:
    """``--started-at``'s value as an aware datetime (None when not given); ConfigError,
    naming the option, for one that is no ISO-8601 time with a UTC offset."""
    from worker.store import parse_timestamp

    try:
        return parse_timestamp(text) if text else None
    except PayloadError as e:
        raise ConfigError(f"--started-at: {str(e).removeprefix('started_at: ')}") from e


_LINE_BREAKS = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def one_line(text: str | None) -> str:
    """``text`` for one line of a listing: line breaks and tabs shown as ``\\n``, ``\\r``,
    ``\\t`` (a file name with a newline split its row of `callmood failures`, whose columns
    are tab-separated, over several lines, a review)."""
    return "" if text is None else text.translate(_LINE_BREAKS)


def _analyze_file(path: Path, args: argparse.Namespace, settings: Settings,
                  started_at: datetime | None) -> bool:
    """``callmood analyze`` of one file (started at ``started_at``, if known), its lines
    printed; False when it failed."""
    from worker.db import session_scope
    from worker.enqueue import path_uri, printable_path
    from worker.jobs import process_call
    from worker.runner import call_id_for, external_id_for
    from worker.store import (
        CallRequest,
        content_call_id,
        content_of_call_id,
        find_call,
        label_changes,
        segments_for_call,
        update_from_request,
    )

    shown = one_line(printable_path(path))
    content_id = external_id_for(path.resolve())  # the file hashed once, here
    # a file too small for audio is a call of its path (worker.runner.call_id_for): two
    # empty files were one call, the second skipped as analysed
    own_id = call_id_for(path.resolve(), content_id)
    digest = content_of_call_id(content_id)
    if not args.call_id and not args.reprocess and own_id == content_id and digest:
        held = _show_call_holding(shown, digest, own_id, args, started_at, settings)
        if held is not None:
            return held
    request = CallRequest(uri=path_uri(path.resolve()), external_call_id=args.call_id or own_id,
                          agent_id=args.agent, team=args.team, started_at=started_at,
                          reprocess=args.reprocess)
    # no Celery here to retry a storage hiccup later: that file fails with its reason and
    # the others go on (it aborted the run, the call left "processing")
    outcome = process_call(request, settings, transient="fail")
    # printed once the transaction has committed: a pipe closed on a line printed inside it
    # rolled back the relabel that line announced (a review)
    notes: list[str] = []
    rows: list[str] = []
    with session_scope(settings) as session:
        call = find_call(session, request.external_call_id)
        assert call is not None  # process_call registered it
        if outcome.status == "skipped" and call.status == "done":
            # analysed before under this call id, or by a worker while this run failed: its
            # stored result stands if it is this file's (--call-id may name a call that holds
            # another recording)
            if outcome.superseded:
                notes.append(f"{shown}: {outcome.reason}")
            if content_call_id(call.content_sha256 or "") != content_id:
                notes.append(f"FAILED {shown}: call id {call.external_call_id} holds another "
                             "recording; --reprocess replaces it with this one")
                _print_lines(notes, sys.stderr)
                return False
            relabel = label_changes(call, {"agent_id": args.agent, "team": args.team,
                                           "started_at": started_at})
            if relabel:
                # the labels given now are the call's: its analysis stands, its reports move
                update_from_request(call, request)
            notes.append(f"stored {shown}: analysed "
                         + ("meanwhile by another run" if outcome.superseded else "before")
                         + f" with {call.model_version}; "
                         + (f"{', '.join(relabel)} updated; " if relabel else "")
                         + "--reprocess analyses it again")
        elif outcome.status != "done":
            again = (" (failed before, not run again: --reprocess tries it again, e.g. after "
                     "a setting changed)" if outcome.status == "skipped" else "")
            notes.append(f"FAILED {shown}: {call.failure_reason or outcome.reason}{again}")
            _print_lines(notes, sys.stderr)
            return False
        segments = segments_for_call(session, call.id)
        if args.json:
            rows = _segment_lines(shown, segments)
        notes.append(f"done   {shown}: {len(segments)} segments, call id {call.external_call_id}")
    _print_lines(notes[:-1], sys.stderr)
    _print_lines(rows, sys.stdout)
    _print_lines(notes[-1:], sys.stderr)
    return True


def _show_call_holding(shown: str, digest: str, own_id: str, args: argparse.Namespace,
                       started_at: datetime | None, settings: Settings) -> bool | None:
    """``analyze`` of a file whose recording (sha256 ``digest``) a call of another id (a
    producer's) holds the analysis of, while none has its content id ``own_id``: that
    call's stored segments, shown as they are (it was analysed again under its content id,
    a review); labels given are refused, since they are that call's sender's. A copy given
    here never moves that call's file, labels or run (a review of the first version, which
    did). None when no such call exists; else whether the file counts as done."""
    from worker.db import session_scope
    from worker.store import content_holders, find_call, segments_for_call

    with session_scope(settings) as session:
        holder = (None if find_call(session, own_id) is not None
                  else content_holders(session, [digest]).get(digest))
        if holder is None:
            return None
        call_id, version = holder.external_call_id, holder.model_version
        rows = _segment_lines(shown, segments_for_call(session, holder.id))
    if args.agent or args.team or started_at:
        _print_lines([f"FAILED {shown}: the recording of call {call_id}, whose labels are "
                      f"that call's: callmood relabel {call_id} sets them, or give --call-id "
                      "for a call of its own"], sys.stderr)
        return False
    _print_lines([f"stored {shown}: the recording of call {call_id}, analysed with {version}; "
                  "shown as stored (--reprocess analyses this file again under its own id, "
                  f"which reports leave out for {call_id})"], sys.stderr)
    _print_lines(rows if args.json else [], sys.stdout)
    _print_lines([f"done   {shown}: {len(rows)} segments, call id {call_id}"], sys.stderr)
    return True


def _segment_lines(shown: str, segments: Sequence[Any]) -> list[str]:
    """``analyze --json``'s line of each stored segment of the file ``shown``."""
    return [json.dumps({"file": shown, "channel": s.channel, "role": s.role,
                        "start_s": s.start_s, "end_s": s.end_s, "emotion": s.emotion,
                        "probabilities": s.probabilities(), "confidence": s.confidence,
                        "model_version": s.model_version}) for s in segments]


def _print_lines(lines: Sequence[str], stream: TextIO) -> None:
    for line in lines:
        print(one_line(line), file=stream)   # a reason quoting a file name with a newline


@contextmanager
def _logger_level(name: str, level: int) -> Iterator[None]:
    """Logger ``name`` at ``level`` for the block, as it was after (tests call main in-process)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def progress_bar(done: int, failed: int, total: int, width: int = 30) -> str:
    """``[#########-----]  12/40 done, 1 failed``: finished calls as a bar (failed ones as x)."""
    total = max(total, 1)
    n_done = round(width * done / total)
    n_failed = min(width - n_done, round(width * failed / total))
    bar = "#" * n_done + "x" * n_failed + "-" * (width - n_done - n_failed)
    return f"[{bar}] {done + failed:>{len(str(total))}}/{total} finished: {done} done, {failed} failed"


def _print_progress(done: int, failed: int, total: int) -> None:
    # one redrawn line on a terminal (\r): logs and pipes get none
    print("\r" + progress_bar(done, failed, total), end="", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Process files/folders through a real Celery worker process on the configured broker."""
    from worker.enqueue import printable_path
    from worker.runner import run_recordings

    files = _expand(args.paths)
    require_model(settings)
    print(f"callmood: {len(files)} recording(s) -> celery worker on "
          f"{redact_url(settings.broker_url)} -> {redact_url(settings.database_url)}",
          file=sys.stderr)
    show = sys.stderr.isatty()
    summary = run_recordings(files, settings, concurrency=args.concurrency,
                             timeout_s=args.timeout_s,
                             progress=_print_progress if show else None)
    if show:
        print(file=sys.stderr)
    names: dict[str, list[str]] = {}
    for r in summary.files:
        names.setdefault(r.external_call_id, []).append(printable_path(r.path.name))
    # files of one content are one call, analysed once: named together, counted once (a
    # review: the report showed the last file's name only and counted the call twice)
    _print_report(settings, list(names), {c: " = ".join(n) for c, n in names.items()},
                  sys.stdout)
    for r in summary.files:
        if r.status != "done":
            print(f"FAILED {printable_path(r.path)}: {r.reason}", file=sys.stdout)
    copies = len(summary.files) - len(names)
    same = f" ({len(summary.files)} files, {copies} a copy of another)" if copies else ""
    print(f"\n{summary.done} done, {summary.failed} failed{same} in {summary.elapsed_s:.1f} s "
          f"(worker log: {summary.worker_log})")
    return 0 if summary.failed == 0 and not summary.timed_out else 1


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Build demo calls from the corpora's test speakers and run them like ``callmood run``."""
    from bench.workload import DEMO_SCRIPTS, demo_calls
    from worker.runner import call_id_for

    out = settings.data_dir / "demo"
    manifest = settings.corpora_dir / "ravdess" / "manifest.csv"
    if not manifest.is_file():
        raise ConfigError(f"the demo builds its calls from the RAVDESS test actors, and "
                          f"{manifest} is missing: put the corpora at ../shared/corpora beside "
                          "the checkout or set CALLMOOD_CORPORA_DIR")
    require_model(settings)
    paths = demo_calls(settings.corpora_dir, out)
    print(f"callmood demo: wrote {len(paths)} stereo 8 kHz mu-law calls (RAVDESS test actors, "
          f"channel 0 agent, 1 customer) to {out}", file=sys.stderr)
    args.paths = [str(p) for p in paths]
    code = cmd_run(args, settings)
    # The acted moods, so a reader can judge the model's output against what was performed.
    print("\nwhat the actors performed, utterance by utterance (speakers unseen in training):")
    for name, agent_moods, customer_moods in DEMO_SCRIPTS:
        print(f"  {name}.wav  agent: {', '.join(agent_moods)} | customer: {', '.join(customer_moods)}")
    csv_path = _export_segments(settings, [call_id_for(p.resolve()) for p in paths],
                                out / "segments.csv")
    print(f"per-segment emotions: {csv_path}")
    return code


def _export_segments(settings: Settings, external_ids: Sequence[str], path: Path) -> Path:
    """The segments of these calls (not of other calls in the same database) as CSV."""
    from analytics.export import write_csv
    from analytics.queries import load_segments, report_session
    from worker.store import calls_by_external_id

    # a read-only snapshot: the worker's write lock is not held while the CSV is written
    with report_session(settings.database_url) as session:
        calls = calls_by_external_id(session, list(external_ids))
        return write_csv(load_segments(session, [c.id for c in calls.values()]), path)


def _print_report(settings: Settings, external_ids: Sequence[str], names: dict[str, str],
                  out: TextIO) -> None:
    """A readable per-call summary: each party's dominant mood and its timeline."""
    from analytics.queries import load_segments, report_session
    from analytics.summary import emotion_runs, format_clock, party_summary
    from worker.store import calls_by_external_id

    with report_session(settings.database_url) as session:
        calls = calls_by_external_id(session, list(external_ids))
        segments = load_segments(session, [c.id for c in calls.values() if c.status == "done"])
    summary = party_summary(segments)
    runs = emotion_runs(segments)
    for external_id in dict.fromkeys(external_ids):
        call = calls[external_id]
        if call.status != "done":
            continue
        print(f"\n== {names.get(external_id, external_id)}  ({call.duration_s:.0f} s, "
              f"model {call.model_version})", file=out)
        for _, party in summary[summary["call"] == external_id].iterrows():
            timeline = runs[(runs["call"] == external_id) & (runs["role"] == party["role"])]
            steps = " -> ".join(f"{format_clock(r.start_s)} {r.emotion}"
                                for r in timeline.itertuples())
            print(f"  {party['role']:<8} {party['utterances']:>3} utterances, "
                  f"{party['talk_s']:>5.1f} s talk, mostly {party['dominant']:<8} | {steps}",
                  file=out)


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from worker.db import current_revision, print_upgrade_sql, require_sqlite_file, upgrade

    if args.action == "sql":
        print_upgrade_sql(settings.database_url, args.from_revision)
        return 0
    if args.from_revision is not None:
        raise ConfigError(f"--from applies to `callmood db sql` only, not `db {args.action}`")
    if args.action == "upgrade":
        upgrade(settings.database_url)
    else:
        # asking must not create it: `db current` left an empty file named by a typo
        require_sqlite_file(settings.database_url)
    print(f"{redact_url(settings.database_url)}: revision {current_revision(settings.database_url)}")
    return 0


def cmd_calls(args: argparse.Namespace, settings: Settings) -> int:
    """List calls (newest first) with status and failure reason."""
    from analytics.queries import counted_as
    from worker.db import session_scope
    from worker.store import counts_by_status, list_calls

    with session_scope(settings) as session:
        calls = list_calls(session, status=args.status, limit=args.limit, newest_first=True,
                           agent_id=args.agent, team=args.team)
        counted_instead = counted_as(session, [c.id for c in calls])
        for call in calls:
            reason = f"  {one_line(call.failure_reason)}" if call.failure_reason else ""
            if call.id in counted_instead:
                # two rows for one recording: say which one the reports count
                reason += (f"  (same recording as {counted_instead[call.id]}, which the "
                           "reports count instead)")
            # the whole id: one cut to a column's width could not be pasted into callmood
            # retry (content ids are 71 characters, a review)
            # whose call it is: the agents report's rows could not be traced to calls here
            labels = "".join(f"{name}={one_line(value)} " for name, value in
                             (("agent", call.agent_id), ("team", call.team)) if value)
            print(f"{call.external_call_id:<40} {call.status:<10} attempts={call.attempts} "
                  f"{labels}{one_line(call.source_uri)}{reason}")
        counts = counts_by_status(session)
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no calls", file=sys.stderr)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Replace this process with a Celery worker (so SIGTERM reaches Celery's warm shutdown)."""
    from worker.celery_app import is_sqla_broker, worker_command
    from worker.db import require_database

    # a missing model or a card for another file would fail every call it takes: refuse now
    require_model(settings)
    # so would a database without this release's schema (a SQLite file that is not there is
    # refused before connecting creates it empty); one that is down may come back, and the
    # tasks retry while it is
    try:
        require_database(settings.database_url)
    except TransientError as e:
        log.warning("schema not checked before start: %s", e)
    if is_sqla_broker(settings.broker_url):
        _recover_before_start(settings)
    argv = worker_command(args.concurrency, args.loglevel or settings.log_level,
                          broker_url=settings.broker_url)
    os.execv(argv[0], [*argv, *args.celery_args])
    return 0  # not reached


def _recover_before_start(settings: Settings) -> None:
    """One recovery before a worker on a database broker starts, and one more when what the
    workers before it held would be stale: a deployment on the embedded broker often runs no
    beat, and a worker killed outright leaves its messages delivered for ever on this
    broker; restarted at once, its calls are not yet stale (their worker could be alive on
    another host). Best effort: the worker starts anyway."""
    import time

    from kombu.exceptions import OperationalError as KombuOperationalError
    from sqlalchemy.exc import SQLAlchemyError

    from worker.celery_app import CONTROL_QUEUE, RECOVERY_TASK_NAME, make_celery
    from worker.recovery import recover

    # one app (one broker connection) for the recovery and its follow-up
    app = make_celery(settings, set_as_current=False)
    try:
        try:
            report = recover(settings, app=app)
        except (CallmoodError, SQLAlchemyError, KombuOperationalError) as e:
            # e.g. a database not yet migrated, a broker gone between two statements
            log.warning("recovery before start skipped: %s: %s", type(e).__name__, e)
            return
        if report.lost or report.stranded or report.failed or report.deleted:
            print(f"recovery: {len(report.lost)} lost sent again, {len(report.stranded)} "
                  f"restored, {len(report.failed)} stuck failed, {report.deleted} delivered "
                  "broker row(s) deleted", file=sys.stderr)
        if report.repair_due_s is None:
            return
        # a margin past the horizon: the stamps come from the dead worker's host clock
        countdown_s = max(0.0, report.repair_due_s - time.time()) + FOLLOW_UP_SLACK_S
        try:
            # held by a worker until due (a warm stop gives it back; a worker killed before
            # then loses it, and the next start sends another)
            app.send_task(RECOVERY_TASK_NAME, queue=CONTROL_QUEUE, countdown=countdown_s)
        except (KombuOperationalError, OSError) as e:
            log.warning("follow-up recovery not sent: %s: %s", type(e).__name__, e)
            return
    finally:
        app.close()
    print(f"recovery: again in {countdown_s:.0f} s, when the messages earlier workers hold now "
          "are stale if those workers are gone", file=sys.stderr)


def cmd_beat(args: argparse.Namespace, settings: Settings) -> int:
    """Replace this process with Celery beat (it sends the nightly scan; run exactly one)."""
    from worker.celery_app import beat_command, beat_schedule

    # Without inbox folders beat still has work on a Redis or database broker: recovery.
    if not beat_schedule(settings):
        raise ConfigError("beat would have nothing to schedule: set CALLMOOD_INBOX_DIRS (the "
                          "nightly inbox scan) or use a redis:// or sqla+ CALLMOOD_BROKER_URL "
                          "(the recovery of lost messages every few minutes)")
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        # a bind mount that is a file or not writable: a raw traceback, exit 1 (a review)
        raise ConfigError(f"CALLMOOD_DATA_DIR {settings.data_dir}: cannot make the folder "
                          f"beat keeps its schedule in: {e.strerror or e}") from e
    argv = beat_command(str(settings.data_dir / "celerybeat-schedule"),
                        args.loglevel or settings.log_level)
    os.execv(argv[0], [*argv, *args.celery_args])
    return 0  # not reached


def cmd_relabel(args: argparse.Namespace, settings: Settings) -> int:
    """Give a stored call other labels, without a new analysis; 0 also when nothing changed."""
    from worker.db import session_scope
    from worker.schema import Call
    from worker.store import check_labels, relabel_call

    options = {"agent_id": "--agent", "team": "--team", "queue": "--queue",
               "customer_ref": "--customer-ref", "started_at": "--started-at"}
    labels = {name: value for name, value in (
        ("agent_id", args.agent), ("team", args.team), ("queue", args.queue),
        ("customer_ref", args.customer_ref), ("started_at", _started_at_option(args.started_at)))
        if value is not None}
    try:
        check_labels(labels)
    except PayloadError as e:
        # a mistyped option is usage (exit 2), named as the option, not the payload field
        name, _, why = str(e).partition(": ")
        raise ConfigError(f"{options.get(name, name)}: "
                          f"{why.replace('expected null or ', 'expected ')}") from e
    if not labels:
        raise ConfigError("give the labels to set: --agent, --team, --queue, --customer-ref "
                          "or --started-at")
    with session_scope(settings) as session:
        call, changed = relabel_call(session, args.call_id, labels)
        counted = (session.get(Call, call.same_recording_as)
                   if call.same_recording_as is not None else None)
        counted_as = counted.external_call_id if counted is not None else None
    # after the commit: a closed pipe must not roll back what the line announces
    print(f"{args.call_id}: " + ("; ".join(
        f"{name} {one_line(_label_text(old))} -> {one_line(_label_text(new))}"
        for name, (old, new) in changed.items()) or "labels unchanged"))
    if counted_as is not None:
        # its labels reach no report: the recording counts as the producer's call
        print(f"callmood relabel: reports count call {counted_as} for this recording, not "
              f"{args.call_id}: relabel {counted_as} to move them", file=sys.stderr)
    return 0


def _label_text(value: object) -> str:
    if value is None:
        return "none"
    return repr(value.isoformat() if isinstance(value, datetime) else str(value))


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    """Send one recording (or a manifest) to the workers; a known call id is sent once."""
    from worker.enqueue import MANIFEST_COLUMNS, enqueue, enqueue_manifest

    if args.manifest:
        given = [option for option, value in (
            ("FILE/URI", args.target), ("--call-id", args.call_id), ("--agent", args.agent),
            ("--team", args.team), ("--started-at", args.started_at),
            ("--customer-ref", args.customer_ref)) if value]
        if given:
            # silently ignored before: the labels are the manifest's columns, row by row
            raise ConfigError(f"--manifest takes its calls and their labels from the file: give "
                              f"no {', '.join(given)} with it (the manifest's columns: "
                              f"{', '.join(MANIFEST_COLUMNS)})")
        result = enqueue_manifest(args.manifest, reprocess=args.reprocess, settings=settings)
        for r in result.results:
            if not r.sent:
                print(f"{'refused' if r.refused else 'skipped'} {r.call_id}: {r.reason}",
                      file=sys.stderr)
        refused = f" ({result.refused} refused)" if result.refused else ""
        print(f"batch {result.batch_id}: {result.sent} enqueued, {result.skipped} skipped"
              f"{refused}")
        # a call id reused for another file was skipped, exit 0, never analysed (a review)
        return 1 if result.refused else 0
    if not (args.target and args.call_id and args.agent):
        raise ConfigError("give FILE|URI, --call-id and --agent (or --manifest FILE)")
    outcome = enqueue(args.target, call_id=args.call_id, agent_id=args.agent, team=args.team,
                      started_at=args.started_at, customer_ref=args.customer_ref,
                      reprocess=args.reprocess, settings=settings)
    if outcome.sent:
        print(f"enqueued {outcome.call_id}: task {outcome.task_id}")
    elif outcome.refused:
        print(f"refused {outcome.call_id}: {outcome.reason}", file=sys.stderr)
        return 1
    else:
        print(f"skipped {outcome.call_id}: {outcome.reason}")
    return 0


def cmd_failures(args: argparse.Namespace, settings: Settings) -> int:
    """List failed calls (newest first) with their reason and attempts."""
    from worker.db import session_scope
    from worker.store import counts_by_status, list_calls

    zone = zone_for(settings.timezone)
    with session_scope(settings) as session:
        # the latest failures first: by registration, an old call that failed again today
        # fell past --limit (a review)
        failed = list_calls(session, status="failed", limit=args.limit,
                            latest_finished_first=True)
        total = counts_by_status(session)["failed"]
        for call in failed:
            # in the site's zone, as `status` counts days, and saying which
            when = (f"{call.processed_at.astimezone(zone):%Y-%m-%d %H:%M:%S %Z}"
                    if call.processed_at else "-")
            print(f"{call.external_call_id}\tattempts={call.attempts}\t{when}\t"
                  f"{one_line(call.source_uri)}\t{one_line(call.failure_reason)}")
    more = f" of {total} (the latest first; --limit N lists more)" if total > len(failed) else ""
    print(f"{len(failed)}{more} failed call(s) listed", file=sys.stderr)
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    """Enqueue failed calls again (a new run each)."""
    from worker.enqueue import retry_failed

    if bool(args.call_id) == args.all_failed:
        raise ConfigError("give --call-id ID (repeatable) or --all-failed")
    results = retry_failed(settings, call_ids=args.call_id or (), all_failed=args.all_failed)
    for r in results:
        print(f"{'enqueued' if r.sent else 'skipped '} {r.call_id}"
              + (f": task {r.task_id}" if r.sent else f": {r.reason}"))
    print(f"{sum(r.sent for r in results)} failed call(s) enqueued again", file=sys.stderr)
    refused = sum(r.refused for r in results)
    if refused:
        # exit 0 told a script every failed call was on its way again (a review)
        print(f"{refused} failed call(s) could not be sent again: send a corrected payload "
              "for each (callmood enqueue with its call id)", file=sys.stderr)
        return 1
    return 0


def cmd_recover(args: argparse.Namespace, settings: Settings) -> int:
    """Send again calls the broker lost; restore messages stranded in its unacked hash."""
    from worker.recovery import recover

    report = (recover(settings, dry_run=args.dry_run) if args.min_age_s is None
              else recover(settings, min_age_s=args.min_age_s, dry_run=args.dry_run))
    verb = ("would send again", "would restore") if args.dry_run else ("sent again", "restored")
    for call_id in report.lost:
        print(f"lost      {call_id}: {verb[0]}")
    for call_id in report.stranded:
        print(f"stranded  {call_id}: {verb[1]} to the queue")
    for call_id in report.failed:
        print(f"stuck     {call_id}: {'would fail' if args.dry_run else 'failed'} (claimed "
              "repeatedly, never finished; callmood retry sends it again)")
    deleted = (f", {report.deleted} delivered broker row(s) "
               + ("to delete" if args.dry_run else "deleted")) if report.deleted else ""
    print(f"{len(report.lost)} lost, {len(report.stranded)} stranded, {len(report.failed)} stuck"
          + deleted + (" (dry run: nothing changed)" if args.dry_run else ""), file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Queue depth, calls in flight, done/failed today and for the latest batches."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from worker.celery_app import TASK_QUEUE, make_celery, queue_stats
    from worker.db import session_scope
    from worker.store import (
        count_never_sent,
        counts_by_status,
        counts_processed_since,
        latest_batches,
    )

    print(f"broker   {redact_url(settings.broker_url)}")
    print(f"database {redact_url(settings.database_url)}")
    app = make_celery(settings)
    broker_down: TransientError | None = None
    try:
        stats = queue_stats(app, TASK_QUEUE)
        if stats.delivered is not None:
            print(f"queue {TASK_QUEUE}: {stats.queued} waiting, {stats.delivered} delivered "
                  "row(s) kept (acked or not: this broker records no ack; recovery deletes "
                  "stale ones)")
        else:
            unacked = "n/a" if stats.unacked is None else str(stats.unacked)
            print(f"queue {TASK_QUEUE}: {stats.queued} waiting, {unacked} delivered and "
                  "unacked")
    except TransientError as e:
        print(f"queue {TASK_QUEUE}: unknown ({e})")
        broker_down = e
    finally:
        app.close()
    zone = ZoneInfo(settings.timezone)
    midnight = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    with session_scope(settings) as session:
        counts = counts_by_status(session)
        never_sent = count_never_sent(session)
        today = counts_processed_since(session, midnight)
        batches = latest_batches(session, args.batches)
    # pending calls whose send failed looked like calls waiting in the queue (a review)
    unsent = (f" ({never_sent} never sent: a send failed; the next enqueue or scan sends them)"
              if never_sent else "")
    print(f"calls: {counts['pending']} pending{unsent}, {counts['processing']} processing, "
          f"{counts['done']} done, {counts['failed']} failed")
    print(f"today ({settings.timezone}, since {midnight:%Y-%m-%d %H:%M}): {today['done']} done, "
          f"{today['failed']} failed")
    for b in batches:
        state = "finished" if b.finished_at else ("scanning" if b.scanned_at is None else "running")
        if b.scan_error:
            # its calls not sent are pending; the next scan or the manifest run again sends
            # them. An inbox folder not found is said here too (a review: the batch looked
            # like a quiet night)
            state += f", {b.scan_error}"
        # in the site's zone, as `today` above and `callmood failures` (it said UTC, a review)
        # files the scan did not send, else invisible here (a review)
        left = "".join(f", {n} {what}" for n, what in (
            (b.too_new, "left for the next scan (still being written?)"),
            (b.ignored, "ignored (not a recording's suffix)"),
            (b.refused, "refused (the worker log says why)")) if n)
        print(f"batch {b.batch_id} ({b.source}, {b.started_at.astimezone(zone):%Y-%m-%d %H:%M %Z}, "
              f"{state}): "
              f"{b.enqueued} enqueued, {b.skipped} skipped{left}; {b.pending} pending, "
              f"{b.processing} processing, {b.done} done, {b.failed} failed")
    if not batches:
        print("no batches yet")
    if broker_down is not None:
        # the database's counts are still shown, but a monitor running `callmood status ||
        # alert` must hear of a broker it cannot reach (it exited 0, a review)
        print(f"callmood status: {broker_down}", file=sys.stderr)
        return 1
    return 0


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    """Scan the inbox folders now, as the nightly beat task does."""
    from worker.batch import scan_inboxes
    from worker.enqueue import celery_sender

    with celery_sender(settings) as send:
        report = scan_inboxes(settings, source="cli", send=send)
    refused = f", {report.refused} refused (reasons in the log)" if report.refused else ""
    too_new = (f", {report.too_new} modified in the last {settings.inbox_min_age_s:.0f} s left "
               "for the next scan (CALLMOOD_INBOX_MIN_AGE_S)" if report.too_new else "")
    changed = (f" ({report.changed} run before and changed since, sent again)"
               if report.changed else "")
    # a folder of .m4a recordings said "0 file(s) seen" and nothing else (a review)
    ignored = (f", {report.ignored} other file(s) ignored (not {' '.join(AUDIO_SUFFIXES)})"
               if report.ignored else "")
    print(f"batch {report.batch_id}: {report.seen} file(s) seen, {report.enqueued} enqueued"
          f"{changed}, {report.skipped} already known{refused}{too_new}{ignored}")
    if report.missing_folders:
        print(f"callmood batch: inbox folder(s) not found, not scanned: "
              f"{', '.join(report.missing_folders)} (CALLMOOD_INBOX_DIRS)", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callmood", description=(
        "Per-utterance speech emotion for call-centre recordings. Settings come from "
        "CALLMOOD_* environment variables (see README)."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("analyze", help="analyse files in this process and store the results")
    p.add_argument("files", nargs="+", help="audio files or folders")
    p.add_argument("--json", action="store_true", help="print one JSON object per segment")
    p.add_argument("--call-id", help="external call id (default: the file's content hash)")
    p.add_argument("--agent", help="agent id to record on the call")
    p.add_argument("--team", help="team to record on the call")
    p.add_argument("--started-at", help="ISO-8601 start of the call with UTC offset, e.g. "
                   "2026-01-31T09:15+01:00 (one FILE; reports' days and --from/--to use it)")
    p.add_argument("--reprocess", action="store_true",
                   help="analyse files analysed before again (e.g. after a model upgrade); "
                        "otherwise their stored segments are printed")
    p.set_defaults(func=cmd_analyze)

    for name, func, help_text in (
            ("run", cmd_run, "process files/folders through a real Celery worker"),
            ("demo", cmd_demo, "build demo calls from the corpora and run them")):
        p = sub.add_parser(name, help=help_text)
        if name == "run":
            p.add_argument("paths", nargs="+", help="audio files or folders")
        p.add_argument("--concurrency", type=PROCESSES, default=1,
                       help="worker processes (default 1)")
        p.add_argument("--timeout-s", type=TIMEOUT_S, default=1800.0,
                       help="give up waiting after this many seconds (default 1800)")
        p.set_defaults(func=func)

    p = sub.add_parser("worker", help="start a Celery worker on CALLMOOD_BROKER_URL",
                       epilog="Any other option goes to celery worker unchanged (e.g. -O fair, "
                              "--hostname w1@%h).")
    p.add_argument("--concurrency", type=PROCESSES, default=1, help="processes (one per core)")
    p.add_argument("--loglevel", default=None,
                   help="celery's log level (default: CALLMOOD_LOG_LEVEL, INFO)")
    p.set_defaults(func=cmd_worker, celery_args=[])

    p = sub.add_parser("db", help="database schema (Alembic migrations)")
    p.add_argument("action", choices=["upgrade", "current", "sql"],
                   help="upgrade: migrate CALLMOOD_DATABASE_URL to this release's schema; "
                        "current: print its revision; sql: print the upgrade as SQL for a "
                        "DBA to review and run (PostgreSQL; connects to nothing)")
    p.add_argument("--from", dest="from_revision", default=None, metavar="REV",
                   help="with sql: the revision the database is at (default: empty)")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("calls", help="list calls with their status and failure reason")
    p.add_argument("--status", choices=["pending", "processing", "done", "failed"])
    p.add_argument("--agent", help="only the calls of this agent id (exact match)")
    p.add_argument("--team", help="only the calls of this team (exact match)")
    p.add_argument("--limit", type=whole_number(1, "calls"), default=50)
    p.set_defaults(func=cmd_calls, needs_db=True)

    p = sub.add_parser("beat", help="start Celery beat (sends the nightly inbox scan)",
                       epilog="Any other option goes to celery beat unchanged (e.g. "
                              "--max-interval 10).")
    p.add_argument("--loglevel", default=None,
                   help="celery's log level (default: CALLMOOD_LOG_LEVEL, INFO)")
    p.set_defaults(func=cmd_beat, celery_args=[])

    p = sub.add_parser("enqueue", help="send a recording (or a manifest) to the workers")
    p.add_argument("target", nargs="?", metavar="FILE|URI", help="recording path or file:// URI")
    p.add_argument("--manifest", help="CSV or JSON-lines file: uri, call_id, agent_id[, "
                                      "started_at, team, customer_ref, queue, metadata]")
    p.add_argument("--call-id", help="external call id (unique per call)")
    p.add_argument("--agent", help="agent id (required with FILE|URI)")
    p.add_argument("--team", help="team")
    p.add_argument("--started-at", help="ISO-8601 start with UTC offset, e.g. 2026-01-31T09:15Z")
    p.add_argument("--customer-ref", help="customer reference")
    p.add_argument("--reprocess", action="store_true",
                   help="analyse again even if this call id was sent or analysed before")
    p.set_defaults(func=cmd_enqueue, needs_db=True)

    p = sub.add_parser("relabel", help="give a stored call other labels (agent, team, ...) "
                                       "without analysing it again")
    p.add_argument("call_id", metavar="CALL_ID", help="the call's external id")
    p.add_argument("--agent", help="agent id")
    p.add_argument("--team", help="team")
    p.add_argument("--queue", help="queue")
    p.add_argument("--customer-ref", help="customer reference")
    p.add_argument("--started-at", help="ISO-8601 start with UTC offset, e.g. 2026-01-31T09:15Z")
    p.set_defaults(func=cmd_relabel, needs_db=True)

    p = sub.add_parser("failures", help="list failed calls with reason and attempts")
    p.add_argument("--limit", type=whole_number(1, "calls"), default=100)
    p.set_defaults(func=cmd_failures, needs_db=True)

    p = sub.add_parser("retry", help="enqueue failed calls again")
    p.add_argument("--call-id", action="append", help="a failed call id (repeatable)")
    p.add_argument("--all-failed", action="store_true", help="every failed call")
    p.set_defaults(func=cmd_retry, needs_db=True)

    p = sub.add_parser("recover", help="send again calls the broker lost, restore stranded "
                                       "messages (beat runs this every 5 minutes)")
    p.add_argument("--min-age-s", type=seconds(0.0),
                   help="only calls sent at least this long ago (default: "
                        "worker.recovery.RECOVERY_MIN_AGE_S, 2 minutes)")
    p.add_argument("--dry-run", action="store_true", help="report, change nothing")
    p.set_defaults(func=cmd_recover, needs_db=True)

    p = sub.add_parser("status", help="queue depth, calls in flight, today's and batch counts")
    p.add_argument("--batches", type=whole_number(1, "batches"), default=1,
                   help="latest batches to show (default 1)")
    p.set_defaults(func=cmd_status, needs_db=True)

    p = sub.add_parser("batch", help="scan CALLMOOD_INBOX_DIRS now and enqueue new recordings")
    p.set_defaults(func=cmd_batch, needs_db=True)

    for name in DELEGATED:  # listed for --help; main() hands them to training.cli unparsed
        sub.add_parser(name, help=f"{name} the emotion model (see python -m training {name} -h)",
                       add_help=False)
    from analytics.cli import add_report_parser  # argparse only: pandas loads on use

    add_report_parser(sub)
    return parser


CELERY_COMMANDS: frozenset[str] = frozenset({"worker", "beat"})
"""Subcommands that exec celery: options callmood does not define are celery's."""

SHARED_BROKER_COMMANDS: dict[str, str] = {
    "enqueue": "send the calls where no worker reads them",
    "retry": "send the calls where no worker reads them",
    "batch": "send the calls where no worker reads them",
    "worker": "wait on a queue no producer can reach",
    "beat": "send the nightly scan (CALLMOOD_INBOX_DIRS) where no worker reads it",
    "run": "start a worker that cannot see the calls it sends",
    "demo": "start a worker that cannot see the calls it sends",
}
"""Commands whose messages cross processes, and what an in-process broker would make them do."""


def require_shared_broker(settings: Settings, command: str) -> None:
    """ConfigError for ``memory://`` under a command that needs another process to read its
    messages: `callmood enqueue` printed 'enqueued' into a broker that vanished with it (a
    review); memory:// is for tests and in-process experiments."""
    if settings.broker_url.split("://", 1)[0] == "memory":
        raise ConfigError(f"CALLMOOD_BROKER_URL=memory:// holds messages inside one process: "
                          f"`callmood {command}` would {SHARED_BROKER_COMMANDS[command]}; use "
                          "redis://HOST:6379/0, or leave it unset for the embedded broker")


DELEGATED: dict[str, str] = {"train": "train_main", "final-fit": "final_fit_main",
                             "evaluate": "evaluate_main"}
"""Subcommands handed whole to ``training.cli`` (argparse's REMAINDER cannot pass on a
leading option such as ``--help`` or ``--epochs``, so they are dispatched before parsing)."""


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw and raw[0] in DELEGATED:
        from training import cli as training_cli

        delegated: Callable[[list[str] | None], int] = getattr(training_cli, DELEGATED[raw[0]])
        return delegated(raw[1:])
    parser = build_parser()
    if raw and raw[0] in CELERY_COMMANDS:
        # every option callmood does not define goes to celery unchanged, in its order
        args, unknown = parser.parse_known_args(raw)
        args.celery_args = unknown[1:] if unknown[:1] == ["--"] else unknown
    else:
        args = parser.parse_args(raw)
    try:
        settings = Settings.from_env()
        # The CLI speaks through its own output; library INFO logs only when asked for.
        level = settings.log_level if "CALLMOOD_LOG_LEVEL" in settings.extra else "WARNING"
        logging.basicConfig(level=level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if raw and raw[0] in SHARED_BROKER_COMMANDS:
            require_shared_broker(settings, raw[0])
        if getattr(args, "needs_db", False):
            # before connecting: a SQLite URL would create an empty file, and every command
            # then failed on the missing tables as a database 'unavailable', exit 1
            from worker.db import require_database

            require_database(settings.database_url)
        code: int = args.func(args, settings)
        return code
    except ConfigError as e:
        print(f"callmood: configuration error: {e}", file=sys.stderr)
        return 2
    except CallmoodError as e:
        # an outage said what failed, not what to do (a review)
        again = (" (run the same command again once it is back: what it sent is not sent "
                 "twice)" if isinstance(e, TransientError) else "")
        print(f"callmood: {type(e).__name__}: {e}{again}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `callmood calls | head`: the reader has what it wanted and left (a traceback, a
        # review); stdout goes to /dev/null so the interpreter's own flush at exit is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
