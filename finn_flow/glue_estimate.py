"""Resource models for the finn-plus 1.6.1 nodes FINN estimates as 0: adds, forks, LayerNorm.

FINN's ``res_estimation`` reports 0 LUT and 0 DSP for ``ElementwiseAdd_hls``/``ElementwiseSub_hls``
(only parameter memory is modelled, and for a constant operand even that is 0 because its stream
width is 0), ``ReplicateStream_hls``, ``LayerNorm_hls`` and ``Reshape_rtl``. This module estimates
them from the node attributes, in the style of :mod:`finn_flow.attention_estimate`: a form, its
coefficients and a calibration statement, and a ``method`` string in every estimate.

**Element-wise add/sub and stream forks** (fitted). The published post-synthesis reports of
FINN-T designs (``benchmarks/data/finn_t_post_synthesis.csv``, resource sweep of
github.com/iksnagreb/attention-dummy; xczu28dr, Vivado out-of-context, 100 MHz) give the sum over
all nodes of one type per design, for 4 designs (tokens T, embedding E, bits b: 32/8/4, 32/32/4,
32/8/8, 64/8/4). Per design (its ``model.py``: binary positional encoding, one transformer
block, norm none): 3 ``ElementwiseAdd_hls`` (the positional-encoding add with a constant
operand and the two residual adds; b-bit inputs, b+1-bit output) and 3 ``ReplicateStream_hls``
(2 outputs of the b+1-bit block input, 3 outputs of the b-bit query/key/value input, 2 outputs
of the b+1-bit MLP input). PE is 1 throughout (the per-node PE is not recorded; the builds
folded to T^2 cycles, which one lane meets for E <= T). With ``n = ceil(log2(iterations))`` the
loop counter width (iterations = elements / PE)::

    add/sub:  LUT = 17.58 + 2.50 n + 1.472 PE b_out    [+ ROM of a constant operand]
    fork:     LUT = 21.33 + 2.00 n + 0.667 PE b num    (num = outputs)

least squares on the design sums; with each node rounded to whole LUTs as estimated, LUT
1.5 % mean / 3.4 % max (adds, 8 rows incl. ram_style) and 1.1 % / 2.1 % (forks, 4 rows) in
sample; leaving out the 64-token or the 32-dim design predicts it within 6.1 % / 5.6 %.
Three coefficients on four design points, and the width term rests on the single 8-bit
design; PE > 1 is extrapolated through the width term. DSP 0. A constant operand is a ROM
per lane (``ARRAY_PARTITION`` on PE): ``ram_style`` block/auto (auto is block, as in FINN)
costs FINN's BRAM_18K geometry, which matches the published block rows (1 BRAM_18K);
distributed costs b ceil(depth / 64) LUT per lane (LUT6 as 64x1 ROM), which the published
rows cannot check: their constant is a binary code of the address and synthesises to logic.

**LayerNorm_hls** (analytical, not validated). No synthesis of a LayerNorm exists in the data.
finn-hlslib's ``layernorm<N, TI, float, SIMD>`` is a dataflow of five processes, each pipelined
at II=1 with the SIMD lanes unrolled, except the per-row coefficient (II = N/SIMD), so nothing
is shared between lanes. For an integer input (``TI = ap_int<b>``, d = b - 1 digits,
l = ceil(log2 N)) it instantiates: integer adders, a multiplier per lane for x^2 (width
w_n = 1 + l + d, on DSP48E1s), per row ``uitofp + fmul + fadd + rsqrt`` (1/N sum + eps, then
1/sqrt) and per lane ``sitofp + fmul``; a float input makes the statistics float too (per lane
fmul + fadd for N x - mean, fmul + fadd for the squares, fadd for each sum). The bypass FIFOs
(depth N/SIMD + 30 and + 90) are SRL when depth x width <= 1024 bits (Vitis HLS
``config_storage`` default), else BRAM_18K. Per-operator costs (:data:`FLOAT_OPS`) are
synthesised netlists of the Floating-Point Operator cores on 7-series (add, multiply, int-to-float)
and a Vivado HLS estimate for rsqrt; integer adders 1 LUT per bit; each of the 5 processes and
4 counters pays the fitted add's intercept and counter terms as control logic.

**Reshape_rtl** is a wire-through (finn-rtllib ``vpc.sv``, ``PI0 == PO0 == 1``) whenever its
input and output stream widths match, which they do for a reshape (same datatype and PE): 0.

Example::

    >>> from finn_flow.glue_estimate import estimate_node
    >>> est = estimate_node("ReplicateStream_hls",
    ...                     dict(PE=1, dtype="INT9", num=2, num_elems=16, num_inputs=[1, 24]))
    >>> est["LUT"], est["DSP"], est["method"].split(",")[0]
    (51, 0, 'analytical (finn_flow.glue_estimate)')
"""

from __future__ import annotations

import functools
import math

from finn_flow.errors import FinnFlowError
from finn_flow.graph import datatype_named

#: Least-squares fit to the 8 published ElementwiseAdd_hls design sums (see the docstring).
ADD_FIT = {"one": 17.583, "count_bit": 2.5, "out_bit": 1.4722}
#: Least-squares fit to the 4 published ReplicateStream design sums.
REPLICATE_FIT = {"one": 21.333, "count_bit": 2.0, "out_bit": 0.66667}
#: Nodes per published design, for the calibration (attention-dummy model.py, one block).
NODES_PER_DESIGN = {"ElementwiseAdd_hls": 3, "ReplicateStream": 3}

ADD_CALIBRATION = (
    "fitted to 8 FINN-T post-synthesis ElementwiseAdd_hls rows (4 designs x ram_style, 3 adds "
    "per design, PE 1; xczu28dr, 100 MHz): LUT 1.5 % mean, 3.4 % max in sample, within 6.1 % "
    "leaving out the 64-token or 32-dim design; the bit-width term rests on one 8-bit design, "
    "PE > 1 is extrapolated; ROM of a constant operand by FINN's memory formulas (BRAM matches "
    "the published rows, distributed ROM is not checked by them)"
)
REPLICATE_CALIBRATION = (
    "fitted to 4 FINN-T post-synthesis ReplicateStream rows (4 designs, 3 forks per design, "
    "PE 1; xczu28dr, 100 MHz): LUT 1.1 % mean, 2.1 % max in sample, within 5.6 % leaving out "
    "the 64-token or 32-dim design; the bit-width term rests on one 8-bit design, PE > 1 is "
    "extrapolated"
)
LAYERNORM_CALIBRATION = (
    "from Floating-Point Operator per-operator costs (synthesised 7-series netlists "
    "of the add, multiply and int-to-float cores; Vivado HLS estimate for rsqrt) times the "
    "operators finn-hlslib's layernorm instantiates per SIMD lane and per row, not validated "
    "against any synthesis of LayerNorm"
)
RESHAPE_CALIBRATION = (
    "Reshape_rtl is a wire-through when input and output widths match (finn-rtllib "
    "vpc.sv, PI0 = PO0 = 1), 0 by construction, not synthesised"
)

#: Single-precision operators as Vitis HLS instantiates them (Floating-Point Operator cores):
#: LUT, DSP48E1 and where the figure comes from. Synthesised figures are primitive counts of
#: the cores' post-synthesis functional netlists (Vivado 2013.4, floating_point v7.0).
FLOAT_OPS = {
    "fadd": (270, 2, "faddfsub_3_full_dsp core, synthesised on xc7z020clg484-1 "
             "(github.com/Gordonei/ForwardFinancialFramework, HLS IP funcsim netlist)"),
    "fmul": (121, 3, "fmul_2_max_dsp core, synthesised on xc7z020clg484-1 (same source)"),
    "itofp": (289, 0, "int32-to-float core (latency 9, with AXI user/last side channels), "
              "synthesised on xc7k70t (github.com/gbrangeon-telops/irc_fir-00251-output)"),
    "rsqrt": (416, 9, "frsqrt_32ns_32ns_32_11_full_dsp, Vivado HLS 2016.2 estimate on "
              "xc7z020clg484-1 (github.com/ChenxiQ/ECE5775_Final_Project); an HLS estimate, "
              "which for fadd/fmul is 390/321 LUT against 270/121 synthesised"),
}  # fmt: skip

#: Vitis HLS ``config_storage fifo -auto_srl_max_bits`` default: larger FIFOs go to BRAM.
SRL_MAX_BITS = 1024
_CONTROL_PROCESSES = 5  # layernorm's dataflow processes
_COUNTERS = 4  # ModCounter<N/SIMD> in the two sum_statistics and two normalize processes


def _bits(name, op: str) -> int:
    return datatype_named(name, op).bitwidth()


def _clog2(x: float) -> int:
    return max(1, math.ceil(math.log2(max(2, x))))


def _bram18(width: int, depth: int) -> int:
    """BRAM_18K for one memory of this geometry (FINN's own aspect-ratio table)."""
    from finn.custom_op.fpgadataflow.elementwise_binary import ElementwiseBinaryOperation

    return int(ElementwiseBinaryOperation._bram18_estimation(int(width), int(depth)))


def _estimate(lut, bram, dsp, model, parallelism, calibration) -> dict:
    return {
        "LUT": round(lut),
        "BRAM_18K": int(bram),
        "URAM": 0,
        "DSP": int(dsp),
        "model": model,
        "parallelism": parallelism,
        "method": f"analytical (finn_flow.glue_estimate), {calibration}",
    }


def estimate_elementwise_add(attrs: dict, op: str = "ElementwiseAdd_hls") -> dict:
    """LUT/BRAM_18K/URAM/DSP of one ``ElementwiseAdd_hls`` (or ``_Sub_``) node.

    ``LUT_logic`` is the fitted adder part, ``LUT`` adds a distributed ROM for a constant
    operand. Attributes as on the node (``lhs_dtype``, ``rhs_dtype``, ``out_dtype``, the three
    shapes, ``lhs_style``/``rhs_style``, ``PE``, ``ram_style``)."""
    pe = max(1, int(attrs.get("PE", 1)))
    out_shape = [int(s) for s in attrs.get("out_shape") or [1]]
    b_out = _bits(attrs.get("out_dtype"), op)
    iterations = math.prod(out_shape) / pe
    f = ADD_FIT
    logic = f["one"] + f["count_bit"] * _clog2(iterations) + f["out_bit"] * pe * b_out
    ram_style = str(attrs.get("ram_style", "auto"))
    rom_lut = bram = 0
    for side in ("lhs", "rhs"):
        if str(attrs.get(f"{side}_style", "input")) != "const":
            continue
        depth = max(1, math.ceil(math.prod(int(s) for s in attrs[f"{side}_shape"]) / pe))
        width = _bits(attrs.get(f"{side}_dtype"), op)
        if ram_style == "distributed":
            rom_lut += pe * width * math.ceil(depth / 64)
        elif ram_style != "ultra":  # auto counts as block, as in FINN's bram_estimation
            bram += pe * _bram18(width, depth)
    est = _estimate(logic + rom_lut, bram, 0, "element-wise add (fitted, FINN-T synthesis)",
                    f"PE {pe}", ADD_CALIBRATION)  # fmt: skip
    est["LUT_logic"] = round(logic)
    return est


def estimate_replicate_stream(attrs: dict) -> dict:
    """LUT/BRAM_18K/URAM/DSP of one ``ReplicateStream_hls`` node (``PE``, ``dtype``, ``num``,
    ``num_elems``, ``num_inputs``)."""
    pe = max(1, int(attrs.get("PE", 1)))
    num = int(attrs.get("num", 2))
    b = _bits(attrs.get("dtype"), "ReplicateStream_hls")
    elements = math.prod(int(s) for s in attrs.get("num_inputs") or [1]) * int(
        attrs.get("num_elems", 1)
    )
    f = REPLICATE_FIT
    lut = f["one"] + f["count_bit"] * _clog2(elements / pe) + f["out_bit"] * pe * b * num
    return _estimate(lut, 0, 0, "stream fork (fitted, FINN-T synthesis)",
                     f"PE {pe}, {num} outputs", REPLICATE_CALIBRATION)  # fmt: skip


def _fifo(width: int, depth: int) -> tuple[int, int]:
    """(LUT, BRAM_18K) of one HLS stream FIFO (SRL up to :data:`SRL_MAX_BITS`, else BRAM)."""
    if width * depth <= SRL_MAX_BITS:
        return width * math.ceil(depth / 32), 0  # SRLC32E per bit
    return 0, _bram18(width, depth)


def layernorm_operators(attrs: dict) -> dict[str, int]:
    """Floating-point operators finn-hlslib's ``layernorm`` instantiates for this node."""
    simd = max(1, int(attrs.get("SIMD", 1)))
    if datatype_named(attrs.get("inputDataType"), "LayerNorm_hls").is_integer():
        # per row: uitofp(sum of squares), fmul 1/N, fadd eps, rsqrt; per lane: sitofp, fmul
        return {"itofp": 1 + simd, "fmul": 1 + simd, "fadd": 1, "rsqrt": 1}
    # float input, per lane: sum, N x - mean (fmul, fadd), x^2 and its sum, m x; per row: the
    # two accumulators are in the sums, fmul 1/N, fadd eps, rsqrt
    return {"fadd": 3 * simd + 1, "fmul": 3 * simd + 1, "rsqrt": 1}


def estimate_layernorm(attrs: dict) -> dict:
    """LUT/BRAM_18K/URAM/DSP of one ``LayerNorm_hls`` node (``SIMD``, ``ifm_dim``,
    ``inputDataType``; the output is float)."""
    simd = max(1, int(attrs.get("SIMD", 1)))
    n = int((attrs.get("ifm_dim") or [1])[-1])
    if n % simd:
        raise FinnFlowError(
            f"LayerNorm estimate: SIMD={simd} does not divide the normalised dimension {n}; "
            "choose a SIMD that divides it."
        )
    dt = datatype_named(attrs.get("inputDataType"), "LayerNorm_hls")
    b_in = dt.bitwidth()
    nn = n // simd
    lut = dsp = bram = 0
    for op, count in layernorm_operators(attrs).items():
        lut += count * FLOAT_OPS[op][0]
        dsp += count * FLOAT_OPS[op][1]
    if dt.is_integer():
        lg, d = _clog2(n), b_in - (1 if dt.signed() else 0)
        w_s, w_n = lg + d, 1 + lg + d
        w_q = lg + 2 * (lg + d) + 1
        const_mult = max(0, bin(n).count("1") - 1)  # shift-and-add adders for N x
        # sum tree + accumulator, N x - mean, sum-of-squares tree + accumulator (1 LUT/bit)
        lut += simd * (w_s + w_n * (1 + const_mult) + w_q)
        dsp += simd * math.ceil(w_n / 25) * math.ceil(w_n / 18)  # x^2 on DSP48E1 (25 x 18)
        bypass = ((simd * b_in, nn + 30), (simd * w_n, nn + 90))
    else:
        bypass = ((simd * 32, nn + 30), (simd * 32, nn + 90))
    for width, depth in bypass:
        f_lut, f_bram = _fifo(width, depth)
        lut += f_lut
        bram += f_bram
    lut += _CONTROL_PROCESSES * ADD_FIT["one"] + _COUNTERS * ADD_FIT["count_bit"] * _clog2(nn)
    return _estimate(lut, bram, dsp, "LayerNorm (analytical, operator costs, unvalidated)",
                     f"SIMD {simd}", LAYERNORM_CALIBRATION)  # fmt: skip


def estimate_reshape(attrs: dict, in_width: int, out_width: int) -> dict | None:
    """0 for a wire-through ``Reshape_rtl`` (equal stream widths); None (no model) otherwise."""
    if in_width != out_width:
        return None
    return _estimate(0, 0, 0, "reshape (wire-through)", f"PE {attrs.get('PE', 1)}",
                     RESHAPE_CALIBRATION)  # fmt: skip


#: op_type -> estimator taking the node attributes.
MODELS = {
    "ElementwiseAdd_hls": estimate_elementwise_add,
    "ElementwiseSub_hls": functools.partial(estimate_elementwise_add, op="ElementwiseSub_hls"),
    "ReplicateStream_hls": estimate_replicate_stream,
    "LayerNorm_hls": estimate_layernorm,
}


def estimate_node(op_type: str, attrs: dict) -> dict | None:
    """The analytical estimate for one node given its op_type and attributes; None when this
    module has no model for the op_type (``Reshape_rtl`` needs the graph: see
    :func:`glue_nodes_estimate`)."""
    model = MODELS.get(op_type)
    return model(attrs) if model else None


def glue_nodes_estimate(model) -> dict[str, dict]:
    """Analytical estimates for all nodes of a (dataflow) ModelWrapper this module models."""
    from qonnx.custom_op.registry import getCustomOp

    out = {}
    for node in model.graph.node:
        if node.op_type not in MODELS and node.op_type != "Reshape_rtl":
            continue
        inst = getCustomOp(node)
        attrs = {}
        for name in inst.get_nodeattr_types():
            try:
                attrs[name] = inst.get_nodeattr(name)
            except Exception:  # a required attribute the node does not carry
                continue
        if node.op_type == "Reshape_rtl":
            est = estimate_reshape(attrs, inst.get_instream_width(), inst.get_outstream_width())
        else:
            est = estimate_node(node.op_type, attrs)
        if est is not None:
            out[node.name] = est
    return out
