"""The crosstalk gate: pure decisions on frame levels, then real calls through the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.workload import read_manifest, synthesize_call
from tests.model_fixtures import tiny_model_settings
from training.crosstalk_eval import leak
from worker.crosstalk import CrosstalkConfig, Evidence, evidence, is_leak, without_crosstalk
from worker.errors import ConfigError
from worker.pipeline import analyze_file
from worker.segmentation import Span
from worker.settings import Settings
from worker.vad import SILENCE_DB, Levels, frame_levels_db

FRAME_S = 0.01


def speech_like_levels(n: int, seed: int) -> Levels:
    """Frame levels (dB) that rise and fall like syllables over a -60 dB floor."""
    rng = np.random.default_rng(seed)
    syllables = np.repeat(rng.uniform(-40.0, -10.0, size=n // 15 + 1), 15)[:n]
    pauses = np.repeat(rng.random(n // 25 + 1) < 0.3, 25)[:n]
    return np.where(pauses, -60.0, syllables + rng.normal(0.0, 2.0, n)).astype(np.float32)


def test_frame_levels_are_mean_power_in_dbfs() -> None:
    x = np.concatenate([np.zeros(80), np.full(80, 0.5), np.full(40, 0.1)]).astype(np.float32)
    levels = frame_levels_db(x, 80)
    assert levels.shape == (3,)
    assert levels[0] == SILENCE_DB
    assert levels[1] == pytest.approx(20 * np.log10(0.5), abs=1e-4)
    # the partial last frame is zero-padded, as the VAD frames it: half the power
    assert levels[2] == pytest.approx(10 * np.log10(0.01 / 2), abs=1e-4)


def test_a_delayed_quiet_copy_of_the_other_channel_is_a_leak() -> None:
    other = speech_like_levels(1000, 1)
    this = np.concatenate([np.full(4, -60.0), other[:-4] - 40.0]).astype(np.float32)
    found = evidence(Span(2.0, 4.0), this, other, FRAME_S, max_lag_ms=300)
    assert found.correlation > 0.99
    assert found.gap_db == pytest.approx(40.0, abs=0.5)
    assert found.lag_ms == 40
    assert is_leak(found, CrosstalkConfig())
    # a longer echo than the gate searches is not matched
    late = np.concatenate([np.full(50, -60.0), other[:-50] - 40.0]).astype(np.float32)
    assert not is_leak(evidence(Span(2.0, 4.0), late, other, FRAME_S, max_lag_ms=300),
                       CrosstalkConfig())


def test_a_party_of_its_own_or_the_louder_side_is_not_a_leak() -> None:
    other = speech_like_levels(1000, 1)
    quiet_own_voice = (speech_like_levels(1000, 2) - 25.0).astype(np.float32)  # its own envelope
    found = evidence(Span(2.0, 4.0), quiet_own_voice, other, FRAME_S, max_lag_ms=300)
    assert found.gap_db > 15.0 and found.correlation < 0.5
    assert not is_leak(found, CrosstalkConfig())
    # the source of a leak, compared with its own leak on the other channel: correlated, louder
    source = evidence(Span(2.0, 4.0), other, (other - 40.0).astype(np.float32), FRAME_S, 300)
    assert source.correlation > 0.99 and source.gap_db == pytest.approx(-40.0, abs=0.01)
    assert not is_leak(source, CrosstalkConfig())


def test_evidence_at_the_edges_of_a_call() -> None:
    other = speech_like_levels(300, 3)
    # at the start only the lags that exist are tried; a frame or less says nothing
    quiet = (other - 40.0).astype(np.float32)
    assert evidence(Span(0.0, 1.0), quiet, other, FRAME_S, 300).correlation > 0.99
    assert evidence(Span(1.0, 1.005), other, other, FRAME_S, 300) == Evidence(0.0, 0.0, 0)
    flat = np.full(300, -50.0, dtype=np.float32)
    assert evidence(Span(0.5, 2.0), flat, other, FRAME_S, 300).correlation == 0.0


def test_a_leak_from_the_first_instant_of_the_call_is_found_at_its_delay() -> None:
    """The agent talks from the first frame and leaks 40 ms late: the lags reaching before
    the call's start compare the frames that overlap. Only lag 0 was tried there, at which the
    leak barely correlated, and it was stored as the customer's (a review)."""
    other = speech_like_levels(300, 3)
    this = np.concatenate([np.full(4, -60.0), other[:-4] - 40.0]).astype(np.float32)
    found = evidence(Span(0.0, 1.3), this, other, FRAME_S, 300)
    assert found.lag_ms == 40 and found.correlation > 0.99
    assert found.gap_db == pytest.approx(40.0, abs=0.5)
    assert is_leak(found, CrosstalkConfig())
    # a stretch shorter than twice its missing frames is compared at the lags that exist only
    assert evidence(Span(0.0, 0.06), this, other, FRAME_S, 300).lag_ms <= 30


def test_span_edges_fall_on_the_frames_they_name() -> None:
    """A span padded 30 ms before frame 36 starts at 0.36 - 0.03 = 0.32999999999999996 s:
    frame 33, not 32, so the levels compared are the utterance's own, not one frame of what
    came before it."""
    other = speech_like_levels(300, 3)
    this = (other - 40.0).astype(np.float32)
    this[32] = 0.0                           # a click the frame before the utterance
    start_s = 0.36 - 0.03
    assert start_s < 0.33
    assert is_leak(evidence(Span(start_s, 1.07), this, other, FRAME_S, 0), CrosstalkConfig())


def test_a_half_frame_edge_takes_its_partly_covered_frame_wherever_it_sits() -> None:
    """30 ms of padding on 20 ms frames puts every padded edge mid-frame: rounding to the
    nearest frame let float noise choose, 1,591 edges one way and 407 the other (a review)."""
    from worker.crosstalk import _frame_range

    frame_s = 0.02
    ranges = {(k - _frame_range(Span(k * frame_s - 0.03, (k + 10) * frame_s + 0.03), frame_s,
                                10**6)[0],
               _frame_range(Span(k * frame_s - 0.03, (k + 10) * frame_s + 0.03), frame_s,
                            10**6)[1] - (k + 10))
              for k in range(2, 2000)}
    assert ranges == {(2, 2)}


def test_the_gate_drops_leaks_only_on_two_channel_calls_and_when_enabled() -> None:
    agent = speech_like_levels(1000, 1)
    customer = np.concatenate([np.full(3, -70.0), agent[:-3] - 40.0]).astype(np.float32)
    customer[600:800] = speech_like_levels(200, 5)  # the customer's own turn
    spans = [[Span(1.0, 3.0)], [Span(1.0, 3.0), Span(6.0, 8.0)]]
    gated = without_crosstalk(spans, [agent, customer], FRAME_S, CrosstalkConfig())
    assert gated == ((Span(1.0, 3.0),), (Span(6.0, 8.0),))
    off = CrosstalkConfig(enabled=False)
    assert without_crosstalk(spans, [agent, customer], FRAME_S, off) == \
        ((Span(1.0, 3.0),), (Span(1.0, 3.0), Span(6.0, 8.0)))
    assert without_crosstalk([spans[1]], [customer], FRAME_S, CrosstalkConfig()) == \
        ((Span(1.0, 3.0), Span(6.0, 8.0)),)


@pytest.mark.parametrize(("changes", "named"), [
    ({"min_correlation": 1.5}, "min_correlation=1.5: use -1 to 1"),
    ({"min_gap_db": -3.0}, "min_gap_db=-3.0: use a finite 0 dB or more"),
    ({"min_gap_db": float("nan")}, "min_gap_db=nan: use a finite 0 dB or more"),
    ({"min_gap_db": float("inf")}, "min_gap_db=inf: use a finite 0 dB or more"),
    ({"max_lag_ms": 5000}, "max_lag_ms=5000: use 0 to 2000"),
])
def test_config_refuses_values_out_of_range(changes: dict[str, float], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        CrosstalkConfig(**changes)  # type: ignore[arg-type]


def test_settings_read_the_gate_from_the_environment(tmp_path: Path) -> None:
    base = {"CALLMOOD_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(base).crosstalk == CrosstalkConfig()
    off = Settings.from_env({**base, "CALLMOOD_CROSSTALK_ENABLED": "0",
                             "CALLMOOD_CROSSTALK_MIN_GAP_DB": "20"}).crosstalk
    assert off == CrosstalkConfig(enabled=False, min_gap_db=20.0)
    with pytest.raises(ConfigError, match="CALLMOOD_CROSSTALK_MIN_CORRELATION"):
        Settings.from_env({**base, "CALLMOOD_CROSSTALK_GAP": "20"})


# ---- real calls through the pipeline -------------------------------------------------------

@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return tiny_model_settings(tmp_path)


def leaky_call(callmood_corpora: Path, path: Path, subtype: str, customer_turns: int,
               overlap_share: float) -> list[tuple[float, float]]:
    """A RAVDESS call whose customer channel also carries the agent 40 dB down, 40 ms late;
    returns the customer's own clips (start_s, end_s)."""
    manifest = read_manifest(callmood_corpora, "ravdess")
    test = manifest[manifest["split"] == "test"]
    agent = test[test["speaker"] == "actor19"].head(6)
    customer = test[test["speaker"] == "actor20"].head(customer_turns)
    call = synthesize_call(agent, customer, np.random.default_rng(5), overlap_share=overlap_share)
    audio = call.audio.copy()
    audio[:, 1] += leak(audio[:, 0], -40.0, 40)
    sf.write(str(path), audio, call.sample_rate, subtype=subtype)
    return [(c.start_s, c.end_s) for c in call.clips if c.channel == 1]


@pytest.mark.parametrize("subtype", ["PCM_16", "ULAW"])
def test_the_agents_leak_is_not_a_customer_utterance(tmp_path: Path, settings: Settings,
                                                     callmood_corpora: Path, subtype: str) -> None:
    path = tmp_path / "leak.wav"
    leaky_call(callmood_corpora, path, subtype, customer_turns=0, overlap_share=0.0)
    ungated = analyze_file(str(path), settings.replace(crosstalk=CrosstalkConfig(enabled=False)))
    gated = analyze_file(str(path), settings)
    # without the gate the level front end lifts the leak into customer utterances
    assert len([s for s in ungated.segments if s.role == "customer"]) >= 3
    assert [s for s in gated.segments if s.role == "customer"] == []
    assert [s for s in gated.segments if s.role == "agent"] == \
        [s for s in ungated.segments if s.role == "agent"]


def test_the_customer_talking_over_the_agent_is_kept(tmp_path: Path, settings: Settings,
                                                     callmood_corpora: Path) -> None:
    path = tmp_path / "overtalk.wav"
    own = leaky_call(callmood_corpora, path, "PCM_16", customer_turns=6, overlap_share=0.6)
    gated = analyze_file(str(path), settings)
    customer = [s for s in gated.segments if s.role == "customer"]
    for start_s, end_s in own:
        covered = sum(max(0.0, min(s.end_s, end_s) - max(s.start_s, start_s)) for s in customer)
        assert covered > 0.8, (start_s, end_s)
    # and what the gate kept on the customer channel is the customer's speech
    for s in customer:
        inside = sum(max(0.0, min(s.end_s, e) - max(s.start_s, b)) for b, e in own)
        assert inside > 0.5 * (s.end_s - s.start_s), s


def test_streamed_and_whole_runs_gate_alike(tmp_path: Path, settings: Settings,
                                            callmood_corpora: Path) -> None:
    path = tmp_path / "call.wav"
    leaky_call(callmood_corpora, path, "ULAW", customer_turns=0, overlap_share=0.0)
    whole = analyze_file(str(path), settings, streaming=False)
    assert whole.segments == analyze_file(str(path), settings, streaming=True).segments
    ungated = analyze_file(str(path), settings.replace(crosstalk=CrosstalkConfig(enabled=False)),
                           streaming=True)
    assert len(ungated.segments) > len(whole.segments) > 0
