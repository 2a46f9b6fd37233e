"""Hand-built segment frames for the analytics tests."""

from __future__ import annotations

import pandas as pd

from worker.constants import EMOTIONS


def seg(call: str, role: str, start_s: float, end_s: float, emotion: str,
        p: float) -> dict[str, object]:
    """One utterance: ``p`` on ``emotion``, the rest spread evenly over the other six."""
    probs = {f"p_{e}": (p if e == emotion else (1 - p) / 6) for e in EMOTIONS}
    return {"call": call, "role": role, "start_s": start_s, "end_s": end_s,
            "emotion": emotion, "confidence": p, **probs}


def one_hot(call: str, role: str, start_s: float, end_s: float, emotion: str) -> dict[str, object]:
    """One utterance with probability 1 on ``emotion``."""
    return {"call": call, "role": role, "start_s": start_s, "end_s": end_s, "emotion": emotion,
            "confidence": 1.0, **{f"p_{e}": float(e == emotion) for e in EMOTIONS}}


def frame(*rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


ESCALATING = frame(
    # call "a", 30 s: calm start, then the customer stays angry from 10 s to the end.
    one_hot("a", "agent", 0.0, 4.0, "neutral"),
    one_hot("a", "customer", 3.0, 8.0, "neutral"),
    one_hot("a", "customer", 10.0, 18.0, "angry"),
    one_hot("a", "agent", 18.0, 19.0, "neutral"),
    one_hot("a", "customer", 19.0, 27.0, "angry"),
    one_hot("a", "customer", 28.0, 30.0, "fear"),
)
"""Customer stress 0 (3-8 s), 100 (10-30 s); agent 0 throughout."""
