"""``python -m bench recount`` measures what it says, on a small batch (no timing asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.recount_bench import measure


def test_the_recount_is_timed_with_each_index_in_turn(
        tmp_path: Path) -> None:
    from sqlalchemy import inspect

    from worker import db

    url = f"sqlite:///{tmp_path / 'recount.sqlite'}"
    covering, batch_only = measure(url, calls=200, repeats=3)
    assert covering > 0 and batch_only > 0
    # the second timing ran on the batch_id-only index: the benchmark's own database
    names = {ix["name"] for ix in inspect(db.make_engine(url)).get_indexes("calls")}
    assert "ix_bench_batch_id" in names and "ix_calls_batch_id_status" not in names
    db.dispose_engines()
