"""``callmood`` subcommands, in-process, on the embedded SQLite default."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.workload import DEMO_SCRIPTS, read_manifest, synthesize_call, write_call
from tests.model_fixtures import N_MELS, write_tiny_model
from worker.audio import file_sha256
from worker.cli import main
from worker.settings import Settings

FIELDS = {"file", "channel", "role", "start_s", "end_s", "emotion", "probabilities",
          "confidence", "model_version"}


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    model = write_tiny_model(tmp_path, np.random.default_rng(1).normal(size=(N_MELS, 7)))
    monkeypatch.setenv("CALLMOOD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CALLMOOD_INPUT_ROOTS", str(tmp_path))
    monkeypatch.setenv("CALLMOOD_MODEL_PATH", str(model))
    for name in ("CALLMOOD_DATABASE_URL", "CALLMOOD_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_analyze_json_prints_one_object_per_stored_segment(env: Path, callmood_corpora: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    manifest = read_manifest(callmood_corpora, "ravdess")
    test = manifest[manifest["split"] == "test"]
    call = synthesize_call(test[test["speaker"] == "actor21"].head(2),
                           test[test["speaker"] == "actor22"].head(2), np.random.default_rng(0))
    # named in Latin-1, as files copied from an older system are: analysed like any other
    path = write_call(call, env / "call.wav").rename(env / os.fsdecode(b"appel-\xe9t\xe9.wav"))
    (env / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")

    code = main(["analyze", str(path), str(env / "broken.wav"), "--json", "--agent", "a-7"])
    out, err = capsys.readouterr()

    assert code == 1  # one of the two files failed
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and all(set(r) == FIELDS for r in rows)
    assert {r["role"] for r in rows} == {"agent", "customer"}
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)
    # the card's version with the ONNX file's sha256 prefix
    stamp = f"tiny-0.0.1+{file_sha256(env / 'tiny.onnx')[:12]}"
    assert all(r["model_version"] == stamp for r in rows)
    assert "FAILED" in err and "broken.wav" in err and "not a readable audio file" in err
    # what to do, and the name once (libsndfile's "Error opening b'/path'" said it again)
    assert "Re-export the recording and send it again" in err and "Error opening" not in err
    shown = str(env / "appel-\\xe9t\\xe9.wav")  # the bytes that are not UTF-8, as \xNN
    assert {r["file"] for r in rows} == {shown} and f"done   {shown}" in err

    capsys.readouterr()
    assert main(["calls", "--status", "failed"]) == 0
    listed = capsys.readouterr().out
    assert "broken.wav" in listed and "not a readable audio file" in listed

    # Again: the analysed file's stored segments, no new run; the broken one still fails.
    assert main(["analyze", str(path), str(env / "broken.wav"), "--json"]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == rows
    assert f"stored {shown}: analysed before with {stamp}" in err
    assert "FAILED" in err and "not a readable audio file" in err
    # new labels for it: stored on the call (reports move with them), no new analysis
    assert main(["analyze", str(path), "--agent", "a-9", "--team", "support"]) == 0
    assert "agent_id, team updated" in capsys.readouterr().err
    from worker import db, store

    # this test's environment, not a settings object cached by an earlier test
    with db.session_scope(Settings.from_env()) as session:
        relabelled = store.find_call(session, f"sha256-{file_sha256(path)}")
        assert relabelled is not None
        assert (relabelled.agent_id, relabelled.team) == ("a-9", "support")
        assert relabelled.model_version == stamp
    assert main(["analyze", str(path), "--json", "--reprocess"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == len(rows) and f"done   {shown}" in err
    # another file under the analysed call's id: not that call's segments
    call_id = f"sha256-{file_sha256(path)}"
    assert main(["analyze", str(env / "broken.wav"), "--call-id", call_id, "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"call id {call_id} holds another recording" in err


def test_analyze_shows_a_producer_s_call_of_the_file_and_keeps_a_relabel_on_a_closed_pipe(
        env: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file a producer sent under its own id, given to `analyze` without --call-id, was
    analysed again under its content id (a second call of one recording, a review): that
    call's stored analysis is shown, and nothing of the call changes. And a relabel
    announced on a stderr whose reader had gone was rolled back by the BrokenPipeError of
    the next line (a review)."""
    import subprocess
    import sys

    from worker import db, store

    test = read_manifest(callmood_corpora, "ravdess").query("split == 'test'")
    call = synthesize_call(test[test["speaker"] == "actor21"].head(1),
                           test[test["speaker"] == "actor22"].head(1), np.random.default_rng(0))
    path = write_call(call, env / "call.wav")
    assert main(["analyze", str(path), "--call-id", "CC-1006", "--agent", "a-1"]) == 0
    capsys.readouterr()
    copy = env / "copy.wav"
    copy.write_bytes(path.read_bytes())

    def stored() -> tuple[list[str], str, str | None, str]:
        with db.session_scope(Settings.from_env()) as session:
            call = store.find_call(session, "CC-1006")
            assert call is not None
            return ([c.external_call_id for c in store.list_calls(session)], call.source_uri,
                    call.agent_id, call.status)

    before = stored()
    assert before == (["CC-1006"], str(path), "a-1", "done")
    assert main(["analyze", str(copy), "--json"]) == 0
    out, err = capsys.readouterr()
    assert f"stored {copy}: the recording of call CC-1006, analysed with" in err
    assert len(out.splitlines()) > 0 and f"done   {copy}" in err and "call id CC-1006" in err
    # read only: the copy given here takes nothing of the call (its file, labels or run: the
    # first version moved all three, a review), not even while a re-run of it is queued
    assert main(["analyze", str(copy), "--agent", "bob"]) == 1
    assert ("the recording of call CC-1006, whose labels are that call's: callmood relabel "
            "CC-1006 sets them") in capsys.readouterr().err
    with db.session_scope(Settings.from_env()) as session:
        queued = store.find_call(session, "CC-1006")
        assert queued is not None
        queued.status = "pending"
    assert main(["analyze", str(copy)]) == 0
    assert stored() == (["CC-1006"], str(path), "a-1", "pending")
    with db.session_scope(Settings.from_env()) as session:
        done = store.find_call(session, "CC-1006")
        assert done is not None
        done.status = "done"

    reader = subprocess.Popen([sys.executable, "-m", "worker.cli", "analyze", str(path),
                               "--call-id", "CC-1006", "--agent", "a-2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert reader.stderr is not None
    reader.stderr.close()       # the reader is gone before the first line
    assert reader.wait(timeout=120) == 1
    with db.session_scope(Settings.from_env()) as session:
        relabelled = store.find_call(session, "CC-1006")
        assert relabelled is not None and relabelled.agent_id == "a-2"

    # a start time, so the call has a day in the reports (analyze could not give one)
    assert main(["analyze", str(path), "--call-id", "CC-1006",
                 "--started-at", "2026-11-04T09:15+01:00"]) == 0
    assert "started_at updated" in capsys.readouterr().err
    with db.session_scope(Settings.from_env()) as session:
        dated = store.find_call(session, "CC-1006")
        assert dated is not None and dated.started_at == datetime(2026, 11, 4, 8, 15, tzinfo=UTC)
    assert main(["analyze", str(path), "--started-at", "2026-11-04T09:15"]) == 2
    assert ("--started-at: '2026-11-04T09:15' has no UTC offset; append +00:00 or Z"
            in capsys.readouterr().err)
    assert main(["analyze", str(path), str(path), "--started-at", "2026-11-04T09:15Z"]) == 2
    assert "--started-at names one call" in capsys.readouterr().err


def test_a_broken_file_named_in_latin1_fails_with_its_reason_stored(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = env / os.fsdecode(b"vide-\xe9t\xe9.wav")
    broken.write_bytes(b"")
    assert main(["analyze", str(broken)]) == 1
    shown = str(env / "vide-\\xe9t\\xe9.wav")
    assert f"FAILED {shown}: vide-\\xe9t\\xe9.wav is empty (0 bytes)" in capsys.readouterr().err
    assert main(["calls", "--status", "failed"]) == 0
    assert "vide-\\xe9t\\xe9.wav is empty" in capsys.readouterr().out


def test_call_id_needs_exactly_one_file(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a.wav", "b.wav"):
        (env / name).write_bytes(b"")
    assert main(["analyze", str(env / "a.wav"), str(env / "b.wav"), "--call-id", "X-1"]) == 2
    assert "--call-id" in capsys.readouterr().err


def test_configuration_errors_exit_2(env: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLMOOD_CHANNEL_ROLES", "agent,manager")
    assert main(["calls"]) == 2
    assert "CALLMOOD_CHANNEL_ROLES" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    *[([command, *(["a.wav"] if command == "run" else []), "--concurrency", concurrency],
       "1 or more") for command in ("run", "worker") for concurrency in ("0", "two")],
    # --timeout-s nan never timed out (no time compares as past it); --max-plots -1 drew
    # nothing without a word
    (["run", "a.wav", "--timeout-s", "nan"], "seconds over 0"),
    (["run", "a.wav", "--timeout-s", "0"], "seconds over 0"),
    (["report", "calls", "--out", "x.csv", "--max-plots", "-1"], "0 or more pictures"),
    (["report", "timeline", "--out", "x.csv", "--bin-s", "inf"], "10 ms frames"),
    # a review: nan / inf / 1e300 ended in an overflow traceback; a negative LIMIT in a
    # PostgreSQL DataError traceback (SQLite read it as no limit); 0 batches printed none
    *[(["recover", "--min-age-s", age], "seconds at least 0") for age in
      ("nan", "inf", "1e300", "-1")],
    (["status", "--batches", "0"], "1 or more batches"),
    (["calls", "--limit", "-1"], "1 or more calls"),
    (["failures", "--limit", "x"], "whole number of calls"),
])
def test_numbers_that_mean_nothing_are_usage_errors(
        env: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_worker_refuses_to_start_with_a_broken_model(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLMOOD_MODEL_PATH", str(env / "missing.onnx"))

    def no_exec(*argv: object) -> None:
        raise AssertionError("celery was started with a broken model")

    monkeypatch.setattr(os, "execv", no_exec)
    assert main(["worker"]) == 2  # before celery is exec'd: nothing would take calls
    err = capsys.readouterr().err
    assert "emotion model not found" in err
    assert err.count("CALLMOOD_MODEL_PATH") == 1  # named once, not "(set X) (X)"


@pytest.mark.parametrize("command", ["analyze", "run"])
def test_analyze_and_run_refuse_a_broken_model_before_claiming_any_call(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        callmood_corpora: Path, command: str) -> None:
    """`callmood analyze` claimed the call, then met the missing model: the call stayed
    'processing' for ever (no recovery looks at an in-process run); `run` would have retried
    every call for minutes. Both now stop first, as the worker does."""
    from tests.audio_fixtures import make_call_wav, pick_clips
    from worker import db, store

    call = env / "call.wav"
    make_call_wav(call, [pick_clips(callmood_corpora, 1)])
    monkeypatch.setenv("CALLMOOD_MODEL_PATH", str(env / "missing.onnx"))
    assert main([command, str(call)]) == 2
    assert "emotion model not found" in capsys.readouterr().err
    settings = Settings.from_env()
    db.upgrade(settings.database_url)
    with db.session_scope(settings) as session:
        assert store.list_calls(session) == []


def test_analyze_of_a_folder_without_recordings_says_so(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = env / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    assert main(["analyze", str(empty)]) == 2
    assert "no audio files" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["analyze", "run"])
def test_a_path_that_names_nothing_is_refused_before_any_call_is_stored(
        env: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    from worker import db, store

    recordings = env / "recs"
    recordings.mkdir()
    assert main([command, str(env / "rec")]) == 2  # the folder's name mistyped
    assert f"no such file or folder: {env / 'rec'}" in capsys.readouterr().err
    settings = Settings.from_env()
    db.upgrade(settings.database_url)
    with db.session_scope(settings) as session:
        assert store.list_calls(session) == []


def test_a_worker_refuses_to_start_on_a_database_without_this_releases_schema(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, it started and failed every call it took, each after two minutes of retries
    as "database unavailable: no such table"; a direct send_task's call left no row."""
    from worker.db import downgrade, head_revision
    from worker.settings import Settings

    def no_exec(*argv: object) -> None:
        raise AssertionError("celery was started on a database it cannot write")

    monkeypatch.setattr(os, "execv", no_exec)
    (env / "data").mkdir()
    url = Settings.from_env().database_url
    database = Path(url.removeprefix("sqlite:///"))
    assert main(["worker"]) == 2   # not there: refused before connecting could create it
    assert "does not exist (run: callmood db upgrade)" in capsys.readouterr().err
    assert not database.exists()
    database.touch()               # there, never migrated
    assert main(["worker"]) == 2
    assert "revision none, this release needs" in capsys.readouterr().err
    assert main(["db", "upgrade"]) == 0
    downgrade(url, "-1")  # a release behind: its newest migration not applied
    assert main(["worker"]) == 2
    assert f"needs {head_revision()}: run callmood db upgrade" in capsys.readouterr().err
    # a newer release migrated it (a rolling deploy, a rollback): upgrading cannot help, so
    # this worker starts, with a warning
    from sqlalchemy import create_engine, text

    assert main(["db", "upgrade"]) == 0
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    engine.dispose()
    started: list[object] = []
    monkeypatch.setattr(os, "execv", lambda *argv: started.append(argv))
    assert main(["worker"]) == 0 and started
    # an unknown revision without the tables this release uses: another app's database
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE segments RENAME TO old_segments"))
    engine.dispose()
    assert main(["worker"]) == 2
    assert "lacks segments.id" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "level"), [([], "WARNING"), (["--loglevel", "DEBUG"], "DEBUG")])
def test_the_worker_logs_at_callmood_log_level_unless_told(
        env: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], level: str) -> None:
    monkeypatch.setenv("CALLMOOD_LOG_LEVEL", "WARNING")
    started: list[list[str]] = []

    def exec_celery(path: str, args: list[str]) -> None:
        started.append(args)

    monkeypatch.setattr(os, "execv", exec_celery)
    assert main(["db", "upgrade"]) == 0
    assert main(["worker", *argv]) == 0
    (args,) = started
    assert args[args.index("--loglevel") + 1] == level


def test_db_upgrade_reports_the_revision(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    assert "revision 0011" in capsys.readouterr().out


def test_db_sql_prints_the_upgrade_for_a_dba(env: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection is made (a host nobody answers on): the SQL from 0002 to head, as
    tests/worker/test_migrations.py runs it on a real PostgreSQL; SQLite cannot (exit 2)."""
    from worker.settings import get_settings

    monkeypatch.setenv("CALLMOOD_DATABASE_URL", "postgresql+psycopg://u:secret@192.0.2.1/x")
    get_settings.cache_clear()
    assert main(["db", "sql", "--from", "0002"]) == 0
    out = capsys.readouterr().out
    assert "UPDATE calls SET source_uri_sha256" in out and "CREATE TABLE calls" not in out
    assert main(["db", "sql"]) == 0
    assert "CREATE TABLE calls" in capsys.readouterr().out
    monkeypatch.setenv("CALLMOOD_DATABASE_URL", "sqlite:///x.sqlite")
    get_settings.cache_clear()
    assert main(["db", "sql"]) == 2
    assert "callmood db upgrade" in capsys.readouterr().err
    get_settings.cache_clear()


def test_train_and_evaluate_pass_their_own_options_through(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    from worker.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--epochs" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(tmp_path / "none.onnx"),
                 "--manifest", str(tmp_path / "m.csv")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["final-fit", "--help"])
    assert exit_info.value.code == 0
    assert "--selected" in capsys.readouterr().out


def test_progress_bar_counts_finished_calls() -> None:
    from worker.cli import progress_bar

    assert progress_bar(0, 0, 4, width=8) == "[--------] 0/4 finished: 0 done, 0 failed"
    assert progress_bar(2, 1, 4, width=8) == "[####xx--] 3/4 finished: 2 done, 1 failed"
    assert progress_bar(40, 0, 40, width=10).startswith("[##########] 40/40")


@pytest.mark.usefixtures("pipeline_importable", "emotion_model")
def test_demo_runs_its_calls_through_a_worker_and_exports_only_their_segments(
        callmood_env: Settings, callmood_corpora: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The README's first command, on the embedded default with the shipped model."""
    manifest = read_manifest(callmood_corpora, "ravdess")
    test = manifest[manifest["split"] == "test"]
    call = synthesize_call(test[test["speaker"] == "actor21"].head(2),
                           test[test["speaker"] == "actor22"].head(2), np.random.default_rng(0))
    earlier = write_call(call, callmood_env.data_dir.parent / "input" / "earlier.wav")
    assert main(["analyze", str(earlier)]) == 0  # another call in the same database

    assert main(["demo"]) == 0
    out, err = capsys.readouterr()
    names = [line.split()[1] for line in out.splitlines() if line.startswith("== ")]
    assert names == [f"{name}.wav" for name, _, _ in DEMO_SCRIPTS]
    assert "3 done, 0 failed" in out + err
    segments = pd.read_csv(callmood_env.data_dir / "demo" / "segments.csv")
    assert segments["call"].nunique() == 3
    assert f"sha256-{file_sha256(earlier)}" not in set(segments["call"])
    assert set(segments["role"]) == {"agent", "customer"}


def test_worker_and_beat_hand_celery_options_they_do_not_define_to_celery(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    execs: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        execs.append(argv)
        raise SystemExit(0)  # os.execv does not return

    monkeypatch.setattr(os, "execv", execv)  # the module worker.cli calls it on
    monkeypatch.setenv("CALLMOOD_BROKER_URL", "redis://127.0.0.1:1/0")  # never dialled here
    monkeypatch.setenv("CALLMOOD_INBOX_DIRS", str(env))
    assert main(["db", "upgrade"]) == 0
    for argv, passed in ((["worker", "--concurrency", "2", "-O", "fair", "--hostname", "w1@%h"],
                          ["-O", "fair", "--hostname", "w1@%h"]),
                         (["worker", "--", "--autoscale", "4,1"], ["--autoscale", "4,1"]),
                         (["beat", "--max-interval", "10"], ["--max-interval", "10"])):
        with pytest.raises(SystemExit):
            main(argv)
        assert execs[-1][-len(passed):] == passed, execs[-1]
    assert "--concurrency" in execs[0] and execs[0][execs[0].index("--concurrency") + 1] == "2"
    # a command that does not exec celery still refuses an option it does not know
    with pytest.raises(SystemExit):
        main(["calls", "-O", "fair"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_the_demo_without_corpora_is_a_configuration_error(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLMOOD_CORPORA_DIR", str(env / "no-corpora"))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "CALLMOOD_CORPORA_DIR" in err


@pytest.mark.parametrize("command", [["calls"], ["status"], ["failures"], ["retry", "--all-failed"],
                                     ["enqueue", "x.wav", "--call-id", "C-1", "--agent", "a"],
                                     ["worker"]])
def test_commands_on_a_database_never_migrated_say_what_to_run_and_create_nothing(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        command: list[str]) -> None:
    """They connected first: SQLite created the file (and its folders), and the missing
    tables were reported as 'database unavailable', exit 1, as if it were down."""
    database = env / "nowhere" / "callmood.sqlite"
    monkeypatch.setenv("CALLMOOD_DATABASE_URL", f"sqlite:///{database}")
    assert main(command) == 2
    assert "does not exist (run: callmood db upgrade)" in capsys.readouterr().err
    assert not database.parent.exists()
    # an empty file that was never migrated: the same advice
    database.parent.mkdir()
    database.touch()
    assert main(command) == 2
    assert "callmood db upgrade" in capsys.readouterr().err


def test_batch_names_an_inbox_folder_that_is_not_there(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in CALLMOOD_INBOX_DIRS (or a share not mounted) only logged a warning: exit 0
    and an empty batch recorded as if the inbox were empty."""
    inbox = env / "inbox"
    inbox.mkdir()
    monkeypatch.setenv("CALLMOOD_INBOX_DIRS", os.pathsep.join([str(inbox), str(env / "inbx")]))
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["batch"]) == 1
    out, err = capsys.readouterr()
    assert "0 file(s) seen" in out
    assert f"inbox folder(s) not found, not scanned: {env / 'inbx'}" in err
    # and the batch's row says so: a nightly scan has no exit code, and `status` showed a
    # quiet night (a review)
    monkeypatch.setenv("CALLMOOD_BROKER_URL", "memory://")
    main(["status"])
    assert (f"finished, inbox folder(s) not found: {env / 'inbx'} (CALLMOOD_INBOX_DIRS; a "
            "share not mounted?)): 0 enqueued") in capsys.readouterr().out


def test_empty_files_are_calls_of_their_own_each_failing_with_its_own_reason(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two empty files were one call (by content): the second's line named the first file
    (`callmood run`: "FAILED b.wav: a.wav is empty"; a review)."""
    from worker.runner import call_id_for

    for name in ("a.wav", "b.wav"):
        (env / name).write_bytes(b"")
    assert call_id_for(env / "a.wav") != call_id_for(env / "b.wav")
    assert main(["analyze", str(env / "a.wav"), str(env / "b.wav")]) == 1
    err = capsys.readouterr().err
    assert re.search(r"FAILED \S*a\.wav: \S*a\.wav", err), err
    assert re.search(r"FAILED \S*b\.wav: \S*b\.wav", err), err


def test_batch_counts_the_files_it_ignores_for_their_suffix(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder of .m4a recordings printed "0 file(s) seen" and nothing else (a review)."""
    inbox = env / "inbox"
    inbox.mkdir()
    (inbox / "call-1.m4a").write_bytes(b"\0" * 100)
    (inbox / "call-1.txt").write_text("sidecar")
    monkeypatch.setenv("CALLMOOD_INBOX_DIRS", str(inbox))
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["batch"]) == 0
    assert "0 file(s) seen, 0 enqueued, 0 already known, 2 other file(s) ignored (not .wav" \
        in capsys.readouterr().out


def test_the_scan_refuses_a_link_out_of_the_input_roots_and_says_a_linked_folder(
        env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """A link in the inbox to a file outside CALLMOOD_INPUT_ROOTS was sent and failed for
    good at the worker; a linked subfolder was skipped without a word (a review)."""
    import logging

    inbox = env / "inbox"
    inbox.mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "elsewhere.wav").write_bytes(b"RIFF")
    (inbox / "link-outside.wav").symlink_to(outside / "elsewhere.wav")
    (inbox / "day2").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("CALLMOOD_INBOX_DIRS", str(inbox))
    monkeypatch.setenv("CALLMOOD_INBOX_MIN_AGE_S", "0")
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert main(["batch"]) == 0
    out = capsys.readouterr().out
    assert "0 enqueued" in out and "1 refused" in out, out
    assert "outside CALLMOOD_INPUT_ROOTS" in caplog.text
    assert "inbox folder link" in caplog.text and "day2" in caplog.text


def test_db_commands_refuse_what_they_cannot_do_by_name(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """From an operator's review: `db upgrade --from 0002` ignored --from (exit 0), `db
    current` created an empty file named by a typo, `db sql --from 9999` and `db current` on
    a server nobody answers were tracebacks of 63 and 113 lines."""
    database = env / "data" / "typo.sqlite"
    monkeypatch.setenv("CALLMOOD_DATABASE_URL", f"sqlite:///{database}")
    assert main(["db", "upgrade", "--from", "0002"]) == 2
    assert "--from applies to `callmood db sql` only" in capsys.readouterr().err
    assert main(["db", "current"]) == 2
    assert "does not exist (run: callmood db upgrade)" in capsys.readouterr().err
    assert not database.exists()
    monkeypatch.setenv("CALLMOOD_DATABASE_URL", "postgresql+psycopg://u:secret@127.0.0.1:1/x")
    assert main(["db", "sql", "--from", "9999"]) == 2
    assert ("--from 9999: not a revision of this release; use one of 0001, 0002, 0003, 0004, "
            "0005, 0006, 0007, 0008, 0009, 0010") in capsys.readouterr().err
    assert main(["db", "current"]) == 1
    err = capsys.readouterr().err
    assert "TransientError: database unavailable" in err and "Traceback" not in err
    assert "secret" not in err


def test_enqueue_of_a_call_id_sent_for_another_file_exits_1_naming_the_stored_file(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Day 2's manifest reused day 1's call id for another recording: it was skipped as
    "already enqueued", exit 0, and never analysed (a review)."""
    assert main(["db", "upgrade"]) == 0
    assert main(["enqueue", str(env / "a.wav"), "--call-id", "C-1", "--agent", "a"]) == 0
    capsys.readouterr()
    assert main(["enqueue", str(env / "b.wav"), "--call-id", "C-1", "--agent", "a"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("refused C-1: ") and "a.wav" in err
    # the same file again is the idempotent re-send it always was
    assert main(["enqueue", str(env / "a.wav"), "--call-id", "C-1", "--agent", "a"]) == 0
    assert capsys.readouterr().out.startswith("skipped C-1: ")
    (env / "m.csv").write_text(f"uri,call_id,agent_id\n{env / 'b.wav'},C-1,a\n")
    assert main(["enqueue", "--manifest", str(env / "m.csv")]) == 1
    out, err = capsys.readouterr()
    assert "refused C-1: " in err and out.endswith("0 enqueued, 1 skipped (1 refused)\n")


def test_status_exits_1_when_the_broker_cannot_be_reached(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`callmood status || alert` missed a dead Redis: the queue line said "unknown" and
    the command exited 0 (a review). The database's counts are still printed."""
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("CALLMOOD_BROKER_URL", "redis://127.0.0.1:1/0")
    assert main(["enqueue", str(env / "a.wav"), "--call-id", "C-1", "--agent", "a"]) == 1
    capsys.readouterr()
    assert main(["status"]) == 1
    out, err = capsys.readouterr()
    assert "queue callmood: unknown" in out
    # the call whose send failed is pending, but not in any queue: status says so
    assert ("calls: 1 pending (1 never sent: a send failed; the next enqueue or scan sends "
            "them), 0 processing") in out
    assert err.startswith("callmood status: ") and "127.0.0.1:1" in err
    # a manifest that sent nothing was shown like one that sent everything (a review)
    (env / "m.csv").write_text(f"uri,call_id,agent_id\n{env / 'b.wav'},C-2,a\n")
    assert main(["enqueue", "--manifest", str(env / "m.csv")]) == 1
    # what to do, not only what failed (a review)
    assert "run the same command again once it is back" in capsys.readouterr().err
    assert main(["status"]) == 1
    assert re.search(r"batch 1 \(manifest:m\.csv, [^)]*, running, stopped sending: broker "
                     r"unavailable \(redis://127\.0\.0\.1:1/0\) after sending 0 of 1: [^)]*"
                     r"\): 0 enqueued, 0 skipped; 1 pending", capsys.readouterr().out)
    # a batch's start in the site's zone, as `today` and `callmood failures` (it said UTC)
    from datetime import UTC, datetime

    from worker import db, store
    from worker.schema import Batch

    with db.session_scope(Settings.from_env()) as s:
        batch = s.get(Batch, store.create_batch(s, "nightly").id)
        assert batch is not None
        batch.started_at = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    monkeypatch.setenv("CALLMOOD_TIMEZONE", "America/New_York")
    assert main(["status"]) == 1
    assert "(nightly, 2026-12-05 22:00 EST, scanning)" in capsys.readouterr().out


def test_calls_prints_ids_whole_and_analyze_says_how_to_rerun_a_failure(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`callmood calls` cut ids to 40 characters, so a content id (71) pasted into `callmood
    retry` was unknown; `analyze` of a file that failed before replayed the old reason (a
    limit since raised) without saying that --reprocess runs it again (a review)."""
    import soundfile as sf

    path = env / "call.wav"
    rate = 8000
    sf.write(path, 0.1 * np.sin(np.arange(rate * 2) * 2 * np.pi * 220 / rate), rate,
             subtype="PCM_16")
    monkeypatch.setenv("CALLMOOD_MAX_DURATION_S", "0.5")
    assert main(["analyze", str(path)]) == 1
    assert "longer than the limit of 0.5 s" in capsys.readouterr().err   # not "0 s"
    monkeypatch.delenv("CALLMOOD_MAX_DURATION_S")
    assert main(["analyze", str(path)]) == 1
    assert "--reprocess tries it again" in capsys.readouterr().err
    assert main(["calls"]) == 0
    call_id = f"sha256-{file_sha256(path)}"
    assert len(call_id) == 71 and f"{call_id} failed" in capsys.readouterr().out
    assert main(["analyze", "--reprocess", str(path)]) == 0


@pytest.mark.postgres
def test_analyze_migrates_only_the_embedded_database(
        env: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`analyze`, `run` and `demo` migrated any database they were pointed at: on production
    PostgreSQL an operator's one-off analysis ran the migrations its DBA reviews (`db sql`)
    while older workers ran on it. They migrate the embedded SQLite file only."""
    from worker import db

    path = env / "call.wav"
    path.write_bytes(b"RIFF")
    monkeypatch.setenv("CALLMOOD_DATABASE_URL", postgres_url)
    assert main(["analyze", str(path)]) == 2
    assert (f"this release needs {db.head_revision()}: run callmood db upgrade first"
            in capsys.readouterr().err)
    assert db.current_revision(postgres_url) is None


def test_retry_all_failed_exits_1_when_a_failed_call_cannot_be_sent_again(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rejected payload without a usable uri is skipped by `retry --all-failed`, and the
    command exited 0 as if every failed call were on its way again (a review)."""
    from worker import db, store

    assert main(["db", "upgrade"]) == 0
    with db.session_scope(Settings.from_env()) as session:
        store.record_rejected(session, "BAD-1", "", "uri: expected a path or file:// URI")
    capsys.readouterr()
    assert main(["retry", "--all-failed"]) == 1
    out, err = capsys.readouterr()
    assert "skipped  BAD-1: its stored row cannot be sent again" in out
    assert "1 failed call(s) could not be sent again" in err


def test_analyze_says_each_failure_once(env: Path, capsys: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's 'call ... failed' log line came before the FAILED line with the same
    reason: each failure twice on stderr (a review). An operator's CALLMOOD_LOG_LEVEL still
    gets the log line."""
    import logging

    (env / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    with caplog.at_level(logging.WARNING):
        assert main(["analyze", str(env / "broken.wav")]) == 1
    assert "FAILED" in capsys.readouterr().err
    assert not [r for r in caplog.records if r.name == "worker.jobs"]
    assert logging.getLogger("worker.jobs").level == logging.NOTSET   # as it was
    monkeypatch.setenv("CALLMOOD_LOG_LEVEL", "WARNING")
    with caplog.at_level(logging.WARNING):
        assert main(["analyze", "--reprocess", str(env / "broken.wav")]) == 1
    assert [r for r in caplog.records if r.name == "worker.jobs" and "failed" in r.getMessage()]


def test_analyze_fails_one_file_on_a_storage_hiccup_and_goes_on(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A TransientError reading the second of three files (EIO from a network share) ended
    the whole run, the third file never tried and the second left 'processing' (a review):
    with no Celery retry in `analyze`, that file fails with the reason, the others go on."""
    import soundfile as sf

    import worker.jobs
    from worker.errors import TransientError

    paths = []
    for i in range(3):
        paths.append(env / f"call-{i}.wav")
        sf.write(paths[-1], 0.1 * np.sin(np.arange(8000 * (2 + i)) * 2 * np.pi * 220 / 8000),
                 8000, subtype="PCM_16")
    real = worker.jobs._analyze

    def hiccup(uri: str, settings: Settings) -> object:
        if uri.endswith("call-1.wav"):
            raise TransientError("storage unavailable: reading call-1.wav failed (EIO)")
        return real(uri, settings)

    monkeypatch.setattr(worker.jobs, "_analyze", hiccup)
    assert main(["analyze", *map(str, paths)]) == 1
    err = capsys.readouterr().err
    assert "FAILED call-1.wav" not in err and f"FAILED {paths[1]}: storage unavailable" in err
    assert "not retried here: callmood analyze --reprocess runs it again" in err
    assert err.count("done   ") == 2
    assert main(["calls"]) == 0
    listed = capsys.readouterr().out
    assert "processing" not in listed and listed.count(" done ") == 2 and " failed " in listed
    monkeypatch.setattr(worker.jobs, "_analyze", real)
    assert main(["analyze", str(paths[1])]) == 1           # without it: the failure stands
    assert "--reprocess" in capsys.readouterr().err
    assert main(["analyze", "--reprocess", str(paths[1])]) == 0


def test_failures_lists_the_latest_failures_first_and_says_how_many_more(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Listed by registration, an old call that failed again today fell past --limit, and
    the footer never said there were more (a review)."""
    for name in ("old", "new"):
        (env / f"{name}.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really " + name.encode())
    assert main(["analyze", str(env / "old.wav"), "--call-id", "F-old"]) == 1
    assert main(["analyze", str(env / "new.wav"), "--call-id", "F-new"]) == 1
    assert main(["analyze", "--reprocess", str(env / "old.wav"), "--call-id", "F-old"]) == 1
    capsys.readouterr()
    assert main(["failures", "--limit", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("F-old\t") and "F-new" not in out
    assert "1 of 2 (the latest first; --limit N lists more) failed call(s) listed" in err
    assert main(["failures"]) == 0
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == ["F-old", "F-new"]
    assert err.strip() == "2 failed call(s) listed"


def test_a_broken_installation_is_refused_before_any_call_is_claimed(
        env: Path, tmp_path: Path) -> None:
    """A worker (or `analyze`) whose onnxruntime cannot be imported passed the start check,
    which read the model card only, and failed every call it took (a review)."""
    import subprocess
    import sys

    from worker.settings import PACKAGE_DIR

    fake = tmp_path / "fake-site" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ImportError('libonnxruntime.so.1.20: cannot open shared object file')\n")
    (env / "call.wav").write_bytes(b"RIFF")
    environment = {**os.environ,
                   "PYTHONPATH": os.pathsep.join([str(fake.parent), str(PACKAGE_DIR.parent)])}
    for command in (["analyze", str(env / "call.wav")], ["worker"]):
        done = subprocess.run([sys.executable, "-m", "worker.cli", *command], env=environment,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "the analysis cannot be imported" in done.stderr
        assert "libonnxruntime.so.1.20" in done.stderr and "Traceback" not in done.stderr
    assert not (env / "data" / "callmood.sqlite").exists()   # nothing claimed, nothing made


@pytest.mark.parametrize("command", [["enqueue", "x.wav", "--call-id", "C-1", "--agent", "a"],
                                     ["retry", "--all-failed"], ["batch"], ["worker"],
                                     ["run", "x.wav"]])
def test_commands_that_cross_processes_refuse_the_in_process_broker(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        command: list[str]) -> None:
    """`callmood enqueue` on memory:// printed 'enqueued' into a broker that vanished with
    the process (a review)."""
    monkeypatch.setenv("CALLMOOD_BROKER_URL", "memory://")
    assert main(command) == 2
    assert "CALLMOOD_BROKER_URL=memory:// holds messages inside one process" in (
        capsys.readouterr().err)


def test_a_listing_piped_into_head_ends_without_a_traceback(env: Path) -> None:
    """`callmood calls | head` ended in a BrokenPipeError traceback (a review); a beat whose
    CALLMOOD_DATA_DIR cannot be a folder ended in a NotADirectoryError one."""
    import subprocess
    import sys

    from worker import db, store

    assert main(["db", "upgrade"]) == 0
    with db.session_scope(Settings.from_env()) as session:
        store.register_all(session, [store.CallRequest(uri=f"/in/{i}.wav",
                                                       external_call_id=f"PIPE-{i:05d}")
                                     for i in range(3000)])        # past a pipe's 64 KiB
    done = subprocess.run(f"'{sys.executable}' -m worker.cli calls | head -1", shell=True,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.stdout.startswith("PIPE-02999") and "Traceback" not in done.stderr, done.stderr
    (env / "a-file").write_text("")
    beat = subprocess.run([sys.executable, "-m", "worker.cli", "beat"], capture_output=True,
                          env={**os.environ, "CALLMOOD_DATA_DIR": str(env / "a-file" / "data"),
                               "CALLMOOD_INBOX_DIRS": str(env)},
                          text=True, timeout=120, check=False)
    assert beat.returncode == 2 and "Traceback" not in beat.stderr, beat.stderr[-2000:]
    assert "CALLMOOD_DATA_DIR" in beat.stderr and "cannot make the folder" in beat.stderr


def test_status_shows_the_files_a_scan_left_for_the_next_one(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`callmood batch` said "2 modified in the last 60 s left for the next scan" once; the
    batch's line in `callmood status` then read "0 enqueued, 0 skipped" (a review)."""
    inbox = env / "inbox"
    inbox.mkdir()
    for name in ("a.wav", "b.wav", "c.m4a"):
        (inbox / name).write_bytes(b"RIFF")          # written just now: too new, or ignored
    monkeypatch.setenv("CALLMOOD_INBOX_DIRS", str(inbox))
    assert main(["db", "upgrade"]) == 0
    assert main(["batch"]) == 0
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert ("0 enqueued, 0 skipped, 2 left for the next scan (still being written?), 1 "
            "ignored (not a recording's suffix); 0 pending") in out, out


def test_analyze_fails_a_fifo_or_a_device_named_like_a_recording(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`callmood analyze` hashed a FIFO (blocked for ever) or a link to /dev/zero (read for
    ever) before anything checked it is a regular file (a review): each fails with its
    reason, as `callmood run` already said."""
    os.mkfifo(env / "pipe.wav")
    (env / "zero.wav").symlink_to("/dev/zero")
    assert main(["analyze", str(env / "pipe.wav")]) == 1
    assert "pipe.wav is not a regular file" in capsys.readouterr().err
    assert main(["analyze", str(env / "zero.wav")]) == 1
    assert "not a regular file" in capsys.readouterr().err


def test_a_file_name_with_a_line_break_keeps_each_listing_one_line_a_call(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A newline in a file name split its row of `callmood failures` (tab-separated columns)
    and `calls` over several lines, and its FAILED line too (a review)."""
    (env / "bad\nname\t1.wav").write_bytes(b"x")
    assert main(["analyze", str(env / "bad\nname\t1.wav")]) == 1
    err = capsys.readouterr().err
    assert "FAILED " + str(env) + "/bad\\nname\\t1.wav:" in err and err.count("\n") == 1
    assert main(["failures"]) == 0
    (row,) = capsys.readouterr().out.splitlines()
    assert row.count("\t") == 4 and "bad\\nname\\t1.wav" in row
    assert main(["calls"]) == 0
    (row,) = capsys.readouterr().out.splitlines()
    assert "bad\\nname\\t1.wav" in row


def test_calls_lists_and_filters_by_agent_and_team(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The agents report's rows could not be traced to calls: `callmood calls` showed no
    agent and took no filter (a review)."""
    for name, agent, team in (("a.wav", "a-1", "blue"), ("b.wav", "a-2", "blue"),
                              ("c.wav", "a-1", "red")):
        (env / name).write_bytes(name.encode())
        assert main(["analyze", str(env / name), "--agent", agent, "--team", team]) == 1
    capsys.readouterr()
    assert main(["calls", "--agent", "a-1"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2 and all(" agent=a-1 " in r for r in rows)
    assert {r.split()[5] for r in rows} == {str(env / "a.wav"), str(env / "c.wav")}
    assert main(["calls", "--team", "blue", "--agent", "a-2"]) == 0
    (row,) = capsys.readouterr().out.splitlines()
    assert "agent=a-2 team=blue " + str(env / "b.wav") in row


def test_relabel_gives_a_stored_call_other_labels_without_a_new_analysis(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A corrected agent could reach a stored call only through a new analysis (--reprocess);
    sent again without it, it is refused (a review). `callmood relabel` sets the labels of the
    stored call and leaves its analysis and run alone."""
    from worker import db, store

    (env / "a.wav").write_bytes(b"x")
    assert main(["analyze", str(env / "a.wav"), "--call-id", "XL-1", "--agent", "Jos\u00e9"]) == 1
    capsys.readouterr()
    assert main(["relabel", "XL-1", "--agent", "ag-anna", "--team", "blue",
                 "--started-at", "2026-11-03T09:30+01:00"]) == 0
    assert capsys.readouterr().out == (
        "XL-1: agent_id 'Jos\u00e9' -> 'ag-anna'; team none -> 'blue'; started_at none -> "
        "'2026-11-03T09:30:00+01:00'\n")
    with db.session_scope(Settings.from_env()) as session:
        call = store.find_call(session, "XL-1")
        assert call is not None
        assert (call.agent_id, call.team, call.status, call.attempts) == (
            "ag-anna", "blue", "failed", 1)
        assert call.started_at == datetime(2026, 11, 3, 8, 30, tzinfo=UTC)
    assert main(["relabel", "XL-1", "--agent", "ag-anna"]) == 0
    assert capsys.readouterr().out == "XL-1: labels unchanged\n"
    assert main(["relabel", "XL-9", "--agent", "a"]) == 1
    assert "no call 'XL-9'" in capsys.readouterr().err
    # usage, named by the option (it said "agent_id: expected null or ...", exit 1)
    assert main(["relabel", "XL-1", "--agent", "bad\tname"]) == 2
    assert "--agent: expected 1-128 printable characters" in capsys.readouterr().err
    assert main(["relabel", "XL-1", "--started-at", "0001-01-01T00:00+01:00"]) == 2
    assert "--started-at: 0001-01-01T00:00:00+01:00 has no UTC time" in capsys.readouterr().err
    assert main(["relabel", "XL-1"]) == 2
    assert "give the labels to set" in capsys.readouterr().err
    assert main(["relabel", "XL-1", "--started-at", "2026-11-03T09:30"]) == 2
    assert "has no UTC offset" in capsys.readouterr().err
    # a call with a run outstanding: its message's labels would undo the relabel when the
    # run starts (a review found it undone without a word)
    with db.session_scope(Settings.from_env()) as session:
        queued = store.find_call(session, "XL-1")
        assert queued is not None
        queued.status = "pending"
    assert main(["relabel", "XL-1", "--agent", "ag-bob"]) == 1
    assert "has a run outstanding (pending)" in capsys.readouterr().err
    with db.session_scope(Settings.from_env()) as session:
        assert store.find_call(session, "XL-1").agent_id == "ag-anna"  # type: ignore[union-attr]
