"""Measure the crosstalk gate (:mod:`worker.crosstalk`) on synthetic two-party calls.

    python -m training.crosstalk_eval [--split test] [--clips-per-corpus 20] [--seed 0] [--grid]

An agent channel and a customer channel are laid out from different corpus clips
(:mod:`training.vad_eval`'s scenes, every corpus, at 8 kHz). The customer channel then
gets the agent's voice leaked onto it, band-passed to 300-3400 Hz, delayed and attenuated,
over digital silence or -70 dBFS white noise, with and without the customer's own speech
(at its rendered level and 22 dB quieter, so a quiet customer talks over a loud agent).
Each utterance the worker cuts on the customer channel counts as the customer's own when
the customer's speech carries more of its energy than the leak does, and as a leak
otherwise (a customer quieter than the agent's leak on their own channel cannot be told
from it by level, and is scored on the agent's voice either way).
The table gives, per condition family, the utterances without the gate and with it, and
the percentiles of the gate's two measures (:func:`worker.crosstalk.evidence`) from which
:class:`worker.crosstalk.CrosstalkConfig`'s thresholds were chosen. Synthetic leak only: a
real line echo after an echo canceller is less like its source, so fewer leaks are caught.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.signal import butter, sosfilt

from training.vad_eval import build_scene, render, select_clips
from worker.constants import ANALYSIS_SAMPLE_RATE
from worker.crosstalk import CrosstalkConfig, evidence, is_leak
from worker.segmentation import SegmentationConfig, Span, utterances
from worker.stream import span_samples
from worker.vad import Audio, VadConfig, channel_activity

LEAK_DB: tuple[float, ...] = (-30.0, -40.0, -50.0)
"""Level of the agent's leak on the customer channel (dB relative to the agent channel)."""
LEAK_DELAY_MS: tuple[int, ...] = (0, 40, 150)
"""Delay of the leak behind the agent (ms): headset bleed, a short and a long line echo."""
FLOOR_DBFS: tuple[float | None, ...] = (None, -70.0)
"""Customer channel's floor: digital silence, or white noise at this level (dBFS)."""
CUSTOMER_DB: tuple[float | None, ...] = (None, 0.0, -22.0)
"""The customer's own speech: none, at its rendered level, or this much quieter (dB)."""


@dataclass(frozen=True)
class Call:
    """The two parties' speech, each on its own channel, equal lengths at 8 kHz."""

    agent: Audio
    customer_speech: Audio


def build_call(split: str, clips_per_corpus: int, seed: int) -> Call:
    """Two channels of different clips (every other pick each), at ANALYSIS_SAMPLE_RATE."""
    paths = select_clips(split, clips_per_corpus, seed)
    agent_scene, agent_waves = build_scene(paths[::2], seed + 1)
    customer_scene, customer_waves = build_scene(paths[1::2], seed + 2)
    agent = render(agent_scene, agent_waves, ANALYSIS_SAMPLE_RATE)
    customer = render(customer_scene, customer_waves, ANALYSIS_SAMPLE_RATE)
    n = max(agent.size, customer.size)
    return Call(np.pad(agent, (0, n - agent.size)), np.pad(customer, (0, n - customer.size)))


def leak(agent: Audio, level_db: float, delay_ms: int) -> Audio:
    """The agent's voice as it reaches the other channel: telephone band, delayed, quieter."""
    sos = butter(4, [300.0, 3400.0], btype="band", fs=ANALYSIS_SAMPLE_RATE, output="sos")
    delay = delay_ms * ANALYSIS_SAMPLE_RATE // 1000
    band = np.asarray(sosfilt(sos, agent), dtype=np.float64)
    delayed = np.concatenate([np.zeros(delay), band[:band.size - delay]])
    out: Audio = (delayed * 10.0 ** (level_db / 20.0)).astype(np.float32)
    return out


def _energy(x: npt.NDArray[np.float64], span: Span) -> float:
    lo, hi = span_samples(span)
    return float(np.sum(x[lo:hi] ** 2))


def measure(call: Call, seed: int, vad: VadConfig | None = None,
            segmentation: SegmentationConfig | None = None,
            config: CrosstalkConfig | None = None) -> pd.DataFrame:
    """One row per customer-channel utterance of every condition: the condition, whether it
    is the customer's own, its evidence, and whether the gate drops it."""
    vad = vad or VadConfig()
    segmentation = segmentation or SegmentationConfig()
    config = config or CrosstalkConfig()
    rng = np.random.default_rng([seed, 3])
    agent = channel_activity(call.agent, vad)
    rows = []
    for customer_db, leak_db, delay_ms, floor in itertools.product(
            CUSTOMER_DB, LEAK_DB, LEAK_DELAY_MS, FLOOR_DBFS):
        leaked = leak(call.agent, leak_db, delay_ms).astype(np.float64)
        own_speech = (np.zeros_like(leaked) if customer_db is None else
                      call.customer_speech * 10.0 ** (customer_db / 20.0))
        x = leaked + own_speech
        if floor is not None:
            x += rng.standard_normal(x.size) * 10.0 ** (floor / 20.0)
        customer = channel_activity(x.astype(np.float32), vad)
        duration_s = x.size / ANALYSIS_SAMPLE_RATE
        for span in utterances(customer.probabilities, vad.frame_s, duration_s, segmentation):
            own = _energy(own_speech, span) > _energy(leaked, span)
            found = evidence(span, customer.levels_db, agent.levels_db, vad.frame_s,
                             config.max_lag_ms)
            rows.append({"customer": "none" if customer_db is None else f"{customer_db:+.0f} dB",
                         "leak_db": leak_db, "delay_ms": delay_ms,
                         "floor": "silence" if floor is None else f"{floor:.0f} dBFS",
                         "own": own, "duration_s": span.duration_s,
                         "correlation": found.correlation, "gap_db": found.gap_db,
                         "dropped": is_leak(found, config)})
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per customer level and kind (leak / own): utterances and seconds without and with
    the gate, and the 5th / 50th / 95th percentiles of the evidence."""
    grouped = rows.groupby(["customer", "own"], sort=False)
    return pd.DataFrame({
        "utterances": grouped.size(),
        "kept_by_gate": grouped["dropped"].apply(lambda d: int((~d).sum())),
        "seconds": grouped["duration_s"].sum().round(1),
        "seconds_kept": grouped.apply(lambda g: g.loc[~g["dropped"], "duration_s"].sum(),
                                      include_groups=False).round(1),
        "correlation_p5/50/95": grouped["correlation"].apply(_percentiles),
        "gap_db_p5/50/95": grouped["gap_db"].apply(_percentiles),
    }).reset_index().rename(columns={"own": "customer's own"})


GRID_CORRELATIONS: tuple[float, ...] = (0.8, 0.85, 0.9)
GRID_GAPS_DB: tuple[float, ...] = (15.0, 20.0, 25.0)
"""The threshold pairs :class:`worker.crosstalk.CrosstalkConfig`'s defaults were chosen from
(on the train split: the pair that drops none of the customer's own utterances and keeps the
fewest leaks)."""


def grid(rows: pd.DataFrame, correlations: Sequence[float] = GRID_CORRELATIONS,
         gaps_db: Sequence[float] = GRID_GAPS_DB) -> pd.DataFrame:
    """For each (min_correlation, min_gap_db) pair, the leaks it keeps and the customer's own
    utterances it drops, from :func:`measure`'s rows (their evidence, not their decision)."""
    out = []
    for min_correlation, min_gap_db in itertools.product(correlations, gaps_db):
        dropped = (rows["correlation"] >= min_correlation) & (rows["gap_db"] >= min_gap_db)
        out.append({"min_correlation": min_correlation, "min_gap_db": min_gap_db,
                    "leaks_kept": int((~dropped & ~rows["own"]).sum()),
                    "own_dropped": int((dropped & rows["own"]).sum()),
                    "leaks": int((~rows["own"]).sum()), "own": int(rows["own"].sum())})
    return pd.DataFrame(out)


def _percentiles(values: pd.Series) -> str:
    p5, p50, p95 = np.percentile(values.to_numpy(dtype=np.float64), [5, 50, 95])
    return f"{p5:.2f} / {p50:.2f} / {p95:.2f}"


def frame_markdown(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table, its cells as ``str`` gives them."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.crosstalk_eval",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--clips-per-corpus", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", action="store_true",
                        help="also print the threshold pairs the defaults were chosen from")
    args = parser.parse_args(argv)
    rows = measure(build_call(args.split, args.clips_per_corpus, args.seed), args.seed)
    print(frame_markdown(summary(rows)))
    if args.grid:
        print()
        print(frame_markdown(grid(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
