"""How much of each corpus clip is speech the worker would score: ``python -m training speech``.

Per corpus: clips, the median share of a clip outside the worker's cut to speech
(:class:`worker.pipeline.SpeechCut`, first to last utterance), and the clips where its VAD
finds no speech at all, optionally after a level change (``--level-db -25``: the robustness
table's quiet line). These are the figures behind training and scoring on cut clips.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from training.dataset import DEFAULT_CORPORA, corpus_manifest_paths, map_labels, read_manifests
from worker.audio import load_mono
from worker.constants import ANALYSIS_SAMPLE_RATE
from worker.pipeline import SpeechCut
from worker.settings import get_settings


def clip_speech(path: str, cut: SpeechCut, level_db: float = 0.0) -> tuple[float, bool]:
    """(share of the clip outside the cut, whether the VAD found no speech) for one clip."""
    audio = load_mono(Path(path), ANALYSIS_SAMPLE_RATE) * np.float32(10.0 ** (level_db / 20.0))
    extent = cut.extent(audio)
    if extent is None or audio.size == 0:
        return 1.0, True
    return 1.0 - (extent[1] - extent[0]) / audio.size, False


def speech_table(clips: pd.DataFrame, cut: SpeechCut, level_db: float = 0.0,
                 workers: int = 2) -> pd.DataFrame:
    """Per corpus: clips, median non-speech share (clips with speech), clips without speech."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = list(pool.map(lambda p: clip_speech(p, cut, level_db), clips["path"]))
    frame = clips[["corpus"]].assign(non_speech=[f[0] for f in found],
                                     no_speech=[f[1] for f in found])
    return (frame.groupby("corpus")
            .agg(clips=("no_speech", "size"), no_speech=("no_speech", "sum"),
                 median_non_speech=("non_speech",
                                    lambda s: float(s[frame.loc[s.index, "no_speech"].eq(False)]
                                                    .median())))
            .reset_index())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training speech", description=__doc__)
    p.add_argument("--corpus", action="append", choices=DEFAULT_CORPORA,
                   help=f"repeatable (default: {', '.join(DEFAULT_CORPORA)})")
    p.add_argument("--split", default="all", help="all (default), train or test")
    p.add_argument("--level-db", type=float, default=0.0, help="gain applied before the cut")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    settings = get_settings()
    clips = map_labels(read_manifests(corpus_manifest_paths(settings.corpora_dir,
                                                            args.corpus or DEFAULT_CORPORA)))
    if args.split != "all":
        clips = clips[clips["split"] == args.split]
    table = speech_table(clips.reset_index(drop=True), SpeechCut.of(settings), args.level_db,
                         args.workers)
    print(f"split={args.split} level {args.level_db:+.0f} dB; non-speech share of clips with "
          "speech (median), clips where the VAD finds none")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
