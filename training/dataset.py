"""The labelled dataset: manifests -> one DataFrame of clips with 7-class labels and subsets.

Every step is a pure function over DataFrames (takes one, returns a new one). Decisions:

- ``calm`` (RAVDESS) -> ``neutral``: a low-arousal neutral delivery, not a separate emotion.
- ``boredom`` (EmoDB) is dropped: no counterpart among the seven classes, and merging it
  into neutral or sad would teach the model a German-actor-specific boundary.
- URDU (natural talk-show speech, 4 of the 7 classes) is kept: it is the only
  non-acted speech, and per-class sampling copes with its missing classes.
- BAVED (Arabic single words, arousal only, no category) is excluded from the 7-class head;
  with an arousal weight, it trains an auxiliary arousal head (:func:`build_arousal_dataset`).
- Validation *speakers* are carved out of ``train`` per corpus; ``test`` is never touched
  for training or model selection.

A manifest needs at least the columns path, speaker, emotion, split; ``path`` is relative
to the manifest's folder or absolute. ``corpus`` defaults to the manifest's folder name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from worker.constants import EMOTIONS
from worker.emotion import ModelCard
from worker.errors import ConfigError

REQUIRED_COLUMNS: tuple[str, ...] = ("path", "speaker", "emotion", "split")
DEFAULT_CORPORA: tuple[str, ...] = ("ravdess", "tess", "emodb", "urdu")
"""Corpora with categorical labels; BAVED has arousal only and is left out of the head."""

LABEL_MAP: dict[str, str | None] = {
    **{e: e for e in EMOTIONS},
    "calm": "neutral",
    "boredom": None,
    "pleasant_surprise": "surprise",
    "ps": "surprise",
    "anger": "angry",
    "happiness": "happy",
    "sadness": "sad",
}
"""Raw unified label -> one of EMOTIONS, or None to drop the clip."""

TRAINABLE_EXTRA_CLASSES: tuple[str, ...] = ("calm",)
"""Raw labels a recipe may train as classes of their own (``TrainConfig.extra_classes``) and
merge into their LABEL_MAP class in the exported graph: RAVDESS's calm is a low-arousal
delivery that sits between neutral and sad, so as part of neutral it widens that class
towards sad (the shipped model's largest RAVDESS error is sad -> neutral)."""

AROUSAL_LEVELS: tuple[str, ...] = ("low", "neutral", "high")
"""Classes of the auxiliary arousal head: a manifest's ``arousal_level`` column (BAVED's)."""
AROUSAL_CORPORA: tuple[str, ...] = ("baved",)
"""Corpora with arousal levels the auxiliary head trains on by default."""

SUBSET_TRAIN = "train"
SUBSET_VAL = "val"
SUBSET_TEST = "test"


def read_manifest(manifest_path: Path) -> pd.DataFrame:
    """Read one manifest CSV; ``path`` becomes absolute, ``corpus`` is filled in.

    Raises ConfigError if a required column is missing.
    """
    try:
        df = pd.read_csv(manifest_path, dtype={"speaker": str, "emotion": str, "split": str})
    except (OSError, pd.errors.ParserError) as e:
        raise ConfigError(f"cannot read manifest {manifest_path}: {e}") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"manifest {manifest_path} lacks column(s) {', '.join(missing)}; "
                          f"needs at least {', '.join(REQUIRED_COLUMNS)}")
    root = manifest_path.resolve().parent
    paths = [str(p if Path(p).is_absolute() else root / p) for p in df["path"].astype(str)]
    corpus = (df["corpus"].astype(str) if "corpus" in df.columns
              else pd.Series([root.name] * len(df), index=df.index))
    return df.assign(path=paths, corpus=corpus, speaker=df["speaker"].astype(str),
                     emotion=df["emotion"].fillna("").astype(str).str.strip().str.lower(),
                     split=df["split"].astype(str).str.strip().str.lower())


def corpus_manifest_paths(corpora_dir: Path, corpora: Sequence[str] = DEFAULT_CORPORA) -> list[Path]:
    """``corpora_dir/<corpus>/manifest.csv`` for each corpus name."""
    return [corpora_dir / c / "manifest.csv" for c in corpora]


def read_manifests(manifest_paths: Iterable[Path]) -> pd.DataFrame:
    """Concatenate several manifests (see :func:`read_manifest`)."""
    frames = [read_manifest(p) for p in manifest_paths]
    if not frames:
        raise ConfigError("no manifest given")
    return pd.concat(frames, ignore_index=True)


def map_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Keep clips whose emotion maps to one of EMOTIONS; add ``label`` (str) and ``label_id``.

    Drops boredom, empty labels (BAVED) and anything unknown.
    """
    mapped = df["emotion"].map(lambda e: LABEL_MAP.get(str(e).strip().lower()))
    kept = df.assign(label=mapped)[mapped.notna()]
    index = {e: i for i, e in enumerate(EMOTIONS)}
    return kept.assign(label_id=kept["label"].map(index).astype(np.int64)).reset_index(drop=True)


def assign_subsets(df: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0,
                   min_speakers_for_val: int = 4) -> pd.DataFrame:
    """Add ``subset``: test rows stay test; per corpus, a seeded share of train speakers -> val.

    Corpora with fewer than ``min_speakers_for_val`` train speakers (TESS: 2) stay whole in
    train: holding out one of two speakers would halve it for a meaningless validation.
    Speakers are drawn per gender where a ``gender`` column exists, to keep val balanced.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    rng = np.random.default_rng(seed)
    val_keys: set[tuple[str, str]] = set()
    train = df[df["split"] == SUBSET_TRAIN]
    for corpus, rows in sorted(train.groupby("corpus"), key=lambda kv: str(kv[0])):
        speakers = sorted(rows["speaker"].unique())
        if len(speakers) < min_speakers_for_val or val_fraction == 0.0:
            continue
        gender = (rows.groupby("speaker")["gender"].first().fillna("?").astype(str)
                  if "gender" in rows.columns else pd.Series("?", index=speakers))
        for _, group in sorted(gender.groupby(gender), key=lambda kv: str(kv[0])):
            members = sorted(group.index)
            n_val = max(1, round(val_fraction * len(members))) if len(members) > 1 else 0
            for s in rng.choice(members, size=n_val, replace=False):
                val_keys.add((str(corpus), str(s)))
    keys = list(zip(df["corpus"].astype(str), df["speaker"].astype(str), strict=True))
    is_val = np.array([k in val_keys for k in keys], dtype=bool)
    subset = np.where(df["split"] == SUBSET_TEST, SUBSET_TEST,
                      np.where(is_val, SUBSET_VAL, SUBSET_TRAIN))
    return df.assign(subset=subset)


def build_dataset(manifest_paths: Iterable[Path], val_fraction: float = 0.2,
                  seed: int = 0) -> pd.DataFrame:
    """Manifests -> labelled clips with ``subset`` in {train, val, test}."""
    df = map_labels(read_manifests(manifest_paths))
    df = df[df["split"].isin([SUBSET_TRAIN, SUBSET_TEST])]
    return assign_subsets(df.reset_index(drop=True), val_fraction=val_fraction, seed=seed)


def build_arousal_dataset(manifest_paths: Iterable[Path], val_fraction: float = 0.2,
                          seed: int = 0) -> pd.DataFrame:
    """Manifests with an ``arousal_level`` column -> clips with ``arousal_id`` (index into
    AROUSAL_LEVELS) and ``subset`` in {train, val, test}.

    Validation speakers are drawn by their own seeded draw, so training with the arousal
    corpora leaves the emotion corpora's validation speakers as they were. Rows with another
    level (or none) are dropped. Raises ConfigError if a manifest lacks the column.
    """
    frames = []
    for path in manifest_paths:
        df = read_manifest(path)
        if "arousal_level" not in df.columns:
            raise ConfigError(f"manifest {path} has no arousal_level column (values "
                              f"{', '.join(AROUSAL_LEVELS)})")
        frames.append(df)
    if not frames:
        raise ConfigError("no arousal manifest given")
    df = pd.concat(frames, ignore_index=True)
    level = df["arousal_level"].fillna("").astype(str).str.strip().str.lower()
    index = {a: i for i, a in enumerate(AROUSAL_LEVELS)}
    kept = df.assign(arousal=level)[level.isin(index) & df["split"].isin([SUBSET_TRAIN,
                                                                           SUBSET_TEST])]
    kept = kept.assign(arousal_id=kept["arousal"].map(index).astype(np.int64))
    return assign_subsets(kept.reset_index(drop=True), val_fraction=val_fraction, seed=seed)


def training_targets(df: pd.DataFrame, extra: Sequence[str] = ()) -> npt.NDArray[np.int64]:
    """(N,) class the loss trains each clip towards: its ``label_id``, or
    ``len(EMOTIONS) + k`` for a clip whose raw ``emotion`` is ``extra[k]``.
    (``TrainConfig`` checks the names against TRAINABLE_EXTRA_CLASSES).
    """
    targets: npt.NDArray[np.int64] = df["label_id"].to_numpy(np.int64).copy()
    for k, raw in enumerate(extra):
        targets[(df["emotion"] == raw).to_numpy()] = len(EMOTIONS) + k
    return targets


def speaker_keys(df: pd.DataFrame) -> pd.Series:
    """Each row's speaker as ``corpus:speaker``, the form a card lists validation speakers in
    (speaker ids repeat across corpora)."""
    return df["corpus"].astype(str) + ":" + df["speaker"].astype(str)


def card_val_speakers(card: ModelCard) -> list[str]:
    """The ``corpus:speaker`` keys a trained model's card lists as held out for validation,
    sorted (empty for a card written by other tooling)."""
    return sorted(card.extra.get("training", {}).get("val_speakers", []))


def sampling_weights(df: pd.DataFrame) -> npt.NDArray[np.float64]:
    """Per-clip sampling probability (sums to 1) balancing classes, then corpora.

    Each class present gets an equal share; a class's share is split equally among the
    corpora that have it; within a (corpus, class) cell, clips are uniform. TESS (62% of
    the train clips) then gets about a quarter of the draws, and no corpus can become a
    shortcut for a class.
    """
    if df.empty:
        raise ValueError("no clips to weight")
    cell = df.groupby(["corpus", "label"])["path"].transform("size").to_numpy(np.float64)
    corpora_per_class = df.groupby("label")["corpus"].transform("nunique").to_numpy(np.float64)
    n_classes = float(df["label"].nunique())
    w = 1.0 / (n_classes * corpora_per_class * cell)
    return np.asarray(w / w.sum(), dtype=np.float64)


def counts_table(df: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{corpus: {label: clips}} for the model card."""
    table = df.groupby(["corpus", "label"]).size()
    out: dict[str, dict[str, int]] = {}
    for (corpus, label), n in table.items():
        out.setdefault(str(corpus), {})[str(label)] = int(n)
    return out
