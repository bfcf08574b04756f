"""QONNX export of Brevitas models and execution of the exported graph with qonnx.

Export goes through Brevitas's own ``export_qonnx`` (TorchScript exporter, ``dynamo=False``: one
self-contained ``.onnx`` file, which is what FINN reads), then qonnx's ``cleanup_model``. The
file is written atomically (temporary file, then rename), so an interrupted export never leaves
a truncated model behind.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


def export_qonnx_model(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Export ``model`` (in eval mode, decisions frozen) to a cleaned-up QONNX file at ``path``.

    Example:
        >>> export_qonnx_model(model.eval(), torch.randn(1, 24, 8), "model.onnx")  # doctest: +SKIP
    """
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            export_qonnx(model, args=example_input, export_path=tmp_name, dynamo=False)
        cleanup_model(ModelWrapper(tmp_name)).save(tmp_name)
        os.replace(tmp_name, path)
    finally:
        model.train(was_training)
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def run_qonnx(model_or_path, inputs: np.ndarray | torch.Tensor) -> np.ndarray:
    """Execute a QONNX model on ``inputs`` with qonnx's reference executor; return the output.

    The exported graph has a fixed batch size (1 for models exported from one example); a
    larger batch of inputs is run in chunks of that size and the outputs are concatenated.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    model = model_or_path
    if not isinstance(model, ModelWrapper):
        model = ModelWrapper(str(model_or_path))
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu().numpy()
    inputs = np.asarray(inputs, dtype=np.float32)
    in_name, out_name = model.graph.input[0].name, model.graph.output[0].name
    batch = model.get_tensor_shape(in_name)[0]
    if inputs.shape[0] % batch:
        raise ValueError(
            f"the model takes batches of {batch}; got {inputs.shape[0]} inputs, not a multiple"
        )
    outputs = [
        execute_onnx(model, {in_name: inputs[i : i + batch]})[out_name]
        for i in range(0, inputs.shape[0], batch)
    ]
    return np.concatenate(outputs)
