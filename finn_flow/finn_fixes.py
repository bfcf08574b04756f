"""Fixes to finn-plus 1.6.1's code generation, found by C++ (finn_flow.cppsim) and Verilator
(finn_flow.verilator) simulation.

Each makes the generated C++/RTL (and so the FPGA) compute what FINN's Python execution and
the QONNX model compute; none changes a model or an estimate. They patch finn-plus's classes in
this process (:func:`apply`, idempotent, called by :func:`finn_flow.no_vivado.finn_session`,
with or without Xilinx tools) and act only on the exact code they replace, so a finn-plus that
fixed them upstream is left alone. The unpatched method stays reachable as ``__wrapped__``.

* **Attention thresholds compare strictly.** ``ScaledDotProductAttention_hls.generate_params``
  instantiates finn-hlslib's ``ThresholdsActivation`` with ``comp::less`` (``T < acc``), while
  FINN's Python execution, ``Thresholding_hls`` and ``MVAU_hls`` (``comp::less_equal``) count
  ``acc >= T``. An integer accumulator equal to a threshold lost one level in C++: 283 of 3,072
  attention outputs on 8 quickstart windows. Fix: ``comp::less_equal`` in ``params.hpp``.
* **LayerNorm ignores its epsilon.** ``LayerNorm_hls.docompute`` emits
  ``layernorm<N>(in0_V, out0_V)``, so finn-hlslib's default ``eps = 1e-5`` is used whatever the
  node's ``epsilon`` (here ``eps / s**2`` after :class:`finn_flow.hw_rewrites.
  AbsorbScalarMulIntoLayerNorm`). The kernel computes ``(N x - S) * rsqrt(sum((N x - S)**2) / N
  + eps')``, i.e. a layer norm with ``eps'/N**2``; the fix passes ``eps' = N**2 * epsilon``.
* **RTL thresholds read from the wrong memory.** ``Thresholding_rtl.make_weight_file`` writes
  the binary-search threshold memories for ``outputDataType.bitwidth()`` stages, while the RTL
  (``N = numSteps``) reads ``clog2(numSteps + 1)``. They differ when a negative ``ActVal``
  needs one more output bit (255 thresholds, ``ActVal = -159``, INT9: 9 stages written, 8
  read), and the hardware then compares with the wrong thresholds: 3 of the quickstart's 18
  RTL thresholding nodes, up to 96 levels off in Verilator, hidden by Python and cppsim. The
  fix writes the memories for ``clog2(numSteps + 1)`` stages.
"""

from __future__ import annotations

import functools

__all__ = ["apply"]

_LESS = "comp::less<"
_LESS_EQUAL = "comp::less_equal<"
_LAYERNORM_CALL = "layernorm<N>(in0_V, out0_V);"


def _attention_generate_params(original):
    @functools.wraps(original)
    def generate_params(self, model, path):
        original(self, model, path)
        from pathlib import Path

        params = Path(path) / "params.hpp"
        if params.is_file():
            text = params.read_text()
            if _LESS in text:
                params.write_text(text.replace(_LESS, _LESS_EQUAL))

    generate_params._finn_flow_fix = True
    return generate_params


def _layernorm_docompute(original):
    @functools.wraps(original)
    def docompute(self):
        original(self)
        lines = self.code_gen_dict.get("$DOCOMPUTE$", [])
        if lines == [_LAYERNORM_CALL]:
            import numpy as np

            n = int(self.get_nodeattr("ifm_dim")[-1])
            eps = float(np.float32(n * n) * np.float32(self.get_nodeattr("epsilon")))
            self.code_gen_dict["$DOCOMPUTE$"] = [f"layernorm<N>(in0_V, out0_V, TO({eps.hex()}));"]

    docompute._finn_flow_fix = True
    return docompute


def _thresholding_make_weight_file(original):
    @functools.wraps(original)
    def make_weight_file(self, weights, weight_file_mode, weight_file_name):
        from qonnx.core.datatype import DataType

        stages = max(1, int(self.get_nodeattr("numSteps")).bit_length())  # clog2(N + 1)
        odt = self.get_nodeattr("outputDataType")
        if DataType[odt].bitwidth() == stages:
            return original(self, weights, weight_file_mode, weight_file_name)
        # make_weight_file reads the output type only for its stage count
        self.set_nodeattr("outputDataType", f"UINT{stages}")
        try:
            return original(self, weights, weight_file_mode, weight_file_name)
        finally:
            self.set_nodeattr("outputDataType", odt)

    make_weight_file._finn_flow_fix = True
    return make_weight_file


def apply() -> None:
    """Patch finn-plus's attention and layer-norm HLS code generation (once per process)."""
    from finn.custom_op.fpgadataflow.hls.attention_hls import ScaledDotProductAttention_hls
    from finn.custom_op.fpgadataflow.hls.layernorm_hls import LayerNorm_hls
    from finn.custom_op.fpgadataflow.rtl.thresholding_rtl import Thresholding_rtl

    for cls, name, fix in (
        (ScaledDotProductAttention_hls, "generate_params", _attention_generate_params),
        (LayerNorm_hls, "docompute", _layernorm_docompute),
        (Thresholding_rtl, "make_weight_file", _thresholding_make_weight_file),
    ):
        method = getattr(cls, name)
        if not getattr(method, "_finn_flow_fix", False):
            setattr(cls, name, fix(method))
