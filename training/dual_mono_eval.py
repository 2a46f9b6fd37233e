"""Measure the dual-mono check (:attr:`worker.audio.ChannelPairEnergy.same_signal`).

    python -m training.dual_mono_eval [--split test] [--clips-per-corpus 4] [--seed 0]

One channel of corpus clips back to back (every corpus, 16 kHz), and a second channel that is
either a copy of it at a gain (one signal written twice at two levels) or other clips (two
parties, with crosstalk each way). Each pair goes through a file of its codec and back
through libsndfile, the worker's decoder, at the clips' level and 26 dB under it. The table
gives the level difference of the two channels, their residual after the best gain (``1 -
correlation**2``, dB) and the verdict; :data:`worker.constants.DUAL_MONO_MAX_GAIN_DB` and
:data:`worker.constants.DUAL_MONO_GAIN_RESIDUAL_DB` were chosen from it.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from training.crosstalk_eval import frame_markdown
from training.vad_eval import select_clips
from worker.audio import Audio, ChannelPairEnergy

RATE = 16_000
"""The corpora's rate, written as it is (no resampling between the pairs)."""
QUIET_DB = -26.0
"""The second level every pair is measured at (dB under the clips' own)."""
COPY_GAINS: tuple[float, ...] = (0.99, 0.89, 0.7, 0.5, 0.1)
"""Gains of the copy: a hair, 1 dB, 3 dB apart, then half and a leak's level (two parties)."""
CROSSTALK: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5)
"""Share of each party's voice leaked onto the other's channel."""
CODECS: tuple[tuple[str, str, str], ...] = (
    ("wav", "WAV", "PCM_16"), ("wav", "WAV", "ULAW"), ("wav", "WAV", "ALAW"),
    ("ogg", "OGG", "OPUS"))
"""(suffix, format, subtype) of the files the pairs go through."""


@dataclass(frozen=True)
class Pair:
    """One measured pair of channels."""

    kind: str
    """``copy x G`` or ``parties, crosstalk C``."""
    codec: str
    level_db: float
    """0 or :data:`QUIET_DB`."""
    gap_db: float
    """Level difference of the decoded channels (dB)."""
    residual_db: float
    """``1 - correlation**2`` of the decoded channels (dB; -120 for an exact copy)."""
    same_signal: bool


def channels(split: str, clips_per_corpus: int, seed: int) -> tuple[Audio, Audio]:
    """Two channels of different clips (every other pick each), equal lengths, 16 kHz."""
    paths = select_clips(split, clips_per_corpus, seed)
    waves = [sf.read(str(p), dtype="float32", always_2d=True)[0][:, 0] for p in paths]
    a, b = np.concatenate(waves[::2]), np.concatenate(waves[1::2])
    n = min(a.size, b.size)
    return a[:n], b[:n]


def measure_pair(a: Audio, b: Audio, kind: str, codec: tuple[str, str, str],
                 level_db: float, folder: Path) -> Pair:
    """``a`` and ``b`` through a stereo file of ``codec`` and back, measured."""
    suffix, fmt, subtype = codec
    path = folder / f"pair.{suffix}"
    scale = float(10.0 ** (level_db / 20.0))
    sf.write(str(path), np.stack([a, b], axis=1) * scale, RATE, format=fmt, subtype=subtype)
    decoded = sf.read(str(path), dtype="float32", always_2d=True)[0]
    pair = ChannelPairEnergy.of(decoded[:, 0], decoded[:, 1])
    left = max(1.0 - pair.correlation ** 2, 1e-12)
    return Pair(kind, subtype, level_db, round(10.0 * math.log10(pair.sum_a2 / pair.sum_b2), 1),
                round(10.0 * math.log10(left), 1), pair.same_signal)


def measure(a: Audio, b: Audio) -> list[Pair]:
    """Every copy gain and crosstalk share, through every codec, at both levels."""
    cases = [(f"copy x {g}", a, g * a) for g in COPY_GAINS] + [
        (f"parties, crosstalk {c}", a + c * b, b + c * a) for c in CROSSTALK]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind, x, y in cases:
            peak = float(max(np.max(np.abs(x)), np.max(np.abs(y)), 1e-9))
            x, y = (x / peak * 0.9, y / peak * 0.9) if peak > 0.9 else (x, y)
            for codec in CODECS:
                for level_db in (0.0, QUIET_DB):
                    rows.append(measure_pair(x, y, kind, codec, level_db, Path(folder)))
    return rows


def table(rows: Sequence[Pair]) -> pd.DataFrame:
    """One row per case and codec: gap and residual at both levels, and the verdicts."""
    frame = pd.DataFrame([vars(r) for r in rows])
    loud, quiet = frame[frame["level_db"] == 0.0], frame[frame["level_db"] == QUIET_DB]
    return (loud.merge(quiet, on=["kind", "codec"], suffixes=("", "_quiet"))
            [["kind", "codec", "gap_db", "residual_db", "same_signal", "residual_db_quiet",
              "same_signal_quiet"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.dual_mono_eval",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--clips-per-corpus", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(frame_markdown(table(measure(*channels(args.split, args.clips_per_corpus,
                                                 args.seed)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
