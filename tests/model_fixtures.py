"""A tiny hand-built ONNX emotion model (no training needed) for tests of the serving path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from worker.audio import file_sha256
from worker.constants import EMOTIONS
from worker.emotion import ModelCard
from worker.features import FeatureConfig
from worker.settings import Settings

N_MELS = FeatureConfig().n_mels


def write_tiny_model(folder: Path, weights: np.ndarray) -> Path:
    """features [B, N_MELS, T] -> mean over T -> @ weights [N_MELS, 7] -> logits [B, 7]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["features", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", N_MELS, "frames"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 7])],
        [numpy_helper.from_array(np.array([2], dtype=np.int64), "axes"),
         numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = folder / "tiny.onnx"
    onnx.save(model, str(path))
    card = ModelCard(name="tiny", version="tiny-0.0.1", labels=EMOTIONS, features=FeatureConfig(),
                     onnx_sha256=file_sha256(path), min_frames=20)
    path.with_suffix(".card.json").write_text(json.dumps(card.to_dict()))
    return path


def tiny_model_settings(tmp_path: Path) -> Settings:
    """Settings of a worker serving a seeded tiny model, data under ``tmp_path / "data"``,
    ``tmp_path`` its one input root."""
    model = write_tiny_model(tmp_path, np.random.default_rng(0).normal(size=(N_MELS, 7)))
    return Settings.from_env({"CALLMOOD_DATA_DIR": str(tmp_path / "data"),
                              "CALLMOOD_INPUT_ROOTS": str(tmp_path),
                              "CALLMOOD_MODEL_PATH": str(model)})
