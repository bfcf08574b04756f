"""FINN (finn-plus) flow for Brevitas-exported QONNX models: zero points, build, emulation.

Public API:

* :func:`finn_flow.build.build` - build a QONNX model for a board, write FINN's reports and
  ``summary.json``, return the summary (estimate-only flow without Xilinx tools, full flow
  with ``XILINX_VIVADO``); :func:`finn_flow.build.flow_steps` - the step names.
* :mod:`finn_flow.transforms` - exact zero-point lowering (qonnx Transformations).
* :mod:`finn_flow.boards` - board presets and capacities (:func:`resolve_target`).
* :mod:`finn_flow.emulation` - QONNX reference vs FINN python emulation.
* :mod:`finn_flow.simulate` - cppsim / node-by-node rtlsim of a built graph (Xilinx tools).
* :mod:`finn_flow.cppsim` - cppsim of every ``*_hls`` node with g++ and open-source headers
  (no Xilinx tools), cached and parallel, compared node by node with FINN's Python execution.
* :mod:`finn_flow.hw_rewrites` - exact graph rewrites for mean pooling, affine-free layer
  norms (scale/offset absorbed), integer constants and the output squeeze.
* :mod:`finn_flow.no_vivado` - :func:`finn_session`, the workarounds to drive finn-plus
  from Python without Vivado.
* :mod:`finn_flow.steps` - the build steps and step lists.
* :class:`FinnFlowError` (a ``ValueError``), :class:`EmulationMismatchError`,
  :class:`FinnFlowWarning`.

Importing this package does not import FINN.
"""

from finn_flow.boards import BOARDS, Board, resolve_target
from finn_flow.build import build, flow_steps, load_qonnx_model
from finn_flow.errors import EmulationMismatchError, FinnFlowError, FinnFlowWarning

__all__ = [
    "BOARDS",
    "Board",
    "EmulationMismatchError",
    "FinnFlowError",
    "FinnFlowWarning",
    "build",
    "flow_steps",
    "load_qonnx_model",
    "resolve_target",
]
