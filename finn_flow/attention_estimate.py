"""Resource model for finn-plus's scaled dot-product attention, fitted to synthesis results.

finn-plus 1.6.1's ``ScaledDotProductAttention_hls`` reports cycles but 0 LUT/BRAM/DSP. This
module estimates them from the node's attributes with a model whose form comes from FINN's own
(FINN-R) cost models and whose coefficients are fitted to published post-synthesis results of
FINN-T designs (``benchmarks/data/finn_t_post_synthesis.csv``, extracted from the DVC history
of github.com/iksnagreb/attention-dummy; see ``benchmarks/data/README.md``).

Notation (node attributes): ``T = KVLen``, folds ``e = EmbFold``, ``s = SeqFold``; parallel
embedding lanes ``p_e = QKDim / e`` (and ``VDim / e``), parallel sequence lanes ``p_s = T / s``;
bit widths ``b_q, b_k, b_v`` (inputs), ``b_a`` (softmax output), ``b_o`` (output), ``b`` their
maximum; accumulators ``acc_qk = ceil(log2 QKDim) + b_q + b_k``, ``acc_av = ceil(log2 T) + b_a
+ b_v``. Two terms from FINN-R:

* ``THR``: threshold comparators, ``p_s (2**b_a - 1) 32`` (softmax output) ``+ p_e (2**b_o - 1)
  acc_av`` (AV output) ``[+ p_s (2**b_s - 1) acc_qk`` (QK scores, when thresholded)];
* ``LUTMAC``: the LUT multipliers of the two matrix units as in ``MVAU_hls.lut_estimation``,
  ``1.1 PE SIMD (2 ceil((W+A)/6) - 1)(W+A)`` with QK: ``PE = p_s, SIMD = p_e``, AV:
  ``PE = p_e, SIMD = p_s`` (0 with ``mac_resource = "dsp"``).

Model (least squares on the 32 attention nodes of the ``resource-sweep-1`` experiments: 4 design
points, T 32/64, head dim 8/32, 4/8 bits, crossed with ``ram_style``, ``ram_style_thresholds``
and ``mac_resource``)::

    LUT  = 5026 + 8.22 T + 0.621 THR + 0.830 LUTMAC - 284 [ram_style = block]
           + 16.05 (2**b - 1) [ram_style_thresholds = block]
    DSP  = 15 p_s + 2 p_e p_s [mac_resource = dsp]
    BRAM_18K = 3 ceil(p_e b / 18) [ram_style = block] + 2 [ram_style_thresholds = block]

Error against the published results: LUT 1.4 % mean (4.3 % max) in sample, 1.6 % (4.8 %)
leaving one result out; DSP and BRAM_18K exact on the 32. On 56 pairs of whole designs that
differ only in the number of heads (never used for the fit) the change in LUTs is predicted with
a 12 % median error (the previous FINN-R-only estimate: 49 %, always low), DSP exactly; on the
radioml-transformer heads sweep BRAM is about 2x low. The previous estimate was 22-34 % low at
4 bits and 31-47 % high at 8 bits. Limits: every calibration point has one sequence lane
(``SeqFold = KVLen``) and ``EmbFold = 1``; other foldings (as the throughput search explores)
are extrapolated through the FINN-R terms, and so is an attention without output thresholds
(``ActAVMatMul = "none"``, this project's default since the thresholds became a standalone
layer, :mod:`finn_flow.attention_thresholds`): the AV comparator term is simply absent, while
every calibration point had it; ``ram_style``/``mac_resource`` ``auto`` count as
distributed/LUT; the results came from FINN-T's predecessor of finn-plus's operator (Vivado
out-of-context synthesis on an xczu28dr at 100 MHz, not place and route).
"""

from __future__ import annotations

import math

from finn_flow.graph import datatype_named


def _bits(name) -> int:
    """Bit width of a FINN datatype name; an unknown name is an error, not a guess."""
    return datatype_named(name, "ScaledDotProductAttention").bitwidth()


def _lut_matmul(pe: int, simd: int, w: int, a: int, acc: int, lut_mults: bool) -> float:
    mult = simd * (2 * math.ceil((w + a) / 6) - 1) * (w + a) if lut_mults else 0
    return 300 + 1.1 * pe * (mult + (w + a) * (2 * simd - 1) + acc)


#: Least-squares fit of the LUT model to the 32 published post-synthesis attention nodes
#: (benchmarks/data/finn_t_post_synthesis.csv, scope ScaledDotProductAttention_hls).
LUT_FIT = {
    "one": 5026.3,
    "T": 8.2173,
    "THR": 0.62082,
    "LUTMAC": 0.83032,
    "RS": -284.17,
    "RT": 16.054,
}
#: Error of the model against those results (see the module docstring).
CALIBRATION = (
    "fitted to 32 FINN-T post-synthesis attention nodes (xczu28dr, 100 MHz; 4 design points x "
    "ram_style x mac_resource): LUT leave-one-out error 1.6 % mean, 4.8 % max; DSP and BRAM_18K "
    "exact on them; 12 % median LUT error on 56 head-count pairs it never saw; calibrated for "
    "one sequence lane (SeqFold = KVLen) and AV output thresholds inside the attention only; more "
    "lanes and standalone output thresholds are extrapolated"
)


def estimate_attention(attrs: dict) -> dict[str, float | int | str]:
    """Estimate LUT, BRAM_18K, URAM and DSP for one attention node from its attributes."""
    d_qk, d_v, t = (int(attrs[k]) for k in ("QKDim", "VDim", "KVLen"))
    e = max(1, int(attrs.get("EmbFold") or math.gcd(d_qk, d_v)))
    s = max(1, int(attrs.get("SeqFold") or t))
    p_e_qk, p_e_v, p_s = max(1, d_qk // e), max(1, d_v // e), max(1, t // s)
    b_q, b_k, b_v = (_bits(attrs.get(k, "INT8")) for k in ("QType", "KType", "VType"))
    b_a = _bits(attrs.get("AType", "UINT8"))
    b_o = _bits(attrs.get("OType", "INT8"))
    b_s = _bits(attrs.get("OutQKMatMul", "INT8"))
    bits = max(b_q, b_k, b_v, b_a)
    acc_qk = math.ceil(math.log2(max(d_qk, 2))) + b_q + b_k
    acc_av = math.ceil(math.log2(max(t, 2))) + b_a + b_v
    dsp_macs = str(attrs.get("mac_resource", "auto")) == "dsp"
    block = str(attrs.get("ram_style", "auto")) == "block"
    block_thresholds = str(attrs.get("ram_style_thresholds", "auto")) == "block"

    # thresholded activations (comparators)
    thr = 0.0
    if attrs.get("ActQKMatMul", "none") == "thresholds":
        thr += p_s * (2**b_s - 1) * acc_qk
    if attrs.get("ActASoftmax", "none") == "thresholds":
        thr += p_s * (2**b_a - 1) * 32
    if attrs.get("ActAVMatMul", "none") == "thresholds":
        thr += p_e_v * (2**b_o - 1) * acc_av
    # LUT multipliers of the two matrix units (FINN-R's MVAU model, multiplier part only)
    lutmac = 0.0
    if not dsp_macs:
        for pe, simd, w, a, acc in (
            (p_s, p_e_qk, b_k, b_q, acc_qk),
            (p_e_v, p_s, b_v, b_a, acc_av),
        ):
            lutmac += _lut_matmul(pe, simd, w, a, acc, True) - _lut_matmul(
                pe, simd, w, a, acc, False
            )
    f = LUT_FIT
    lut = (
        f["one"]
        + f["T"] * t
        + f["THR"] * thr
        + f["LUTMAC"] * lutmac
        + f["RS"] * block
        + f["RT"] * (2**bits - 1) * block_thresholds
    )
    # softmax: 15 DSP per sequence lane (float exp/add/div); DSP multipliers: 2 per MAC lane
    dsp = 15 * p_s + (2 * max(p_e_qk, p_e_v) * p_s if dsp_macs else 0)
    # key/value buffers in block RAM (3 x ceil(width / 18)), thresholds 2 BRAM_18K
    bram = (3 * math.ceil(max(p_e_qk, p_e_v) * bits / 18) if block else 0) + (
        2 if block_thresholds else 0
    )
    return {
        "LUT": round(lut),
        "BRAM_18K": int(bram),
        "URAM": 0,
        "DSP": int(dsp),
        "parallelism": f"emb lanes {p_e_qk}, seq lanes {p_s} (EmbFold={e}, SeqFold={s})",
        "method": f"analytical (finn_flow.attention_estimate), {CALIBRATION}",
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
