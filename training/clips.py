"""Decoding labelled clips for training and evaluation: each file once, then its spans.

A manifest row is a :class:`training.dataset.ClipSource`: a file, the labelled party's
channel and, optionally, a span of it. An operator's manifest lists many spans of one call,
so the loader decodes each (file, channel) once with the worker's decoder
(:func:`worker.audio.load_mono`) and cuts the spans from it; :func:`cut_span` is the pure
part.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from training.dataset import ClipSource
from worker.audio import Audio, check_labelled_channel, load_mono, read_info
from worker.errors import ConfigError

T = TypeVar("T")

MAX_MISSING_LISTED = 10
"""Missing files named in the error (the count says how many more)."""

SPAN_END_TOLERANCE_S = 0.1
"""How far a labelled span may end past the decoded audio and be cut at its end: an MP3's
decoded length differs from its player's by up to two frames of encoder delay and padding
(2 x 1152 samples, 0.10 s at 22.05 kHz), and labelling tools round times. Further than that,
the span names audio the file does not hold (a wrong file or a wrong time base)."""


def cut_span(audio: Audio, sample_rate: int, source: ClipSource) -> Audio:
    """The samples of ``audio`` (one channel at ``sample_rate`` Hz) that ``source``'s span
    names, copied (so the whole decoded call can be freed); all of it without a span.
    ConfigError if the span starts at or past the end, or ends more than
    :data:`SPAN_END_TOLERANCE_S` past it."""
    if source.start_s is None or source.end_s is None:
        return audio
    length_s = audio.size / sample_rate
    if source.start_s >= length_s or source.end_s > length_s + SPAN_END_TOLERANCE_S:
        raise ConfigError(f"the manifest's span {source.start_s:g}-{source.end_s:g} s of "
                          f"{source.path} runs past its end ({length_s:.2f} s decoded): check "
                          "the file and that start_s / end_s are seconds from its start")
    first = min(round(source.start_s * sample_rate), audio.size - 1)
    last = min(audio.size, round(source.end_s * sample_rate))
    return np.array(audio[first:max(last, first + 1)], dtype=np.float32)


def _by_file(sources: Sequence[ClipSource]) -> dict[tuple[str, int | None], list[int]]:
    """The indices of ``sources`` per (file, channel), in order."""
    groups: dict[tuple[str, int | None], list[int]] = {}
    for i, source in enumerate(sources):
        groups.setdefault((source.path, source.channel), []).append(i)
    return groups


def _require_files(groups: Iterable[tuple[str, int | None]]) -> None:
    """ConfigError naming every file of ``groups`` that is not there: a missing one surfaced
    as libsndfile's "System error" once the whole dataset was built, and only the first of
    them (a review)."""
    missing = sorted({path for path, _ in groups if not os.path.isfile(path)})
    if missing:
        raise ConfigError(f"{len(missing)} file(s) of the manifest not found: "
                          f"{', '.join(missing[:MAX_MISSING_LISTED])}"
                          f"{' ...' if len(missing) > MAX_MISSING_LISTED else ''} (paths in a "
                          "manifest are relative to its folder)")


def check_sources(sources: Sequence[ClipSource]) -> None:
    """What the files' headers can tell of ``sources`` before anything is decoded: each file
    there and readable, its labelled channel one it has, each span starting inside it
    (ConfigError or AudioDecodeError naming the file). Training decodes its train and
    validation clips first and the test rows only once the model is trained: a missing or
    stereo test file failed a run after its training (a review). A span's end is checked at
    decoding (:func:`cut_span`): an MP3's header length is an estimate."""
    groups = _by_file(sources)
    _require_files(groups)
    for (path, channel), indices in groups.items():
        info = read_info(Path(path))
        check_labelled_channel(Path(path), int(info.channels), channel)
        length_s = float(info.frames) / float(info.samplerate)
        for start_s in (sources[i].start_s for i in indices):
            if start_s is not None and start_s >= length_s:
                raise ConfigError(f"the manifest's span starting at {start_s:g} s of {path} "
                                  f"starts past its end ({length_s:.2f} s by its header): "
                                  "check the file and that start_s / end_s are seconds from "
                                  "its start")


def load_clips(sources: Sequence[ClipSource], sample_rate: int,
               transform: Callable[[Audio], T], workers: int = 2) -> list[T]:
    """``transform`` (a cut to speech, features; a function of one clip's samples) of each
    source's audio at ``sample_rate`` Hz, in order. Files decode in a thread pool of
    ``workers``, each (file, channel) once however many spans it has, and only the
    transforms are kept. AudioDecodeError names a file that cannot be decoded; ConfigError a
    span past its end."""
    groups = _by_file(sources)
    _require_files(groups)

    def load(key: tuple[str, int | None]) -> list[tuple[int, T]]:
        audio = load_mono(Path(key[0]), sample_rate, key[1])
        return [(i, transform(cut_span(audio, sample_rate, sources[i]))) for i in groups[key]]

    results: dict[int, T] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for loaded in pool.map(load, groups):
            results.update(loaded)
    return [results[i] for i in range(len(sources))]
