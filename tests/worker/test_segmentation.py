"""The pure decision chain, on hand-written score lists with exact expected spans."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from worker.errors import ConfigError
from worker.segmentation import (
    SegmentationConfig,
    Span,
    drop_short,
    merge_gaps,
    pad,
    speech_regions,
    split_long,
    utterances,
)

FRAME_S = 0.1
# Nothing but thresholding: isolates one step at a time.
BARE = SegmentationConfig(threshold=0.5, min_silence_ms=0, min_speech_ms=0, pad_ms=0,
                          max_utterance_s=100.0)


def spans(*pairs: tuple[float, float]) -> list[Span]:
    return [Span(a, b) for a, b in pairs]


def assert_spans(got: list[Span], want: list[tuple[float, float]]) -> None:
    assert len(got) == len(want), got
    for g, (a, b) in zip(got, want, strict=True):
        assert g.start_s == pytest.approx(a, abs=1e-9), got
        assert g.end_s == pytest.approx(b, abs=1e-9), got


def test_threshold_is_inclusive_and_regions_are_frame_runs() -> None:
    p = [0.0, 0.5, 0.9, 0.49, 0.0, 1.0, 1.0]
    assert_spans(utterances(p, FRAME_S, 0.7, BARE), [(0.1, 0.3), (0.5, 0.7)])


def test_partial_last_frame_is_clipped_to_duration() -> None:
    assert_spans(speech_regions([False, True, True], FRAME_S, 0.25), [(0.1, 0.25)])


def test_merge_gaps_bridges_only_gaps_shorter_than_min_silence() -> None:
    p = [1, 1, 0, 1, 1, 0, 0, 0, 1, 1]  # gaps of 0.1 s and 0.3 s
    cfg = SegmentationConfig(0.5, min_silence_ms=200, min_speech_ms=0, pad_ms=0,
                             max_utterance_s=100.0)
    assert_spans(utterances(p, FRAME_S, 1.0, cfg), [(0.0, 0.5), (0.8, 1.0)])
    assert_spans(merge_gaps(spans((0, 1), (1.2, 2), (2.29, 3)), 0.3), [(0.0, 3.0)])
    assert_spans(merge_gaps(spans((0, 1), (1.3, 2)), 0.3), [(0.0, 1.0), (1.3, 2.0)])


def test_drop_short_removes_blips_after_merging() -> None:
    # The 0.1 s blip at 0.5 s is lost; the one 0.1 s after speech is merged, not dropped.
    p = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0]
    cfg = SegmentationConfig(0.5, min_silence_ms=150, min_speech_ms=200, pad_ms=0,
                             max_utterance_s=100.0)
    assert_spans(utterances(p, FRAME_S, 1.7, cfg), [(1.0, 1.5)])
    assert_spans(drop_short(spans((0, 0.1), (1, 1.3)), 0.2), [(1.0, 1.3)])


def test_pad_clips_to_zero_and_duration() -> None:
    p = [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    cfg = SegmentationConfig(0.5, min_silence_ms=0, min_speech_ms=0, pad_ms=150,
                             max_utterance_s=100.0)
    assert_spans(utterances(p, FRAME_S, 0.95, cfg), [(0.0, 0.35), (0.65, 0.95)])


def test_pad_meets_in_the_middle_of_a_narrow_gap() -> None:
    assert_spans(pad(spans((1.0, 2.0), (2.2, 3.0)), 0.3, 10.0), [(0.7, 2.1), (2.1, 3.3)])


def test_split_of_25_s_region_gives_four_equal_windows() -> None:
    p = np.zeros(300)
    p[20:270] = 1.0  # 2.0 .. 27.0 s
    cfg = SegmentationConfig(0.5, min_silence_ms=0, min_speech_ms=0, pad_ms=0,
                             max_utterance_s=8.0)
    got = utterances(p, FRAME_S, 30.0, cfg)
    assert_spans(got, [(2.0, 8.25), (8.25, 14.5), (14.5, 20.75), (20.75, 27.0)])
    assert all(s.duration_s <= 8.0 for s in got)


def test_split_long_keeps_exact_multiples_and_short_spans_whole() -> None:
    assert_spans(split_long(spans((0.0, 16.0), (20.0, 21.0)), 8.0),
                 [(0.0, 8.0), (8.0, 16.0), (20.0, 21.0)])


@pytest.mark.parametrize("p", [[], [0.0] * 50, [0.2, 0.49, 0.1]])
def test_empty_and_silent_input_give_no_utterances(p: list[float]) -> None:
    assert utterances(p, FRAME_S, len(p) * FRAME_S, SegmentationConfig()) == []


def test_all_speech_with_default_config_covers_channel_in_windows() -> None:
    got = utterances(np.ones(1000), 0.03, 30.0, SegmentationConfig())
    assert got[0].start_s == 0.0 and got[-1].end_s == pytest.approx(30.0)
    assert all(s.duration_s <= SegmentationConfig().max_utterance_s for s in got)
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in itertools.pairwise(got))


def test_duration_property() -> None:
    assert Span(1.5, 4.0).duration_s == 2.5


@pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": 1.5},
                                    {"pad_ms": -1}, {"max_utterance_s": 0.0}])
def test_invalid_config_raises_config_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        SegmentationConfig(**kwargs)  # type: ignore[arg-type]


def test_a_run_or_gap_of_exactly_the_threshold_is_judged_alike_wherever_it_sits() -> None:
    """Edges are frame index x 10 ms in floats: a 100 ms run at frame 0 was kept and the same
    run at frame 2 dropped (0.12 - 0.02 < 0.1), and a 400 ms gap bridged at some positions
    only. Exactly the threshold: a run is kept, a gap is not bridged, everywhere."""
    frame_s = 0.01
    cfg = SegmentationConfig(0.5, min_silence_ms=400, min_speech_ms=100, pad_ms=0,
                             max_utterance_s=100.0)
    for start in range(300):
        run = [0.0] * start + [1.0] * 10 + [0.0] * 5
        assert len(utterances(run, frame_s, len(run) * frame_s, cfg)) == 1, start
        gap = [0.0] * start + [1.0] * 20 + [0.0] * 40 + [1.0] * 20
        assert len(utterances(gap, frame_s, len(gap) * frame_s, cfg)) == 2, start
