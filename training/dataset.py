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
to the manifest's folder or absolute. ``corpus`` defaults to the manifest's folder name, and
a speaker is ``corpus:speaker``: an operator's manifests in several folders name one corpus
in a ``corpus`` column, or the same agent counts as a different speaker in each. ``split`` is
train or test, each speaker in one of them (validation speakers are drawn from train); an
optional ``channel`` column (0 = first) names the labelled party's channel of a stereo file,
and optional ``start_s`` / ``end_s`` columns a labelled span of the file (seconds from its
start; empty: the whole file), so an operator labels utterances inside whole calls without
cutting them into clips. Spans of one file and channel may not overlap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from worker.constants import EMOTIONS
from worker.emotion import ModelCard
from worker.errors import ConfigError

log = logging.getLogger(__name__)

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

def untaught_classes(train_labels: Iterable[str]) -> list[int]:
    """Indices into EMOTIONS of the served classes none of ``train_labels`` (training class
    names, extra classes included) reaches: the exported graph masks them
    (``training.model.WithoutUntaught``) and the card names them."""
    taught = {str(LABEL_MAP.get(label, label)) for label in train_labels}
    return [i for i, emotion in enumerate(EMOTIONS) if emotion not in taught]


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
MANIFEST_SPLITS: tuple[str, ...] = (SUBSET_TRAIN, SUBSET_TEST)
"""Values of a manifest's ``split``: validation speakers are carved out of train by the
training run itself (``--val-fraction``, ``--split-seed``)."""
MAX_LISTED = 5
"""Values a manifest error names before it counts the rest."""
SPAN_COLUMNS: tuple[str, str] = ("start_s", "end_s")
"""Optional manifest columns: the labelled span of a file, in seconds from its start."""
TEXT_COLUMNS: tuple[str, ...] = ("speaker", "emotion", "split", "channel", *SPAN_COLUMNS)
"""Columns read as text and checked here, so a bad value is named as the operator wrote it."""


@dataclass(frozen=True)
class ClipSource:
    """Where a labelled clip's audio is: a file, its party's channel (None: a mono file) and
    the labelled span in seconds (None: the whole file)."""

    path: str
    channel: int | None = None
    start_s: float | None = None
    end_s: float | None = None


def _listed(counts: pd.Series) -> str:
    """'a' (3 rows), 'b' (1 row), ... for the value counts of a manifest error."""
    shown = [f"{v!r} ({n} row{'s' if n != 1 else ''})" for v, n in counts.head(MAX_LISTED).items()]
    more = f" and {len(counts) - MAX_LISTED} more" if len(counts) > MAX_LISTED else ""
    return ", ".join(shown) + more


def read_manifest(manifest_path: Path) -> pd.DataFrame:
    """Read one manifest CSV; ``path`` becomes absolute, ``corpus`` is filled in.

    Raises ConfigError if a required column is missing.
    """
    try:
        # as text: a number column with an empty cell reads as float, "1" as 1.0
        # only an empty cell is missing: an agent called "NA" or "None" is a speaker
        df = pd.read_csv(manifest_path, dtype={c: str for c in TEXT_COLUMNS},
                         keep_default_na=False, na_values=[""])
        # indexed by line in the file (line = index + 2), which the errors name: the parser
        # skips blank lines, and after one they named the line above (a review)
        df.index = pd.Index(_data_lines(manifest_path, len(df))) - 2
    except (OSError, pd.errors.ParserError) as e:
        raise ConfigError(f"cannot read manifest {manifest_path}: {e}") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"manifest {manifest_path} lacks column(s) {', '.join(missing)}; "
                          f"needs at least {', '.join(REQUIRED_COLUMNS)}")
    root = manifest_path.resolve().parent
    speaker = df["speaker"].fillna("").astype(str).str.strip()
    if (speaker == "").any():
        raise ConfigError(f"manifest {manifest_path}: no speaker on line(s) "
                          f"{_lines(speaker == '')}; every clip needs its speaker, which keeps "
                          "test speakers out of training")
    split = df["split"].fillna("").astype(str).str.strip().str.lower()
    other = split[~split.isin(MANIFEST_SPLITS)]
    if not other.empty:
        raise ConfigError(f"manifest {manifest_path}: split value(s) "
                          f"{_listed(other.value_counts())}; use {' or '.join(MANIFEST_SPLITS)} "
                          "(validation speakers are drawn from train: --val-fraction, "
                          "--split-seed)")
    channel = (_channels(df["channel"], manifest_path) if "channel" in df.columns
               else pd.Series([pd.NA] * len(df), index=df.index, dtype="Int64"))
    start_s, end_s = _spans(df, manifest_path)
    # normalised: one call reached as calls/c1.wav and ../calls/c1.wav is one file to the
    # overlap and train/test checks (and is decoded once)
    paths = [os.path.normpath(p if Path(p).is_absolute() else root / p)
             for p in df["path"].astype(str)]
    named = (df["corpus"].fillna("").astype(str).str.strip() if "corpus" in df.columns
             else pd.Series("", index=df.index))
    corpus = named.where(named != "", root.name)   # an empty cell: the folder's name
    return df.assign(path=paths, corpus=corpus, speaker=speaker, channel=channel,
                     start_s=start_s, end_s=end_s,
                     emotion=df["emotion"].fillna("").astype(str).str.strip().str.lower(),
                     split=split)


def _data_lines(manifest_path: Path, rows: int) -> list[int]:
    """The file line (1-based) of each of a CSV's ``rows`` data rows, as the parser counts
    them: blank lines skipped, the first other line the header. A count that does not match
    (a quoted cell spanning lines) gives the rows' positions + 2 instead."""
    try:
        with manifest_path.open(encoding="utf-8-sig", errors="replace") as fh:
            filled = [n for n, line in enumerate(fh, start=1) if line.strip()]
    except OSError:
        filled = []
    lines = filled[1:]
    return lines if len(lines) == rows else [i + 2 for i in range(rows)]


def _lines(mask: pd.Series) -> str:
    """The manifest line numbers (header = line 1) of the rows ``mask`` picks, the first few."""
    rows = [str(i + 2) for i in mask.index[mask.to_numpy()][:MAX_LISTED]]
    return ", ".join(rows) + (" ..." if int(mask.sum()) > MAX_LISTED else "")


def _spans(df: pd.DataFrame, manifest_path: Path) -> tuple[pd.Series, pd.Series]:
    """A manifest's ``start_s`` / ``end_s`` columns as floats (NaN: the whole file);
    ConfigError naming the lines of a span that is not two numbers with 0 <= start < end."""
    present = [c for c in SPAN_COLUMNS if c in df.columns]
    if not present:
        whole = pd.Series(np.nan, index=df.index, dtype=np.float64)
        return whole, whole
    if len(present) == 1:
        raise ConfigError(f"manifest {manifest_path} has a {present[0]} column but no "
                          f"{SPAN_COLUMNS[1] if present[0] == SPAN_COLUMNS[0] else SPAN_COLUMNS[0]}"
                          " column: a labelled span needs both (seconds from the file's start)")
    text = {c: df[c].fillna("").astype(str).str.strip() for c in SPAN_COLUMNS}
    value = {c: pd.to_numeric(text[c].where(text[c] != ""), errors="coerce") for c in SPAN_COLUMNS}
    start, end = value[SPAN_COLUMNS[0]], value[SPAN_COLUMNS[1]]
    not_number = ((text["start_s"] != "") & start.isna()) | ((text["end_s"] != "") & end.isna())
    half = start.isna() != end.isna()
    given = start.notna() & end.notna()
    # a negated test, so that an infinite end fails it as well as a reversed span
    bad_order = given & ~((start >= 0) & (end > start) & np.isfinite(end))
    bad = not_number | half | bad_order
    if bad.any():
        raise ConfigError(f"manifest {manifest_path}: line(s) {_lines(bad)} have a span that "
                          "is not two numbers with 0 <= start_s < end_s (seconds from the "
                          "file's start; leave both empty for the whole file)")
    return start.astype(np.float64), end.astype(np.float64)


def check_spans(df: pd.DataFrame, where: Sequence[str] | None = None) -> pd.DataFrame:
    """``df`` unchanged if no two rows label overlapping audio of one file and channel (a
    row without a span labels all of it); ConfigError naming the first few overlapping pairs
    otherwise, each row by ``where`` (its manifest and line; default: its line in ``df``):
    the same speech would be trained or scored twice, perhaps under two labels."""
    if df.empty:
        return df
    start = df["start_s"].fillna(0.0) if "start_s" in df.columns else pd.Series(0.0, df.index)
    end = (df["end_s"].fillna(np.inf) if "end_s" in df.columns
           else pd.Series(np.inf, index=df.index))
    # a mono file (no channel) is its channel 0: the same audio either way. An integer key,
    # since missing values never compare equal (pandas 3 keeps them missing through astype(str))
    channel = (df["channel"].astype("Int64").fillna(0).astype(np.int64) if "channel" in df.columns
               else pd.Series(0, index=df.index, dtype=np.int64))
    rows = [f"line {i + 2}" for i in range(len(df))] if where is None else list(where)
    spans = (pd.DataFrame({"path": df["path"].astype(str).to_numpy(),
                           "channel": channel.to_numpy(), "start_s": start.to_numpy(),
                           "end_s": end.to_numpy(), "row": rows})
             .sort_values(["path", "channel", "start_s", "end_s"], kind="stable"))
    # sorted by start: a span overlaps an earlier one iff it starts before the latest end so
    # far, and the span holding that end is the one to name beside it (naming only the later
    # rows blamed the right spans after one mistyped end, a review)
    pairs: list[tuple[Any, Any]] = []
    key: tuple[str, int] | None = None
    latest: Any = None
    for span in spans.itertuples(index=False):
        if (span.path, span.channel) != key:
            key, latest = (span.path, span.channel), span
            continue
        if span.start_s < latest.end_s:
            pairs.append((latest, span))
        if span.end_s > latest.end_s:
            latest = span
    if pairs:
        shown = [f"{Path(a.path).name} {_span_text(a.start_s, a.end_s)} ({a.row}) and "
                 f"{_span_text(b.start_s, b.end_s)} ({b.row})" for a, b in pairs[:MAX_LISTED]]
        raise ConfigError(f"{len(pairs)} labelled span(s) overlap another of the same file and "
                          f"channel: {'; '.join(shown)}{' ...' if len(pairs) > MAX_LISTED else ''}"
                          "; label each stretch of speech once (a row without start_s / end_s "
                          "labels the whole file)")
    return df


def _span_text(start_s: float, end_s: float) -> str:
    return "(whole file)" if start_s == 0.0 and end_s == np.inf else f"{start_s:g}-{end_s:g} s"


def _channels(raw: pd.Series, manifest_path: Path) -> pd.Series:
    """A manifest's ``channel`` column as Int64 (empty: a mono file, NA); ConfigError for a
    value that is not a channel number."""
    text = raw.fillna("").astype(str).str.strip()
    number = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = text[(text != "") & (number.isna() | (number < 0) | (number % 1 != 0))]
    if not bad.empty:
        raise ConfigError(f"manifest {manifest_path}: channel value(s) "
                          f"{_listed(bad.value_counts())}; use 0 for the first channel, 1 for "
                          "the second, or leave it empty for a mono file")
    return number.astype("Int64")


def clip_sources(df: pd.DataFrame) -> list[ClipSource]:
    """Each clip's file, channel and span, for :func:`training.clips.load_clips`."""
    n = len(df)
    channel = df["channel"] if "channel" in df.columns else pd.Series([pd.NA] * n, dtype=object)
    start = df["start_s"] if "start_s" in df.columns else pd.Series([np.nan] * n)
    end = df["end_s"] if "end_s" in df.columns else pd.Series([np.nan] * n)
    return [ClipSource(str(p), None if pd.isna(c) else int(c),
                       None if pd.isna(a) else float(a), None if pd.isna(b) else float(b))
            for p, c, a, b in zip(df["path"], channel, start, end, strict=True)]


def corpus_manifest_paths(corpora_dir: Path, corpora: Sequence[str] = DEFAULT_CORPORA) -> list[Path]:
    """``corpora_dir/<corpus>/manifest.csv`` for each corpus name."""
    return [corpora_dir / c / "manifest.csv" for c in corpora]


def read_manifests(manifest_paths: Iterable[Path]) -> pd.DataFrame:
    """Concatenate several manifests (see :func:`read_manifest`)."""
    paths = list(manifest_paths)
    frames = [read_manifest(p) for p in paths]
    if not frames:
        raise ConfigError("no manifest given")
    return check_spans(pd.concat(frames, ignore_index=True), _rows_of(paths, frames))


def _rows_of(paths: Sequence[Path], frames: Sequence[pd.DataFrame]) -> list[str]:
    """Each row of the concatenated ``frames`` as "NAME line N" (header = line 1)."""
    return [f"{Path(p).name} line {int(i) + 2}" for p, f in zip(paths, frames, strict=True)
            for i in f.index]


def map_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Keep clips whose emotion maps to one of EMOTIONS; add ``label`` (str) and ``label_id``.

    Drops boredom and empty labels (BAVED has arousal levels only). ConfigError for a label
    :data:`LABEL_MAP` does not know: dropped silently, a misspelt class vanished from
    training (an operator's 'fearful' or 'joy' rows), or left a single class.
    """
    raw = df["emotion"].map(lambda e: str(e).strip().lower())
    ours = ~df["corpus"].isin((*DEFAULT_CORPORA, *AROUSAL_CORPORA))   # an operator's rows
    # an operator's row without an emotion is a slip, not BAVED's design: it was dropped
    # without a word, and the run trained on fewer clips than labelled (a review)
    blank = (raw == "") & ours
    if blank.any():
        rows = df.loc[blank].head(MAX_LISTED)
        spans = zip(rows.get("start_s", pd.Series(np.nan, rows.index)),
                    rows.get("end_s", pd.Series(np.nan, rows.index)), strict=True)
        examples = [Path(str(p)).name + ("" if pd.isna(a) else f" {_span_text(a, b)}")
                    for p, (a, b) in zip(rows["path"], spans, strict=True)]
        raise ConfigError(
            f"{int(blank.sum())} row(s) have no emotion ({', '.join(examples)}"
            f"{' ...' if int(blank.sum()) > MAX_LISTED else ''}); label each row with one of "
            f"{', '.join(EMOTIONS)}, or leave it out of the manifest")
    unknown = raw[(raw != "") & ~raw.isin(LABEL_MAP)]
    if not unknown.empty:
        raise ConfigError(
            f"unknown emotion label(s) {_listed(unknown.value_counts())}; use one of "
            f"{', '.join(EMOTIONS)}, or {', '.join(k for k in LABEL_MAP if k not in EMOTIONS)} "
            "(mapped or, boredom, dropped by design; see training/dataset.py)")
    mapped = raw.map(LABEL_MAP)
    by_design = mapped.isna() & (raw != "") & ours
    if by_design.any():
        # said, since an operator reading "any other label stops the run" may not expect it
        log.warning("%d row(s) labelled %s dropped by design (no class of the model's)",
                    int(by_design.sum()), _listed(raw[by_design].value_counts()))
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
    df = check_speaker_independent(map_labels(read_manifests(manifest_paths)))
    return assign_subsets(df.reset_index(drop=True), val_fraction=val_fraction, seed=seed)


def check_speaker_independent(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` unchanged if no speaker (``corpus:speaker``) and no file has clips in both
    train and test; ConfigError naming them otherwise: a test figure is speaker-independent
    only if its speakers were never trained on (an operator's calls split by call, not by
    agent, put the same agents in both)."""
    keys = speaker_keys(df)
    both = sorted(set(keys[df["split"] == SUBSET_TRAIN]) & set(keys[df["split"] == SUBSET_TEST]))
    if both:
        raise ConfigError(
            f"speaker(s) {', '.join(both[:MAX_LISTED])}{' ...' if len(both) > MAX_LISTED else ''}"
            f" ({len(both)} in all) have clips in both train and test: put each speaker in one "
            "split, or the test figures are not speaker-independent")
    # an operator's manifests in several folders take each folder's name as their corpus, so
    # one agent in nov/ (train) and dec/ (test) counted as two speakers (a review)
    ours = df[~df["corpus"].isin((*DEFAULT_CORPORA, *AROUSAL_CORPORA))]
    splits = ours.groupby(ours["speaker"].astype(str))["split"].nunique()
    straddling = sorted(splits[splits > 1].index)
    if straddling:
        raise ConfigError(
            f"speaker(s) {', '.join(straddling[:MAX_LISTED])}"
            f"{' ...' if len(straddling) > MAX_LISTED else ''} of your own rows are in train "
            "under one corpus and in test under another (a corpus defaults to the manifest's "
            "folder name): if they are one person, give the manifests a corpus column with "
            "one value; if not, give them different speaker ids")
    paths = df.groupby("path")["split"].nunique()
    twice = sorted(paths[paths > 1].index)
    if twice:
        raise ConfigError(f"file(s) {', '.join(twice[:MAX_LISTED])} are listed in both train "
                          "and test: every labelled party of one call shares the call's split "
                          "(each channel hears the other party too)")
    return df


def build_arousal_dataset(manifest_paths: Iterable[Path], val_fraction: float = 0.2,
                          seed: int = 0) -> pd.DataFrame:
    """Manifests with an ``arousal_level`` column -> clips with ``arousal_id`` (index into
    AROUSAL_LEVELS) and ``subset`` in {train, val, test}.

    Validation speakers are drawn by their own seeded draw, so training with the arousal
    corpora leaves the emotion corpora's validation speakers as they were. Rows with another
    level (or none) are dropped. Raises ConfigError if a manifest lacks the column.
    """
    frames = []
    paths = list(manifest_paths)
    for path in paths:
        df = read_manifest(path)
        if "arousal_level" not in df.columns:
            raise ConfigError(f"manifest {path} has no arousal_level column (values "
                              f"{', '.join(AROUSAL_LEVELS)})")
        frames.append(df)
    if not frames:
        raise ConfigError("no arousal manifest given")
    df = check_spans(pd.concat(frames, ignore_index=True), _rows_of(paths, frames))
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


def card_train_speakers(card: ModelCard) -> list[str]:
    """The ``corpus:speaker`` keys a trained model's card lists as having trained it, sorted
    (empty for a card from before 2026-12-07 or from other tooling: nothing to check)."""
    return sorted(card.extra.get("training", {}).get("train_speakers", []))


BALANCES: tuple[str, ...] = ("corpora", "speakers")
"""How :func:`sampling_weights` splits a class's share: among the corpora that have it (every
model up to emotion-v1.9.0), or among the speakers that have it."""


def sampling_weights(df: pd.DataFrame, balance: str = "corpora") -> npt.NDArray[np.float64]:
    """Per-clip sampling probability (sums to 1) balancing classes, then corpora or speakers.

    Each class present gets an equal share; with ``balance`` "corpora" a class's share is
    split equally among the corpora that have it and clips are uniform within a (corpus,
    class) cell: TESS (62 % of the train clips, 2 speakers) then gets about a third of the
    draws, and no corpus can become a shortcut for a class. With "speakers" it is split among
    the speakers that have it, uniform within a (speaker, class) cell: each voice counts
    once, so TESS's two get about a tenth and RAVDESS's actors more than half.
    """
    if balance not in BALANCES:
        raise ConfigError(f"balance={balance!r}: use one of {', '.join(BALANCES)}")
    if df.empty:
        raise ValueError("no clips to weight")
    group = df["corpus"] if balance == "corpora" else speaker_keys(df)
    keyed = df.assign(_group=group.to_numpy())
    cell = keyed.groupby(["_group", "label"])["path"].transform("size").to_numpy(np.float64)
    groups_per_class = keyed.groupby("label")["_group"].transform("nunique").to_numpy(np.float64)
    n_classes = float(df["label"].nunique())
    w = 1.0 / (n_classes * groups_per_class * cell)
    return np.asarray(w / w.sum(), dtype=np.float64)


def counts_table(df: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{corpus: {label: clips}} for the model card."""
    table = df.groupby(["corpus", "label"]).size()
    out: dict[str, dict[str, int]] = {}
    for (corpus, label), n in table.items():
        out.setdefault(str(corpus), {})[str(label)] = int(n)
    return out
