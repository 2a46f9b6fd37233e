"""Per-epoch training checkpoints: the one place training state touches the disk before export.

A run interrupted at any point (killed, preempted, a night's window over) resumes from the
last finished epoch with ``--resume`` and ends with the model and card an uninterrupted run
would have made: the checkpoint holds the weights, their running average, the optimiser and
learning-rate schedule, every random stream and the history. On CPU the two runs agree bit for
bit. A checkpoint is only taken up by the run that wrote it: same recipe, same data.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from training.card import config_differences
from worker.errors import ConfigError

CHECKPOINT_FORMAT = 1
"""Bumped whenever the saved state's layout changes (an older file is then refused)."""


def checkpoint_path(out_dir: Path, name: str) -> Path:
    """Where the run that exports ``out_dir/name.onnx`` keeps its checkpoint."""
    return out_dir / f"{name}.ckpt.pt"


def save_checkpoint(path: Path, identity: dict[str, Any], state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) with the run's
    ``identity``. Written beside and renamed over the old file, so a kill mid-write leaves
    the previous epoch's checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "identity": identity, "state": state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The state saved at ``path`` by the run with ``identity``; None when there is no file.

    Raises ConfigError when the file is unreadable, of another format, or was written by a
    run with another recipe or other data (the message names the settings that differ).
    """
    if not path.exists():
        return None
    try:
        # weights_only: a checkpoint is data; unpickling arbitrary objects could run code
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ConfigError(f"cannot read the training checkpoint {path}: {e}; delete it to "
                          "train from the start") from e
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise ConfigError(f"training checkpoint {path} has format {found!r}; this version "
                          f"reads format {CHECKPOINT_FORMAT}: delete it to train from the start")
    differences = config_differences(saved["identity"], identity)
    if differences:
        raise ConfigError(f"training checkpoint {path} belongs to another run: it differs in "
                          f"{', '.join(differences)}; resume with that run's settings and "
                          "data, or delete it to train from the start")
    state: dict[str, Any] = saved["state"]
    return state


def remove_checkpoint(path: Path) -> None:
    """Drop the checkpoint of a finished run (its model and card are the result)."""
    path.unlink(missing_ok=True)
