"""The picture edge: one PNG per call (matplotlib, Agg, no pyplot global state).

Panels, sharing a time axis in m:ss: who speaks when (overtalk in orange, silence blank);
one stacked-probability strip per party (``bin_s`` bins, bar height = share of the bin
spoken, the rest hatched); the stress of every utterance of both parties with the
escalation threshold, sustained high-stress runs shaded, the customer's peak and the
escalation moment marked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from hashlib import sha256
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from analytics.options import DEFAULT_BIN_S
from analytics.stress import (
    ESCALATION_MIN_SPEECH_S,
    ESCALATION_STRESS,
    high_stress_runs,
    stress_formula,
    with_stress,
)
from analytics.summary import format_clock
from analytics.talk import merged_speech, speaker_count_spans
from analytics.timeline import timeline
from worker.constants import EMOTIONS, ROLE_AGENT, ROLE_CUSTOMER, ROLE_UNKNOWN

EMOTION_COLORS: Final[dict[str, str]] = {
    "angry": "#d62728", "disgust": "#8c564b", "fear": "#9467bd", "happy": "#f2b701",
    "neutral": "#c9d3dd", "sad": "#1f77b4", "surprise": "#ff7f0e",
}
"""Warm/dark for distress, pale for neutral: the eye goes to the red and purple first."""
ROLE_COLORS: Final[dict[str, str]] = {ROLE_CUSTOMER: "#222222", ROLE_AGENT: "#1b9e77",
                                      ROLE_UNKNOWN: "#777777"}
"""Party colours stay clear of the emotion palette (black and green are no emotion)."""
ROLE_ORDER: Final[tuple[str, ...]] = (ROLE_CUSTOMER, ROLE_AGENT, ROLE_UNKNOWN)
"""Panel order, top to bottom: the customer first, supervisors look there first."""
OVERTALK_COLOR: Final[str] = "#ff7f0e"
FIGURE_SIZE_IN: Final[tuple[float, float]] = (13.0, 8.0)
DPI: Final[int] = 100
"""1300 x 800 px: fits a laptop screen and an A4 landscape page without scaling."""
TITLE_CALL_CHARS: Final[int] = 40
"""Longer call ids (content hashes are 71 characters) are cut in the title, not the file name."""
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def png_name(call: str, hashed: bool = False) -> str:
    """A safe file name for a call id (unsafe characters replaced, hash added if changed, or
    if ``hashed``)."""
    # no leading "-": a spreadsheet reads it as a formula in the picture index, and a shell
    # as an option (rm -x.png)
    safe = _UNSAFE_NAME.sub("_", call).strip("._-")[:80] or "call"
    if safe != call or hashed:
        safe += "-" + sha256(call.encode()).hexdigest()[:8]
    return safe + ".png"


def _clock_axis(ax: Axes) -> None:
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: format_clock(max(x, 0.0))))
    # whole seconds: the labels show whole seconds, and a call under ~15 s got ticks every
    # half second labelled 0:00 0:00 0:01 0:01 ... (a review)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, steps=[1, 2, 3, 5, 6, 10], integer=True))


def _draw_talk(ax: Axes, segments: pd.DataFrame, duration_s: float, roles: Sequence[str]) -> None:
    spans = merged_speech(segments)
    for row, role in enumerate(roles):
        own = spans[spans["role"] == role]
        ax.broken_barh(list(zip(own["start_s"], own["end_s"] - own["start_s"], strict=True)),
                       (row + 0.15, 0.7), color=ROLE_COLORS[role])
    counted = speaker_count_spans(segments, pd.Series({segments["call"].iloc[0]: duration_s}))
    for span in counted[counted["speakers"] >= 2].itertuples():
        ax.axvspan(float(span.start_s), float(span.end_s), color=OVERTALK_COLOR, alpha=0.45,
                   lw=0)
    ax.set_yticks([r + 0.5 for r in range(len(roles))], [r for r in roles])
    ax.set_ylim(0, len(roles))
    ax.set_title("who speaks (orange: both at once; blank: silence)", loc="left", fontsize=9)


def _draw_probabilities(ax: Axes, grid: pd.DataFrame, role: str, bin_s: float) -> None:
    """Stacked probabilities per bin, scaled by the share of the bin the party spoke: the
    coloured height is speech, the hatched rest silence, the colours what was said."""
    party = grid[grid["role"] == role]
    left = party["bin_start_s"].to_numpy(dtype=float)
    width = (party["bin_end_s"] - party["bin_start_s"]).to_numpy(dtype=float)
    spoken = (party["speech_s"].to_numpy(dtype=float) / np.where(width > 0, width, 1.0)).clip(0, 1)
    bottom = np.zeros(len(party))
    for label in EMOTIONS:
        height = party[f"p_{label}"].fillna(0.0).to_numpy(dtype=float) * spoken
        ax.bar(left, height, width=width, bottom=bottom, align="edge", color=EMOTION_COLORS[label],
               lw=0)
        bottom += height
    ax.bar(left, 1.0 - bottom, width=width, bottom=bottom, align="edge", color="white",
           edgecolor="#bbbbbb", hatch="///", lw=0)
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.5, 1], ["0", "50%", "100%"])
    ax.set_ylabel("of the bin", fontsize=8)
    ax.set_title(f"{role}: emotion while speaking, per {bin_s:g} s "
                 "(bar height: share of the bin spoken; hatched: not speaking)",
                 loc="left", fontsize=9)


def _draw_stress(ax: Axes, segments: pd.DataFrame, metrics: pd.Series,
                 roles: Sequence[str], duration_s: float) -> None:
    """Stress of every utterance as a flat stroke over its span, joined per party."""
    for role in roles:
        party = with_stress(segments[segments["role"] == role]).sort_values("start_s")
        colour = ROLE_COLORS[role]
        ax.hlines(party["stress"], party["start_s"], party["end_s"], colors=colour, lw=3.5,
                  label=f"{role} stress (per utterance)")
        ax.plot((party["start_s"] + party["end_s"]) / 2, party["stress"], color=colour, lw=0.8,
                alpha=0.5)
    ax.axhline(ESCALATION_STRESS, color="#444444", ls="--", lw=1,
               label=f"high stress ({ESCALATION_STRESS:g})")
    runs = high_stress_runs(segments, role=ROLE_CUSTOMER)
    long_runs = runs[runs["speech_s"] >= ESCALATION_MIN_SPEECH_S]
    for i, run in enumerate(long_runs.itertuples()):
        ax.axvspan(float(run.start_s), float(run.end_s), color="#d62728", alpha=0.15, lw=0,
                   label=(f"customer run with >= {ESCALATION_MIN_SPEECH_S:g} s high-stress "
                          "speech") if i == 0 else None)
    peak_at_s, peak = metrics.get("customer_peak_at_s"), metrics.get("customer_peak_stress")
    if peak_at_s is not None and pd.notna(peak_at_s) and pd.notna(peak):
        near_end = float(peak_at_s) > 0.8 * duration_s  # keep the label inside the axes
        ax.annotate(f"customer peak {float(peak):.0f} at {format_clock(float(peak_at_s))}",
                    (float(peak_at_s), min(float(peak), 100.0)),
                    xytext=(-8 if near_end else 8, 4), textcoords="offset points",
                    ha="right" if near_end else "left", fontsize=8,
                    color=ROLE_COLORS[ROLE_CUSTOMER])
        ax.plot([float(peak_at_s)], [float(peak)], marker="v", ms=9, color="#d62728",
                ls="none")
    escalation_at_s = metrics.get("escalation_at_s")
    if bool(metrics.get("escalated")) and escalation_at_s is not None and pd.notna(escalation_at_s):
        ax.axvline(float(escalation_at_s), color="#d62728", lw=2,
                   label=f"escalation ({metrics.get('escalation_reason')})")
    ax.set_ylim(0, 115)  # headroom for the peak label above 100
    ax.set_yticks([0, 25, 50, 75, 100])
    ax.set_ylabel("stress 0-100", fontsize=8)
    ax.set_title(f"stress per utterance: {stress_formula()}", loc="left", fontsize=9)


def _title(metrics: pd.Series, duration_s: float, timezone: str = "UTC") -> str:
    """The picture's title; the start in ``timezone`` (IANA), as the CSVs' started_local
    (the title said UTC beside a CSV in the site's zone; a review)."""
    started = metrics.get("started_at")
    when = (pd.Timestamp(started).tz_convert(timezone).strftime("%Y-%m-%d %H:%M %Z")
            if started is not None and pd.notna(started) else "start unknown")
    call = str(metrics["call"])
    if len(call) > TITLE_CALL_CHARS:
        call = call[:TITLE_CALL_CHARS - 3] + "..."
    stress = metrics.get("customer_stress")
    # no customer stress: a mono call, or a customer channel in which nobody spoke
    stress_text = (f"customer stress {float(stress):.0f}/100" if stress is not None
                   and pd.notna(stress) else "no customer speech")
    flag = (f"  -  ESCALATED ({metrics.get('escalation_reason')})"
            if bool(metrics.get("escalated")) else "  -  not escalated")
    agent = metrics.get("agent_id")
    # a call without an agent id reads NaN from the database frame (truthy: `or` keeps it)
    agent_text = str(agent) if pd.notna(agent) and str(agent) else "?"
    return (f"call {call} | agent {agent_text} | {when} | "
            f"{format_clock(duration_s)}\n{stress_text}{flag}")


def draw_call(metrics: pd.Series, segments: pd.DataFrame, path: Path,
              bin_s: float = DEFAULT_BIN_S, timezone: str = "UTC") -> Path:
    """Write the PNG of one call: ``metrics`` is its row of ``call_metrics``, ``segments`` its
    utterances. Returns ``path``."""
    duration_s = float(metrics["duration_s"]) if pd.notna(metrics.get("duration_s")) \
        else float(segments["end_s"].max())
    grid = timeline(segments, pd.Series({metrics["call"]: duration_s}), bin_s=bin_s)
    roles = [r for r in ROLE_ORDER if r in set(segments["role"])]
    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    heights = [0.5 + 0.25 * len(roles), *([1.0] * len(roles)), 2.2]
    axes = figure.subplots(len(heights), 1, sharex=True, height_ratios=heights)
    _draw_talk(axes[0], segments, duration_s, roles)
    for ax, role in zip(axes[1:-1], roles, strict=True):
        _draw_probabilities(ax, grid, role, bin_s)
    _draw_stress(axes[-1], segments, metrics, roles, duration_s)
    for ax in axes:
        _clock_axis(ax)
    axes[-1].set_xlim(0, duration_s)
    axes[-1].set_xlabel("time in call (m:ss)")
    legend = [Patch(color=EMOTION_COLORS[e], label=e) for e in EMOTIONS]
    legend.append(Patch(facecolor="white", edgecolor="#bbbbbb", hatch="///", label="not speaking"))
    figure.legend(handles=legend, loc="outside right upper", fontsize=8, title="emotion")
    lines, labels = axes[-1].get_legend_handles_labels()
    figure.legend(lines, labels, loc="outside right lower", fontsize=8, title="stress panel")
    # ids are text as given: "$...$" in a call or agent id is not mathtext (a pair of them
    # failed every later picture with a parse error, a review)
    figure.suptitle(_title(metrics, duration_s, timezone), fontsize=11, parse_math=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def write_call_pngs(metrics: pd.DataFrame, segments: pd.DataFrame, folder: Path,
                    bin_s: float = DEFAULT_BIN_S, timezone: str = "UTC") -> dict[str, Path]:
    """One PNG per row of ``metrics`` that has segments, named by :func:`png_name`: call id
    to picture, in ``metrics``' order."""
    written: dict[str, Path] = {}
    taken: set[str] = set()
    by_call = dict(tuple(segments.groupby("call", sort=False)))
    for _, row in metrics.iterrows():
        own = by_call.get(row["call"])
        if own is None or own.empty:
            continue
        name = png_name(str(row["call"]))
        if name.casefold() in taken:
            # ids that differ in case only (C-1, c-1) are one file on a Windows or macOS
            # share, where the second picture overwrote the first (a review)
            name = png_name(str(row["call"]), hashed=True)
        taken.add(name.casefold())
        written[str(row["call"])] = draw_call(row, own, folder / name, bin_s=bin_s,
                                              timezone=timezone)
    return written
