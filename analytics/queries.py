"""The analytics read edge: segments and calls out of the database as DataFrames.

Filtering happens in SQL (indexed on calls.started_at / agent_id / status), so a report reads
only the rows it needs. The caller owns the session.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.schema import PROBABILITY_COLUMNS, Call, Segment

SEGMENT_COLUMNS: tuple[str, ...] = (
    "call", "agent_id", "channel", "role", "start_s", "end_s", "emotion", "confidence",
    "model_version", *PROBABILITY_COLUMNS.values())


def load_segments(session: Session, call_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Segments (one row per utterance) joined with their call's external id and agent."""
    prob_columns = [getattr(Segment, c) for c in PROBABILITY_COLUMNS.values()]
    query = (select(Call.external_call_id.label("call"), Call.agent_id, Segment.channel,
                    Segment.role, Segment.start_s, Segment.end_s, Segment.emotion,
                    Segment.confidence, Segment.model_version, *prob_columns)
             .join(Call, Call.id == Segment.call_id)
             .order_by(Call.external_call_id, Segment.start_s, Segment.channel))
    if call_ids is not None:
        query = query.where(Segment.call_id.in_(list(call_ids)))
    rows = session.execute(query).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=list(SEGMENT_COLUMNS))
