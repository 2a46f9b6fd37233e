"""``python -m analytics.stress_eval``: does the stress score rank distressed speech first?

On the ``test`` split (speakers never seen in training) of each corpus under
``settings.corpora_dir/<corpus>/manifest.csv``, every clip labelled angry or fear (positive)
or neutral (negative) goes through the serving path: ``worker.audio.load_mono`` at the
model card's sample rate -> ``worker.features.extract_features`` -> the shipped ONNX model
(``settings.model_path``) -> :func:`analytics.stress.stress_of`. The figure is the ROC AUC:
the probability that a random positive clip scores above a random negative one (0.5 is
chance, ties count half), per corpus and pooled, beside two simpler scores for comparison.

Usage: ``python -m analytics.stress_eval [--corpora ravdess emodb ...] [--channel mulaw8k]
[--scores FILE.csv]``
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, cast, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd

from analytics.stress import ESCALATION_STRESS, is_high_stress, stress_of
from worker.constants import EMOTIONS
from worker.errors import CallmoodError, ConfigError, ModelError

if TYPE_CHECKING:
    from worker.pipeline import SpeechCut

Channel = Literal["clean", "mulaw8k"]

POSITIVE_EMOTIONS: Final[frozenset[str]] = frozenset({"angry", "fear"})
"""The escalation states the score must catch (full weight in STRESS_WEIGHTS)."""
NEGATIVE_EMOTIONS: Final[frozenset[str]] = frozenset({"neutral"})
TEST_SPLIT: Final[str] = "test"
DEFAULT_CORPORA: Final[tuple[str, ...]] = ("ravdess", "emodb", "tess", "urdu", "baved")
"""Every shared corpus; one without labelled test clips of both kinds adds no AUC."""

COMPARED_SCORES: Final[dict[str, str]] = {
    "stress": "the shipped stress score (analytics.stress)",
    "angry_fear": "100 * (p_angry + p_fear) only",
    "not_neutral": "100 * (1 - p_neutral)",
}


def roc_auc(scores: pd.Series, positive: pd.Series) -> float:
    """ROC AUC of ``scores`` for the boolean labels ``positive`` (Mann-Whitney U, ties half);
    NaN unless both classes occur."""
    n_pos = int(positive.sum())
    n_neg = int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = scores.rank(method="average")
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


LOCATING_COLUMNS: Final[tuple[str, ...]] = ("channel", "start_s", "end_s")
"""Manifest columns that label part of a file (training/dataset.py), which this does not read."""


def evaluation_clips(corpora_dir: Path, corpora: Sequence[str]) -> pd.DataFrame:
    """Test-split clips labelled positive or negative: ``corpus, path, emotion, positive``."""
    frames = []
    for corpus in corpora:
        manifest = corpora_dir / corpus / "manifest.csv"
        if not manifest.is_file():
            continue
        rows = pd.read_csv(manifest, dtype={"emotion": str, "split": str, "path": str})
        located = [c for c in LOCATING_COLUMNS if c in rows.columns and rows[c].notna().any()]
        if located:   # each row would be scored on the whole file, every span alike
            raise ConfigError(f"{manifest} names {' / '.join(located)} of its files: the stress "
                              "evaluation scores whole mono clips; score a manifest of spans "
                              "or channels with `callmood evaluate --manifest`")
        keep = rows[(rows["split"] == TEST_SPLIT)
                    & rows["emotion"].isin(POSITIVE_EMOTIONS | NEGATIVE_EMOTIONS)]
        frames.append(pd.DataFrame({
            "corpus": corpus,
            "path": [str(manifest.parent / p) for p in keep["path"]],
            "emotion": keep["emotion"].to_numpy(),
            "positive": keep["emotion"].isin(POSITIVE_EMOTIONS).to_numpy(),
        }))
    columns = ["corpus", "path", "emotion", "positive"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(
        columns=columns)


def with_scores(probabilities: pd.DataFrame) -> pd.DataFrame:
    """Add the :data:`COMPARED_SCORES` columns to a frame with ``p_<class>`` columns."""
    return probabilities.assign(
        stress=stress_of(probabilities),
        angry_fear=100.0 * (probabilities["p_angry"] + probabilities["p_fear"]),
        not_neutral=100.0 * (1.0 - probabilities["p_neutral"]))


def auc_table(scored: pd.DataFrame) -> pd.DataFrame:
    """``positives, negatives`` and one AUC per score: per corpus, ``all`` (every clip pooled,
    so a corpus without negatives is ranked against other corpora's) and ``macro`` (mean of
    the per-corpus AUCs that exist, counting those corpora's clips only: immune to corpora
    differing in loudness or in their share of positives; the headline)."""
    groups = [(str(c), part) for c, part in scored.groupby("corpus", sort=True)]
    groups.append(("all", scored))
    rows = []
    for name, part in groups:
        positive = part["positive"].astype(bool)
        rows.append({"corpus": name, "positives": int(positive.sum()),
                     "negatives": int((~positive).sum()),
                     **{f"auc_{s}": roc_auc(part[s], positive) for s in COMPARED_SCORES}})
    table = pd.DataFrame(rows)
    # corpora with both classes: URDU's test speakers have no neutral clip, so no AUC
    per_corpus = table[(table["corpus"] != "all") & (table["positives"] > 0)
                       & (table["negatives"] > 0)]
    macro = {"corpus": "macro", "positives": int(per_corpus["positives"].sum()),
             "negatives": int(per_corpus["negatives"].sum()),
             **{f"auc_{s}": float(per_corpus[f"auc_{s}"].mean()) for s in COMPARED_SCORES}}
    return pd.concat([table, pd.DataFrame([macro])], ignore_index=True)


def score_clips(clips: pd.DataFrame, model_path: Path, threads: int = 1,
                channel: Channel = "clean", speech_cut: SpeechCut | None = None) -> pd.DataFrame:
    """``clips`` with the model's ``p_<class>`` per clip (serving path) and the scores.

    ``channel="mulaw8k"`` first passes each clip through the telephone line the model is
    trained for (``training.augment.phone_line``: level, 300-3400 Hz, G.711 mu-law).
    ``speech_cut`` then cuts each clip to its speech as the worker cuts calls (None: whole
    clips, silence included).
    """
    from worker.audio import load_mono
    from worker.emotion import load_model
    from worker.features import extract_features

    model = load_model(model_path, threads)
    if set(model.labels) != set(EMOTIONS):
        raise ModelError(f"model labels {list(model.labels)} are not the 7 classes "
                         f"{list(EMOTIONS)}")
    config = model.card.features
    line: Callable[..., npt.NDArray[np.float32]] | None = None
    if channel == "mulaw8k":
        # Imported by name: the training package is optional at run time (and type-checked
        # on its own).
        line = importlib.import_module("training.augment").phone_line
    rows = np.zeros((len(clips), len(model.labels)), dtype=np.float64)
    for i, path in enumerate(clips["path"]):
        audio = load_mono(Path(path), config.sample_rate)
        if line is not None:
            audio = line(audio, sample_rate=config.sample_rate)
        if speech_cut is not None:
            audio = speech_cut.apply(audio)
        rows[i] = model.predict_proba([extract_features(audio, config)])[0]
    probabilities = pd.DataFrame(rows, columns=[f"p_{label}" for label in model.labels],
                                 index=clips.index)
    return with_scores(clips.join(probabilities[[f"p_{e}" for e in EMOTIONS]]))


def high_stress_rates(scored: pd.DataFrame,
                      threshold: float = ESCALATION_STRESS) -> tuple[float, float]:
    """(share of positive clips, share of negative clips) scoring >= ``threshold``: how the
    escalation threshold separates distressed from neutral speech."""
    high = is_high_stress(scored["stress"], threshold)
    positive = scored["positive"].astype(bool)
    return float(high[positive].mean()), float(high[~positive].mean())


def format_table(table: pd.DataFrame) -> str:
    """The AUC table as fixed-width text (what the command prints and docs quote)."""
    header = f"{'corpus':<9} {'pos':>5} {'neg':>5} " + " ".join(
        f"{'AUC ' + s:>16}" for s in COMPARED_SCORES)
    lines = [header]
    for row in table.itertuples(index=False):
        aucs = " ".join(f"{getattr(row, 'auc_' + s):>16.3f}" for s in COMPARED_SCORES)
        lines.append(f"{row.corpus:<9} {row.positives:>5} {row.negatives:>5} {aucs}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from worker.pipeline import SpeechCut
    from worker.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m analytics.stress_eval",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--corpora", nargs="+", default=list(DEFAULT_CORPORA),
                        help="corpus folders under CALLMOOD_CORPORA_DIR")
    parser.add_argument("--channel", choices=get_args(Channel), default="clean",
                        help="clean corpus audio (default) or through a G.711 phone line")
    parser.add_argument("--scores", type=Path, metavar="FILE.csv",
                        help="also write every clip's probabilities and scores")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    clips = evaluation_clips(settings.corpora_dir, args.corpora)
    if clips.empty:
        print(f"no labelled test clips under {settings.corpora_dir}", file=sys.stderr)
        return 1
    try:
        scored = score_clips(clips, settings.model_path, settings.onnx_threads,
                             cast(Channel, args.channel), SpeechCut.of(settings))
    except CallmoodError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model {settings.model_path.name}; positives: {', '.join(sorted(POSITIVE_EMOTIONS))}; "
          f"negatives: {', '.join(sorted(NEGATIVE_EMOTIONS))}; split: {TEST_SPLIT}; "
          f"channel: {args.channel}; clips cut to speech as the worker cuts calls")
    print(format_table(auc_table(scored)))
    means = scored.groupby("emotion")["stress"].mean().round(1)
    print("mean stress by label: " + ", ".join(f"{k} {v}" for k, v in means.items()))
    hit, false_alarm = high_stress_rates(scored)
    print(f"stress >= {ESCALATION_STRESS:g} (escalation threshold): {hit:.1%} of angry/fear "
          f"clips, {false_alarm:.1%} of neutral clips")
    if args.scores is not None:
        from analytics.export import write_csv

        write_csv(scored.round(4), args.scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
