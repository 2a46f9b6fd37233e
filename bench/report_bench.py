"""``python -m bench report``: time supervisor reports on a synthetic database.

Generates ``--calls`` analysed calls (about ``--segments`` utterances each, two parties
taking turns with pauses and some overtalk; a share of customers escalate from neutral to
angry) over ``--days`` days and 20 agents in 4 teams, stores them in a fresh SQLite file (or
the empty PostgreSQL database ``--postgres-url``), then times each report kind for one day,
one week of one team, and (``--full``) the whole range. The issue's target size is
``--calls 100000 --segments 40`` (about 4 M segment rows); the default is a quick run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from sqlalchemy import insert

from worker.constants import EMOTIONS
from worker.schema import PROBABILITY_COLUMNS, Call, Segment

AGENTS: Final[int] = 20
TEAMS: Final[int] = 4
ESCALATING_SHARE: Final[float] = 0.15
"""Share of synthetic calls whose customer drifts from neutral to angry."""
INSERT_CHUNK_ROWS: Final[int] = 20_000
START_DAY: Final[date] = date(2026, 1, 5)  # a Monday
MODEL_VERSION: Final[str] = "bench-synthetic"


@dataclass(frozen=True)
class SyntheticCalls:
    """Column arrays of calls and of their segments (``call_index`` into the calls)."""

    calls: list[dict[str, Any]]
    segments: dict[str, npt.NDArray[Any]]


def synthesize(n_calls: int, segments_per_call: int, days: int, seed: int = 0) -> SyntheticCalls:
    """Vectorised synthetic calls: ``n_calls`` x ``segments_per_call`` utterances."""
    rng = np.random.default_rng(seed)
    n, k = n_calls, segments_per_call
    length_s = rng.uniform(1.0, 8.0, (n, k))
    gap_s = rng.uniform(-0.8, 2.5, (n, k))           # negative: the next party talks over
    start_s = np.cumsum(np.concatenate([np.full((n, 1), 0.5), (length_s + gap_s)[:, :-1]],
                                       axis=1), axis=1).clip(min=0.0)
    end_s = start_s + length_s
    switch = rng.random((n, k)) < 0.8
    role_is_customer = (np.cumsum(switch, axis=1) + rng.integers(0, 2, (n, 1))) % 2 == 1
    escalating = rng.random(n) < ESCALATING_SHARE
    position = np.linspace(0.0, 1.0, k)[None, :]
    angry_weight = np.where(escalating[:, None] & role_is_customer, 0.3 + 6.0 * position, 0.3)
    alpha = np.full((n, k, len(EMOTIONS)), 0.4)
    alpha[:, :, EMOTIONS.index("neutral")] = 3.0
    alpha[:, :, EMOTIONS.index("angry")] = angry_weight
    gamma = rng.gamma(alpha)
    probabilities = gamma / gamma.sum(axis=2, keepdims=True)
    best = probabilities.argmax(axis=2)
    day_offsets = rng.integers(0, max(days, 1), n)
    second_offsets = rng.integers(8 * 3600, 18 * 3600, n)
    agent = rng.integers(0, AGENTS, n)
    base = datetime.combine(START_DAY, datetime.min.time(), tzinfo=UTC)
    calls = [{
        "external_call_id": f"bench-{i:07d}", "source_uri": f"file:///bench/{i:07d}.wav",
        "agent_id": f"agent-{agent[i]:02d}", "team": f"team-{agent[i] % TEAMS}",
        "started_at": base + timedelta(days=int(day_offsets[i]), seconds=int(second_offsets[i])),
        "duration_s": float(end_s[i, -1] + 1.0), "channels": 2, "sample_rate": 8000,
        "status": "done", "model_version": MODEL_VERSION,
    } for i in range(n)]
    segments = {
        "call_index": np.repeat(np.arange(n), k),
        "channel": role_is_customer.astype(int).ravel(),
        "role": np.where(role_is_customer, "customer", "agent").ravel(),
        "start_s": start_s.ravel().round(3), "end_s": end_s.ravel().round(3),
        "emotion": np.asarray(EMOTIONS)[best].ravel(),
        "confidence": probabilities.max(axis=2).ravel(),
        **{column: probabilities[:, :, j].ravel()
           for j, column in enumerate(PROBABILITY_COLUMNS.values())},
    }
    return SyntheticCalls(calls=calls, segments=segments)


def _chunks(total: int, size: int) -> Iterator[slice]:
    for begin in range(0, total, size):
        yield slice(begin, min(begin + size, total))


def populate(url: str, data: SyntheticCalls) -> None:
    """Migrate ``url`` to head and insert ``data`` (chunked executemany)."""
    from worker.db import make_engine, upgrade

    upgrade(url)
    engine = make_engine(url)
    ids: list[int] = []
    with engine.begin() as connection:
        for part in _chunks(len(data.calls), INSERT_CHUNK_ROWS):
            rows = data.calls[part]
            connection.execute(insert(Call), rows)
        found = dict(connection.execute(
            Call.__table__.select().with_only_columns(Call.external_call_id, Call.id)).all())
        ids = [int(found[c["external_call_id"]]) for c in data.calls]
    call_ids = np.asarray(ids)[data.segments["call_index"]]
    names = [c for c in data.segments if c != "call_index"]
    total = len(call_ids)
    for part in _chunks(total, INSERT_CHUNK_ROWS * 5):
        columns = {name: data.segments[name][part].tolist() for name in names}
        rows = [dict(zip(columns, values, strict=True), call_id=call_id,
                     model_version=MODEL_VERSION)
                for call_id, *values in zip(call_ids[part].tolist(), *columns.values(),
                                            strict=True)]
        with engine.begin() as connection:
            connection.execute(insert(Segment), rows)


def time_reports(url: str, days: int, full: bool,
                 out_dir: Path) -> list[tuple[str, str, int, int, float, float]]:
    """(scope, kind, rows, calls selected, load seconds, total seconds) per report kind and
    filter scope; total = SQL read + pandas + CSV write, as ``callmood report`` does it."""
    from analytics.export import write_csv
    from analytics.queries import ReportFilter, load_calls, load_filtered_segments, report_session
    from analytics.reports import REPORT_KINDS, report_from_frames, round_for_export

    last_day = START_DAY + timedelta(days=max(days, 1) - 1)
    scopes: list[tuple[str, ReportFilter]] = [
        ("one day", ReportFilter(date_from=START_DAY, date_to=START_DAY)),
        ("one week, one team", ReportFilter(date_from=START_DAY,
                                            date_to=START_DAY + timedelta(days=6),
                                            team="team-1")),
        ("one agent, all days", ReportFilter(date_from=START_DAY, date_to=last_day,
                                             agent="agent-03")),
    ]
    if full:
        scopes.append(("everything", ReportFilter(date_from=START_DAY, date_to=last_day)))
    results = []
    for scope, where in scopes:
        for kind in REPORT_KINDS:
            began = time.perf_counter()
            with report_session(url) as session:
                calls = load_calls(session, where)
                segments = load_filtered_segments(session, where)
            loaded = time.perf_counter()
            report = report_from_frames(kind, calls, segments)
            write_csv(round_for_export(report), out_dir / f"{kind}.csv")
            done = time.perf_counter()
            results.append((scope, kind, len(report), len(calls), loaded - began,
                            done - began))
    return results


def per_call_ratio(results: Sequence[tuple[str, str, int, int, float, float]], scope: str,
                   kind: str) -> float:
    """A report's seconds per selected call in ``scope`` over the same report's for the first
    scope (one day), measured in the same run: about 1 when its cost follows the calls a
    filter selects, not the table's size (NaN when a scope selects no call)."""
    def per_call(wanted: str) -> float:
        row = next(r for r in results if r[0] == wanted and r[1] == kind)
        return row[5] / row[3] if row[3] else float("nan")
    return per_call(scope) / per_call(results[0][0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench report", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="calls to generate (2000)")
    parser.add_argument("--segments", type=int, default=40, help="utterances per call (40)")
    parser.add_argument("--days", type=int, default=90, help="days the calls spread over (90)")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database to use as well")
    parser.add_argument("--no-sqlite", action="store_true",
                        help="skip SQLite (time --postgres-url only)")
    parser.add_argument("--full", action="store_true", help="also time the whole range")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    data = synthesize(args.calls, args.segments, args.days, args.seed)
    print(f"synthesised {args.calls} calls, {len(data.segments['role'])} segments in "
          f"{time.perf_counter() - began:.1f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="callmood-report-bench-") as tmp:
        urls = [] if args.no_sqlite else [("sqlite", f"sqlite:///{Path(tmp) / 'bench.sqlite'}")]
        if args.postgres_url:
            urls.append(("postgresql", args.postgres_url))
        for backend, url in urls:
            began = time.perf_counter()
            populate(url, data)
            print(f"{backend}: loaded in {time.perf_counter() - began:.1f} s", file=sys.stderr)
            print(f"\n{backend}, {args.calls} calls x {args.segments} segments, {args.days} days")
            print(f"{'scope':<22} {'report':<9} {'rows':>8} {'calls':>7} {'read s':>8} "
                  f"{'total s':>8} {'per call vs one day':>20}")
            results = time_reports(url, args.days, args.full, Path(tmp))
            for scope, kind, rows, calls, read_s, total_s in results:
                print(f"{scope:<22} {kind:<9} {rows:>8} {calls:>7} {read_s:>8.2f} "
                      f"{total_s:>8.2f} {per_call_ratio(results, scope, kind):>19.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
