from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analytics.callreport import call_metrics
from analytics.plots import draw_call, png_name, write_call_pngs
from tests.analytics.frames import ESCALATING, frame, one_hot


def test_png_names_are_safe_and_distinct() -> None:
    assert png_name("call-42") == "call-42.png"
    risky = png_name("../../etc/passwd")
    assert "/" not in risky and risky.endswith(".png") and not risky.startswith(".")
    assert png_name("a/b") != png_name("a?b")
    # no leading "-": the picture index would show it as a neutralised formula ('-x.png),
    # and a shell reads it as an option
    assert png_name("-42").startswith("42-") and png_name("-42") != png_name("42")


def test_draw_call_writes_a_png_of_the_documented_size(tmp_path: Path) -> None:
    calls = pd.DataFrame({"call": ["a"], "agent_id": ["ana"], "team": ["t"], "queue": [None],
                          "started_at": pd.to_datetime(["2026-11-02T10:00Z"], utc=True),
                          "duration_s": [30.0], "model_version": ["v"]})
    row = call_metrics(calls, ESCALATING).iloc[0]
    path = draw_call(row, ESCALATING, tmp_path / "a.png")
    from matplotlib.image import imread

    image = imread(path)
    assert image.shape[:2] == (800, 1300)  # FIGURE_SIZE_IN x DPI
    # something was drawn: not a blank canvas (the panels' content is checked below)
    assert image[:, :, :3].std() > 0.1


def test_ids_with_dollar_signs_are_drawn_as_text(tmp_path: Path) -> None:
    """Matplotlib read "$...$" in the title as a formula: a call id or agent id with two
    dollar signs failed its picture and every later one with a parse error (a review)."""
    calls = pd.DataFrame({"call": ["C-1$_$"], "agent_id": ["Smith $\\frac$"], "team": ["t"],
                          "queue": [None],
                          "started_at": pd.to_datetime(["2026-11-02T10:00Z"], utc=True),
                          "duration_s": [30.0], "model_version": ["v"]})
    segments = ESCALATING.assign(call="C-1$_$")
    paths = list(write_call_pngs(call_metrics(calls, segments), segments, tmp_path).values())
    assert [p.name for p in paths] == [png_name("C-1$_$")] and paths[0].stat().st_size > 20_000


def test_ids_that_differ_in_case_only_get_pictures_of_their_own(tmp_path: Path) -> None:
    """C-1 and c-1 are two calls but one file on a case-insensitive share (Windows, macOS):
    the second picture overwrote the first (a review). The second gets its id's hash."""
    calls = pd.DataFrame({"call": ["C-1", "c-1"], "agent_id": ["ana", "bo"], "team": ["t", "t"],
                          "queue": [None, None],
                          "started_at": pd.to_datetime(["2026-11-02T10:00Z"] * 2, utc=True),
                          "duration_s": [30.0, 30.0], "model_version": ["v", "v"]})
    segments = pd.concat([ESCALATING.assign(call="C-1"), ESCALATING.assign(call="c-1")])
    paths = write_call_pngs(call_metrics(calls, segments), segments, tmp_path)
    assert list(paths) == ["C-1", "c-1"]
    names = [p.name for p in paths.values()]
    assert names[0] == "C-1.png" and names[1].startswith("c-1-") and len(names) == 2
    assert len({n.casefold() for n in names}) == 2


def test_the_stress_panel_marks_the_escalation_where_the_metrics_put_it() -> None:
    from matplotlib.figure import Figure

    from analytics.plots import _draw_stress

    calls = pd.DataFrame({"call": ["a"], "agent_id": ["ana"], "team": ["t"], "queue": [None],
                          "started_at": pd.to_datetime(["2026-11-02T10:00Z"], utc=True),
                          "duration_s": [30.0], "model_version": ["v"]})
    row = call_metrics(calls, ESCALATING).iloc[0]
    assert bool(row["escalated"])
    ax = Figure().subplots()
    _draw_stress(ax, ESCALATING, row, ["agent", "customer"], 30.0)
    labels = ax.get_legend_handles_labels()[1]
    escalation = [line for line in ax.get_lines()
                  if str(line.get_label()).startswith("escalation")]
    assert len(escalation) == 1 and escalation[0].get_label() == (
        f"escalation ({row['escalation_reason']})")
    assert np.asarray(escalation[0].get_xdata()).tolist() == [row["escalation_at_s"]] * 2
    assert any(label.startswith("customer run with >=") for label in labels)  # the band
    # a calm call gets neither mark
    calm = frame(one_hot("b", "customer", 0.0, 10.0, "neutral"))
    calm_row = call_metrics(calls.assign(call="b"), calm).iloc[0]
    ax = Figure().subplots()
    _draw_stress(ax, calm, calm_row, ["customer"], 30.0)
    assert not any(str(label).startswith(("escalation", "customer high"))
                   for label in ax.get_legend_handles_labels()[1])


def test_calls_without_segments_get_no_picture(tmp_path: Path) -> None:
    mono = frame(one_hot("m", "unknown", 0.0, 4.0, "angry"))
    calls = pd.DataFrame({"call": ["m", "empty"], "agent_id": [None, None], "team": [None, None],
                          "queue": [None, None], "started_at": pd.to_datetime([None, None], utc=True),
                          "duration_s": [None, None], "model_version": ["v", "v"]})
    written = write_call_pngs(call_metrics(calls, mono), mono, tmp_path)
    assert {call: p.name for call, p in written.items()} == {"m": "m.png"}


def test_the_title_names_the_agent_or_none_and_a_missing_customer_as_no_speech() -> None:
    from analytics.plots import _title

    mono = frame(one_hot("m", "unknown", 0.0, 4.0, "angry"))
    calls = pd.DataFrame({"call": ["m"], "agent_id": [None], "team": [None], "queue": [None],
                          "started_at": pd.to_datetime([None], utc=True),
                          "duration_s": [4.0], "model_version": ["v"]})
    # as read from the database: an agent id the call lacks comes back as NaN
    row = call_metrics(calls.astype({"agent_id": float}), mono).iloc[0]
    title = _title(row, 4.0)
    assert "agent ? |" in title and "nan" not in title
    assert "no customer speech" in title
    named = call_metrics(calls.assign(agent_id="ana"), mono).iloc[0]
    assert "agent ana |" in _title(named, 4.0)


def test_the_title_gives_the_start_in_the_sites_zone() -> None:
    """The title said UTC beside CSVs in the site's zone (a review)."""
    from analytics.plots import _title

    mono = frame(one_hot("m", "unknown", 0.0, 4.0, "angry"))
    calls = pd.DataFrame({"call": ["m"], "agent_id": ["ana"], "team": [None], "queue": [None],
                          "started_at": pd.to_datetime(["2026-07-01 08:30"], utc=True),
                          "duration_s": [4.0], "model_version": ["v"]})
    row = call_metrics(calls, mono).iloc[0]
    assert "| 2026-07-01 10:30 CEST |" in _title(row, 4.0, "Europe/Berlin")
    assert "| 2026-07-01 08:30 UTC |" in _title(row, 4.0)


@pytest.mark.parametrize("duration_s", [6.0, 14.0, 600.0])
def test_the_clock_axis_never_repeats_a_label(duration_s: float) -> None:
    """Calls under ~15 s got ticks every half second, labelled 0:00 0:00 0:01 ... (a review)."""
    import matplotlib.pyplot as plt

    from analytics.plots import _clock_axis

    figure, ax = plt.subplots()
    try:
        _clock_axis(ax)
        ax.set_xlim(0.0, duration_s)
        figure.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    finally:
        plt.close(figure)
    assert len(labels) >= 3 and len(labels) == len(set(labels)), labels
