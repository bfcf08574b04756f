"""Attention output thresholds as a standalone thresholding layer.

finn-plus's ``InferScaledDotProductAttention`` absorbs the ``MultiThreshold`` that quantises
the attention output (``softmax(QK) V``) into ``ScaledDotProductAttention`` as
``ActAVMatMul = "thresholds"``. finn-hlslib then compares every output lane's accumulator
with all ``2**b - 1`` thresholds in parallel: ``EmbFold``-many lanes of 255 comparators of
about 17 bits at 8 output bits, which is most of the attention's LUTs (this project's
attention model, fitted to post-synthesis results: about 27k of 36k LUT at 8 embedding lanes
in the quickstart design, 2x that at 16 lanes). Everywhere else this project builds
standalone thresholds (``standalone_thresholds=True``), which finn-plus implements as
``Thresholding_rtl``: a pipelined binary search with its thresholds in memory, a few comparators
per lane.

:class:`StandaloneAttentionOutputThresholds` undoes the absorption on the HW graph: the
attention emits its ``softmax(QK) V`` accumulator (``ActAVMatMul = "none"``, output type the
smallest integer type holding the accumulator's worst-case range), followed by the same
``MultiThreshold`` (same thresholds, ``out_bias`` and ``out_dtype``), which the usual
``InferThresholdingLayer`` then maps. Identity: the attention's AV activation is exactly
``multithreshold(acc, T) + bias`` on the channel-last accumulator (finn-plus's own execution,
``ScaledDotProductAttention.execute_node``), which is what the ``MultiThreshold`` computes; the
accumulator type is wide enough for every input in the declared Q/K/V/A types, so nothing is
clipped.

:class:`WidenAttentionAccumulators` keeps it so through finn's bit-width minimisation, which
resizes both accumulators of the attention with finn-plus's own bound, narrower than the worst
case for the AV accumulator with cross-attention (``KVLen > QLen``) or a signed ``AType``
(:func:`av_accumulator_datatype`), and for the QK accumulator when the sequence is shorter than
the query/key dimension (``QLen < QKDim``: a window shorter than ``d_model``) or ``QType`` and
``KType`` are both signed (:func:`qk_accumulator_datatype`); it runs after every
``step_minimize_bit_width*`` of this project's flow
(:func:`finn_flow.hw_conversion.minimize_then_widen`).
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes

from finn_flow.errors import FinnFlowError
from finn_flow.transforms import smallest_int_datatype

__all__ = [
    "StandaloneAttentionOutputThresholds",
    "WidenAttentionAccumulators",
    "av_accumulator_datatype",
    "qk_accumulator_datatype",
]


def av_accumulator_datatype(a_type: DataType, v_type: DataType, kv_len: int) -> DataType:
    """Smallest integer type holding ``sum_t a_t v_t`` over ``kv_len`` terms, worst case.

    finn-plus computes this accumulator type as well, in
    ``ScaledDotProductAttention.minimize_accumulator_width``
    (``finn/custom_op/fpgadataflow/attention.py``, finn-plus 1.6.1), and for the attention this
    project builds, self-attention (``QLen == KVLen``) with an unsigned softmax output type
    ``AType``, both give the same type (INT17 in the quickstart design: UINT8 x INT4 over 24
    terms). Its result is not the worst case in general, so it is not used here:

    * it sums ``QLen`` terms instead of ``KVLen``: its bound is
      ``calculate_matvec_accumulator_range`` of a constant ``(QLen, KVLen)`` attention matrix,
      which sums along axis 0 (``QLen``), while ``softmax(QK) V`` sums over the ``KVLen`` keys
      (UINT8 x INT8, QLen 16, KVLen 64: INT20, where ``255 * -128 * 64`` needs INT22);
    * it takes the maximum from the ``AType.max()`` corner alone
      (``max(max(upper_range), max(upper_range))``), so for a signed ``AType`` it misses
      ``AType.min() * VType.min()`` (INT8 x INT4, one term: INT11, whose maximum 1023 is below
      ``-128 * -8 = 1024``; here INT12).

    finn's ``step_minimize_bit_width_initial`` later calls that method on the rewritten node
    (``MinimizeAccumulatorWidth``) and overwrites ``AccAVMatMul``/``OutAVMatMul`` with its
    type (:class:`WidenAttentionAccumulators` widens it back where it is too narrow);
    ``tests/finn_flow/test_attention_thresholds.py`` pins where the two agree and where they do
    not.
    """
    return smallest_int_datatype(*_sum_of_products_range(a_type, v_type, kv_len))


def qk_accumulator_datatype(q_type: DataType, k_type: DataType, qk_dim: int) -> DataType:
    """Smallest integer type holding ``sum_d q_d k_d`` over ``qk_dim`` terms, worst case.

    Each attention score is the dot product of a query and a key over the ``QKDim`` embedding
    lanes. finn-plus's ``minimize_accumulator_width`` sizes ``AccQKMatMul`` as it sizes the AV
    accumulator (:func:`av_accumulator_datatype`), with the same two flaws:

    * it sums ``QLen`` terms instead of ``QKDim``: its bound is
      ``calculate_matvec_accumulator_range`` of a constant ``(QLen, QKDim)`` query matrix, which
      sums along axis 0 (``QLen``). Too narrow whenever the sequence is shorter than the
      embedding (INT4 x INT4, QLen 8, QKDim 16: INT10, where ``16 * -8 * -8 = 1024`` needs
      INT12);
    * it takes the maximum from the ``QType.max()`` corner alone, so for signed ``QType`` and
      ``KType`` it misses ``QType.min() * KType.min()`` (INT4 x INT4, QLen = QKDim = 16:
      INT11, whose maximum 1023 is below ``16 * 64 = 1024``; here INT12).

    For the quickstart attention (INT5 x INT5, QLen 24, QKDim 16) finn-plus's type holds the
    worst case (INT14). ``tests/finn_flow/test_attention_thresholds.py`` pins where the two
    agree and where they do not.
    """
    return smallest_int_datatype(*_sum_of_products_range(q_type, k_type, qk_dim))


def _sum_of_products_range(x_type: DataType, y_type: DataType, terms: int) -> tuple[int, int]:
    """``(min, max)`` of ``sum_t x_t y_t`` over ``terms`` terms, ``x_t``/``y_t`` anywhere in
    their types: ``terms`` times the smallest / largest corner product (see
    :class:`WidenAttentionAccumulators` for why that is exact)."""
    corners = [x * y for x in (x_type.min(), x_type.max()) for y in (y_type.min(), y_type.max())]
    return int(terms * min(corners)), int(terms * max(corners))


class StandaloneAttentionOutputThresholds(Transformation):
    """Move a ``ScaledDotProductAttention``'s absorbed AV-output thresholds into a
    ``MultiThreshold`` node after it (see the module docstring for the identity).

    Applies to the generic ``ScaledDotProductAttention`` (before specialisation) with
    ``ActAVMatMul = "thresholds"``; the QK and softmax activations stay inside (they sit between
    the attention's internal stages). ``changed`` is True exactly when a node was rewritten.
    """

    def apply(self, model: ModelWrapper):
        from qonnx.custom_op.registry import getCustomOp

        graph = model.graph
        changed = False
        for node in list(graph.node):
            if node.op_type != "ScaledDotProductAttention":
                continue
            inst = getCustomOp(node)
            if inst.get_nodeattr("ActAVMatMul") != "thresholds":
                continue
            thresholds = node.input[-1]  # the AV thresholds are the last optional input
            if model.get_initializer(thresholds) is None:
                continue
            out_dtype = inst.get_nodeattr("OType")
            bias = float(inst.get_nodeattr("BiasActAVMatMul"))
            acc_dtype = av_accumulator_datatype(
                DataType[inst.get_nodeattr("AType")],
                DataType[inst.get_nodeattr("VType")],
                int(inst.get_nodeattr("KVLen")),
            )
            acc = model.make_new_valueinfo_name()
            out = node.output[0]
            del node.input[-1]
            node.output[0] = acc
            for name, value in (
                ("ActAVMatMul", "none"),
                ("BiasActAVMatMul", 0.0),
                ("AccAVMatMul", acc_dtype.name),
                ("OutAVMatMul", acc_dtype.name),
                ("OType", acc_dtype.name),
            ):
                inst.set_nodeattr(name, value)
            mt = helper.make_node(
                "MultiThreshold",
                [acc, thresholds],
                [out],
                domain="qonnx.custom_op.general",
                name=f"{node.name}_av_thresholds",
                out_dtype=out_dtype,
                out_bias=bias,
                data_layout="NWC" if len(model.get_tensor_shape(out) or ()) == 3 else "NHWC",
            )
            graph.node.insert(list(graph.node).index(node) + 1, mt)
            model.set_tensor_shape(acc, model.get_tensor_shape(out))
            model.set_tensor_datatype(acc, acc_dtype)
            changed = True
        if changed:
            model = model.transform(InferShapes())
            model = model.transform(InferDataTypes())
        return model, changed


def _holds(dtype: DataType, needed: DataType) -> bool:
    """``dtype`` represents every value of ``needed`` (range containment, not bit counts)."""
    return dtype.min() <= needed.min() and dtype.max() >= needed.max()


#: The attention's two matrix products: (stage, the factors' type attributes, summed length).
_STAGES = (("QK", "QType", "KType", "QKDim"), ("AV", "AType", "VType", "KVLen"))


def _thresholds_range(model: ModelWrapper, inst, stage: str) -> tuple[int, int] | None:
    """``(min, max)`` of a stage's absorbed thresholds, rounded outwards, or None without
    absorbed (constant) thresholds."""
    if inst.get_nodeattr(f"Act{stage}MatMul") != "thresholds":
        return None
    name = inst.get_input_name_by_name(f"thresholds_{stage.lower()}_matmul")
    thresholds = model.get_initializer(name)
    if thresholds is None or thresholds.size == 0:
        return None
    return int(np.floor(thresholds.min())), int(np.ceil(thresholds.max()))


def _check_output_type(node, inst) -> None:
    """FinnFlowError if the attention emits its AV accumulator (``ActAVMatMul = "none"``) in an
    ``OType`` that cannot hold its worst case (see :class:`WidenAttentionAccumulators`)."""
    if inst.get_nodeattr("ActAVMatMul") != "none":
        return
    a_type, v_type = DataType[inst.get_nodeattr("AType")], DataType[inst.get_nodeattr("VType")]
    kv_len = int(inst.get_nodeattr("KVLen"))
    exact = av_accumulator_datatype(a_type, v_type, kv_len)
    o_type = DataType[inst.get_nodeattr("OType")]
    if not _holds(o_type, exact):
        raise FinnFlowError(
            f"{node.name}: the attention's output type OType {o_type.name} cannot "
            f"hold its AV accumulator, whose worst case (AType {a_type.name} x VType "
            f"{v_type.name} over KVLen {kv_len} terms) needs {exact.name}; the "
            "accumulator is emitted without activation and would be cast to garbage, "
            "and OType cannot be widened here (its consumer and any thresholds after "
            f"it were sized to it). Fix: set OType to {exact.name} before "
            "step_minimize_bit_width_initial (StandaloneAttentionOutputThresholds "
            "does so when it moves the output thresholds out of the attention)."
        )


class WidenAttentionAccumulators(Transformation):
    """Widen every ``ScaledDotProductAttention`` HW node's QK and AV accumulators to their
    exact worst case (and to the stage's absorbed thresholds, which are stored in the
    accumulator type) wherever the node's types are narrower (run after finn's bit-width
    minimisation).

    Identity: each accumulator sums ``n`` products ``x_t y_t`` with ``x_t`` in
    ``[X.min(), X.max()]`` and ``y_t`` in ``[Y.min(), Y.max()]``: QK ``QType`` x ``KType`` over
    ``n = QKDim`` (a query-key dot product), AV ``AType`` x ``VType`` over ``n = KVLen`` (the
    attention weights times the values). The product is bilinear, so its extremes are among the
    four corner products; the sum of ``n`` such terms lies between ``n`` times the smallest and
    ``n`` times the largest corner, and both ends are reached (every term at the same corner).
    :func:`qk_accumulator_datatype` / :func:`av_accumulator_datatype` are the smallest integer
    types holding that range, so no input in the declared types overflows them, and any narrower
    type overflows for some input. finn-plus's ``minimize_accumulator_width`` can be narrower
    (it sums ``QLen`` terms for both, see those functions), and its HLS code accumulates in
    ``AccQKMatMul`` / ``AccAVMatMul`` without saturation: a too narrow accumulator wraps
    silently. FINN's Python execution computes in float and never sees it; the C++ kernel (and
    so the FPGA) does.

    The attributes, as ``ScaledDotProductAttention_hls`` uses them (finn-plus 1.6.1; ``XY`` is
    ``QK`` or ``AV``):

    * ``AccXYMatMul`` - the accumulator, and the type the generated C++ stores the stage's
      absorbed thresholds in (``ActXYMatMul = "thresholds"``; ``generate_params`` writes them as
      integer literals into an array of that type, which wraps a value outside it): widened
      whenever it does not hold the worst case, or one of those thresholds. A wider accumulator
      computes the same sums, and the thresholds compare the same: nothing clips them to the
      accumulator type (finn's ``RoundAndClipThresholds`` skips the attention; before the
      absorption it clipped them to the INT32 output range of the ``MatMul``), Python compares
      them as floats whatever the type, and C++ stores them exactly once the type holds them.
      A threshold beyond the worst case is never crossed, but it must still be stored exactly:
      wrapped, it would land inside the range and be crossed.
    * ``OutXYMatMul`` - with ``ActXYMatMul = "none"`` a copy of the accumulator type
      (finn-plus's minimisation sets it so): widened with it. For QK it is the softmax's input
      type inside the node, which nothing outside was sized to; for AV the stream itself
      carries ``OType``. With ``ActXYMatMul = "thresholds"`` it is the quantised output type of
      the stage: left alone.
    * ``OType`` - the output stream: not widened, since the consumer and the thresholds after
      it were sized to it (``StandaloneAttentionOutputThresholds`` sets it to the worst case
      already). With ``ActAVMatMul = "none"`` and an ``OType`` that cannot hold the worst case
      the accumulator would be cast to garbage, so this is a FinnFlowError naming the node,
      both types and the fix. The QK stage has no such limit.

    Applies to the generic node and its specialisations (``ScaledDotProductAttention_hls``).
    ``changed`` is True exactly when an attribute changed; a second pass changes nothing.
    """

    def apply(self, model: ModelWrapper):
        from qonnx.custom_op.registry import getCustomOp

        changed = False
        for node in model.graph.node:
            if not node.domain.startswith("finn.custom_op.fpgadataflow") or not (
                node.op_type == "ScaledDotProductAttention"
                or node.op_type.startswith("ScaledDotProductAttention_")
            ):
                continue
            inst = getCustomOp(node)
            _check_output_type(node, inst)
            for stage, x_attr, y_attr, n_attr in _STAGES:
                lo, hi = _sum_of_products_range(
                    DataType[inst.get_nodeattr(x_attr)],
                    DataType[inst.get_nodeattr(y_attr)],
                    int(inst.get_nodeattr(n_attr)),
                )
                thresholds = _thresholds_range(model, inst, stage)
                if thresholds is not None:  # the C++ stores them in the accumulator type
                    lo, hi = min(lo, thresholds[0]), max(hi, thresholds[1])
                needed = smallest_int_datatype(lo, hi)
                names = [f"Acc{stage}MatMul"]
                if inst.get_nodeattr(f"Act{stage}MatMul") == "none":
                    names.append(f"Out{stage}MatMul")
                for name in names:
                    if not _holds(DataType[inst.get_nodeattr(name)], needed):
                        inst.set_nodeattr(name, needed.name)
                        changed = True
        return model, changed
