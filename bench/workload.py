"""Synthetic two-party calls built from real corpus speech, with their ground truth.

Used by the demo (``callmood demo``), the benchmarks and the end-to-end tests: each call
is a stereo recording (channel 0 agent, channel 1 customer) where the parties take turns,
sometimes talk over each other, and pause; every placed clip is recorded as truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import soundfile as sf

from worker.audio import load_mono


@dataclass(frozen=True)
class PlacedClip:
    """One corpus clip placed in a synthetic call."""

    channel: int
    start_s: float
    end_s: float
    emotion: str
    source: str


@dataclass(frozen=True)
class SyntheticCall:
    """A stereo call (samples, 2) float32 at ``sample_rate`` and what was placed in it."""

    audio: npt.NDArray[np.float32]
    sample_rate: int
    clips: tuple[PlacedClip, ...]

    @property
    def duration_s(self) -> float:
        return float(self.audio.shape[0]) / self.sample_rate


def read_manifest(corpora_dir: Path, corpus: str) -> pd.DataFrame:
    """A corpus manifest with an absolute ``audio_path`` column."""
    folder = corpora_dir / corpus
    frame = pd.read_csv(folder / "manifest.csv", dtype={"speaker": str})
    return frame.assign(audio_path=[str(folder / p) for p in frame["path"]])


def synthesize_call(agent_clips: pd.DataFrame, customer_clips: pd.DataFrame,
                    rng: np.random.Generator, sample_rate: int = 8000,
                    gap_s: tuple[float, float] = (0.4, 1.6), overlap_share: float = 0.15,
                    level_db: tuple[float, float] = (-6.0, -2.0)) -> SyntheticCall:
    """Alternate agent and customer turns (rows in order) into a stereo call.

    Turns are separated by ``gap_s`` seconds of silence drawn uniformly; with probability
    ``overlap_share`` a turn starts 0.3-1 s before the previous one ends (overtalk).
    """
    turns: list[tuple[int, pd.Series]] = []
    agent_rows = [r for _, r in agent_clips.iterrows()]
    customer_rows = [r for _, r in customer_clips.iterrows()]
    for i in range(max(len(agent_rows), len(customer_rows))):
        if i < len(agent_rows):
            turns.append((0, agent_rows[i]))
        if i < len(customer_rows):
            turns.append((1, customer_rows[i]))
    pieces: list[tuple[int, int, npt.NDArray[np.float32], pd.Series]] = []
    cursor = int(rng.uniform(0.5, 1.5) * sample_rate)
    for channel, row in turns:
        clip = load_mono(Path(row["audio_path"]), sample_rate)
        peak = float(np.abs(clip).max()) or 1.0
        gain = 10 ** (rng.uniform(*level_db) / 20) / peak
        start = cursor
        if pieces and rng.random() < overlap_share:
            start = max(0, cursor - int(rng.uniform(0.3, 1.0) * sample_rate))
        pieces.append((channel, start, (clip * gain).astype(np.float32), row))
        cursor = start + clip.size + int(rng.uniform(*gap_s) * sample_rate)
    total = cursor + int(0.5 * sample_rate)
    audio = np.zeros((total, 2), dtype=np.float32)
    placed = []
    for channel, start, clip, row in pieces:
        audio[start:start + clip.size, channel] += clip
        placed.append(PlacedClip(channel=channel, start_s=start / sample_rate,
                                 end_s=(start + clip.size) / sample_rate,
                                 emotion=str(row["emotion"]), source=str(row["path"])))
    return SyntheticCall(audio=np.clip(audio, -1.0, 1.0), sample_rate=sample_rate,
                         clips=tuple(placed))


def write_call(call: SyntheticCall, path: Path, subtype: str = "ULAW") -> Path:
    """Write ``call`` as a WAV (default G.711 mu-law, as a PBX records it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), call.audio, call.sample_rate, subtype=subtype, format="WAV")
    return path


# Mood arcs of the demo calls: (agent emotions, customer emotions), one clip per turn.
DEMO_SCRIPTS: tuple[tuple[str, Sequence[str], Sequence[str]], ...] = (
    ("calm-call", ("neutral", "happy", "neutral", "happy"), ("neutral", "neutral", "happy", "happy")),
    ("angry-customer", ("neutral", "neutral", "sad", "neutral"), ("neutral", "angry", "angry", "angry")),
    ("worried-customer", ("neutral", "neutral", "neutral", "happy"), ("fear", "fear", "sad", "neutral")),
)


def demo_calls(corpora_dir: Path, out_dir: Path, seed: int = 7) -> list[Path]:
    """Write the demo calls (RAVDESS *test* actors, unseen by the model) as mu-law WAVs."""
    rng = np.random.default_rng(seed)
    manifest = read_manifest(corpora_dir, "ravdess")
    test = manifest[manifest["split"] == "test"].assign(
        emotion=lambda f: f["emotion"].replace({"calm": "neutral"}))
    speakers = sorted(test["speaker"].unique())
    paths = []
    for i, (name, agent_moods, customer_moods) in enumerate(DEMO_SCRIPTS):
        agent, customer = speakers[(2 * i) % len(speakers)], speakers[(2 * i + 1) % len(speakers)]

        def pick(speaker: str, moods: Sequence[str]) -> pd.DataFrame:
            rows = [test[(test["speaker"] == speaker) & (test["emotion"] == m)]
                    .sample(1, random_state=int(rng.integers(1 << 31))) for m in moods]
            return pd.concat(rows)

        call = synthesize_call(pick(agent, agent_moods), pick(customer, customer_moods), rng)
        paths.append(write_call(call, out_dir / f"{name}.wav"))
    return paths
