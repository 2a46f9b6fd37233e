"""Measure normalising a model's output against the same party's other utterances.

    python -m training.party_eval [--model M] [--split val|test] [--channel clean] [--seed 0]

Each channel of a call is one speaker, so a worker could take from every utterance's
log-probabilities ``alpha`` times their mean over the party's utterances: what the speaker
does always (a voice that sounds sad, a mic that sounds angry) would cancel and what this
utterance does differently would stay. Issue #5 warned that per-speaker normalisation erases
an emotion that lasts the whole call (URDU's test speakers are mostly angry), and that
customer is the one a call centre must catch. This measures both sides on corpus speakers,
each speaker's clips of ``split`` standing for one party's utterances in a call:

- ``party``: the mean over all of the speaker's clips (the acted corpora give every speaker
  every emotion in equal measure, which no call does);
- ``sample N``: the clip and N others of the speaker drawn at random (a call's worth);
- ``one emotion``: the clip and the speaker's other clips of the same emotion (a party that
  keeps one emotion through the call).

Prints unweighted average recall per corpus for each context and ``alpha`` (0: the model as
served). Measured 2026-12-06 in docs/model-experiments.md; nothing of it is served.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.cli import EVAL_CORPORA
from training.dataset import clip_sources, corpus_manifest_paths, speaker_keys
from training.evaluate import (
    CHANNELS,
    DEFAULT_SPEECH_CUT,
    EVAL_SPLITS,
    clips_features,
    confusion_matrix,
    label_ids,
    scored_clips,
    unweighted_average_recall,
)
from worker.emotion import load_model
from worker.errors import ConfigError
from worker.settings import Settings

ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Shares of the party's mean log-probabilities taken away (0: the model as served)."""
SAMPLE_SIZES: tuple[int, ...] = (5, 10)
"""Other utterances of the party drawn for the ``sample N`` contexts."""
ONE_EMOTION = "one emotion"
PARTY = "party"


def party_contexts(parties: npt.NDArray[np.str_], labels: npt.NDArray[np.int64], kind: str,
                   rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
    """For each utterance i, the indices whose mean stands for its party (i among them).

    ``kind``: ``party`` (every utterance of i's party), ``sample N`` (i and N others of its
    party drawn by ``rng``, all of them when there are fewer), ``one emotion`` (i and its
    party's other utterances of i's label).
    """
    n = len(parties)
    contexts = []
    for i in range(n):
        others = np.flatnonzero((parties == parties[i]) & (np.arange(n) != i))
        if kind == PARTY:
            chosen = others
        elif kind == ONE_EMOTION:
            chosen = others[labels[others] == labels[i]]
        elif kind.startswith("sample "):
            size = int(kind.removeprefix("sample "))
            chosen = rng.choice(others, size=min(size, len(others)), replace=False)
        else:
            raise ConfigError(f"context {kind!r}: use {PARTY!r}, {ONE_EMOTION!r} or 'sample N'")
        contexts.append(np.sort(np.append(chosen, i)).astype(np.int64))
    return contexts


def centre_on_party(log_probs: npt.NDArray[np.float32], contexts: Sequence[npt.NDArray[np.int64]],
                    alpha: float) -> npt.NDArray[np.float32]:
    """(n, classes) log-probabilities less ``alpha`` times each row's party mean
    (``contexts[i]``: the rows of row i's party); rank-only scores, not probabilities."""
    means = np.stack([log_probs[c].mean(axis=0) for c in contexts])
    return (log_probs - alpha * means).astype(np.float32)


def party_table(log_probs: npt.NDArray[np.float32], labels: npt.NDArray[np.int64],
                parties: npt.NDArray[np.str_], corpora: npt.NDArray[np.str_], n_classes: int,
                seed: int = 0, alphas: Sequence[float] = ALPHAS,
                sample_sizes: Sequence[int] = SAMPLE_SIZES) -> pd.DataFrame:
    """UA (%) per (corpus, context) row and ``alpha`` column, every context built over all
    the rows (a party never spans two corpora: speaker keys carry the corpus)."""
    rng = np.random.default_rng(seed)
    kinds = [PARTY, *(f"sample {n}" for n in sample_sizes), ONE_EMOTION]
    rows = []
    for kind in kinds:
        contexts = party_contexts(parties, labels, kind, rng)
        for alpha in alphas:
            pred = centre_on_party(log_probs, contexts, alpha).argmax(axis=1)
            for corpus in sorted(set(corpora.tolist())):
                sel = corpora == corpus
                cm = confusion_matrix(labels[sel], pred[sel], n_classes)
                rows.append({"corpus": corpus, "context": kind, "alpha": alpha,
                             "ua": 100.0 * unweighted_average_recall(cm)})
    return (pd.DataFrame(rows)
            .pivot_table(index=["corpus", "context"], columns="alpha", values="ua",
                         sort=False)
            .round(1))


def measure(model_path: Path, manifest_paths: Sequence[Path], split: str, channel: str,
            seed: int, workers: int = 2) -> pd.DataFrame:
    """:func:`party_table` for the model at ``model_path`` on the manifests' ``split`` rows
    through ``channel``, each clip cut to speech and scored as :mod:`training.evaluate`
    scores it."""
    model = load_model(model_path.resolve(), 1)
    clips = scored_clips(model_path, model.card, manifest_paths, split)
    probabilities = model.predict_proba(clips_features(
        clip_sources(clips), channel, model.card.features, DEFAULT_SPEECH_CUT, workers))
    return party_table(np.log(np.clip(probabilities, 1e-9, 1.0)).astype(np.float32),
                       label_ids(clips, model.card.labels),
                       speaker_keys(clips).to_numpy(str), clips["corpus"].to_numpy(str),
                       len(model.card.labels), seed)


def _markdown(table: pd.DataFrame) -> str:
    header = "| corpus | context | " + " | ".join(f"alpha {a:g}" for a in table.columns) + " |"
    lines = [header, "|" + "---|" * (len(table.columns) + 2)]
    lines += [f"| {corpus} | {context} | " + " | ".join(f"{v:.1f}" for v in row) + " |"
              for (corpus, context), row in zip(table.index, table.to_numpy(), strict=True)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="python -m training.party_eval",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=settings.model_path,
                        help="ONNX model with its card (the shipped model)")
    parser.add_argument("--split", default="test", choices=EVAL_SPLITS)
    parser.add_argument("--channel", default="clean", choices=CHANNELS)
    parser.add_argument("--seed", type=int, default=0, help="draws of the sample contexts")
    args = parser.parse_args(argv)
    manifests = corpus_manifest_paths(settings.corpora_dir, EVAL_CORPORA)
    print(_markdown(measure(args.model, manifests, args.split, args.channel, args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
