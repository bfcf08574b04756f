"""Fixes to finn-plus 1.6.1's HLS code generation, found by C++ simulation (finn_flow.cppsim).

Both make the generated C++ (and so the FPGA) compute what FINN's Python execution and the
QONNX model compute; neither changes a model or an estimate. They patch finn-plus's classes in
this process (:func:`apply`, idempotent, called by :func:`finn_flow.no_vivado.finn_session`,
with or without Xilinx tools) and act only on the exact code they replace, so a finn-plus that
fixed them upstream is left alone.

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
"""

from __future__ import annotations

__all__ = ["apply"]

_LESS = "comp::less<"
_LESS_EQUAL = "comp::less_equal<"
_LAYERNORM_CALL = "layernorm<N>(in0_V, out0_V);"


def _attention_generate_params(original):
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


def apply() -> None:
    """Patch finn-plus's attention and layer-norm HLS code generation (once per process)."""
    from finn.custom_op.fpgadataflow.hls.attention_hls import ScaledDotProductAttention_hls
    from finn.custom_op.fpgadataflow.hls.layernorm_hls import LayerNorm_hls

    for cls, name, fix in (
        (ScaledDotProductAttention_hls, "generate_params", _attention_generate_params),
        (LayerNorm_hls, "docompute", _layernorm_docompute),
    ):
        method = getattr(cls, name)
        if not getattr(method, "_finn_flow_fix", False):
            setattr(cls, name, fix(method))
