"""Bit-exact-ish emulation of the FINN hardware graph against the QONNX model.

* :func:`qonnx_reference` runs the exported QONNX model with qonnx's ``execute_onnx``.
* :func:`emulate_dataflow` runs the FINN graph after ``step_create_dataflow_partition``
  (parent model with the software head/tail + the dataflow partition holding the generic
  HW nodes) with FINN's ``execute_onnx``. Generic HW nodes (before
  ``step_specialize_layers``) are executed with ``exec_mode="python"``; after
  specialisation ``*_hls`` nodes accept only cppsim/rtlsim, which need the Xilinx tools,
  so the flow emulates the pre-specialisation graph.
* :func:`compare` reports the max abs difference and raises
  :class:`~finn_flow.errors.EmulationMismatchError` above the tolerance.
* :func:`make_step_emulate` - the build step (after ``step_create_dataflow_partition``) that
  does both on the build's graph and records the result.

Inputs are given batched: ``inputs[i]`` is one sample with the model's full input shape
(batch dimension 1 included), or the shape without the batch dimension.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finn_flow.errors import EmulationMismatchError, FinnFlowError

if TYPE_CHECKING:
    from qonnx.core.modelwrapper import ModelWrapper

    from finn_flow.steps import Step


@dataclass
class EmulationResult:
    """Outcome of comparing FINN's hardware graph with the QONNX reference."""

    n_inputs: int
    max_abs_diff: float
    mean_abs_diff: float
    tolerance: float
    passed: bool
    output_range: tuple[float, float]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _as_samples(inputs: np.ndarray, shape: list[int]) -> list[np.ndarray]:
    """Split a batch of inputs into samples of exactly ``shape``."""
    arr = np.asarray(inputs, dtype=np.float32)
    size = int(np.prod(shape))
    if arr.size % size != 0:
        raise FinnFlowError(
            f"Emulation inputs of shape {arr.shape} do not split into samples of the model's "
            f"input shape {tuple(shape)}."
        )
    return [s.reshape(shape) for s in arr.reshape(-1, size)]


def _first_dynamic_input(model) -> str:
    return next(i.name for i in model.graph.input if model.get_initializer(i.name) is None)


def qonnx_reference(model_path: str | Path, inputs: np.ndarray) -> np.ndarray:
    """Outputs of the QONNX model (qonnx execution), stacked over the samples."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(str(model_path)).transform(InferShapes())
    iname = _first_dynamic_input(model)
    oname = model.graph.output[0].name
    ishape = model.get_tensor_shape(iname)
    outs = [execute_onnx(model, {iname: x})[oname] for x in _as_samples(inputs, ishape)]
    return np.stack(outs)


def emulate_dataflow(parent_path: str | Path, child, inputs: np.ndarray) -> np.ndarray:
    """Run ``inputs`` through the FINN parent model with ``child`` as its dataflow partition.

    ``child`` is a ModelWrapper (or a path) of generic (not yet specialised) HW nodes;
    every node is set to ``exec_mode="python"``.
    """
    from finn.transformation.fpgadataflow.set_exec_mode import SetExecMode
    from finn.util.execution import execute_parent
    from qonnx.core.modelwrapper import ModelWrapper

    if not isinstance(child, ModelWrapper):
        child = ModelWrapper(str(child))
    child = child.transform(SetExecMode("python"))
    parent = ModelWrapper(str(parent_path))
    ishape = parent.get_tensor_shape(_first_dynamic_input(parent))
    with tempfile.TemporaryDirectory(prefix="finn_flow_emu_") as tmp:
        child_path = Path(tmp) / "dataflow_python.onnx"
        child.save(str(child_path))
        outs = [execute_parent(parent_path, child_path, x) for x in _as_samples(inputs, ishape)]
    return np.stack(outs)


def compare(
    actual: np.ndarray, expected: np.ndarray, tolerance: float, raise_on_fail: bool = True
) -> EmulationResult:
    """Max/mean abs difference of ``actual`` vs ``expected``; raise above ``tolerance``."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.size != expected.size:
        raise FinnFlowError(
            f"Emulation produced {actual.size} output values, expected {expected.size} "
            f"(shapes {actual.shape} vs {expected.shape})."
        )
    diff = np.abs(actual.reshape(-1) - expected.reshape(-1))
    result = EmulationResult(
        n_inputs=int(actual.shape[0]) if actual.ndim else 1,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        tolerance=float(tolerance),
        passed=bool(diff.size == 0 or diff.max() <= tolerance),
        output_range=(float(expected.min()), float(expected.max())),
    )
    if raise_on_fail and not result.passed:
        raise EmulationMismatchError(
            f"FINN hardware-graph emulation differs from the QONNX model: max abs difference "
            f"{result.max_abs_diff:.3g} > tolerance {tolerance:.3g} over {result.n_inputs} "
            f"input(s) (expected outputs range {result.output_range})."
        )
    return result


def make_step_emulate(
    inputs: np.ndarray, expected: np.ndarray, tolerance: float, record: dict
) -> Step:
    """Step (after step_create_dataflow_partition) comparing FINN's python emulation."""

    def step_emulate_dataflow_python(model: ModelWrapper, cfg) -> ModelWrapper:
        """Run the inputs through parent + dataflow partition with FINN's python exec."""
        parent = Path(cfg.output_dir) / "intermediate_models" / "dataflow_parent.onnx"
        if not parent.is_file():
            raise FinnFlowError(f"dataflow_parent.onnx missing at {parent}")
        actual = emulate_dataflow(parent, model, inputs)
        result = compare(actual, expected, tolerance, raise_on_fail=False)
        out_file = Path(cfg.get_verification_output_directory()) / "emulation_output.npy"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(out_file, actual)
        result.notes.append(f"emulated outputs: {out_file}")
        record["emulation"] = result
        record["emulation_outputs"] = actual
        if record.get("raise_on_mismatch", True):
            compare(actual, expected, tolerance, raise_on_fail=True)
        return model

    return step_emulate_dataflow_python
