"""A killed training run resumes from its last epoch and ends where an uninterrupted one ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.training.test_train import _operator_manifest
from training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from training.cli import train_main
from worker.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TRAIN_COMMAND = [sys.executable, "-m", "training", "train"]


def _args(manifest: Path, out_dir: Path) -> list[str]:
    # mixup on: its random stream must be restored too
    return ["--manifest", str(manifest), "--out-dir", str(out_dir), "--name", "mine",
            "--epochs", "8", "--draws-per-epoch", "32", "--batch-size", "16", "--workers", "1",
            "--threads", "1", "--mixup-alpha", "0.4", "--no-test-eval"]


def _kill_after_first_checkpoint(args: list[str], ckpt: Path) -> None:
    """Run ``python -m training train args`` and SIGKILL it once its first epoch is saved."""
    proc = subprocess.Popen([*TRAIN_COMMAND, *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not ckpt.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                stderr = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"no checkpoint before the run ended (rc {proc.returncode}): {stderr}")
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _train(args: list[str]) -> int:
    """Run ``python -m training train args`` in a fresh process; its exit status."""
    return subprocess.run([*TRAIN_COMMAND, *args], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=600, check=False).returncode


def test_a_killed_run_resumes_to_the_model_an_uninterrupted_run_makes(
        tmp_path: Path, callmood_corpora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _operator_manifest(tmp_path, callmood_corpora)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    ckpt = checkpoint_path(killed, "mine")
    _kill_after_first_checkpoint(_args(manifest, killed), ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert not (killed / "mine.onnx").exists()
    assert saved["state"]["epoch"] < 7                 # killed mid-run, not after it

    # another recipe may not take the checkpoint over, and the refusal leaves it in place
    assert train_main([*_args(manifest, killed), "--seed", "1", "--resume"]) == 2
    assert "differs in config.seed" in capsys.readouterr().err
    assert ckpt.exists()

    # both in fresh processes, like the killed one: the test process's history (libraries
    # other tests loaded, the floating-point state they left) must not enter the comparison
    assert _train([*_args(manifest, killed), "--resume"]) == 0
    assert _train(_args(manifest, whole)) == 0
    assert not ckpt.exists() and not checkpoint_path(whole, "mine").exists()
    resumed = json.loads((killed / "mine.card.json").read_text())
    uninterrupted = json.loads((whole / "mine.card.json").read_text())
    assert resumed["training"]["resumed_after_epochs"] == [saved["state"]["epoch"]]
    assert uninterrupted["training"]["resumed_after_epochs"] == []
    assert resumed["training"]["command"] == uninterrupted["training"]["command"].replace(
        str(whole), str(killed))
    assert len(resumed["training"]["history"]) == 8
    # same epochs, losses, validation and weights: CPU training repeats exactly
    assert resumed["training"]["history"] == uninterrupted["training"]["history"]
    assert resumed["onnx_sha256"] == uninterrupted["onnx_sha256"]
    assert resumed["temperature"] == uninterrupted["temperature"]


def test_a_checkpoint_is_taken_up_only_by_its_own_run(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt.pt"
    assert load_checkpoint(path, {"config": {"seed": 0}}) is None
    identity = {"config": {"seed": 0, "augment": {"p_codec": 0.25}}, "train_clips": 40}
    save_checkpoint(path, identity, {"epoch": 3, "weights": torch.ones(2)})
    state = load_checkpoint(path, identity)
    assert state is not None and state["epoch"] == 3 and torch.equal(state["weights"], torch.ones(2))
    other = {"config": {"seed": 0, "augment": {"p_codec": 0.5}}, "train_clips": 41}
    with pytest.raises(ConfigError, match=r"differs in config\.augment\.p_codec, train_clips"):
        load_checkpoint(path, other)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read the training checkpoint"):
        load_checkpoint(path, identity)
