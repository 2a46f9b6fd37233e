"""``python -m training train|final-fit|evaluate|loco|speech ...``."""

from __future__ import annotations

import sys

from training.cli import evaluate_main, final_fit_main, loco_main, train_main
from training.speech_stats import main as speech_main


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    commands = {"train": train_main, "final-fit": final_fit_main, "evaluate": evaluate_main,
                "loco": loco_main, "speech": speech_main}
    usage = ("usage: python -m training {train,final-fit,evaluate,loco,speech} [options]\n"
             "  train      train a model on manifests (the corpora's, or your own labelled calls)\n"
             "  final-fit  retrain a selected recipe on every train speaker\n"
             "  evaluate   score models on a split: the card's tables, --baseline comparisons\n"
             "  loco       leave-one-corpus-out figures\n"
             "  speech     speech statistics of the manifests' clips\n"
             "each takes --help")
    if args in (["--help"], ["-h"]):
        print(usage)
        return 0
    if not args or args[0] not in commands:
        print(usage, file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
