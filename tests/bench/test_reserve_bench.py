"""``python -m bench reserve`` counts what it says, on a few calls (no timing asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.reserve_bench import measure


def test_each_pass_reserves_every_call_and_counts_its_statements(tmp_path: Path) -> None:
    costs = {c.name: c for c in measure(f"sqlite:///{tmp_path / 'reserve.sqlite'}", calls=450)}
    assert [(c.calls, c.sent) for c in costs.values()] == [(450, 450), (450, 0), (450, 450)]
    # three chunks: a few statements each, whatever the chunk's size (SQLite inserts new
    # rows one by one, hence the new calls' one more statement a call)
    assert costs["duplicates"].statements <= 3 * 6 and costs["retries"].statements <= 3 * 8
    assert 450 < costs["new"].statements <= 450 + 3 * 10
    assert all(c.seconds > 0 for c in costs.values())
