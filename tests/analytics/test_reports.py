"""End to end: segment rows in a real database (SQLite, PostgreSQL) -> reports, CSV, PNG."""

from __future__ import annotations

import argparse
import csv
import errno
import io
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from analytics.cli import add_report_parser, run_report
from analytics.queries import ReportFilter, counted_as
from analytics.reports import REPORT_COLUMNS, build_report, round_for_export
from tests.analytics.frames import ESCALATING, frame, one_hot
from worker.db import session_scope, upgrade
from worker.errors import ConfigError, TransientError
from worker.schema import Call, Segment
from worker.settings import Settings
from worker.store import settle_recording

EVIL_AGENT = "=HYPERLINK(\"http://evil.example\",\"x\")"
CALM = frame(one_hot("c-bob", "agent", 0.0, 5.0, "neutral"),
             one_hot("c-bob", "customer", 6.0, 10.0, "sad"),
             one_hot("c-bob", "customer", 10.0, 12.0, "neutral"))


def _add_call(session: object, external_id: str, agent: str | None, team: str | None,
              started: datetime | None,
              segments: pd.DataFrame, status: str = "done", duration_s: float | None = None,
              model_version: str | None = "v-test", content_sha256: str | None = None) -> None:
    call = Call(external_call_id=external_id, source_uri=f"file:///{external_id}.wav",
                agent_id=agent, team=team, started_at=started, duration_s=duration_s,
                channels=2, sample_rate=8000, status=status,
                model_version=model_version, content_sha256=content_sha256)
    for row in segments.to_dict("records"):
        call.segments.append(Segment(
            channel=0 if row["role"] == "agent" else 1, role=row["role"],
            start_s=row["start_s"], end_s=row["end_s"], emotion=row["emotion"],
            confidence=row["confidence"], model_version="v-test",
            **{k: v for k, v in row.items() if str(k).startswith("p_")}))
    session.add(call)  # type: ignore[attr-defined]


def _populate(url: str) -> None:
    upgrade(url)
    with session_scope(url) as session:
        _add_call(session, "c-a", EVIL_AGENT, "t1", datetime(2026, 11, 2, 10, 0, tzinfo=UTC),
                  ESCALATING, duration_s=30.0)
        _add_call(session, "c-bob", "bob", "t2", datetime(2026, 11, 4, 23, 30, tzinfo=UTC), CALM)
        _add_call(session, "c-late", "bob", "t2", datetime(2026, 11, 5, 0, 0, tzinfo=UTC), CALM)
        # never analysed (a corrupt file, say): no segments, no model version
        _add_call(session, "c-failed", "bob", "t2", datetime(2026, 11, 3, tzinfo=UTC),
                  CALM.iloc[:0], status="failed", model_version=None)
        # analysed once; its re-run failed: its last analysis stays reported
        _add_call(session, "c-rerun", "dee", "t2", datetime(2026, 11, 6, tzinfo=UTC),
                  CALM.assign(call="c-rerun"), status="failed")
        _add_call(session, "c-nostart", "cy", "t3", None, CALM.assign(call="c-nostart"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def report_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = (f"sqlite:///{tmp_path / 'reports.sqlite'}" if request.param == "sqlite"
           else str(request.getfixturevalue("postgres_url")))
    _populate(url)
    yield url


def test_filters_by_inclusive_days_agent_team_and_status(report_db: str) -> None:
    with session_scope(report_db) as session:
        days = build_report("calls", session, date(2026, 11, 2), date(2026, 11, 4))
        bob = build_report("calls", session, agent="bob")
        team = build_report("stress", session, team="t1")
        late = build_report("calls", session, date(2026, 11, 5), date(2026, 11, 5))
    assert days["call"].tolist() == ["c-a", "c-bob"]  # oldest first, unanalysed call left out
    assert bob["call"].tolist() == ["c-bob", "c-late"]
    assert team["call"].tolist() == ["c-a"] and team["rank"].tolist() == [1]
    assert late["call"].tolist() == ["c-late"]
    with session_scope(report_db) as session:
        everything = build_report("calls", session)
    # no start: last; c-rerun's re-run failed, its last analysis is still reported
    assert everything["call"].tolist() == ["c-a", "c-bob", "c-late", "c-rerun", "c-nostart"]
    assert pd.isna(everything["started_at"].iloc[4])
    a = days.iloc[0]
    assert a["customer_stress"] == pytest.approx(100 * 18 / 23)
    assert a["escalation_reason"] == "sustained+rise"
    assert a["started_at"] == pd.Timestamp("2026-11-02T10:00Z")


def test_segments_are_read_for_analysed_calls_only(report_db: str) -> None:
    from analytics.queries import load_segments

    with session_scope(report_db) as session:
        every = load_segments(session)
        ids = {c.external_call_id: c.id for c in session.query(Call)}
        two = load_segments(session, [ids["c-bob"], ids["c-failed"]])
    # c-rerun's re-run failed: the segments of its last analysis are still reported
    assert sorted(every["call"].unique()) == ["c-a", "c-bob", "c-late", "c-nostart", "c-rerun"]
    assert two["call"].unique().tolist() == ["c-bob"] and len(two) == len(CALM)


def test_segments_are_read_in_chunks_with_each_repeated_string_held_once(
        report_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A month's report read every row at once (Row objects, tuples, then the frame: 2.5 GB
    for 1.6 M segments, a review). Read two rows at a time, the frame is the one a single
    read builds, dtypes included, and a call's id is one string object on all its rows."""
    from sqlalchemy import select

    from analytics import queries
    from analytics.queries import SEGMENT_COLUMNS, load_filtered_segments
    from worker.schema import PROBABILITY_COLUMNS

    with session_scope(report_db) as session:
        everything = ReportFilter()
        whole = load_filtered_segments(session, everything)
        query = (select(Call.external_call_id, Call.agent_id, Segment.channel, Segment.role,
                        Segment.start_s, Segment.end_s, Segment.emotion, Segment.confidence,
                        Segment.model_version,
                        *[getattr(Segment, c) for c in PROBABILITY_COLUMNS.values()])
                 .join(Call, Call.id == Segment.call_id)
                 .where(Call.model_version.is_not(None))
                 .order_by(Call.external_call_id, Segment.start_s, Segment.channel))
        at_once = pd.DataFrame([tuple(r) for r in session.execute(query).all()],
                               columns=list(SEGMENT_COLUMNS))
        monkeypatch.setattr(queries, "READ_CHUNK_ROWS", 2)
        chunked = load_filtered_segments(session, everything)
    assert len(whole) > 4
    pd.testing.assert_frame_equal(whole, at_once)
    pd.testing.assert_frame_equal(chunked, at_once)
    bob = chunked.index[chunked["call"] == "c-bob"]
    assert len(bob) == len(CALM) and chunked.at[bob[0], "call"] is chunked.at[bob[-1], "call"]
    assert chunked.at[bob[1], "role"] is chunked.at[bob[2], "role"]    # customer, customer


def test_chunked_reads_type_a_column_null_on_a_whole_chunk_as_one_read_does(
        report_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls without an agent fill the first chunks: their agent_id, team and queue were read
    there as object (None) and the joined column came back object where one read gives str
    (NaN), even at the default size when 500 such calls share a slice of ids (a review).
    The default chunk is larger than this database: one chunk, the single read itself."""
    from analytics import queries
    from analytics.queries import load_calls, load_filtered_segments, load_segments
    from worker import store

    with session_scope(report_db) as session:
        for name in ("a-0", "a-1"):
            _add_call(session, name, None, None, datetime(2026, 10, 1, tzinfo=UTC),
                      CALM.assign(call=name))
    everything = ReportFilter()
    with session_scope(report_db) as session:
        ids = [c.id for c in session.query(Call)]
        one_read = (load_filtered_segments(session, everything), load_calls(session, everything),
                    load_segments(session, ids))
        monkeypatch.setattr(queries, "READ_CHUNK_ROWS", 2)
        monkeypatch.setattr(store, "LOOKUP_CHUNK", 1)        # in_chunks' slices of ids
        chunked = (load_filtered_segments(session, everything), load_calls(session, everything),
                   load_segments(session, ids))
        none = load_segments(session, [])
    assert one_read[0]["agent_id"].isna().sum() == 2 * len(CALM)
    for single, joined in zip(one_read, chunked, strict=True):
        pd.testing.assert_frame_equal(joined, single)
    # `callmood run` whose every file failed asks for no call's segments (it raised)
    assert none.empty and list(none.columns) == list(one_read[0].columns)


def test_segments_of_more_calls_than_one_statement_may_name_are_all_read(report_db: str
                                                                         ) -> None:
    """`callmood run` over 70,000 calls read their segments with every id in one IN list:
    PostgreSQL refuses over 65,535 bound parameters, which read as "database unavailable"
    after everything had been analysed (a review). The ids go in slices, no statement names
    more than 65,535 of them, and every row of every slice comes back, ordered as one read."""
    from sqlalchemy import event

    from analytics.queries import load_segments
    from worker.store import LOOKUP_CHUNK

    bound: list[int] = []

    def count(conn: object, cursor: object, statement: str, parameters: object,
              context: object, executemany: bool) -> None:
        bound.append(len(parameters) if isinstance(parameters, tuple | list | dict) else 0)

    with session_scope(report_db) as session:
        ids = {c.external_call_id: c.id for c in session.query(Call)}
        expected = load_segments(session)
        # the real ids at both ends and in between, among ids of calls that do not exist
        wanted = [ids["c-a"], *range(1_000, 71_000), ids["c-late"], ids["c-bob"],
                  ids["c-rerun"], ids["c-nostart"], ids["c-failed"], ids["c-bob"]]
        assert len(set(wanted)) > 65_535 > LOOKUP_CHUNK
        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", count)
        try:
            got = load_segments(session, wanted)
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert bound and max(bound) <= 65_535
    pd.testing.assert_frame_equal(got, expected)


def test_timeline_and_agents_reports(report_db: str) -> None:
    with session_scope(report_db) as session:
        grid = build_report("timeline", session, date(2026, 11, 2), date(2026, 11, 4), bin_s=5.0)
        agents = build_report("agents", session, period="day")
        teams = build_report("agents", session, by="team")
    assert list(grid.columns) == list(REPORT_COLUMNS["timeline"])
    # c-a: 30 s -> 6 bins, c-bob: 12 s -> 3 bins; two parties each
    assert grid.groupby("call").size().to_dict() == {"c-a": 12, "c-bob": 6}
    assert agents[["group", "calls"]].values.tolist() == [
        [EVIL_AGENT, 1], ["bob", 1], ["bob", 1], ["cy", 1], ["dee", 1]]
    assert agents["period_start"].dt.strftime("%Y-%m-%d").tolist()[:3] == [
        "2026-11-02", "2026-11-04", "2026-11-05"]
    assert teams.set_index("group")["escalated_share"].to_dict() == {"t1": 1.0, "t2": 0.0,
                                                                    "t3": 0.0}


def _run(url: str, tmp_path: Path, *argv: str, timezone: str = "UTC") -> int:
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *argv])
    settings = Settings.from_env({"CALLMOOD_DATABASE_URL": url, "CALLMOOD_TIMEZONE": timezone,
                                  "CALLMOOD_DATA_DIR": str(tmp_path / "data")})
    code: int = args.func(args, settings)
    assert args.func is run_report
    return code


@pytest.mark.parametrize("report_db", ["sqlite"], indirect=True)
def test_python_m_analytics_cli_runs_the_report_command(report_db: str, tmp_path: Path) -> None:
    """It ran nothing and exited 0: a cron job on it 'succeeded' every night without a
    report. With or without the word ``report``, it is ``callmood report``."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CALLMOOD_DATABASE_URL": report_db,
           "CALLMOOD_DATA_DIR": str(tmp_path / "data")}
    for i, argv in enumerate((["calls"], ["report", "calls"])):
        out = tmp_path / f"calls-{i}.csv"
        done = subprocess.run([sys.executable, "-m", "analytics.cli", *argv, "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert out.read_text().startswith("call,")
    bad = subprocess.run([sys.executable, "-m", "analytics.cli", "nonsense"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2


def test_cli_writes_safe_csv_and_pngs(report_db: str, tmp_path: Path) -> None:
    out = tmp_path / "stress.csv"
    plots = tmp_path / "png"
    assert _run(report_db, tmp_path, "stress", "--from", "2026-11-02", "--to", "2026-11-04",
                "--out", str(out), "--bom", "--plots", str(plots)) == 0
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert list(rows[0]) == list(REPORT_COLUMNS["stress"])
    assert [r["call"] for r in rows] == ["c-a", "c-bob"]
    assert rows[0]["agent_id"] == "'" + EVIL_AGENT  # formula neutralised
    assert rows[0]["started_at"] == "2026-11-02T10:00:00Z"
    assert rows[0]["customer_stress"] == "78.3"
    assert rows[0]["escalated"] == "True"
    pngs = sorted(p.name for p in plots.iterdir())
    assert pngs == ["c-a.png", "c-bob.png", "plots.csv"]
    with (plots / "c-a.png").open("rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert (plots / "c-a.png").stat().st_size > 20_000
    assert (plots / "plots.csv").read_text() == "rank,call,png\n1,c-a,c-a.png\n2,c-bob,c-bob.png\n"

    # the folder reused for a report of one day: the other day's picture went stale beside
    # it, with nothing to tell them apart (a review); a file put there by hand stays
    (plots / "mine.png").write_bytes(b"not ours")
    assert _run(report_db, tmp_path, "stress", "--from", "2026-11-02", "--to", "2026-11-02",
                "--out", str(out), "--plots", str(plots)) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["c-a.png", "mine.png", "plots.csv"]
    assert (plots / "plots.csv").read_text() == "rank,call,png\n1,c-a,c-a.png\n"
    # an index edited by hand into something unreadable deletes nothing
    (plots / "plots.csv").write_text("rank;call\n")
    assert _run(report_db, tmp_path, "stress", "--from", "2026-11-03", "--to", "2026-11-04",
                "--out", str(out), "--plots", str(plots)) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["c-a.png", "c-bob.png", "mine.png",
                                                       "plots.csv"]


def test_days_are_the_sites_calendar_days(report_db: str, tmp_path: Path) -> None:
    """CALLMOOD_TIMEZONE=America/New_York: c-bob (23:30 UTC) and c-late (00:00 UTC the next
    day) both started on the evening of 4 November there, so --from/--to and --period day
    count them on that day; in UTC they fall on two."""
    def rows(kind: str, *argv: str, timezone: str) -> list[dict[str, str]]:
        out = tmp_path / f"{kind}-{timezone.replace('/', '-')}.csv"
        assert _run(report_db, tmp_path, kind, *argv, "--out", str(out),
                    timezone=timezone) == 0
        return list(csv.DictReader(out.open(encoding="utf-8")))

    new_york = rows("calls", "--from", "2026-11-04", "--to", "2026-11-04",
                    timezone="America/New_York")
    assert [r["call"] for r in new_york] == ["c-bob", "c-late"]
    assert new_york[1]["started_at"] == "2026-11-05T00:00:00Z"  # times stay UTC
    # and the site's own clock beside them: a pivot of the CSV by the date of started_local
    # puts both on the 4th, as --from/--to did (started_at's UTC date put c-late on the 5th)
    assert [r["started_local"] for r in new_york] == ["2026-11-04T18:30:00-05:00",
                                                      "2026-11-04T19:00:00-05:00"]
    for kind in ("stress", "timeline"):
        local = {r["call"]: r["started_local"] for r in rows(
            kind, "--agent", "bob", timezone="America/New_York")}
        assert local == {"c-bob": "2026-11-04T18:30:00-05:00",
                         "c-late": "2026-11-04T19:00:00-05:00"}, kind
    utc = rows("calls", "--from", "2026-11-04", "--to", "2026-11-04", timezone="UTC")
    assert [r["call"] for r in utc] == ["c-bob"]
    by_day = rows("agents", "--period", "day", "--agent", "bob", timezone="America/New_York")
    assert [(r["period_start"], r["calls"]) for r in by_day] == [("2026-11-04", "2")]
    by_utc_day = rows("agents", "--period", "day", "--agent", "bob", timezone="UTC")
    assert [r["period_start"] for r in by_utc_day] == ["2026-11-04", "2026-11-05"]
    with pytest.raises(ConfigError, match="timezone='Mars/Olympus'"):
        ReportFilter(timezone="Mars/Olympus")
    # the calendar's ends bound nothing (they overflowed into a traceback)
    everything = rows("calls", "--from", "0001-01-01", "--to", "9999-12-31",
                      timezone="Asia/Tokyo")
    assert len(everything) == len(rows("calls", timezone="Asia/Tokyo"))


def test_empty_result_is_a_csv_with_headers(report_db: str, tmp_path: Path) -> None:
    for kind in REPORT_COLUMNS:
        out = tmp_path / f"{kind}.csv"
        assert _run(report_db, tmp_path, kind, "--from", "2030-01-01", "--to", "2030-01-31",
                    "--out", str(out)) == 0
        assert out.read_text().splitlines() == [",".join(REPORT_COLUMNS[kind])]


def test_every_per_call_report_names_the_model_that_scored_it(report_db: str) -> None:
    """During a reprocess after a model upgrade the stress ranking mixed calls scored by two
    models without a word (only calls and agents said so, a review): stress and timeline
    rows carry the call's model_version (and the timeline its team) too."""
    with session_scope(report_db) as session:
        session.execute(text("UPDATE calls SET model_version = 'v2' "
                             "WHERE external_call_id = 'c-bob'"))
        stress = build_report("stress", session)
        grid = build_report("timeline", session)
        calls = build_report("calls", session)
    versions = calls.set_index("call")["model_version"].to_dict()
    assert versions["c-bob"] == "v2" and len(set(versions.values())) == 2
    assert stress.set_index("call")["model_version"].to_dict() == versions
    assert grid.groupby("call")["model_version"].unique().map(list).to_dict() == {
        call: [version] for call, version in versions.items() if call in set(grid["call"])}
    assert grid.set_index("call")["team"].groupby("call").first().to_dict() == (
        calls.set_index("call")["team"][lambda t: t.index.isin(grid["call"])].to_dict())


@pytest.mark.parametrize(("argv", "why"), [
    (("calls", "--period", "week"), "--period applies to the agents report only"),
    (("stress", "--by", "team"), "--by applies to the agents report only"),
    (("calls", "--bin-s", "60"), "--bin-s applies to the timeline report and --plots only"),
    (("agents", "--max-plots", "3"), "--max-plots applies to --plots only"),
])
def test_an_option_the_report_would_not_use_is_refused(
        report_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        argv: tuple[str, ...], why: str) -> None:
    """`calls --period week --by team --bin-s 60 --max-plots 3` wrote the plain per-call CSV,
    byte for byte, without a word (a review): a supervisor asking for weeks got calls."""
    out = tmp_path / "x.csv"
    assert _run(report_db, tmp_path, *argv, "--out", str(out)) == 2
    assert why in capsys.readouterr().err
    assert not out.exists()
    # where they apply they are taken
    assert _run(report_db, tmp_path, "timeline", "--bin-s", "10", "--out", str(out)) == 0
    assert _run(report_db, tmp_path, "agents", "--period", "week", "--by", "team",
                "--out", str(out)) == 0


@pytest.mark.parametrize("report_db", ["sqlite"], indirect=True)
def test_a_report_written_where_the_picture_index_goes_is_refused(
        report_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--out DIR/plots.csv --plots DIR` wrote the report, then the picture index over it,
    and exited 0 saying it wrote the report (a review). Refused before anything is written."""
    plots = tmp_path / "png"
    assert _run(report_db, tmp_path, "stress", "--out", str(tmp_path / "stress.csv"),
                "--plots", str(plots)) == 0
    before = {p.name: p.read_bytes() for p in plots.iterdir()}
    capsys.readouterr()
    for out in (plots / "plots.csv", tmp_path / "png" / ".." / "png" / "plots.csv"):
        assert _run(report_db, tmp_path, "stress", "--out", str(out),
                    "--plots", str(plots)) == 2
        assert f"--out {out} is the picture index --plots writes" in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in plots.iterdir()} == before
    fresh = tmp_path / "fresh"
    assert _run(report_db, tmp_path, "calls", "--out", str(fresh),
                "--plots", str(fresh)) == 2
    assert "name one path" in capsys.readouterr().err and not fresh.exists()


def test_the_agents_report_says_whose_calls_its_empty_group_holds(
        report_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Calls without an agent id (the inbox scan's) were summed into a row with an empty
    group that --agent cannot select, and escalations there looked like nobody's (a
    review). The command says how many calls that row holds."""
    out = tmp_path / "agents.csv"
    with session_scope(report_db) as session:
        _add_call(session, "c-inbox", None, None, None, CALM.assign(call="c-inbox"))
    assert _run(report_db, tmp_path, "agents", "--out", str(out)) == 0
    rows = {r["group"]: r for r in csv.DictReader(out.open())}
    assert rows[""]["calls"] == "1"
    assert ("callmood report agents: 1 analysed call has no agent id and is counted in the "
            "rows with an empty group") in capsys.readouterr().err
    assert _run(report_db, tmp_path, "agents", "--by", "team", "--out", str(out)) == 0
    teams = {r["group"]: r["calls"] for r in csv.DictReader(out.open())}
    assert teams[""] == "1" and "1 analysed call has no team" in capsys.readouterr().err
    assert _run(report_db, tmp_path, "agents", "--agent", "bob", "--out", str(out)) == 0
    assert "empty group" not in capsys.readouterr().err


def test_a_date_filter_says_how_many_calls_without_a_start_it_leaves_out(
        report_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Calls registered by the inbox scan, `callmood analyze` or `callmood run` have no
    start time: a report with --from/--to left them out without a word (a review). It says
    how many on stderr; the CSV is as before."""
    out = tmp_path / "stress.csv"
    note = "left out of --from/--to"
    assert _run(report_db, tmp_path, "stress", "--from", "2026-11-02", "--to", "2026-11-04",
                "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert ("callmood report stress: 1 analysed call has no start time and is left out of "
            "--from/--to") in err
    assert [r["call"] for r in csv.DictReader(out.open())] == ["c-a", "c-bob"]
    with session_scope(report_db) as session:   # another one, of no agent (the inbox's)
        _add_call(session, "c-inbox", None, None, None, CALM.assign(call="c-inbox"))
    assert _run(report_db, tmp_path, "calls", "--to", "2026-11-04", "--out", str(out)) == 0
    assert "2 analysed calls have no start time and are left out" in capsys.readouterr().err
    # none to tell: no date filter, one that bounds nothing, or another agent's calls only
    quiet = [(("calls",), "UTC"),
             (("calls", "--agent", "bob", "--from", "2026-11-02"), "UTC"),
             (("calls", "--from", "0001-01-01", "--to", "9999-12-31"), "Asia/Tokyo")]
    for argv, zone in quiet:
        assert _run(report_db, tmp_path, *argv, "--out", str(out), timezone=zone) == 0
        assert note not in capsys.readouterr().err, argv
    assert {"c-nostart", "c-inbox"} <= {r["call"] for r in csv.DictReader(out.open())}


def test_reversed_range_is_refused(report_db: str, tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    assert _run(report_db, tmp_path, "calls", "--from", "2026-11-04", "--to", "2026-11-02",
                "--out", str(out)) == 2
    assert not out.exists()


def test_bad_arguments_exit_from_argparse(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _run("sqlite://", tmp_path, "calls", "--from", "02/11/2026", "--out", "x.csv")
    assert "'02/11/2026' is not a day YYYY-MM-DD\n" in capsys.readouterr().err
    # a day in the format that is no day: why (it read as the format's fault, a review)
    with pytest.raises(SystemExit):
        _run("sqlite://", tmp_path, "calls", "--from", "2026-11-31", "--out", "x.csv")
    assert ("'2026-11-31' is not a day YYYY-MM-DD (day is out of range for month)"
            in capsys.readouterr().err)
    with pytest.raises(SystemExit):
        _run("sqlite://", tmp_path, "nonsense", "--out", "x.csv")


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="unknown report"):
        build_report("everything", session=None)  # type: ignore[arg-type]


def test_round_for_export_units_and_times() -> None:
    frame_in = pd.DataFrame({
        "started_at": pd.to_datetime(["2026-11-02T10:00:00.6Z", None], utc=True),
        "period_start": pd.to_datetime(["2026-11-02", "2026-11-09"], utc=True),
        "customer_stress": [12.345, 99.99], "talk_s": [1.23456, 2.0],
        "longest_high_stress_s": [20.456, 0.0],
        "silence_share": [0.12345, 1.0], "p_angry": [0.33333, 0.0], "turns": [3, 4]})
    out = round_for_export(frame_in)
    assert out["started_at"].tolist() == ["2026-11-02T10:00:00Z", None]
    assert out["period_start"].tolist() == ["2026-11-02", "2026-11-09"]
    assert out["customer_stress"].tolist() == [12.3, 100.0]
    assert out["talk_s"].tolist() == [1.23, 2.0]
    assert out["longest_high_stress_s"].tolist() == [20.46, 0.0]  # seconds, not points
    assert out["silence_share"].tolist() == [0.123, 1.0]
    assert out["p_angry"].tolist() == [0.333, 0.0]
    assert out["turns"].tolist() == [3, 4]
    assert frame_in["customer_stress"].iloc[0] == 12.345  # input untouched


def test_sqlite_report_reads_do_not_block_writers(tmp_path: Path) -> None:
    import sqlite3

    from analytics.queries import load_calls, report_session

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    _populate(url)
    with report_session(url) as session:
        assert len(load_calls(session, ReportFilter())) == 5
        # a worker takes the write lock while the report's read transaction is still open
        writer = sqlite3.connect(tmp_path / "r.sqlite", timeout=0.5, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE calls SET attempts = attempts + 1")
        writer.execute("COMMIT")
        writer.close()
        assert len(load_calls(session, ReportFilter())) == 5
        with pytest.raises(OperationalError, match="readonly"):  # PRAGMA query_only
            session.execute(text("DELETE FROM segments"))


@pytest.mark.postgres
def test_postgres_report_reads_see_one_snapshot(postgres_url: str) -> None:
    """A call whose re-run stores a new analysis between the report's two reads is reported
    with the analysis the first read saw, segments included (one REPEATABLE READ snapshot),
    and the report writes nothing."""
    from analytics.queries import load_calls, load_filtered_segments, report_session
    from tests.audio_fixtures import fake_analysis
    from worker.store import find_call, save_analysis

    _populate(postgres_url)
    with report_session(postgres_url) as session:
        calls = load_calls(session, ReportFilter())
        with session_scope(postgres_url) as worker:
            bob = find_call(worker, "c-bob")
            assert bob is not None
            save_analysis(worker, bob.id, fake_analysis(2, model_version="v-new"))
        segments = load_filtered_segments(session, ReportFilter())
        bob_rows = segments[segments["call"] == "c-bob"]
        assert calls.set_index("call").loc["c-bob", "model_version"] == "v-test"
        assert len(bob_rows) == len(CALM) and set(bob_rows["model_version"]) == {"v-test"}
        assert len(load_calls(session, ReportFilter())) == 5
        with pytest.raises(DBAPIError, match="read-only transaction"):
            session.execute(text("DELETE FROM segments"))
    with report_session(postgres_url) as session:  # a new report sees the new analysis
        segments = load_filtered_segments(session, ReportFilter())
        assert set(segments.loc[segments["call"] == "c-bob", "model_version"]) == {"v-new"}


def test_report_on_a_missing_sqlite_file_is_a_config_error(tmp_path: Path) -> None:
    from analytics.queries import report_session

    with pytest.raises(ConfigError, match="does not exist"), \
            report_session(f"sqlite:///{tmp_path / 'nope.sqlite'}"):
        pass
    assert not (tmp_path / "nope.sqlite").exists()



def test_report_on_a_sqlite_file_never_migrated_is_a_config_error(tmp_path: Path) -> None:
    """Set-up, not an outage: "no such table" once read as "database unavailable" (exit 1,
    as if a retry could help), while a missing file said how to create the schema."""
    import sqlite3

    from analytics.queries import load_calls, report_session

    sqlite3.connect(tmp_path / "empty.sqlite").close()
    with pytest.raises(ConfigError, match=r"no callmood tables \(run: callmood db upgrade\)"), \
            report_session(f"sqlite:///{tmp_path / 'empty.sqlite'}") as session:
        load_calls(session, ReportFilter())


@pytest.mark.parametrize("step", ["0.05", "0", "nan", "inf", "x", "0.125", "5.005"])
def test_a_timeline_step_under_a_tenth_of_a_second_or_finer_than_the_csv_is_refused(tmp_path: Path, step: str,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    with pytest.raises(SystemExit) as info:
        _run("sqlite://", tmp_path, "timeline", "--bin-s", step, "--out", "x.csv")
    assert info.value.code == 2
    # the refusal itself, not the usage line (which names --bin-s whatever went wrong)
    assert "argument --bin-s: " in capsys.readouterr().err


@pytest.mark.parametrize("step", ["0.1", "0.3", "0.15", "2.57", "5", "60"])
def test_a_timeline_step_in_hundredths_of_a_second_is_taken(step: str) -> None:
    """0.3 / 0.01 is 29.999999999999996 in floats: a whole number of hundredths all the same."""
    from analytics.cli import add_report_parser

    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers())
    args = parser.parse_args(["report", "timeline", "--out", "x.csv", "--bin-s", step])
    assert args.bin_s == float(step)


def test_segments_of_calls_not_listed_are_ignored() -> None:
    from analytics.reports import report_from_frames

    calls = pd.DataFrame({"call": ["c-bob"], "agent_id": ["bob"], "team": ["t2"],
                          "queue": [None], "started_at": pd.to_datetime(["2026-11-04"], utc=True),
                          "duration_s": [12.0], "model_version": ["v"]})
    segments = pd.concat([CALM, ESCALATING], ignore_index=True)  # "a" finished meanwhile
    grid = report_from_frames("timeline", calls, segments)
    assert set(grid["call"]) == {"c-bob"}
    assert report_from_frames("stress", calls, segments)["call"].tolist() == ["c-bob"]


def _callmood(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, *argv: str) -> int:
    """``callmood ARGV`` as run from a shell, on the database at ``url``."""
    from worker.cli import main

    monkeypatch.setenv("CALLMOOD_DATABASE_URL", url)
    monkeypatch.setenv("CALLMOOD_DATA_DIR", str(tmp_path / "data"))
    return main(list(argv))


@pytest.mark.postgres
def test_a_report_on_a_database_never_migrated_says_so(
        postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """On PostgreSQL it failed with a ProgrammingError traceback (relation "calls" does not
    exist) where the worker's commands ask for the upgrade."""
    out = tmp_path / "calls.csv"
    assert _callmood(monkeypatch, tmp_path, postgres_url, "report", "calls", "--out",
                     str(out)) == 2
    assert "this release needs" in capsys.readouterr().err and not out.exists()


def test_a_database_url_naming_a_file_that_is_not_sqlite_is_a_configuration_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """'file is not a database' escaped as a DatabaseError traceback from the report and the
    worker's commands alike."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database, but long enough for SQLite to read its header\n" * 20)
    url = f"sqlite:///{notes}"
    for argv in (("report", "calls", "--out", str(tmp_path / "c.csv")), ("calls",)):
        assert _callmood(monkeypatch, tmp_path, url, *argv) == 2
        assert "cannot be read: file is not a database" in capsys.readouterr().err


@pytest.mark.parametrize("report_db", ["sqlite"], indirect=True)
def test_a_plots_folder_that_cannot_be_made_is_named_before_the_report(
        report_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--plots under a file (or where the folder cannot be made) ended in a traceback after
    the CSV was written."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "stress.csv"
    assert _callmood(monkeypatch, tmp_path, report_db, "report", "stress", "--out", str(out),
                     "--plots", str(tmp_path / "afile" / "png")) == 2
    assert "cannot make the folder" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("report_db", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("code", "raised"), [(errno.ENOSPC, TransientError),
                                              (errno.EACCES, ConfigError)])
def test_a_full_disk_is_a_passing_error_and_a_read_only_folder_a_configuration_one(
        report_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int,
        raised: type[Exception]) -> None:
    """A full disk while writing the CSV exited 2, "configuration error" (a review): the same
    command succeeds once there is room (exit 1, TransientError)."""
    from analytics import export

    def failing(*args: object, **kwargs: object) -> Path:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(export, "write_csv", failing)
    with pytest.raises(raised, match=os.strerror(code)):
        _run(report_db, tmp_path, "calls", "--out", str(tmp_path / "calls.csv"))


def test_a_recording_analysed_under_two_call_ids_counts_once(
        report_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The inbox scan analysed a file under its content id, then the call-centre system sent
    it under its own id: both calls were counted in every report, the customer's stress
    twice in the agents' and days' figures (a review). Reports count the producer's call
    (its labels); they say how many they leave out, and `callmood calls` names the call
    counted instead. Two producer ids of one recording both count (dead air of one length)."""
    digest, other = "ab" * 32, "cd" * 32
    day = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    with session_scope(report_db) as session:
        _add_call(session, f"sha256-{digest}", None, None, None, CALM.assign(call="x"),
                  content_sha256=digest)                                   # the scan's
        _add_call(session, "cc-1", "carol", "t4", day, ESCALATING.assign(call="x"),
                  content_sha256=digest)                                   # the producer's
        _add_call(session, "cc-1-again", "dave", "t4", day, CALM.assign(call="x"),
                  content_sha256=digest)                                   # a second id
        _add_call(session, f"sha256-{other}", None, None, None, CALM.assign(call="y"),
                  content_sha256=other)                                    # no twin
        # a twin whose analysis failed counts nothing, so leaves nothing out
        _add_call(session, "cc-2", "carol", "t4", day, CALM.iloc[:0], status="failed",
                  model_version=None, content_sha256=other)
        session.flush()
        for recording in (digest, other):    # as worker.store.save_analysis does
            settle_recording(session, recording)
    out = tmp_path / "calls.csv"
    assert _run(report_db, tmp_path, "calls", "--out", str(out)) == 0
    called = [r["call"] for r in csv.DictReader(out.open())]
    assert {"cc-1", "cc-1-again", f"sha256-{other}"} <= set(called)
    assert f"sha256-{digest}" not in called
    assert ("callmood report calls: 1 analysed call holds a recording another call holds too "
            "and is left out, so each recording counts once") in capsys.readouterr().err
    assert _run(report_db, tmp_path, "agents", "--team", "t4", "--out", str(out)) == 0
    rows = {r["group"]: r["calls"] for r in csv.DictReader(out.open())}
    assert rows == {"carol": "1", "dave": "1"}
    assert "holds a recording" not in capsys.readouterr().err
    with session_scope(report_db) as session:
        ids = {external: i for external, i in
               session.execute(select(Call.external_call_id, Call.id))}
        assert counted_as(session, list(ids.values())) == {ids[f"sha256-{digest}"]: "cc-1"}


def test_a_report_says_which_calls_of_its_selection_hold_no_analysis(
        report_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A call whose analysis failed, or that is not analysed yet, is in no report: bob's
    agents row showed one call fewer than he took, without a word (a review). The command
    says how many of its selection it leaves out, and why; a call re-run and failed keeps
    its analysis and is in the report, so it is not among them."""
    out = tmp_path / "agents.csv"
    with session_scope(report_db) as session:
        _add_call(session, "c-queued", "bob", "t2", datetime(2026, 11, 4, 9, tzinfo=UTC),
                  CALM.iloc[:0], status="pending", model_version=None)
    assert _run(report_db, tmp_path, "agents", "--agent", "bob", "--out", str(out)) == 0
    assert ("callmood report agents: 2 calls of this selection hold no analysis and are not "
            "in the report: 1 failed (callmood failures lists why), 1 not analysed yet "
            "(pending or processing)") in capsys.readouterr().err
    assert _run(report_db, tmp_path, "calls", "--agent", "bob", "--from", "2026-11-04",
                "--out", str(out)) == 0
    assert ("1 call of this selection holds no analysis and is not in the report: 1 not "
            "analysed yet") in capsys.readouterr().err
    assert _run(report_db, tmp_path, "calls", "--team", "t1", "--out", str(out)) == 0
    assert "no analysis" not in capsys.readouterr().err


def test_a_report_for_an_agent_or_team_no_call_has_says_so(
        report_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--agent Bob` for bob wrote an empty report, exit 0: a typo read as a quiet day (a
    review). It still writes the empty report, and says no call has that id."""
    out = tmp_path / "calls.csv"
    assert _run(report_db, tmp_path, "calls", "--agent", "Bob", "--team", "t9",
                "--out", str(out)) == 0
    assert list(csv.DictReader(out.open())) == []
    assert ("callmood report calls: no call has --agent 'Bob' or --team 't9' (ids match "
            "exactly, case included") in capsys.readouterr().err
    # bob took calls, none that day: no such note
    assert _run(report_db, tmp_path, "calls", "--agent", "bob", "--from", "2026-11-01",
                "--to", "2026-11-01", "--out", str(out)) == 0
    assert "no call has" not in capsys.readouterr().err
