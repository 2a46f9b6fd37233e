"""``python -m bench plans`` fills and explains what it says, on a few calls (no timing
asserted)."""

from __future__ import annotations

import pytest

from bench.plans_bench import MIGRATION_TARGET, SCOPES, format_table, measure


@pytest.mark.postgres
def test_each_scope_is_explained_at_both_targets_and_the_table_is_left_at_0009s(
        postgres_url: str) -> None:
    from sqlalchemy import text

    from worker import db

    timings = measure(postgres_url, calls=300, segments=5, days=30, repeats=1)
    assert [(t.scope, t.target) for t in timings] == [
        (scope, target) for target in (-1, MIGRATION_TARGET) for scope, _ in SCOPES]
    assert all(t.join in ("Nested Loop", "Hash Join", "Merge Join") and t.ms > 0
               for t in timings)
    # every call's 5 segments stored: 300 distinct calls, all sampled at this size
    assert {round(t.estimate) for t in timings} == {300}
    with db.make_engine(postgres_url).connect() as c:
        assert c.execute(text("SELECT count(*), count(DISTINCT call_id) FROM segments")
                         ).one() == (1500, 300)
        assert c.execute(text(
            "SELECT attstattarget FROM pg_attribute WHERE attrelid = 'segments'::regclass "
            "AND attname = 'call_id'")).scalar_one() == MIGRATION_TARGET
    assert "(true: 300)" in format_table(timings, 300)
    db.dispose_engines()
