"""Stress score: one bounded number (0-100) per segment, party and call, from the model outputs.

Formula (per segment, probabilities ``p_<class>`` from the emotion model, summing to 1)::

    stress = 100 * (1.0 * p_angry + 1.0 * p_fear + 0.5 * p_disgust + 0.4 * p_sad)

Party / call stress is the talk-time-weighted mean of its segments' stress (a 6 s shout counts
six times a 1 s one); the call score is the customer's party score, since that is what a
supervisor ranks calls by (the agent's own score is reported beside it).

Rationale:

* **Angry and fear get full weight**: they are the high-arousal negative states that mark a
  call going wrong (an irate or a frightened/anxious customer) and the two classes the
  validation (``python -m analytics.stress_eval``) ranks against neutral.
* **Disgust (0.5) and sad (0.4) count less**: both are negative, but disgust is confused with
  anger / contempt only at moderate arousal and sad is low-arousal (a resigned customer is a
  churn risk, not an escalation). Happy, neutral and surprise count 0 (surprise is high
  arousal but of either valence, so it is no evidence of distress on its own).
* **Confidence is built in by using probabilities, not the argmax label**: the score is the
  expected value of a 0-1 "distress" indicator under the model's posterior. A segment labelled
  angry with p=0.35 scores 35 + whatever fear/sad mass it has, not 100, so an unsure model
  cannot produce a spike; a confident neutral segment scores near 0.
* **Bounded by construction**: weights lie in [0, 1] and the probabilities sum to 1, so the
  score lies in [0, 100] without clipping (the clip only guards rounding), and it is linear
  in the stored columns, so the mean of segment scores equals the score of the mean
  probabilities (the timeline's per-bin stress relies on this).

Escalation (per call, customer side; :mod:`analytics.callreport` applies it):

* a *high-stress run*: consecutive customer utterances (in time order, the agent's turns in
  between do not break it, a customer silence of more than ``ESCALATION_MAX_GAP_S`` does)
  each with stress >= ``ESCALATION_STRESS``, holding >= ``ESCALATION_MIN_SPEECH_S`` seconds
  of the customer's speech (the agent's turns and the pauses inside the run do not count);
  or
* a *steep rise*: customer stress in the last third of the call minus the first third
  >= ``STEEP_RISE_POINTS``, each third's stress from at least ``MOOD_MIN_TALK_S`` of the
  customer's speech.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from worker.constants import EMOTIONS, PROB_COLUMNS, ROLE_CUSTOMER

STRESS_WEIGHTS: Final[dict[str, float]] = {
    "angry": 1.0, "fear": 1.0, "disgust": 0.5, "sad": 0.4,
    "happy": 0.0, "neutral": 0.0, "surprise": 0.0,
}
"""Class -> weight in the stress score (rationale in the module docstring)."""

ESCALATION_STRESS: Final[float] = 50.0
"""Customer segment stress counted as "high": at 50 the negative classes hold at least half of
the model's probability mass (with full weight), i.e. the model leans distressed, not neutral."""

ESCALATION_MIN_SPEECH_S: Final[float] = 10.0
"""Seconds of customer speech a high-stress run must hold to escalate: more than one utterance
can hold (the worker cuts utterances at <= 8 s, ``SegmentationConfig.max_utterance_s``), so
one loud sentence is never flagged, two or more long ones are. Until 2026-12-06 the rule was
a 20 s span from the run's first start to its last end, which two 1 s outbursts around a 23 s
agent turn met: the agent's talk counted as the customer's stress."""

ESCALATION_MAX_GAP_S: Final[float] = 30.0
"""A customer silent this long (seconds, from one high-stress utterance's end to the next
one's start) ends a high-stress run: a heated exchange keeps the agent's turns short, and
without a bound two angry sentences five minutes apart counted as five minutes of sustained
stress. A judgement (a long agent explanation is about half a minute), not fitted to data."""

STEEP_RISE_POINTS: Final[float] = 30.0
"""Rise of customer stress (points, last third minus first third) that escalates: a third of
the scale, e.g. a calm 10 turning into a 40+ that supervisors asked to see."""

COMPARE_DECIMALS: Final[int] = 6
"""Decimals that seconds and points no report shows (gaps, a third's talk, call fractions)
are rounded to before a threshold compares them. Segment edges sit on 10 ms frames, yet
their float sums land a hair off the sum they stand for (2.52 + 3.62 + 3.86 s is
9.999999999999998): a review's 2,000 calls of exactly 10.00 s of high-stress speech left 349
unflagged, the CSV showing 10.0 beside escalated False. Seconds a report shows compare at
:data:`SECONDS_DECIMALS` instead, for the same reason."""

SECONDS_DECIMALS: Final[int] = 2
"""Decimals seconds are shown to in reports (10 ms: the VAD frame; the features hop 80
samples at 8 kHz), and compared at against the escalation's speech threshold: compared at
:data:`COMPARE_DECIMALS`, a run of 9.99667 s (a 20 s span split in three, then a 3.33 s
utterance) showed as 10.0 beside escalated False (a review)."""

STRESS_DECIMALS: Final[int] = 1
"""Decimals stress points (0-100) are shown to in reports, and compared at against the
escalation thresholds: a tenth of a point is below any threshold's resolution, and a report
showing a rise of 30.0 (from 29.96) or a peak of 50.0 (from 49.96) must show the call escalated
and the utterance high-stress (a review found both showing otherwise)."""

MOOD_THIRDS: Final[int] = 3
"""Start vs end mood compares the first and the last third of the call (the issue's choice)."""

MOOD_MIN_TALK_S: Final[float] = 3.0
"""Seconds of a party's speech a third of the call needs to give it a start or end mood
(less: no mood, NaN). A judgement, about one sentence (the corpora's one-sentence clips last
a median 2.0-3.7 s, silence included): a closing "thanks, bye" or one doubtful word is
under it. Without it one 1 s utterance at p(angry) = 0.35 in the last third made a 55-point
"rise" and escalated the call."""

if set(STRESS_WEIGHTS) != set(EMOTIONS) or not all(0.0 <= w <= 1.0 for w in STRESS_WEIGHTS.values()):
    raise RuntimeError("STRESS_WEIGHTS must give every class a weight in [0, 1] (keeps 0-100)")


def stress_formula(weights: dict[str, float] = STRESS_WEIGHTS) -> str:
    """The score as a reader sees it, from the weights in use, e.g. "100 x (angry + fear +
    0.5 disgust + 0.4 sad probability)" (PNG titles must not outlive an edit of the weights)."""
    terms = [label if weight == 1.0 else f"{weight:g} {label}"
             for label, weight in weights.items() if weight]
    return f"100 x ({' + '.join(terms) or '0'} probability)"


def stress_of(probabilities: pd.DataFrame) -> pd.Series:
    """Stress 0-100 of each row of a frame with ``p_<class>`` columns."""
    total = sum((probabilities[f"p_{label}"] * weight
                 for label, weight in STRESS_WEIGHTS.items() if weight), start=pd.Series(0.0,
                                                                                 index=probabilities.index))
    return (100.0 * total).clip(0.0, 100.0).rename("stress")


def with_stress(segments: pd.DataFrame) -> pd.DataFrame:
    """Add ``stress`` (0-100) and ``duration_s`` to a segments frame."""
    return segments.assign(stress=stress_of(segments),
                           duration_s=(segments["end_s"] - segments["start_s"]).clip(lower=0.0))


def party_stress(segments: pd.DataFrame) -> pd.DataFrame:
    """One row per (call, role): ``talk_s``, ``stress`` (talk-time-weighted), ``peak_stress``
    (highest segment) and ``peak_at_s`` (start of that segment; ties: the earliest)."""
    columns = ["call", "role", "talk_s", "stress", "peak_stress", "peak_at_s"]
    if segments.empty:
        return pd.DataFrame(columns=columns)
    framed = segments.pipe(with_stress).assign(
        weighted=lambda f: f["stress"] * f["duration_s"])
    grouped = framed.groupby(["call", "role"], sort=True)
    talk_s = grouped["duration_s"].sum()
    peak_rows = (framed.sort_values(["call", "role", "stress", "start_s"],
                                    ascending=[True, True, False, True])
                 .drop_duplicates(["call", "role"]).set_index(["call", "role"]))
    out = pd.DataFrame({
        "talk_s": talk_s,
        "stress": grouped["weighted"].sum() / talk_s.where(talk_s > 0, np.nan),
        "peak_stress": peak_rows["stress"],
        "peak_at_s": peak_rows["start_s"],
    })
    return out.reset_index()[columns]


def third_of(midpoint_s: pd.Series, duration_s: pd.Series) -> pd.Series:
    """0 (first third), 1 (middle) or 2 (last third) of the call for each segment midpoint."""
    fraction = midpoint_s / duration_s.where(duration_s > 0, np.nan)
    # rounded first: a midpoint on the 2/3 mark gave 1.9999999999999996 for some call lengths
    # (21.56 s of 32.34), so its utterance fell in the middle third (a review)
    thirds = (fraction * MOOD_THIRDS).round(COMPARE_DECIMALS)
    return np.floor(thirds).clip(0, MOOD_THIRDS - 1).fillna(0).astype(int)


def mood_shift(segments: pd.DataFrame, durations_s: pd.Series) -> pd.DataFrame:
    """Start-vs-end mood per (call, role): first vs last third of the call.

    ``durations_s``: call -> duration (s); a call without one uses its last segment end.
    A segment belongs to the third holding its midpoint. Columns: ``call, role,
    start_stress, end_stress, stress_shift`` (end - start, each as the reports show it, to
    :data:`STRESS_DECIMALS`; points; NaN when a third holds less than ``MOOD_MIN_TALK_S`` of
    that party's speech), ``start_dominant, end_dominant`` (talk-weighted mean class; NaN
    likewise).
    """
    columns = ["call", "role", "start_stress", "end_stress", "stress_shift",
               "start_dominant", "end_dominant"]
    if segments.empty:
        return pd.DataFrame(columns=columns)
    framed = segments.pipe(with_stress)
    last_end = framed.groupby("call")["end_s"].max()
    duration = framed["call"].map(durations_s).fillna(framed["call"].map(last_end)).astype(float)
    framed = framed.assign(third=third_of((framed["start_s"] + framed["end_s"]) / 2, duration))
    edges = framed[framed["third"].isin([0, MOOD_THIRDS - 1])]
    keys = framed[["call", "role"]].drop_duplicates().sort_values(["call", "role"])
    if edges.empty:  # all speech in the middle third: no start or end mood
        nothing = dict.fromkeys(["start_stress", "end_stress", "stress_shift"], np.nan)
        return keys.assign(**nothing, start_dominant=None, end_dominant=None)[columns] \
            .reset_index(drop=True)
    prob_cols = list(PROB_COLUMNS)
    weighted = edges.assign(**{c: edges[c] * edges["duration_s"]
                               for c in [*prob_cols, "stress"]})
    sums = weighted.groupby(["call", "role", "third"])[[*prob_cols, "stress", "duration_s"]].sum()
    talk = sums["duration_s"].where(sums["duration_s"].round(COMPARE_DECIMALS)
                                    >= MOOD_MIN_TALK_S, np.nan)
    stress = sums["stress"] / talk
    dominant = sums[prob_cols].idxmax(axis=1).str.removeprefix("p_").where(talk.notna())
    index = pd.MultiIndex.from_frame(keys)

    def pick(series: pd.Series, third: int) -> pd.Series:
        if third not in series.index.get_level_values("third"):  # nobody spoke in that third
            return pd.Series(np.nan, index=index, dtype=object)
        return series.xs(third, level="third").reindex(index)

    out = pd.DataFrame({
        "start_stress": pick(stress, 0).to_numpy(dtype=float),
        "end_stress": pick(stress, MOOD_THIRDS - 1).to_numpy(dtype=float),
        "start_dominant": pick(dominant, 0).to_numpy(dtype=object),
        "end_dominant": pick(dominant, MOOD_THIRDS - 1).to_numpy(dtype=object),
    }, index=index)
    # the difference of the two stresses as the reports show them: from the unrounded ones,
    # 10.06 -> 40.04 showed 10.1 -> 40.0 beside a shift of 30.0 and a "rise" flag, and
    # 10.04 -> 39.96 a rise of 30.0 beside a shift of 29.9 and no flag (a review)
    out = out.assign(stress_shift=(out["end_stress"].round(STRESS_DECIMALS)
                                   - out["start_stress"].round(STRESS_DECIMALS))
                     .round(COMPARE_DECIMALS))
    return out.reset_index()[columns]


def is_high_stress(stress: pd.Series, threshold: float = ESCALATION_STRESS) -> pd.Series:
    """Whether each stress (points) is at or over ``threshold``, compared at the tenth of a
    point the reports show (:data:`STRESS_DECIMALS`): the escalation rule and the stress
    evaluation's rates both read it from here."""
    return stress.round(STRESS_DECIMALS) >= threshold


def high_stress_runs(segments: pd.DataFrame, role: str = ROLE_CUSTOMER,
                     threshold: float = ESCALATION_STRESS,
                     max_gap_s: float = ESCALATION_MAX_GAP_S) -> pd.DataFrame:
    """Runs of consecutive ``role`` utterances each with stress >= ``threshold``.

    Columns ``call, start_s, end_s, run_s`` (end of the last minus start of the first, s),
    ``speech_s`` (the run's own utterances' seconds: what escalation counts). Any
    lower-stress utterance of ``role`` ends a run, and so does a gap of more than
    ``max_gap_s`` seconds before its next utterance; the other party's turns do not.
    """
    columns = ["call", "start_s", "end_s", "run_s", "speech_s"]
    party = segments[segments["role"] == role]
    if party.empty:
        return pd.DataFrame(columns=columns)
    ordered = party.pipe(with_stress).sort_values(["call", "start_s"])
    low = (~is_high_stress(ordered["stress"], threshold)).astype(int)
    island = low.groupby(ordered["call"]).cumsum()
    high = ordered.assign(island=island)[low == 0]
    if high.empty:
        return pd.DataFrame(columns=columns)
    same_island = high["call"].eq(high["call"].shift()) & high["island"].eq(
        high["island"].shift())
    after_gap = (high["start_s"] - high["end_s"].shift()).round(COMPARE_DECIMALS) > max_gap_s
    run = (~same_island | after_gap).cumsum().rename("run")
    runs = high.groupby(["call", run], sort=True).agg(start_s=("start_s", "min"),
                                                      end_s=("end_s", "max"),
                                                      speech_s=("duration_s", "sum"))
    # speech rounded once here, to the 0.01 s the reports show, so the flag,
    # escalation_at_s, the plot's shading and the CSV's longest_high_stress_s all agree
    return runs.reset_index().assign(
        speech_s=lambda f: f["speech_s"].round(SECONDS_DECIMALS),
        run_s=lambda f: (f["end_s"] - f["start_s"]).round(COMPARE_DECIMALS))[columns]


def escalation_flags(run_speech_s: pd.Series, stress_shift: pd.Series,
                     min_speech_s: float = ESCALATION_MIN_SPEECH_S,
                     steep_rise_points: float = STEEP_RISE_POINTS) -> pd.DataFrame:
    """``escalated`` (bool) and ``escalation_reason`` ("sustained", "rise", "sustained+rise",
    "") from the most customer speech in one high-stress run (s) and the customer's stress
    shift (points), each compared as the reports show it (:data:`SECONDS_DECIMALS`,
    :data:`STRESS_DECIMALS`)."""
    sustained = run_speech_s.round(SECONDS_DECIMALS).fillna(0.0) >= min_speech_s
    rise = stress_shift.round(STRESS_DECIMALS).fillna(0.0) >= steep_rise_points
    reason = np.where(sustained & rise, "sustained+rise",
                      np.where(sustained, "sustained", np.where(rise, "rise", "")))
    return pd.DataFrame({"escalated": (sustained | rise).astype(bool), "escalation_reason": reason},
                        index=run_speech_s.index)
