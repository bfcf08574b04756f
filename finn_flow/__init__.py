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
  (no Xilinx tools), compared node by node with FINN's Python execution; the toolchain and
  header shim in :mod:`finn_flow.hls_toolchain`, cached parallel compiles in
  :mod:`finn_flow.cppsim_compile`, the build cache in :mod:`finn_flow.kernel_cache`.
* :mod:`finn_flow.verilator` - RTL simulation of single ``*_rtl`` nodes with Verilator.
* :mod:`finn_flow.hw_rewrites` - exact graph rewrites for mean pooling, affine-free layer
  norms (scale/offset absorbed), integer constants and the output squeeze.
* :mod:`finn_flow.no_vivado` - :func:`finn_session`, the workarounds to drive finn-plus
  from Python without Vivado.
* :mod:`finn_flow.steps` - the step lists; the steps by concept in
  :mod:`finn_flow.streamlining`, :mod:`finn_flow.hw_conversion`, :mod:`finn_flow.folding`
  and :mod:`finn_flow.reports`.
* :mod:`finn_flow.graph` - node attributes, FINN datatypes, hardware nodes, saved HW graphs.
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
