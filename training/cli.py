"""Command-line entry points: ``python -m training train|final-fit|evaluate|loco`` (and
``callmood train``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from training.augment import AugmentConfig
from training.card import (
    read_card_dict,
    reuse_problem,
    with_loco,
    with_loco_of,
    with_test_metrics,
    write_card,
)
from training.dataset import (
    AROUSAL_CORPORA,
    AROUSAL_LEVELS,
    BALANCES,
    DEFAULT_CORPORA,
    TRAINABLE_EXTRA_CLASSES,
    corpus_manifest_paths,
)
from training.evaluate import (
    CHANNELS,
    EVAL_SPLITS,
    ROBUSTNESS,
    compare,
    evaluate_model,
    evaluate_models,
    format_comparison,
)
from worker.constants import EMOTIONS
from worker.emotion import check_version
from worker.errors import CallmoodError, ConfigError
from worker.features import NORMALIZATIONS, FeatureConfig
from worker.pipeline import SpeechCut
from worker.settings import cut_env_assignments, get_settings

# torch and the modules built on it (training.train, .model, .distill) are imported inside the
# commands that train: `evaluate` scores ONNX models, and must run on the production install,
# which has the worker's dependencies only

EVAL_CORPORA: tuple[str, ...] = ("ravdess", "emodb", "urdu")
"""Corpora with test speakers (TESS has none)."""


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def _speech_cut(whole_clips: bool) -> SpeechCut | None:
    """The worker's own cut to speech (its VAD and segmentation settings), or None."""
    return None if whole_clips else SpeechCut.of(get_settings())


def _cut_env(cut: SpeechCut | None) -> str:
    """The environment a recorded command needs to cut clips as ``cut`` does (e.g.
    ``CALLMOOD_VAD_REMOVE_DC=0 ``; empty for the worker's default cut, or whole clips), so
    that rerunning the command from a card rebuilds its figures."""
    if cut is None:
        return ""
    return "".join(f"{a} " for a in cut_env_assignments(cut.vad, cut.segmentation))


def refuse_serving_model(model_path: Path) -> None:
    """ConfigError when a run would write ``model_path`` over the model the worker serves
    (CALLMOOD_MODEL_PATH, by default the shipped one): workers pick up a replaced file as
    their processes recycle, mid-batch, and the shipped model and card would be lost. A new
    model is deployed by pointing CALLMOOD_MODEL_PATH at it."""
    serving = get_settings().model_path
    if model_path.resolve() == serving.resolve():
        raise ConfigError(f"{model_path} is the model the worker serves (CALLMOOD_MODEL_PATH); "
                          "write the run elsewhere (--out-dir) and point CALLMOOD_MODEL_PATH at "
                          "the new file to deploy it")


def _add_run_options(p: argparse.ArgumentParser, resume_help: str) -> None:
    """Where and how a training run runs: threads, device, workers, test figures, resume."""
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads for CPU training (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, default=_default_workers(),
                   help="decode/augment worker processes")
    p.add_argument("--no-test-eval", action="store_true",
                   help="skip the test-split evaluation that fills the card's figures")
    p.add_argument("--resume", action="store_true", help=resume_help)


def build_train_parser() -> argparse.ArgumentParser:
    from training.distill import DistillConfig
    from training.model import BAND_POOLINGS, ModelConfig
    from training.train import (
        MODEL_VERSION,
        TRAIN_FEATURES,
        TrainConfig,
    )

    p = argparse.ArgumentParser(prog="python -m training train",
                                description="Train the emotion CNN and export ONNX + card.")
    p.add_argument("--manifest", type=Path, action="append",
                   help="manifest CSV (path, speaker, emotion, split; repeatable). Default: the "
                        f"{', '.join(DEFAULT_CORPORA)} manifests under the corpora dir")
    p.add_argument("--out-dir", type=Path, default=Path("runs") / "train",
                   help="where the model, its card and checkpoint go (default runs/train; "
                        "never the model the worker serves, CALLMOOD_MODEL_PATH)")
    p.add_argument("--name", default="emotion-v1")
    p.add_argument("--version", default=MODEL_VERSION,
                   help="version written into the card; segment rows record it with the ONNX "
                        "file's sha256 prefix, so a retrain that keeps the default is still told "
                        "apart from the shipped model")
    p.add_argument("--seed", type=int, default=TrainConfig.seed,
                   help="initialisation, sampled clips, augmentation, crops and masks")
    p.add_argument("--split-seed", type=int, default=TrainConfig.split_seed,
                   help="which train speakers are held out for validation (keep it to compare "
                        "seeds of a recipe on the same speakers)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--patience", type=int, default=TrainConfig.patience,
                   help="stop after N epochs without a validation gain (default: run every "
                        "epoch; the one-cycle schedule peaks in its last epochs)")
    p.add_argument("--min-epochs", type=int, default=TrainConfig.min_epochs,
                   help="with --patience: no early stop before this many epochs")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction)
    p.add_argument("--crop-s", type=float, default=TrainConfig.crop_s)
    p.add_argument("--draws-per-epoch", type=int, default=TrainConfig.draws_per_epoch)
    p.add_argument("--p-phone", type=float, default=AugmentConfig.p_phone,
                   help="probability of a telephone-band + G.711 round trip per draw")
    p.add_argument("--p-codec", type=float, default=AugmentConfig.p_codec,
                   help="probability of a low-bitrate Opus/MP3 round trip per draw")
    p.add_argument("--opus-share", type=float, default=AugmentConfig.opus_share,
                   help="share of the codec round trips that are Opus (the rest are MP3)")
    p.add_argument("--codec-levels", type=_level_range,
                   default=AugmentConfig.codec_level_range, metavar="LOW,HIGH",
                   help="libsndfile compression levels drawn for the codec round trips "
                        "(default %(default)s: Opus ~47 down to ~5 kbit/s; 0.95,1.0 draws "
                        "Opus at ~19-5 kbit/s)")
    p.add_argument("--p-reverb", type=float, default=AugmentConfig.p_reverb,
                   help="probability of a synthetic room (RT60 0.2-0.8 s) per draw")
    p.add_argument("--p-speed", type=float, default=AugmentConfig.p_speed,
                   help="probability of a speed change per draw (tempo and pitch together)")
    p.add_argument("--speed-range", type=_speed_range, default=AugmentConfig.speed_range,
                   metavar="LOW,HIGH",
                   help="speed factors drawn for --p-speed (default %(default)s)")
    p.add_argument("--p-warp", type=float, default=AugmentConfig.p_warp,
                   help="probability of a vocal-tract-length warp of the mel axis per draw "
                        "(formants and pitch move, tempo does not; 0: every model so far)")
    p.add_argument("--warp-range", type=_warp_range, default=AugmentConfig.warp_range,
                   metavar="LOW,HIGH",
                   help="warp factors drawn for --p-warp (default %(default)s)")
    p.add_argument("--p-clip", type=float, default=AugmentConfig.p_clip,
                   help="probability of an overdriven preamp per draw (speech at -26 dBFS, "
                        "+6 to +24 dB, hard clipping; 0: emotion-v1.7.0)")
    p.add_argument("--feature-remove-dc", action=argparse.BooleanOptionalAction,
                   default=TRAIN_FEATURES.remove_dc,
                   help="subtract each clip's mean sample before the log-mel")
    p.add_argument("--teacher", action="append", default=[], metavar="ONNX",
                   help="distil from this trained model (repeatable; its card must hold out "
                        "the same validation speakers)")
    p.add_argument("--distill-weight", type=float, default=DistillConfig.weight,
                   help="share of the loss given to the teachers' soft targets")
    p.add_argument("--distill-temperature", type=float, default=DistillConfig.temperature,
                   help="softening of the distillation term")
    p.add_argument("--normalization", default=FeatureConfig.normalization,
                   choices=NORMALIZATIONS,
                   help="per-utterance log-mel normalisation: utterance_cmn (v1.4.0: each "
                        "band's mean over time) or utterance_level (one mean: the gain only, "
                        "keeps the spectral envelope) or utterance_cmn_and_level (both, as two "
                        "input channels)")
    p.add_argument("--dynamic-range-db", type=float, default=TRAIN_FEATURES.dynamic_range_db,
                   help="clamp log-mel this far below each utterance's peak (gain invariance)")
    p.add_argument("--mixup-alpha", type=float, default=TrainConfig.mixup_alpha,
                   help="mix each batch's clips and targets with Beta(alpha, alpha) shares "
                        "(0: off)")
    p.add_argument("--bn-recalibration-batches", type=int,
                   default=TrainConfig.bn_recalibration_batches,
                   help="recompute the exported weight average's batch-norm statistics on the "
                        "epoch's last N training batches without SpecAugment masks (0: the "
                        "averaged statistics, emotion-v1.7.0)")
    p.add_argument("--members", type=int, default=ModelConfig.members,
                   help="CNNs trained side by side and averaged in one ONNX model (1: one CNN)")
    p.add_argument("--band-pooling", choices=BAND_POOLINGS, default=ModelConfig.band_pooling,
                   help="keep: time statistics per channel and frequency row (emotion-v1.7.0); "
                        "mean: average the last stage's frequency rows first (emotion-v1.6.0 "
                        "and earlier)")
    p.add_argument("--channels", type=_channels, default=ModelConfig().channels,
                   metavar="C1,C2,C3,C4",
                   help="each member's channels per conv stage (default "
                        f"{','.join(map(str, ModelConfig().channels))})")
    p.add_argument("--balance", choices=BALANCES, default=TrainConfig.balance,
                   help="split each class's share of the draws among the corpora that have "
                        "it (emotion-v1.9.0 and earlier) or among the speakers")
    p.add_argument("--extra-class", action="append", default=[],
                   choices=TRAINABLE_EXTRA_CLASSES,
                   help="train this raw label as a class of its own, merged into its served "
                        "class in the exported graph (calm: into neutral; repeatable)")
    p.add_argument("--arousal-weight", type=float, default=TrainConfig.arousal_weight,
                   help="train an auxiliary arousal head (" + " / ".join(AROUSAL_LEVELS)
                        + ") on the arousal manifests with this loss weight (0: none; it is "
                          "not exported)")
    p.add_argument("--arousal-manifest", type=Path, action="append",
                   help="manifest with an arousal_level column (repeatable). Default: the "
                        f"{', '.join(AROUSAL_CORPORA)} manifest(s) under the corpora dir")
    p.add_argument("--arousal-draws-per-epoch", type=int,
                   default=TrainConfig.arousal_draws_per_epoch,
                   help="arousal clips sampled per epoch beside --draws-per-epoch emotion clips")
    p.add_argument("--whole-clips", action="store_true",
                   help="train on whole clips, silence included (emotion-v1.1.0's recipe) "
                        "instead of cutting each to its speech as the worker cuts calls")
    p.add_argument("--limit-per-corpus", type=int, default=0,
                   help="use at most N clips per corpus and subset (smoke runs)")
    _add_run_options(p, "carry on from the checkpoint an interrupted run of the same command "
                        "left in --out-dir (NAME.ckpt.pt; trains from the start if there is "
                        "none)")
    p.add_argument("--final-fit-version", default=None, metavar="VERSION",
                   help="then train this run's final fit (`python -m training final-fit`: "
                        "every train speaker, its epochs and temperature) into OUT_DIR/final "
                        "with this version; how the shipped model is made. A final fit "
                        "interrupted after the selected run finished resumes with `python -m "
                        "training final-fit --selected OUT_DIR/NAME.onnx --resume`")
    return p


def train_main(argv: list[str] | None = None) -> int:
    """``train``: returns a process exit status."""
    import torch

    from training.distill import DistillConfig
    from training.model import ModelConfig
    from training.train import (
        TRAIN_FEATURES,
        TrainConfig,
        train,
    )

    args = build_train_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    settings = get_settings()
    manifests = args.manifest or corpus_manifest_paths(settings.corpora_dir)
    try:
        check_version(args.version)         # before the hour of training, not after it
        if args.final_fit_version is not None:
            check_version(args.final_fit_version)
            if args.limit_per_corpus:
                raise ConfigError("--limit-per-corpus makes a smoke run, which has no final "
                                  "fit: drop --final-fit-version")
        features = replace(TRAIN_FEATURES, normalization=args.normalization,
                           dynamic_range_db=args.dynamic_range_db,
                           remove_dc=args.feature_remove_dc)
        config = TrainConfig(seed=args.seed, split_seed=args.split_seed, epochs=args.epochs,
                             patience=args.patience,
                             min_epochs=args.min_epochs,
                             batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                             crop_s=args.crop_s, draws_per_epoch=args.draws_per_epoch,
                             mixup_alpha=args.mixup_alpha,
                             bn_recalibration_batches=args.bn_recalibration_batches,
                             balance=args.balance,
                             extra_classes=tuple(args.extra_class),
                             arousal_weight=args.arousal_weight,
                             arousal_draws_per_epoch=args.arousal_draws_per_epoch,
                             augment=AugmentConfig(p_phone=args.p_phone, p_codec=args.p_codec,
                                                   opus_share=args.opus_share,
                                                   codec_level_range=args.codec_levels,
                                                   p_reverb=args.p_reverb,
                                                   p_clip=args.p_clip, p_speed=args.p_speed,
                                                   speed_range=args.speed_range,
                                                   p_warp=args.p_warp,
                                                   warp_range=args.warp_range),
                             features=features,
                             model=ModelConfig(n_mels=features.n_mels, views=features.n_views,
                                               channels=args.channels, members=args.members,
                                               band_pooling=args.band_pooling,
                                               n_classes=len(EMOTIONS) + len(args.extra_class),
                                               arousal_classes=(len(AROUSAL_LEVELS)
                                                                if args.arousal_weight > 0
                                                                else 0)),
                             speech_cut=_speech_cut(args.whole_clips),
                             distill=DistillConfig(teachers=tuple(args.teacher),
                                                   weight=args.distill_weight,
                                                   temperature=args.distill_temperature))
    except (CallmoodError, ValueError) as e:    # ValueError: AugmentConfig's own checks
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # the card records the recipe: a resumed run's command is the interrupted one's
    command = _cut_env(config.speech_cut) + "python -m training train " + shlex.join(
        _without_options(argv if argv is not None else sys.argv[1:], {"--resume": 0}))
    try:
        refuse_serving_model(args.out_dir / f"{args.name}.onnx")
        if args.final_fit_version is not None:
            refuse_serving_model(args.out_dir / "final" / f"{args.name}.onnx")
        result = train(manifests, args.out_dir, config, name=args.name, version=args.version,
                       device=args.device, workers=args.workers,
                       limit_per_corpus=args.limit_per_corpus, command=command.strip(),
                       resume=args.resume,
                       arousal_manifests=(args.arousal_manifest or corpus_manifest_paths(
                           settings.corpora_dir, AROUSAL_CORPORA)))
        print(f"wrote {result.model_path} (best epoch {result.best_epoch}, val UA "
              f"{100 * result.val_ua:.1f}%, T={result.temperature:.2f}, {result.seconds:.0f} s "
              f"on {result.device})")
        if not args.no_test_eval:
            status = _test_figures_into_card(result.model_path, manifests, args.workers)
            if status != 0:
                return status
    except CallmoodError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.final_fit_version is None:
        return 0
    return final_fit_main(["--selected", str(result.model_path),
                           "--out-dir", str(args.out_dir / "final"), "--name", args.name,
                           "--version", args.final_fit_version, "--device", args.device,
                           "--workers", str(args.workers), "--threads", str(args.threads),
                           *[a for m in manifests for a in ("--manifest", str(m))],
                           *[a for m in args.arousal_manifest or []
                             for a in ("--arousal-manifest", str(m))],
                           *(["--no-test-eval"] if args.no_test_eval else []),
                           *(["--resume"] if args.resume else [])])


def _test_figures_into_card(model_path: Path, manifests: list[Path], workers: int) -> int:
    """The test split, clean and through mu-law, written into a trained model's card; a note,
    and success, when the manifests hold no test row (an operator's own labelled calls may
    all be training data: the model is trained, only its test figures are missing)."""
    from training.dataset import read_manifests

    if not (read_manifests(manifests)["split"] == "test").any():
        print(f"note: no test rows in the manifests; {model_path.name}'s card has no test "
              "figures (score held-out calls later: "
              + shlex.join(["callmood", "evaluate", "--model", str(model_path), "--update-card",
                            "--manifest", "M"]) + ")", file=sys.stderr)
        return 0
    return evaluate_main(["--model", str(model_path), "--update-card", "--channel", "clean",
                          "--channel", "mulaw8k", "--workers", str(workers),
                          *[a for m in manifests for a in ("--manifest", str(m))]])


def _channels(text: str) -> tuple[int, int, int, int]:
    """``--channels``: four positive integers separated by commas."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: give four integers, e.g. 8,16,32,64") from e
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give four positive integers, e.g. 8,16,32,64")
    return values[0], values[1], values[2], values[3]


def _range_parser(what: str, lowest: float, highest: float,
                  example: str) -> Callable[[str], tuple[float, float]]:
    """An argparse type for "LOW,HIGH": two ``what`` with lowest <= LOW <= HIGH <= highest."""
    def parse(text: str) -> tuple[float, float]:
        try:
            low, high = (float(v) for v in text.split(","))
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give two {what} LOW,HIGH, e.g. {example}") from e
        if not lowest <= low <= high <= highest:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give two {what} LOW,HIGH with {lowest:g} <= LOW <= HIGH <= "
                f"{highest:g}, e.g. {example}")
        return low, high

    return parse


_level_range = _range_parser("compression levels", 0.0, 1.0, "0.95,1.0")
"""``--codec-levels``: libsndfile compression levels in [0, 1]."""
_speed_range = _range_parser("speed factors", 0.5, 2.0, "0.9,1.1")
"""``--speed-range``: speed factors (1: unchanged)."""
_warp_range = _range_parser("warp factors", 0.5, 2.0, "0.9,1.1")
"""``--warp-range``: mel-axis warp factors (1: unchanged)."""


def _without_options(argv: list[str], options: dict[str, int]) -> list[str]:
    """``argv`` less the given options, each with its number of values (for the card's
    command: options that do not change the figures)."""
    kept: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
        elif arg.split("=", 1)[0] in options:
            skip = options[arg.split("=", 1)[0]] if "=" not in arg else 0
        else:
            kept.append(arg)
    return kept


def build_evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training evaluate",
                                description="Per-corpus UA/WA/ECE of an ONNX model (+card).")
    p.add_argument("--model", type=Path, action="append", default=None,
                   help="ONNX file with NAME.card.json beside it (default: CALLMOOD_MODEL_PATH); "
                        "repeat it to score the ensemble (mean calibrated probabilities)")
    p.add_argument("--manifest", type=Path, action="append",
                   help="manifest CSV (repeatable). Default: the "
                        f"{', '.join(EVAL_CORPORA)} manifests under the corpora dir")
    p.add_argument("--split", default="test", choices=EVAL_SPLITS,
                   help="test (default), train, all, or val (the validation speakers in the "
                        "card); --update-card writes test figures only")
    p.add_argument("--channel", action="append", choices=CHANNELS,
                   help="clean (default), a phone line (mulaw8k, alaw8k) or another condition "
                        "(repeatable; room: a speakerphone's reverberation, RT60 0.5 s)")
    p.add_argument("--robustness", action="store_true",
                   help="the channel-robustness table: " + ", ".join(ROBUSTNESS)
                        + "; --channel adds a condition to it (e.g. room)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--workers", type=int, default=2, help="decode/feature threads")
    p.add_argument("--whole-clips", action="store_true",
                   help="score whole clips, silence included, instead of cutting each to its "
                        "speech as the worker cuts calls (how emotion-v1.1.0's card was made)")
    p.add_argument("--min-frames", type=int, default=None,
                   help="tile utterances shorter than N frames up to N instead of the card's "
                        "min_frames (a measurement: 300 is the 3 s the network trains on)")
    p.add_argument("--update-card", action="store_true",
                   help="write the figures into the card of --model (JSON and Markdown; "
                        "--model is then required)")
    p.add_argument("--json-out", type=Path, default=None, help="also write figures as JSON")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another ONNX model (card beside it) scored on the same clips: prints "
                        "each row's UA difference with a 95%% interval from resampling the "
                        "speakers for both models at once")
    return p


_NAME_THE_CARD = ("error: --update-card rewrites a model's card: name the model with --model "
                  "(the one the worker serves is CALLMOOD_MODEL_PATH): without it, scoring "
                  "one's own calls replaced the served model's published figures")


def evaluation_channels(robustness: bool, channels: list[str] | None) -> list[str]:
    """The channels ``evaluate`` scores: the robustness table (plus any other ``--channel``,
    e.g. room, which the issue's table lacks) or the ``--channel`` list (default clean)."""
    if robustness:
        return [*ROBUSTNESS, *(c for c in channels or [] if c not in ROBUSTNESS)]
    return list(channels or ["clean"])


def evaluate_main(argv: list[str] | None = None) -> int:
    """``evaluate``: prints the table; returns a process exit status."""
    args = build_evaluate_parser().parse_args(argv)
    if args.update_card and not args.model:
        print(_NAME_THE_CARD, file=sys.stderr)
        return 2
    model_paths: list[Path] = [p.resolve() for p in args.model or [get_settings().model_path]]
    model_path = model_paths[0]
    if args.update_card and len(model_paths) > 1:
        print("error: --update-card writes one model's card; score an ensemble without it",
              file=sys.stderr)
        return 2
    if args.update_card and args.split != "test":
        print(f"error: --update-card writes the card's test figures (speakers never seen in "
              f"training); --split {args.split} scores other speakers: drop one of them",
              file=sys.stderr)
        return 2
    if args.update_card and args.min_frames is not None:
        print("error: --min-frames scores another serving setting than the card's; a card's "
              "figures are its own: drop one of them", file=sys.stderr)
        return 2
    manifests = args.manifest or corpus_manifest_paths(get_settings().corpora_dir, EVAL_CORPORA)
    channels = evaluation_channels(args.robustness, args.channel)
    speech_cut = _speech_cut(args.whole_clips)
    try:
        groups = [model_paths]
        if args.baseline is not None:
            groups.append([args.baseline.resolve()])
        # the baseline scores the clips of the same pass: each is decoded once for both; a
        # baseline of other labels (or, on val, other validation speakers) is refused before
        # any clip is scored
        result, *baselines = evaluate_models(groups, manifests, split=args.split,
                                             channels=channels, threads=args.threads,
                                             workers=args.workers, speech_cut=speech_cut,
                                             min_frames=args.min_frames)
    except CallmoodError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.format_table())
    for baseline in baselines:
        try:
            comparison = compare(result, baseline)
        except CallmoodError as e:
            print(f"error: baseline: {e}", file=sys.stderr)
            return 2
        print("\n" + format_comparison(comparison, result.model_version, baseline.model_version))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps([r.to_dict() for r in result.rows], indent=2) + "\n",
                                 encoding="utf-8")
    if args.update_card:
        shown = [a if not a.startswith("/") else os.path.relpath(a)
                 for a in _without_options(argv or [], {"--update-card": 0, "--json-out": 1,
                                                    "--baseline": 1})]
        card = with_test_metrics(read_card_dict(model_path), result,
                                 _cut_env(speech_cut) + "python -m training evaluate "
                                 + shlex.join(shown))
        write_card(model_path, card)
        print(f"updated card of {model_path.name}")
    return 0


def build_final_fit_parser() -> argparse.ArgumentParser:
    from training.train import (
        MODEL_VERSION,
    )

    p = argparse.ArgumentParser(
        prog="python -m training final-fit",
        description="Train a selected run's recipe again on every train speaker, its "
                    "validation speakers included, for its best epoch + 1 epochs, calibrated "
                    "with its temperature (training.train.FinalFit); export ONNX + card.")
    p.add_argument("--selected", type=Path, required=True,
                   help="ONNX model (card beside it) of the run selected on validation speakers")
    p.add_argument("--manifest", type=Path, action="append",
                   help="manifest CSV (repeatable; must be the selected run's, by content). "
                        f"Default: the {', '.join(DEFAULT_CORPORA)} manifests under the "
                        "corpora dir")
    p.add_argument("--arousal-manifest", type=Path, action="append",
                   help="arousal manifest(s), for a recipe with an arousal head (default: "
                        f"{', '.join(AROUSAL_CORPORA)} under the corpora dir)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", default="emotion-v1")
    p.add_argument("--version", default=MODEL_VERSION)
    p.add_argument("--seed", type=int, default=None,
                   help="initialisation, draws and augmentation (default: the selected run's)")
    p.add_argument("--without-corpus", choices=EVAL_CORPORA, default=None,
                   help="leave-one-corpus-out: the selected run's data less this corpus's "
                        "manifest (how `python -m training loco --final-fit-of` measures the "
                        "shipped procedure on a corpus it never heard)")
    _add_run_options(p, "carry on from the checkpoint an interrupted final fit left in "
                        "--out-dir")
    return p


def final_fit_main(argv: list[str] | None = None) -> int:
    """``final-fit``: returns a process exit status."""
    import torch

    from training.train import (
        final_fit_of,
        manifest_digest,
        train,
    )

    args = build_final_fit_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    settings = get_settings()
    held_out = ([] if args.without_corpus is None
                else corpus_manifest_paths(settings.corpora_dir, (args.without_corpus,)))
    manifests = args.manifest or corpus_manifest_paths(
        settings.corpora_dir, [c for c in DEFAULT_CORPORA if c != args.without_corpus])
    try:
        refuse_serving_model(args.out_dir / f"{args.name}.onnx")
        check_version(args.version)
        selected = read_card_dict(args.selected.resolve())
        config, final_fit = final_fit_of(selected)
        if args.without_corpus is not None and config.distill.teachers:
            raise ConfigError(f"{selected.get('version')} was distilled from teachers trained "
                              f"on every corpus, {args.without_corpus} included: its "
                              "leave-one-corpus-out fit would learn the held-out corpus from "
                              "their soft targets")
        final_fit = replace(final_fit, without_corpus=args.without_corpus)
        if args.seed is not None:
            config = replace(config, seed=args.seed)
        arousal = ((args.arousal_manifest or corpus_manifest_paths(settings.corpora_dir,
                                                                   AROUSAL_CORPORA))
                   if config.arousal_weight > 0 else [])
        recorded = final_fit.selected["manifests_sha256"]
        # by content, one digest per file given (paths differ between checkouts; a path
        # given twice is data given twice): a final fit adds the validation speakers, not
        # other data, nor less (a LOCO one leaves out one corpus, which must be one of them)
        if (sorted(manifest_digest(m) for m in [*manifests, *arousal, *held_out])
                != sorted(recorded.values())):
            without = (f" less {args.without_corpus}'s {[str(m) for m in held_out]}"
                       if held_out else "")
            raise ConfigError(f"manifests {[str(m) for m in [*manifests, *arousal]]} are not "
                              f"the ones {selected.get('version')} was selected with"
                              f"{without} ({', '.join(recorded) or 'none recorded'}): a final "
                              "fit adds its validation speakers, not other data")
        if (args.out_dir / f"{args.name}.onnx").resolve() == args.selected.resolve():
            raise ConfigError(f"--out-dir {args.out_dir} would overwrite the selected model "
                              f"{args.selected}: write the final fit elsewhere")
    except (CallmoodError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    command = "python -m training final-fit " + shlex.join(
        _without_options(argv if argv is not None else sys.argv[1:], {"--resume": 0}))
    try:
        result = train(manifests, args.out_dir, config, name=args.name, version=args.version,
                       device=args.device, workers=args.workers, command=command.strip(),
                       resume=args.resume, final_fit=final_fit, arousal_manifests=arousal)
        if args.without_corpus is None:      # a LOCO fit's own figure is the loco row
            write_card(result.model_path,
                       with_loco_of(read_card_dict(result.model_path), selected))
        print(f"wrote {result.model_path} (final fit of {final_fit.selected['version']}: "
              f"{final_fit.epochs} epochs on every train speaker, T={result.temperature:.2f}, "
              f"{result.seconds:.0f} s on {result.device})")
        if not args.no_test_eval:
            return _test_figures_into_card(result.model_path, manifests, args.workers)
    except CallmoodError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def build_loco_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training loco",
        description="Leave-one-corpus-out: for each held-out corpus, train the default recipe on "
                    "the other corpora's train split (validation speakers carved from them), "
                    "then evaluate on every clip of the held-out corpus (split all); with "
                    "--final-fit-of, the shipped procedure's final fit instead. Options "
                    "not listed here go to `python -m training train` (or `final-fit`).")
    p.add_argument("--holdout", action="append", choices=EVAL_CORPORA,
                   help=f"corpus to hold out (repeatable; default: {', '.join(EVAL_CORPORA)})")
    p.add_argument("--out-dir", type=Path, default=Path("loco"),
                   help="models go to OUT_DIR/without-CORPUS/ (default ./loco)")
    p.add_argument("--channel", action="append", choices=CHANNELS,
                   help="evaluation channels (default: clean and mulaw8k)")
    p.add_argument("--reuse", action="store_true",
                   help="evaluate a model already trained in OUT_DIR/without-CORPUS/ instead of "
                        "training it again")
    p.add_argument("--workers", type=int, default=_default_workers())
    p.add_argument("--json-out", type=Path, default=None, help="also write figures as JSON")
    p.add_argument("--update-card", action="store_true",
                   help="write each held-out corpus's figures into the card of --model "
                        "(other held-out corpora already there are kept)")
    p.add_argument("--model", type=Path, default=None,
                   help="model whose card --update-card writes (required with it)")
    p.add_argument("--final-fit-of", type=Path, default=None, metavar="SELECTED",
                   help="score the shipped procedure: for each held-out corpus, the final fit "
                        "of SELECTED's recipe (its epochs and temperature) on every train "
                        "speaker of the other corpora (`final-fit --without-corpus`); options "
                        "not listed here then go to `python -m training final-fit`")
    return p


def loco_main(argv: list[str] | None = None) -> int:
    """``loco``: prints one table per held-out corpus; returns a process exit status."""
    from training.train import (
        final_fit_of,
        train_config_from_record,
    )

    args, train_args = build_loco_parser().parse_known_args(argv)
    if args.update_card and args.model is None:
        print(_NAME_THE_CARD, file=sys.stderr)     # before hours of training, not after
        return 2
    # the held-out corpus is scored as its models are trained: cut to speech or whole
    known = build_train_parser().parse_known_args(train_args)[0]
    speech_cut = _speech_cut(bool(known.whole_clips))
    if known.final_fit_version is not None:
        print("error: loco scores the run selected without each corpus; a final fit of it "
              "would go unscored: drop --final-fit-version (or score final fits with "
              "--final-fit-of)", file=sys.stderr)
        return 2
    if known.teacher:
        print("error: the teachers were trained on every corpus, the held-out one included: a "
              "leave-one-corpus-out run must not learn from them", file=sys.stderr)
        return 2
    selected_card = None
    if args.final_fit_of is not None:
        try:
            selected_card = read_card_dict(args.final_fit_of.resolve())
            config, _ = final_fit_of(selected_card)
        except (CallmoodError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        speech_cut = config.speech_cut      # the cut the recipe trained on, as recorded
    corpora_dir = get_settings().corpora_dir
    channels = args.channel or ["clean", "mulaw8k"]
    figures: dict[str, list[dict[str, object]]] = {}
    for holdout in args.holdout or EVAL_CORPORA:
        out_dir = args.out_dir / f"without-{holdout}"
        model_path = out_dir / "emotion-v1.onnx"
        others = [c for c in DEFAULT_CORPORA if c != holdout]
        reused = args.reuse and model_path.exists()
        if not reused:
            common = ["--out-dir", str(out_dir), "--no-test-eval", "--workers", str(args.workers)]
            status = (train_main([*[a for m in corpus_manifest_paths(corpora_dir, others)
                                    for a in ("--manifest", str(m))],
                                  "--version", f"loco-no-{holdout}", *common, *train_args])
                      if args.final_fit_of is None else
                      final_fit_main(["--selected", str(args.final_fit_of),
                                      "--without-corpus", holdout,
                                      "--version", f"loco-final-no-{holdout}", *common,
                                      *train_args]))
            if status != 0:
                return status
        model_card = read_card_dict(model_path)
        if reused:
            problem = reuse_problem(model_card, holdout, selected_card)
            if problem is not None:
                print(f"error: --reuse {model_path}: {problem}; train it again without --reuse",
                      file=sys.stderr)
                return 2
        try:
            # scored with the cut its model trained on, as its card records it: a reused model
            # may have been trained under another environment (CALLMOOD_VAD_REMOVE_DC=0) or
            # with --whole-clips than this command's
            recorded = model_card.get("training", {}).get("config", {})
            model_cut = (train_config_from_record(recorded).speech_cut
                         if "speech_cut" in recorded else speech_cut)
            result = evaluate_model(model_path, corpus_manifest_paths(corpora_dir, (holdout,)),
                                    split="all", channels=channels, threads=1,
                                    workers=args.workers,
                                    speech_cut=model_cut)
        except CallmoodError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"\n== held out: {holdout} (trained on {', '.join(others)})")
        print(result.format_table())
        figures[holdout] = [r.to_dict() for r in result.rows]
        if args.update_card:
            # what determines the figures; --out-dir, --reuse and --workers do not. A final
            # fit takes its cut from the selected run's card; a fresh recipe from the env
            env = "" if args.final_fit_of is not None else _cut_env(model_cut)
            command = env + shlex.join(["python", "-m", "training", "loco", "--holdout", holdout,
                                        *([] if args.final_fit_of is None
                                          else ["--final-fit-of", str(args.final_fit_of)]),
                                        *[a for c in args.channel or []
                                          for a in ("--channel", c)],
                                        *train_args])
            target = args.model.resolve()
            write_card(target, with_loco(read_card_dict(target), holdout, result, model_card,
                                         command))
            print(f"updated card of {target.name}")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0
