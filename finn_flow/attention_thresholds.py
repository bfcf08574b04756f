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
"""

from __future__ import annotations

from onnx import helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes

from finn_flow.transforms import smallest_int_datatype

__all__ = ["StandaloneAttentionOutputThresholds", "av_accumulator_datatype"]


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
    type; ``tests/finn_flow/test_attention_thresholds.py`` pins where the two agree and where
    they do not.
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
