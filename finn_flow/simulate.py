"""C++ (cppsim) and RTL (rtlsim) simulation of a built dataflow graph; needs the Xilinx tools.

After :func:`finn_flow.build.build` (estimate-only is enough) the output directory holds
``intermediate_models/step_minimize_bit_width.onnx`` (the specialised, folded HW graph) and
``intermediate_models/dataflow_parent.onnx`` (the software head/tail around it).
:func:`simulate_dataflow` compiles that HW graph with FINN's own transformations and runs
inputs through the parent model with FINN's ``execute_parent``:

* ``"cppsim"``: ``PrepareCppSim`` -> ``CompileCppSim`` -> ``SetExecMode("cppsim")`` (needs
  Vitis HLS headers (``ap_int.h``), ``finn-hlslib`` and finn-plus's ``attention-hlslib``;
  ``*_rtl`` nodes fall back to python execution in cppsim mode).
* ``"rtlsim"``: ``PrepareIP`` -> ``HLSSynthIP`` -> ``PrepareRTLSim`` -> ``SetExecMode("rtlsim")``
  (Vitis HLS synthesis per HLS node and Vivado XSim through finn-plus's ``finn.xsi``), i.e.
  node-by-node RTL simulation as in finn-plus's ``node_by_node_rtlsim`` verification step.

Both are what finn-plus's ``folded_hls_cppsim`` / ``node_by_node_rtlsim`` verification steps
run; here they are exposed on their own so tests can compare them with the python emulation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from finn_flow.errors import FinnFlowError
from finn_flow.no_vivado import finn_session, vivado_available

__all__ = ["SIM_MODES", "simulate_dataflow"]

SIM_MODES = ("cppsim", "rtlsim")
HW_MODEL = "step_minimize_bit_width.onnx"


def simulate_dataflow(
    out_dir: str | Path,
    inputs: np.ndarray,
    mode: str = "cppsim",
    fpga_part: str = "xc7z020clg400-1",
    clock_ns: float = 10.0,
) -> np.ndarray:
    """Outputs of the built accelerator's graph in ``mode`` for each input sample (stacked).

    ``out_dir`` is the output directory of a :func:`finn_flow.build.build` run. Raises
    FinnFlowError without ``XILINX_VIVADO`` or when the build's models are missing.
    """
    if mode not in SIM_MODES:
        raise FinnFlowError(f"Unknown simulation mode {mode!r}; allowed: {', '.join(SIM_MODES)}")
    if not vivado_available():
        raise FinnFlowError(
            f"{mode} needs the Xilinx tools (Vitis HLS / Vivado): XILINX_VIVADO is not set. "
            "Use the python emulation (finn_flow.build.build(emulation_inputs=...)) instead."
        )
    models = Path(out_dir) / "intermediate_models"
    hw_path, parent_path = models / HW_MODEL, models / "dataflow_parent.onnx"
    for path in (hw_path, parent_path):
        if not path.is_file():
            raise FinnFlowError(
                f"{path} missing: build with save_intermediate_models=True (or emulation) first"
            )
    with finn_session(Path(out_dir) / "finn_work"):
        from finn.transformation.fpgadataflow.set_exec_mode import SetExecMode
        from finn.util.execution import execute_parent
        from qonnx.core.modelwrapper import ModelWrapper

        from finn_flow.emulation import _as_samples, _first_dynamic_input

        model = ModelWrapper(str(hw_path))
        if mode == "cppsim":
            from finn.transformation.fpgadataflow.compile_cppsim import CompileCppSim
            from finn.transformation.fpgadataflow.prepare_cppsim import PrepareCppSim

            model = model.transform(PrepareCppSim())
            model = model.transform(CompileCppSim())
        else:
            from finn.transformation.fpgadataflow.hlssynth_ip import HLSSynthIP
            from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
            from finn.transformation.fpgadataflow.prepare_rtlsim import PrepareRTLSim

            model = model.transform(PrepareIP(fpga_part, clock_ns))
            model = model.transform(HLSSynthIP(fpga_part))
            model = model.transform(PrepareRTLSim())
        model = model.transform(SetExecMode(mode))
        parent = ModelWrapper(str(parent_path))
        ishape = parent.get_tensor_shape(_first_dynamic_input(parent))
        with tempfile.TemporaryDirectory(prefix=f"finn_flow_{mode}_") as tmp:
            child = Path(tmp) / f"dataflow_{mode}.onnx"
            model.save(str(child))
            outs = [
                execute_parent(str(parent_path), str(child), x) for x in _as_samples(inputs, ishape)
            ]
    return np.stack(outs)
