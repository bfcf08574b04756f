"""Analytical resource estimate for finn-plus's scaled dot-product attention operator.

finn-plus 1.6.1's ``ScaledDotProductAttention_hls`` reports cycles but 0 LUT/BRAM/DSP. This
module estimates them from the node's attributes, reusing FINN's own (FINN-R) cost models
for the parts that resemble existing FINN operators. All numbers are rough (+-50 %) and meant
for budgeting, not sign-off; a Vitis HLS synthesis report supersedes them.

Notation (node attributes): ``d_qk = QKDim``, ``d_v = VDim``, ``T_q = QLen``,
``T = KVLen``, folds ``e = EmbFold``, ``s = SeqFold``; parallel embedding lanes
``p_e = d_qk / e`` (and ``d_v / e``), parallel sequence lanes ``p_s = T / s``. Bit widths:
``b_q, b_k, b_v`` (inputs), ``b_a`` (quantised softmax output), ``b_o`` (output),
accumulators ``acc_qk = ceil(log2 d_qk) + b_q + b_k`` and ``acc_av = ceil(log2 T) + b_a + b_v``.

* Two matrix units, each costed like an HLS MVAU with LUT multipliers (FINN-R, as in
  ``MVAU_hls.lut_estimation``)::

      LUT_mm(PE, SIMD, W, A, acc) = 300 + 1.1 * PE * (SIMD * (2*ceil((W+A)/6) - 1) * (W+A)
                                                     + (W+A) * (2*SIMD - 1) + acc)

  QK^T: ``PE = p_s, SIMD = p_e, W = b_k, A = b_q``; AV: ``PE = p_e, SIMD = p_s,
  W = b_v, A = b_a``. With ``mac_resource = "dsp"`` the multipliers move to
  ``PE*SIMD*ceil((W+A)/48)`` DSPs instead (FINN's MVAU DSP model).
* Thresholded activations (QK, softmax output, AV output), per lane and threshold:
  ``(2**b_out - 1) * acc_in`` LUTs for comparators (FINN's MVAU threshold model); lanes are
  ``p_s`` for the QK and softmax activations and ``p_e`` for the output.
* Softmax: ``p_s`` lanes of single-precision exp + add (the HLS operator works in float,
  ``AccASoftmax = FLOAT32``) plus one divider: ``p_s * (800 LUT + 9 DSP) + 800 LUT``
  (order of magnitude of AMD's Floating-Point Operator core: exp ~ 7 DSP, add ~ 2 DSP).
* Buffers for the transposed keys and the values (``T * d * b`` bits each), costed like
  MVAU weight memories with FINN's RAMB18 model (``MVAU.bram_estimation``): width
  ``p_e * p_s * b``, depth ``e * s``. Buffers of at most 1024 bits, or with
  ``ram_style = "distributed"``, go to LUTRAM (``bits / 64`` LUTs) instead.
"""

from __future__ import annotations

import math

from qonnx.core.datatype import DataType


def _bits(name: str, default: int = 8) -> int:
    try:
        return DataType[name].bitwidth()
    except Exception:
        return default


def _ramb18(width: int, depth: int) -> int:
    """FINN's RAMB18 count for a memory of ``depth`` words of ``width`` bits."""
    if width == 1:
        return math.ceil(depth / 16384)
    if width == 2:
        return math.ceil(depth / 8192)
    if width <= 4:
        return math.ceil(depth / 4096) * math.ceil(width / 4)
    if width <= 9:
        return math.ceil(depth / 2048) * math.ceil(width / 9)
    if width <= 18 or depth > 512:
        return math.ceil(depth / 1024) * math.ceil(width / 18)
    return math.ceil(depth / 512) * math.ceil(width / 36)


def _lut_matmul(pe: int, simd: int, w: int, a: int, acc: int, lut_mults: bool) -> float:
    mult = simd * (2 * math.ceil((w + a) / 6) - 1) * (w + a) if lut_mults else 0
    return 300 + 1.1 * pe * (mult + (w + a) * (2 * simd - 1) + acc)


def estimate_attention(attrs: dict) -> dict[str, float | int | str]:
    """Estimate LUT, BRAM_18K, URAM and DSP for one attention node from its attributes."""
    d_qk, t_q, d_v, t = (int(attrs[k]) for k in ("QKDim", "QLen", "VDim", "KVLen"))
    e = max(1, int(attrs.get("EmbFold") or math.gcd(d_qk, d_v)))
    s = max(1, int(attrs.get("SeqFold") or t))
    p_e_qk, p_e_v, p_s = max(1, d_qk // e), max(1, d_v // e), max(1, t // s)
    b_q, b_k, b_v = (_bits(attrs.get(k, "INT8")) for k in ("QType", "KType", "VType"))
    b_a = _bits(attrs.get("AType", "UINT8"))
    b_o = _bits(attrs.get("OType", "INT8"))
    b_s = _bits(attrs.get("OutQKMatMul", "INT8"))
    acc_qk = math.ceil(math.log2(max(d_qk, 2))) + b_q + b_k
    acc_av = math.ceil(math.log2(max(t, 2))) + b_a + b_v
    dsp_macs = str(attrs.get("mac_resource", "auto")) == "dsp"

    lut = _lut_matmul(p_s, p_e_qk, b_k, b_q, acc_qk, not dsp_macs)
    lut += _lut_matmul(p_e_v, p_s, b_v, b_a, acc_av, not dsp_macs)
    dsp = 0
    if dsp_macs:
        dsp += p_s * p_e_qk * math.ceil((b_k + b_q) / 48) + p_e_v * p_s * math.ceil(
            (b_v + b_a) / 48
        )
    # thresholded activations
    if attrs.get("ActQKMatMul", "none") == "thresholds":
        lut += p_s * (2**b_s - 1) * acc_qk
    if attrs.get("ActASoftmax", "none") == "thresholds":
        lut += p_s * (2**b_a - 1) * 32
    if attrs.get("ActAVMatMul", "none") == "thresholds":
        lut += p_e_v * (2**b_o - 1) * acc_av
    # softmax (float exp/add per sequence lane, one divider)
    lut += p_s * 800 + 800
    dsp += p_s * 9
    # key / value buffers
    bram = 0
    ram_style = str(attrs.get("ram_style", "auto"))
    for bits_el, d in ((b_k, d_qk), (b_v, d_v)):
        total = t * d * bits_el
        width, depth = max(1, d // e) * p_s * bits_el, e * s
        if ram_style == "distributed" or total <= 1024:
            lut += math.ceil(total / 64)
        else:
            bram += _ramb18(width, depth)
    return {
        "LUT": round(lut),
        "BRAM_18K": int(bram),
        "URAM": 0,
        "DSP": int(dsp),
        "parallelism": f"emb lanes {p_e_qk}, seq lanes {p_s} (EmbFold={e}, SeqFold={s})",
        "method": "analytical (finn_flow.attention_estimate), FINN-R style, +-50 %",
    }


def attention_nodes_estimate(model) -> dict[str, dict]:
    """Analytical estimates for all attention nodes of a (dataflow) ModelWrapper."""
    from qonnx.custom_op.registry import getCustomOp

    out = {}
    for node in model.graph.node:
        if node.op_type.startswith("ScaledDotProductAttention"):
            inst = getCustomOp(node)
            attrs = {a.name: inst.get_nodeattr(a.name) for a in node.attribute}
            out[node.name] = estimate_attention(attrs)
    return out
