"""QONNX export of Brevitas models and execution of the exported graph with qonnx.

Export goes through Brevitas's own ``export_qonnx`` (TorchScript exporter, ``dynamo=False``: one
self-contained ``.onnx`` file, which is what FINN reads), then qonnx's ``cleanup_model``. The
file is written atomically (temporary file, then rename), so an interrupted export never leaves
a truncated model behind.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brevitas_apq.io import atomic_path


def export_qonnx_model(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Export ``model`` (in eval mode, decisions frozen) to a cleaned-up QONNX file at ``path``.

    Example:
        >>> export_qonnx_model(model.eval(), torch.randn(1, 24, 8), "model.onnx")  # doctest: +SKIP
    """
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            export_qonnx(model, args=example_input, export_path=str(tmp), dynamo=False)
            cleanup_model(ModelWrapper(str(tmp))).save(str(tmp))
    finally:
        model.train(was_training)
    return Path(path)


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


def export_run(
    run_dir: str | Path, n_windows: int = 256, tolerance: float = 1e-5
) -> dict[str, float | int | str | bool]:
    """Export a finished run's quantised model to ``RUN_DIR/model.onnx`` and check it.

    The check runs ``n_windows`` real test windows (the first ones of the test split) through
    the QONNX graph with qonnx's executor and through the Brevitas model, and records the
    largest absolute difference (scaled target units) in ``RUN_DIR/export.json``.
    """
    from brevitas_apq import io
    from brevitas_apq.errors import ConfigError
    from brevitas_apq.rundir import load_run

    if not isinstance(n_windows, int) or n_windows < 1:
        raise ConfigError(f"n_windows={n_windows!r} is invalid; allowed: an integer >= 1")
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ConfigError(f"tolerance={tolerance!r} is invalid; allowed: a finite number >= 0")
    run_dir = Path(run_dir)
    _, model, data = load_run(run_dir)
    dataset = data.load()
    X = torch.from_numpy(dataset.X_test[:n_windows])
    path = export_qonnx_model(model, X[:1], run_dir / "model.onnx")
    with torch.no_grad():
        expected = model(X).numpy()
    got = run_qonnx(path, X).reshape(-1)
    diff = np.abs(got - expected)
    max_abs = float(diff.max())
    report = {
        "onnx": str(path),
        "n_windows": len(X),
        "max_abs_diff": max_abs,
        # Windows beyond the tolerance: a rounding tie flipped by float32 accumulation order
        # (torch vs onnxruntime) inside the graph; see the README, "Export".
        "n_windows_over_tolerance": int((diff > tolerance).sum()),
        "tolerance": tolerance,
        "passed": max_abs <= tolerance,
    }
    io.write_json(run_dir / "export.json", report)
    return report
