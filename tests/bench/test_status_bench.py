"""``python -m bench status`` measures what it says, on a small table (no timing asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.status_bench import measure


def test_the_processed_today_count_is_timed_with_each_index_in_turn(tmp_path: Path) -> None:
    from sqlalchemy import inspect

    from worker import db

    url = f"sqlite:///{tmp_path / 'status.sqlite'}"
    composite, status_only, today = measure(url, calls=300, days=30, repeats=3)
    assert composite > 0 and status_only > 0
    # calls finished evenly over 30 days: a thirtieth of them in the last 24 hours
    assert today == 11
    names = {ix["name"] for ix in inspect(db.make_engine(url)).get_indexes("calls")}
    assert "ix_bench_status" in names and "ix_calls_status_processed_at" not in names
    db.dispose_engines()
