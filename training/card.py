"""Model card: JSON (read by the worker through ``worker.emotion.load_card``) and Markdown."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from training.evaluate import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    MIN_SPEAKERS_FOR_INTERVAL,
    EvaluationResult,
    interval_text,
    unweighted_average_recall,
)
from worker.emotion import card_path_for
from worker.features import FeatureConfig

LICENCES: dict[str, str] = {
    "ravdess": "CC BY-NC-SA 4.0 (Livingstone & Russo, 2018)",
    "tess": "CC BY-NC-ND 4.0 (Dupuis & Pichora-Fuller, 2010)",
    "emodb": "free for research (Burkhardt et al., 2005)",
    "urdu": "research use (Latif et al., 2018)",
    "baved": "no licence stated by its authors (Aouf, 2019); treat as research use only",
}
CORPUS_LANGUAGES: dict[str, str] = {"ravdess": "English", "tess": "English", "emodb": "German",
                                    "urdu": "Urdu", "baved": "Arabic"}
"""Language of each shared corpus, for a card's limits (any other corpus is operator data)."""
ACTED_CORPORA: tuple[str, ...] = ("ravdess", "tess", "emodb", "baved")
"""Shared corpora of acted or elicited speech; URDU is talk-show speech."""
USAGE_NOTE = ("Research default: trained on corpora licensed for research / non-commercial use "
              "only. Retrain on your own labelled calls (python -m training train --manifest ...) "
              "before any commercial use.")
OPERATOR_USAGE_NOTE = ("Trained on the operator's own labelled data only (no research corpus): "
                       "its use is governed by that data's terms.")


def usage_note(corpora: Iterable[str]) -> str:
    """The card's usage note for a model trained on ``corpora``: the research default's when
    any licensed research corpus (:data:`LICENCES`) is among them, else the operator's."""
    return USAGE_NOTE if any(c in LICENCES for c in corpora) else OPERATOR_USAGE_NOTE


def markdown_path_for(model_path: Path) -> Path:
    """``emotion-v1.onnx`` -> ``emotion-v1.card.md``."""
    return model_path.with_suffix(".card.md")


def write_card(model_path: Path, card: dict[str, Any]) -> None:
    """Write ``NAME.card.json`` and ``NAME.card.md`` beside ``model_path``."""
    card_path_for(model_path).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    markdown_path_for(model_path).write_text(render_markdown(card), encoding="utf-8")


def read_card_dict(model_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(card_path_for(model_path).read_text(encoding="utf-8"))
    return data


def with_test_metrics(card: dict[str, Any], result: EvaluationResult,
                      command: str) -> dict[str, Any]:
    """A copy of ``card`` whose ``test_metrics`` are ``result`` (keyed channel -> corpus)."""
    metrics: dict[str, dict[str, Any]] = {}
    for r in result.rows:
        metrics.setdefault(r.channel, {})[r.corpus] = r.to_dict()
    cut = None if result.speech_cut is None else asdict(result.speech_cut)
    return {**card, "test_metrics": {"split": result.split, "command": command,
                                     "speech_cut": cut, "by_channel": metrics}}


def exact_ua(metrics: dict[str, Any]) -> float:
    """UA of a stored metrics row, recomputed from its confusion matrix when it has one.

    The JSON keeps UA rounded to 4 places; rounding that again to a percentage with one
    decimal can move the last digit (0.27346 is stored 0.2735 and would print 27.4 %, where
    the README quotes 27.3 %), so the Markdown card prints the exact value.
    """
    confusion = metrics.get("confusion")
    if not confusion:
        return float(metrics["ua"])
    return unweighted_average_recall(np.asarray(confusion, dtype=np.int64))


def _ua_pct(metrics: dict[str, Any]) -> str:
    return f"{100 * exact_ua(metrics):.1f}%"


def clips_sentence(speech_cut: dict[str, Any] | None) -> str:
    """How the scored clips were cut, for the Markdown card."""
    if not speech_cut:
        return "Whole clips were scored, silence included (not what the worker sees)."
    vad, seg = speech_cut["vad"], speech_cut["segmentation"]
    front_end = ""
    if vad.get("max_gain_db"):  # cards written before the VAD's level front end lack it
        front_end = (f", quiet blocks raised towards {vad['target_level_dbfs']:g} dBFS for the "
                     f"VAD (noise kept under {vad['noise_ceiling_dbfs']:g} dBFS)")
    if vad.get("remove_dc"):  # cards written before the VAD removed DC lack it
        front_end += ", each block's DC offset removed"
    return ("Each clip was cut to its speech as the worker cuts calls (WebRTC VAD mode "
            f"{vad['aggressiveness']}, {vad['frame_ms']} ms frames{front_end}; pauses under "
            f"{seg['min_silence_ms']} ms bridged, {seg['pad_ms']} ms pad), then scored.")


ADDED_AS_BEFORE: Final[Mapping[str, Any]] = MappingProxyType({"bn_recalibration_batches": 0,
                                                                    "balance": "corpora",
                                                                    "band_pooling": "mean",
                                                                    "p_clip": 0.0,
                                                                    # as records hold it
                                                                    "clip_gain_db_range":
                                                                        [6.0, 24.0]})
"""Training-config fields whose value here is what every run did before the field existed: a
config (a card's, a checkpoint's) without the field is the same recipe as one holding this
value, so it can still be final-fitted, resumed and compared."""


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of two (nested) training configs whose values differ, or that only one has
    (a field added since: the older recipe did without it), unless the one that has it holds
    its :data:`ADDED_AS_BEFORE` value."""
    diffs: list[str] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += config_differences(va, vb, f"{prefix}{key}.")
        elif key not in a or key not in b:
            present = va if key in a else vb
            if not (key in ADDED_AS_BEFORE and present == ADDED_AS_BEFORE[key]):
                diffs.append(f"{prefix}{key}")
        elif va != vb:
            diffs.append(f"{prefix}{key}")
    return diffs


def reuse_problem(loco_card: dict[str, Any], holdout: str,
                  selected_card: dict[str, Any] | None) -> str | None:
    """Why a model found in a leave-one-corpus-out folder cannot stand for ``holdout``'s row
    (None: it can): it was trained on ``holdout``, or it is not the procedure asked for (the
    final fit of ``selected_card`` without ``holdout``, or a selected run when that is None)."""
    training = loco_card.get("training", {})
    version = loco_card.get("version", "?")
    if holdout in training.get("train_counts", {}):
        return f"{version} was trained on {holdout}: it cannot be scored as never having heard it"
    final_fit = training.get("final_fit") or {}
    if training.get("teachers") or final_fit.get("selected", {}).get("teachers"):
        return (f"{version} learnt from teachers, which heard every corpus, {holdout} "
                "included")
    if selected_card is None:
        return (f"{version} is a final fit; loco without --final-fit-of scores selected runs"
                if final_fit else None)
    of = final_fit.get("selected", {}).get("onnx_sha256")
    if of != selected_card.get("onnx_sha256") or final_fit.get("without_corpus") != holdout:
        return (f"{version} is not the final fit of {selected_card.get('version', '?')} "
                f"without {holdout} (final fit of sha256 {of}, without "
                f"{final_fit.get('without_corpus')})")
    return None


def with_loco(card: dict[str, Any], holdout: str, result: EvaluationResult,
              loco_card: dict[str, Any], command: str) -> dict[str, Any]:
    """A copy of ``card`` whose ``loco`` section holds ``holdout``'s leave-one-corpus-out figures.

    ``result`` evaluates the model trained without ``holdout`` (card ``loco_card``) on all of
    its clips. Other holdouts already in the card are kept, so corpora can be run one at a time.
    """
    training = loco_card.get("training", {})
    final_fit = training.get("final_fit") or {}
    entry = {
        "trained_on": sorted(training.get("train_counts", {})),
        "model_version": loco_card.get("version", ""),
        # a final fit's epochs and temperature came from this run, selected with every corpus
        "final_fit_of": final_fit.get("selected", {}).get("version"),
        "val_ua": training.get("val_ua"), "best_epoch": training.get("best_epoch"),
        "seconds": training.get("seconds"), "device": training.get("device"),
        "recipe_differences": config_differences(card.get("training", {}).get("config", {}),
                                                 training.get("config", {})),
        "split": result.split, "command": command,
        # the held-out clips are cut as the recipe trained, which may differ from the serving
        # cut of the test figures (the VAD's DC removal, say): the card must say which
        "speech_cut": asdict(result.speech_cut) if result.speech_cut is not None else None,
        "by_channel": {r.channel: r.to_dict() for r in result.rows if r.corpus == holdout},
    }
    by_holdout = {**card.get("loco", {}).get("by_holdout", {}), holdout: entry}
    return {**card, "loco": {"by_holdout": dict(sorted(by_holdout.items()))}}


def with_loco_of(card: dict[str, Any], selected: dict[str, Any]) -> dict[str, Any]:
    """A copy of a final fit's ``card`` carrying the leave-one-corpus-out figures of the run it
    refits (``selected``): a final fit of a LOCO model would have no held-out corpus figure
    of its own to report, so the selection recipe's stand, their recipe differences
    recomputed against this card (``val_fraction`` at least)."""
    loco = selected.get("loco", {}).get("by_holdout", {})
    if not loco:
        return card
    config = card.get("training", {}).get("config", {})
    selected_config = selected.get("training", {}).get("config", {})
    by_holdout = {holdout: {**e, "recipe_differences": sorted(
        set(e["recipe_differences"]) | set(config_differences(config, selected_config)))}
        for holdout, e in loco.items()}
    return {**card, "loco": {"by_holdout": by_holdout}}


def loco_lines(loco: dict[str, Any]) -> list[str]:
    """Markdown: one row per held-out corpus (UA per channel), then its clean confusion matrix."""
    by_holdout: dict[str, dict[str, Any]] = loco.get("by_holdout", {})
    if not by_holdout:
        return []
    channels = list(dict.fromkeys(c for e in by_holdout.values() for c in e["by_channel"]))
    lines = ["", "## Leave-one-corpus-out",
             "The same recipe trained without one corpus, tested on every clip of the "
             "held-out corpus: the closest figure to a new call centre's voices and "
             "microphones. A row with a val UA chose its epoch on validation speakers of the "
             "other corpora; a final fit (no val UA) trains on all their train speakers for "
             "the epochs and temperature of the run named in the JSON card's `final_fit_of`. "
             "That run chose them on validation speakers of every corpus, the held-out one's "
             "included: no clip of the held-out corpus trained the row's weights, but two "
             "numbers of its recipe were chosen with some of its speakers in view.",
             "",
             "| held out | trained on | clips | " + " | ".join(f"UA {c}" for c in channels)
             + " | UA clean 95 % interval | WA clean | ECE clean | val UA | recipe |",
             "|---" * (len(channels) + 8) + "|"]
    for holdout, e in by_holdout.items():
        per = e["by_channel"]
        first = per[next(iter(per))]
        # WA and ECE are of the clean channel; a row scored without it leaves them empty
        # rather than showing another channel's under that heading
        clean = per.get("clean")
        uas = [_ua_pct(per[c]) if c in per else "-" for c in channels]
        recipe = ("same as this model" if not e["recipe_differences"]
                  else "differs: " + ", ".join(e["recipe_differences"]))
        val = f"{100 * e['val_ua']:.1f}%" if e.get("val_ua") is not None else "-"
        lines.append(f"| {holdout} | {', '.join(e['trained_on'])} | {first['n_clips']} | "
                     + " | ".join(uas)
                     + (f" | {interval_text(clean.get('ua_interval95'))} | "
                        f"{100 * clean['wa']:.1f}% | {clean['ece']:.3f} | " if clean
                        else " | - | - | - | ")
                     + f"{val} | {recipe} |")
    lines += ["", "Reproduce: " + "; ".join(f"`{e['command']}`" for e in by_holdout.values())]
    cuts = {holdout: e["speech_cut"] for holdout, e in by_holdout.items() if "speech_cut" in e}
    if cuts:
        # the cut the recipe trained on, not necessarily the test figures' serving cut
        lines += [""] + [f"Held out {holdout}: {clips_sentence(cut)}" for holdout, cut in cuts.items()]
    else:
        lines += ["", "Held-out clips were cut to speech as the recipe trained on them (its "
                  "card's VAD settings), which may differ from the serving cut of the test "
                  "figures above; rows written since 2026-12-05 name their cut."]
    for holdout, e in by_holdout.items():
        m = e["by_channel"].get("clean")
        if m is not None:
            lines += confusion_lines(f"Confusion, held out {holdout} / clean", m)
    return lines


def confusion_lines(title: str, m: dict[str, Any]) -> list[str]:
    """A Markdown confusion matrix (rows true, columns predicted; empty rows left out)."""
    lines = ["", f"{title} (rows true, columns predicted):", "",
             "| true \\ pred | " + " | ".join(m["labels"]) + " |",
             "|---" * (len(m["labels"]) + 1) + "|"]
    for lab, row in zip(m["labels"], m["confusion"], strict=True):
        if sum(row):
            lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    return lines


CONFUSION_CHANNELS: tuple[str, ...] = ("clean", "mulaw8k")
"""Channels whose confusion matrices the Markdown card shows (the JSON keeps all)."""


def speaker_lines(by_channel: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: how the interval was drawn, then UA per test speaker on the clean channel."""
    if not any("by_speaker" in m for per in by_channel.values() for m in per.values()):
        return []
    lines = ["", f"UA 95 % interval: the test speakers drawn again with replacement "
             f"({BOOTSTRAP_RESAMPLES} times, seed {BOOTSTRAP_SEED}) and UA recomputed on their "
             f"pooled clips; none under {MIN_SPEAKERS_FOR_INTERVAL} speakers. How far a figure "
             "could move had other speakers been held out; with this few speakers a percentile "
             "interval is, if anything, too narrow."]
    clean = by_channel.get("clean", {})
    rows = [(corpus, speaker, f) for corpus, m in clean.items()
            for speaker, f in m.get("by_speaker", {}).items()]
    if not rows:
        return lines
    return lines + [
            "", "### UA per test speaker (clean)", "", "| corpus | speaker | clips | UA |",
            "|---|---|---|---|"] + [
        f"| {corpus} | {speaker.split(':', 1)[-1]} | {f['n_clips']} | {100 * f['ua']:.1f}% |"
        for corpus, speaker, f in rows]


def robustness_lines(by_channel: dict[str, dict[str, Any]]) -> list[str]:
    """A condition x corpus UA table with the drop from clean, when more than 2 channels ran."""
    if len(by_channel) <= 2 or "clean" not in by_channel:
        return []
    corpora = list(by_channel["clean"])
    lines = ["", "### Channel robustness (UA; in brackets: points vs clean)", "",
             "| condition | " + " | ".join(corpora) + " |", "|---" * (len(corpora) + 1) + "|"]
    for channel, per in by_channel.items():
        cells = []
        for corpus in corpora:
            ua, clean = exact_ua(per[corpus]), exact_ua(by_channel["clean"][corpus])
            cells.append(f"{100 * ua:.1f}% ({100 * (ua - clean):+.1f})")
        lines.append(f"| {channel} | " + " | ".join(cells) + " |")
    return lines


def selection_sentence(training: dict[str, Any]) -> str:
    """How the model's epoch and temperature were chosen: on its own validation speakers, or
    (a final fit, trained on them too) on those of the run it refits."""
    fit = training.get("final_fit")
    if not fit:
        return (f"best epoch {training.get('best_epoch')}; validation UA "
                f"{100 * training.get('val_ua', float('nan')):.1f}% on held-out train speakers "
                f"({', '.join(training.get('val_speakers', []))}).")
    sel = fit["selected"]
    val = sel.get("val_ua")
    return (f"final fit: every train speaker, validation speakers included, for "
            f"{fit['epochs']} epochs at temperature {fit['temperature']:.3f}, both taken from "
            f"the selected run {sel.get('version')} (ONNX sha256 "
            f"{str(sel.get('onnx_sha256'))[:12]}, `{sel.get('command')}`: best epoch "
            f"{sel.get('best_epoch')}, validation UA "
            + (f"{100 * val:.1f}%" if val is not None else "?")
            + f" on held-out train speakers {', '.join(sel.get('val_speakers', []))}). "
            "This model has no validation figure of its own; its test speakers are unseen by "
            "both runs.")


def render_markdown(card: dict[str, Any]) -> str:
    """Human-readable card."""
    feats = card["features"]
    lines = [
        f"# {card['name']} ({card['version']})", "",
        card.get("usage_note", USAGE_NOTE), "",
        "## Model",
        f"- Labels (output order): {', '.join(card['labels'])}",
        f"- Input `{card['input_name']}` float32 "
        f"[batch, {FeatureConfig.from_dict(feats).input_rows}, frames]; "
        f"output `{card['output_name']}` [batch, {len(card['labels'])}]; "
        f"temperature {card['temperature']:.3f}; min_frames {card['min_frames']}",
        f"- Audio: {feats['sample_rate']} Hz mono; log-mel {feats['n_mels']} bands "
        f"{feats['fmin_hz']:.0f}-{feats['fmax_hz']:.0f} Hz, window {feats['win_length']} / hop "
        f"{feats['hop_length']} samples, normalisation `{feats['normalization']}`"
        + (f"; log floor {feats['dynamic_range_db']:.0f} dB under the utterance's loudest mel bin "
           "(gain-invariant)" if feats.get("dynamic_range_db") else ""),
    ]
    arch = card.get("architecture", {})
    if arch:
        lines.append(f"- Architecture: {arch.get('type', 'CNN')}, {arch.get('parameters', '?')} "
                     f"parameters, ONNX {arch.get('onnx_bytes', '?')} bytes, opset "
                     f"{arch.get('opset', '?')}")
    training = card.get("training", {})
    if training:
        lines += ["", "## Training data (clips per corpus and class)",
                  f"Recipe: `{training.get('command', '')}`; seed {training.get('seed')}, split "
                  f"seed {training.get('split_seed', training.get('seed'))}; "
                  + selection_sentence(training), ""]
        for subset in ("train", "val"):
            counts = training.get(f"{subset}_counts", {})
            for corpus, per in counts.items():
                lines.append(f"- {subset} {corpus}: {sum(per.values())} clips "
                             f"({', '.join(f'{k} {v}' for k, v in sorted(per.items()))})")
        lines.append(f"- Label decisions: {training.get('label_decisions', '')}")
    lines += ["", "## Data licences"]
    lines += [f"- {k}: {v}" for k, v in card.get("data_licences", {}).items()]
    tm = card.get("test_metrics")
    if tm:
        lines += ["", "## Speaker-independent test figures",
                  f"Split `{tm['split']}` (speakers never seen in training), computed by "
                  f"`{tm['command']}` through the serving path (ONNX Runtime, card temperature). "
                  + clips_sentence(tm.get("speech_cut")),
                  "", "| channel | corpus | clips | speakers | UA | UA 95 % interval | WA | ECE |",
                  "|---|---|---|---|---|---|---|---|"]
        for channel, per in tm["by_channel"].items():
            for corpus, m in per.items():
                lines.append(f"| {channel} | {corpus} | {m['n_clips']} | "
                             f"{m.get('n_speakers', '-')} | {_ua_pct(m)} | "
                             f"{interval_text(m.get('ua_interval95'))} | "
                             f"{100 * m['wa']:.1f}% | {m['ece']:.3f} |")
        lines += speaker_lines(tm["by_channel"])
        lines += robustness_lines(tm["by_channel"])
        for channel, per in tm["by_channel"].items():
            if channel not in CONFUSION_CHANNELS:
                continue
            for corpus, m in per.items():
                lines += confusion_lines(f"Confusion {corpus} / {channel}", m)
    lines += loco_lines(card.get("loco", {}))
    limits = card.get("limits")
    if limits:
        lines += ["", "## Limits"] + [f"- {x}" for x in limits]
    return "\n".join(lines) + "\n"


def data_limits(train_counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The card's ``limits``: what the corpora a model trained on (``{corpus: {label:
    clips}}``, the card's ``train_counts``) cannot tell, written from them, so a
    leave-one-corpus-out or operator model does not claim corpora or languages it never saw."""
    corpora = sorted(train_counts)
    acted = [c for c in corpora if c in ACTED_CORPORA]
    operator = [c for c in corpora if c not in CORPUS_LANGUAGES]
    urdu_clips = sum(train_counts.get("urdu", {}).values())
    sources = []
    if acted:
        sources.append(f"acted/elicited corpora ({', '.join(acted)})")
    if urdu_clips:
        sources.append(f"{urdu_clips} URDU talk-show clips")
    if operator:
        sources.append(f"operator data ({', '.join(operator)})")
    languages = sorted({CORPUS_LANGUAGES[c] for c in corpora if c in CORPUS_LANGUAGES})
    return [
        f"Trained on {'; '.join(sources) or 'no clips'}"
        + ("; real call emotions are subtler and far more often neutral." if acted else "."),
        ("Trained on clip-level labels of 2-4 s utterances; very short segments are tiled "
         "to min_frames and are less reliable." if not operator else
         "Trained on clip-level labels (one label per clip, however long); very short segments "
         "are tiled to min_frames and are less reliable."),
        "Languages: " + ", ".join(languages + (["as the operator data's"] if operator else []))
        + "; other languages untested.",
        *untrained_classes(train_counts),
    ]


def untrained_classes(train_counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The card's limit line for output classes no training clip taught (none: empty): an
    operator's 4-emotion data still gives 7 outputs, the untrained ones masked to probability 0
    (they took ~40 % and fed the stress score, a review)."""
    from analytics.stress import STRESS_WEIGHTS
    from training.dataset import untaught_classes
    from worker.constants import EMOTIONS

    untrained = [EMOTIONS[i] for i in untaught_classes(
        label for counts in train_counts.values() for label, n in counts.items() if n)]
    if not untrained:
        return []
    stressed = [e for e in untrained if STRESS_WEIGHTS.get(e)]
    return [f"No training clip of {', '.join(untrained)}: the model gives "
            f"{'it' if len(untrained) == 1 else 'them'} probability 0 (masked in the exported "
            "graph)" + (f", so the stress score reads nothing of {', '.join(stressed)}"
                        if stressed else "") + "."]


def label_notes(corpora: set[str]) -> str:
    """The corpus-specific part of a card's ``label_decisions`` ("; "-led, empty for none),
    for the corpora a model trained on."""
    notes = (["EmoDB boredom dropped"] if "emodb" in corpora else []) + (
        ["URDU kept (4 classes, natural speech)"] if "urdu" in corpora else []) + (
        ["BAVED excluded (arousal only)"] if corpora & set(CORPUS_LANGUAGES) else [])
    return "".join(f"; {n}" for n in notes)
