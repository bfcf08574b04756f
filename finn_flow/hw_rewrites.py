"""Graph rewrites that let FINN map mean pooling over time and keep the output scaling in SW.

FINN (finn-plus 1.6.1) maps ``ReduceMean`` only in the lowered-pooling pattern
``Im2Col -> Reshape -> Reduce*`` and ``GlobalAveragePool`` only on 4D NCHW/NHWC tensors.
The Transformer's ``h.mean(dim=1)`` on a ``(1, seq, d_model)`` tensor exports as
``ReduceMean(axes=[1])`` after a dequantising scalar ``Mul``; streamlining moves neither
past it, so it would stay a float node between hardware layers. The rewrites here:

* :class:`ReduceMeanToScaledSum` (before streamlining): ``ReduceMean`` becomes
  ``ReduceSum`` followed by a scalar ``Mul(1/N)`` (``N`` = number of reduced elements),
  which streamlining absorbs into the next thresholds.
* :class:`MoveScalarMulPastReduce` (during streamlining): ``Reduce{Sum,Mean}(x * c)`` ==
  ``Reduce{Sum,Mean}(x) * c`` for a scalar constant ``c``, so the dequantiser scale also
  reaches the next thresholds and the reduction sees integers.
* :class:`AbsorbScalarMulIntoLayerNorm` (during streamlining): ``LayerNorm(s*x; eps)`` ==
  ``LayerNorm(x; eps/s**2)``, so an affine-free layer norm reads the integer residual sum.
* :class:`InferTimePoolFromReduceSum` (hardware conversion): an integer ``ReduceSum`` over
  the time axis of a ``(1, T, C)`` tensor becomes ``Reshape -> MatMul (0/1 weights) ->
  Reshape``, i.e. an ``MVAU`` and FINN's stream-preserving ``Reshape`` HW op. (Not
  ``GlobalAccPool``: its C++ kernel assumes square images.)

:func:`is_output_dequant_tail` is a filter for ``InferElementwiseBinaryOperation``: it
keeps the final float scaling (``Mul``/``Add``/``Sub``/``Div`` with a constant, feeding only
the graph output) out of the hardware, where FINN would otherwise build float operators.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes

from finn_flow.transforms import smallest_int_datatype

_REDUCE_OPS = {"ReduceSum", "ReduceMean"}
_TAIL_OPS = {"Mul", "Add", "Sub", "Div"}


def _opset(model: ModelWrapper) -> int:
    for imp in model.model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 13


def _reduce_axes(model: ModelWrapper, node) -> list[int] | None:
    """Axes of a Reduce* node (attribute or constant input), or None if unknown."""
    for a in node.attribute:
        if a.name == "axes":
            return list(helper.get_attribute_value(a))
    if len(node.input) > 1 and node.input[1]:
        axes = model.get_initializer(node.input[1])
        return None if axes is None else [int(v) for v in np.asarray(axes).ravel()]
    return None


def _keepdims(node) -> int:
    for a in node.attribute:
        if a.name == "keepdims":
            return int(helper.get_attribute_value(a))
    return 1


def _scalar_const(model: ModelWrapper, name: str) -> float | None:
    val = model.get_initializer(name)
    if val is None or np.asarray(val).size != 1:
        return None
    return float(np.asarray(val).ravel()[0])


class ReduceMeanToScaledSum(Transformation):
    """Rewrite ``ReduceMean(x, axes)`` as ``ReduceSum(x, axes) * (1/N)``.

    Only ``ReduceMean`` nodes with known axes and input shape are touched. With opset >= 13
    the axes go to ``ReduceSum``'s second input, as ONNX requires.
    """

    def apply(self, model: ModelWrapper):
        graph = model.graph
        changed = False
        for node in list(graph.node):
            if node.op_type != "ReduceMean":
                continue
            axes = _reduce_axes(model, node)
            shape = model.get_tensor_shape(node.input[0])
            if axes is None or shape is None:
                continue
            n = int(np.prod([shape[a] for a in axes]))
            name = node.name or "ReduceMean"
            axes_name = model.make_new_valueinfo_name()
            model.set_initializer(axes_name, np.asarray(axes, dtype=np.int64))
            sum_out = model.make_new_valueinfo_name()
            attrs = {"keepdims": _keepdims(node)}
            if _opset(model) >= 13:
                inputs = [node.input[0], axes_name]
            else:
                inputs = [node.input[0]]
                attrs["axes"] = axes
            red = helper.make_node("ReduceSum", inputs, [sum_out], name=name + "_sum", **attrs)
            scale = model.make_new_valueinfo_name()
            model.set_initializer(scale, np.asarray(1.0 / n, dtype=np.float32))
            mul = helper.make_node("Mul", [sum_out, scale], [node.output[0]], name=name + "_scale")
            idx = list(graph.node).index(node)
            graph.node.insert(idx, red)
            graph.node.insert(idx + 1, mul)
            graph.node.remove(node)
            changed = True
        if changed:
            model = model.transform(InferShapes())
            model = model.transform(InferDataTypes())
        return model, changed


class MoveScalarMulPastReduce(Transformation):
    """Swap ``Mul(x, c) -> ReduceSum/ReduceMean`` to ``Reduce(x) -> Mul(c)`` for scalar ``c``.

    Only when the ``Mul`` has a scalar constant operand and the reduction is its only
    consumer. Exact, as sum and mean are linear.
    """

    def apply(self, model: ModelWrapper):
        graph = model.graph
        for node in graph.node:
            if node.op_type not in _REDUCE_OPS:
                continue
            mul = model.find_producer(node.input[0])
            if mul is None or mul.op_type != "Mul":
                continue
            if len(model.find_consumers(mul.output[0])) != 1:
                continue
            const_idx = [i for i in (0, 1) if model.get_initializer(mul.input[i]) is not None]
            if len(const_idx) != 1 or _scalar_const(model, mul.input[const_idx[0]]) is None:
                continue
            x = mul.input[1 - const_idx[0]]
            c = mul.input[const_idx[0]]
            red_out = node.output[0]
            mid = model.make_new_valueinfo_name()
            node.input[0] = x
            node.output[0] = mid
            mul.input[0], mul.input[1] = mid, c
            mul.output[0] = red_out
            graph.node.remove(mul)
            graph.node.insert(list(graph.node).index(node) + 1, mul)
            model = model.transform(InferShapes())
            model = model.transform(InferDataTypes())
            return model, True
        return model, False


class InferTimePoolFromReduceSum(Transformation):
    """Rewrite an integer ``ReduceSum`` over the time axis of ``(1, T, C)`` as a 0/1 MatMul.

    The identity: ``sum_t x[t, c] = (vec(x) @ W)[c]`` with ``vec(x)`` the tensor read in its
    time-major order as one ``T*C`` vector and ``W[t*C + c', c] = [c' == c]``. Produces
    ``Reshape(1, T*C) -> MatMul(W) -> Reshape``; FINN then maps the MatMul to an ``MVAU``
    (integer input, integer weights) and the reshapes to its stream-preserving ``Reshape``.

    Why not ``GlobalAccPool``: finn-plus generates ``AccPool_Batch<ImgDim = shape[1]>`` and
    finn-hlslib loops over ``ImgDim * ImgDim`` pixels (square images), so with ``(1,1,T,C)``
    the C++ kernel (and the FPGA) sums 1 of the ``T`` time steps while FINN's Python
    execution sums all of them; no 4D layout makes ``T = 24`` square. A depthwise ``VVAU``
    with a ``(T, 1)`` kernel computes the sum with ``C`` adders but FINN's folding requires a
    sliding-window generator in front of it. The MVAU reads its input vector in order (any
    SIMD/PE folding is valid), is folded and estimated by FINN like every other layer, and
    its C++ kernel is bit-exact; it spends ``T*C*C`` 0/1 weights where ``T*C`` would do.
    Only touches 3D inputs with batch 1 reduced over axis 1 (or -2) with an integer datatype.
    """

    def apply(self, model: ModelWrapper):
        graph = model.graph
        changed = False
        for node in list(graph.node):
            if node.op_type != "ReduceSum":
                continue
            shape = model.get_tensor_shape(node.input[0])
            axes = _reduce_axes(model, node)
            if shape is None or len(shape) != 3 or axes is None:
                continue
            if [a % 3 for a in axes] != [1]:
                continue
            idt = model.get_tensor_datatype(node.input[0])
            if not idt.is_integer():
                continue
            n, t, c = (int(v) for v in shape)
            if n != 1:
                continue
            name = node.name or "ReduceSum"
            out_shape = model.get_tensor_shape(node.output[0])
            acc_dt = smallest_int_datatype(int(t * idt.min()), int(t * idt.max()))

            def tensor(shape, dtype):
                name_ = model.make_new_valueinfo_name()
                graph.value_info.append(
                    helper.make_tensor_value_info(name_, TensorProto.FLOAT, shape)
                )
                model.set_tensor_datatype(name_, dtype)
                return name_

            def const(value, dtype=None):
                name_ = model.make_new_valueinfo_name()
                model.set_initializer(name_, value)
                if dtype is not None:
                    model.set_tensor_datatype(name_, dtype)
                return name_

            vec = tensor([1, t * c], idt)
            summed = tensor([1, c], acc_dt)
            weights = np.tile(np.eye(c, dtype=np.float32), (t, 1))  # W[t*C + c', c] = [c' == c]
            nodes = [
                helper.make_node(
                    "Reshape",
                    [node.input[0], const(np.asarray([1, t * c], dtype=np.int64))],
                    [vec],
                    name=name + "_to_vector",
                ),
                helper.make_node(
                    "MatMul",
                    [vec, const(weights, DataType["UINT2"])],
                    [summed],
                    name=name + "_time_sum",
                ),
                helper.make_node(
                    "Reshape",
                    [summed, const(np.asarray(out_shape, dtype=np.int64))],
                    [node.output[0]],
                    name=name + "_from_vector",
                ),
            ]
            idx = list(graph.node).index(node)
            for k, new in enumerate(nodes):
                graph.node.insert(idx + k, new)
            graph.node.remove(node)
            changed = True
        if changed:
            model = model.transform(InferShapes())
            model = model.transform(InferDataTypes())
        return model, changed


class WidenBinaryWeights(Transformation):
    """Declare ``BINARY`` (0/1) weights of MVAU/VVAU nodes as ``UINT2``.

    FINN's ``MinimizeWeightBitWidth`` gives weights whose values are all 0 or 1 (e.g. the
    unit weights of :class:`InferTimePoolFromReduceSum`) the datatype ``BINARY``, which
    finn-plus's HLS code generation rejects outside XNOR mode ("True binary (non-bipolar)
    inputs not yet supported"). The values are unchanged and lie in ``UINT2``: one more
    weight bit, exact.
    """

    def apply(self, model: ModelWrapper):
        from qonnx.custom_op.registry import getCustomOp

        changed = False
        for node in model.graph.node:
            if not node.op_type.startswith(("MVAU", "VVAU")):
                continue
            inst = getCustomOp(node)
            if inst.get_nodeattr("weightDataType") != "BINARY":
                continue
            if node.op_type.startswith("MVAU") and inst.get_nodeattr("binaryXnorMode"):
                continue
            inst.set_nodeattr("weightDataType", "UINT2")
            model.set_tensor_datatype(node.input[1], DataType["UINT2"])
            changed = True
        return model, changed


def is_output_dequant_tail(model: ModelWrapper, node) -> bool:
    """Filter for ``InferElementwiseBinaryOperation``: False for the float output tail.

    The tail is a chain of ``Mul``/``Add``/``Sub``/``Div`` nodes with one constant operand
    and a float output, ending in a graph output, with nothing but such nodes after it.
    Returns True (convert to hardware) for every other node.
    """
    outputs = {o.name for o in model.graph.output}
    cur = node
    while True:
        if cur.op_type not in _TAIL_OPS:
            return True
        if sum(model.get_initializer(i) is not None for i in cur.input) != 1:
            return True
        if model.get_tensor_datatype(cur.output[0]) != DataType["FLOAT32"]:
            return True
        if cur.output[0] in outputs:
            return False
        consumers = model.find_consumers(cur.output[0])
        if len(consumers) != 1:
            return True
        cur = consumers[0]


class AbsorbScalarMulIntoLayerNorm(Transformation):
    """``LayerNorm(x*s + c; eps)`` == ``LayerNorm(x; eps/s**2)`` for scalar constants, ``s > 0``.

    Layer normalisation is scale-invariant up to its epsilon: with mean ``m`` and variance
    ``v`` of ``x``, ``(s*x - s*m) / sqrt(s**2 * v + eps) == (x - m) / sqrt(v + eps / s**2)``.
    Streamlining leaves the dequantiser scale of the residual sum in front of each
    ``LayerNormalization`` (a float ``ElementwiseMul`` in hardware); this rewrite removes it,
    so FINN's ``LayerNorm`` reads the integer sum directly. Likewise a scalar offset in front
    (zero-point residue, ``Add``/``Sub`` of a scalar constant) is dropped:
    ``LayerNorm(x + c) == LayerNorm(x)`` as the mean absorbs it. Only for affine-free norms
    (scale 1, bias 0) over the last axis, and a ``Mul``/``Add``/``Sub`` whose only consumer is
    the norm.
    """

    def apply(self, model: ModelWrapper):
        graph = model.graph
        for node in graph.node:
            if node.op_type != "LayerNormalization":
                continue
            axis, eps = -1, 1e-5
            for a in node.attribute:
                if a.name == "axis":
                    axis = int(helper.get_attribute_value(a))
                elif a.name == "epsilon":
                    eps = float(helper.get_attribute_value(a))
            shape = model.get_tensor_shape(node.input[0])
            if shape is None or axis % len(shape) != len(shape) - 1:
                continue
            mul = model.find_producer(node.input[0])
            if mul is None or mul.op_type not in ("Mul", "Add", "Sub") or model.is_fork_node(mul):
                continue
            const_idx = [i for i in (0, 1) if model.get_initializer(mul.input[i]) is not None]
            if len(const_idx) != 1:
                continue
            s = _scalar_const(model, mul.input[const_idx[0]])
            if mul.op_type != "Mul":
                if s is None or (mul.op_type == "Sub" and const_idx[0] == 0):
                    continue
                # LayerNorm(x + c) == LayerNorm(x) for a scalar c: drop the offset
                node.input[0] = mul.input[1 - const_idx[0]]
                graph.node.remove(mul)
                model = model.transform(InferShapes())
                model = model.transform(InferDataTypes())
                return model, True
            if s is None or not s > 0:
                continue
            new_eps = eps / (s * s)
            if not np.isfinite(new_eps) or new_eps <= 0:
                continue
            node.input[0] = mul.input[1 - const_idx[0]]
            for a in list(node.attribute):
                if a.name == "epsilon":
                    node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("epsilon", float(new_eps)))
            graph.node.remove(mul)
            model = model.transform(InferShapes())
            model = model.transform(InferDataTypes())
            return model, True
        return model, False


class AnnotateIntegerAddConstants(Transformation):
    """Give integer-valued ``Add``/``Sub`` constants an integer QONNX datatype.

    With zero points everywhere (e.g. ``all-aq``), the positional encoding reaches the add
    after streamlining as a constant of integers (``q_pe - z`` plus folded offsets) still
    annotated ``FLOAT32``, so the sum, and the q/k/v projections reading it, look like float
    tensors and stay unmapped. Annotation only (values untouched): exact.
    """

    def apply(self, model: ModelWrapper):
        changed = False
        for node in model.graph.node:
            if node.op_type not in ("Add", "Sub"):
                continue
            consts = [i for i in node.input if model.get_initializer(i) is not None]
            dyn = [i for i in node.input if model.get_initializer(i) is None]
            if len(consts) != 1 or len(dyn) != 1:
                continue
            if not model.get_tensor_datatype(dyn[0]).is_integer():
                continue
            if model.get_tensor_datatype(consts[0]) != DataType["FLOAT32"]:
                continue
            val = np.asarray(model.get_initializer(consts[0]), dtype=np.float64)
            if val.size == 0 or not np.all(val == np.round(val)):
                continue
            lo, hi = float(val.min()), float(val.max())
            dt = smallest_int_datatype(int(lo), int(hi))
            model.set_tensor_datatype(consts[0], dt)
            changed = True
        if changed:
            model = model.transform(InferDataTypes())
        return model, changed


class SqueezeToReshape(Transformation):
    """Replace ``Squeeze``/``Unsqueeze`` of a known shape by an equivalent ``Reshape``.

    The model's output ``squeeze(-1)`` would stay a software node in front of the output
    scaling: finn-plus 1.6.1's ``InferSqueeze`` fails on a constant ``axes`` input
    (``TypeError: Attribute axes expects list of ints``), while ``InferReshape`` maps a
    ``Reshape`` to FINN's stream-preserving HW ``Reshape``. Exact (a relabelling of shape).
    """

    def apply(self, model: ModelWrapper):
        graph = model.graph
        changed = False
        for node in list(graph.node):
            if node.op_type not in ("Squeeze", "Unsqueeze"):
                continue
            oshape = model.get_tensor_shape(node.output[0])
            if oshape is None or any(not isinstance(d, int) or d <= 0 for d in oshape):
                continue
            shp = model.make_new_valueinfo_name()
            model.set_initializer(shp, np.asarray(oshape, dtype=np.int64))
            new = helper.make_node(
                "Reshape", [node.input[0], shp], [node.output[0]], name=node.name + "_reshape"
            )
            graph.node.insert(list(graph.node).index(node), new)
            graph.node.remove(node)
            changed = True
        if changed:
            model = model.transform(InferShapes())
            model = model.transform(InferDataTypes())
        return model, changed
