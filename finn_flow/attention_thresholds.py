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
resizes the AV accumulator with finn-plus's own bound, narrower than the worst case for
cross-attention (``KVLen > QLen``) or a signed ``AType`` (:func:`av_accumulator_datatype`); it
runs after every ``step_minimize_bit_width*`` of this project's flow
(:func:`finn_flow.hw_conversion.minimize_then_widen`).
"""

from __future__ import annotations

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
    corners = [a * v for a in (a_type.min(), a_type.max()) for v in (v_type.min(), v_type.max())]
    return smallest_int_datatype(int(kv_len * min(corners)), int(kv_len * max(corners)))


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


class WidenAttentionAccumulators(Transformation):
    """Widen every ``ScaledDotProductAttention`` HW node's AV accumulator to its exact worst
    case wherever the node's type is narrower (run after finn's bit-width minimisation).

    Identity: with ``a_t`` in ``[AType.min(), AType.max()]`` and ``v_t`` in
    ``[VType.min(), VType.max()]``, the product ``a_t v_t`` is bilinear, so its extremes are
    among the four corner products; the sum of ``KVLen`` such terms lies between ``KVLen`` times
    the smallest and ``KVLen`` times the largest corner, and both ends are reached (every term
    at the same corner). :func:`av_accumulator_datatype` is the smallest integer type holding
    that range, so no input in the declared types overflows it, and any narrower type
    overflows for some input. finn-plus's ``minimize_accumulator_width`` can be narrower (see
    :func:`av_accumulator_datatype`), and its HLS code accumulates in ``AccAVMatMul`` and casts
    to ``OType``: a too narrow accumulator wraps silently.

    The attributes, as ``ScaledDotProductAttention_hls`` uses them (finn-plus 1.6.1):

    * ``AccAVMatMul`` - the accumulator, and the type of the thresholds of an absorbed output
      activation: widened whenever it does not hold the worst case. A wider accumulator computes
      the same sums; the absorbed thresholds are not clipped to it (finn's
      ``RoundAndClipThresholds`` skips the attention), so they compare the same.
    * ``OutAVMatMul`` - with ``ActAVMatMul = "none"`` a copy of the accumulator type
      (finn-plus's minimisation sets it so; the stream itself carries ``OType``): widened with
      it. With ``ActAVMatMul = "thresholds"`` it is the quantised output type: left alone.
    * ``OType`` - the output stream: not widened, since the consumer and the thresholds after
      it were sized to it (``StandaloneAttentionOutputThresholds`` sets it to the worst case
      already). With ``ActAVMatMul = "none"`` and an ``OType`` that cannot hold the worst case
      the accumulator would be cast to garbage, so this is a FinnFlowError naming the node,
      both types and the fix.

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
            a_type, v_type = (
                DataType[inst.get_nodeattr("AType")],
                DataType[inst.get_nodeattr("VType")],
            )
            kv_len = int(inst.get_nodeattr("KVLen"))
            exact = av_accumulator_datatype(a_type, v_type, kv_len)
            names = ["AccAVMatMul"]
            if inst.get_nodeattr("ActAVMatMul") == "none":
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
                names.append("OutAVMatMul")
            for name in names:
                if not _holds(DataType[inst.get_nodeattr(name)], exact):
                    inst.set_nodeattr(name, exact.name)
                    changed = True
        return model, changed
