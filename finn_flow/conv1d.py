"""1D convolutions (``Conv`` on ``(1, C, T)``) as channels-last ``Im2Col + MatMul``, for FINN.

QONNX-level rewrite, run on the exported model before FINN's import (first step of the
flow). finn-plus 1.6.1 reads every 3D tensor as ``NWC`` (channels last: MultiThreshold's
default layout, ``AbsorbAddIntoMultiThreshold``'s channel axis, the transformer flow), lowers
only 4D ``Conv`` (``LowerConvsToMatMul``) and moves only 4D ``NCHW<->NHWC`` transposes.
A Brevitas ``QuantConv1d`` exports a 3D ``NCW`` ``Conv``; this rewrite turns it into the
``NWC`` form FINN maps to ``FMPadding -> ConvolutionInputGenerator -> MVAU``.

Identities (all exact: data movement, and elementwise quantisation commutes with it):

* Lowering, for ``x`` ``(1, C, T)``, weight ``W`` ``(C', C, k)``, bias ``b`` ``(C',)``,
  pads ``(p0, p1)``, stride ``s``, dilation ``d`` (``T021`` = ``Transpose(perm=[0,2,1])``)::

      Conv(x) = T021( R3( Im2Col[1,k | 1,s | 0,p0,0,p1 | 1,d]( R4( T021(x) ) ) ) @ Wm + b )

  with ``R4`` the reshape ``(1,T,C) -> (1,1,T,C)``, ``R3`` ``(1,1,T',kC) -> (1,T',kC)`` and
  ``Wm[j*C + c, o] = W[o, c, j]`` (qonnx's ``Im2Col`` orders a patch kernel-position major,
  channel minor, as ``LowerConvsToMatMul`` does). The weight ``Quant``'s initializer is
  permuted in place (per-tensor or per-output-channel scale/zero point only).
* ``T021`` commutes with elementwise ops whose constant operands are transposed too
  (``Quant``, ``Relu``, ``Add/Sub/Mul/Div`` by a constant), and ``T021(T021(x)) = x``: the
  transposes made here are sunk (after a conv) / hoisted (before a conv) until they cancel.
* ``Flatten(T021(x)) @ W = Flatten(x) @ W[P]`` with ``P[t*C + c] = c*T + t``: a transpose
  reaching the ``Flatten`` in front of a ``Gemm``/``MatMul`` with a constant weight (through
  per-tensor elementwise ops) is absorbed by permuting the weight rows; the ``Flatten`` moves
  down to the product, so the quantisers in between stay on ``(1, T, C)``.
* ``Reduce(T021(x), axes=[2], keepdims=0) = Reduce(x, axes=[1], keepdims=0)`` (pooling over
  time written ``x.mean(dim=2)`` on the conv layout).

Transposes not made here are never moved (the attention's and norm's transposes stay put).
Convs that do not fit (groups, non-constant weights, per-input-channel weight scales,
``auto_pad``) are left alone.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import get_by_name

_TO_NWC, _TO_NCW = "_conv1d_to_nwc", "_conv1d_to_ncw"
_QUANT = ("Quant", "BipolarQuant", "Trunc")
_UNARY = ("Relu", "Identity")
_BINARY = ("Add", "Sub", "Mul", "Div")
_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax")


def _ints(node, name, default):
    a = get_by_name(node.attribute, name)
    return list(a.ints) if a is not None else list(default)


def _is_t021(node) -> bool:
    return node is not None and node.op_type == "Transpose" and _ints(node, "perm", []) == [0, 2, 1]


def _ours(node) -> bool:
    return node.name.endswith((_TO_NWC, _TO_NCW))


def _new_tensor(model, shape) -> str:
    name = model.make_new_valueinfo_name()
    model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    return name


def _drop_value_info(model, name) -> None:
    for vi in list(model.graph.value_info):
        if vi.name == name:
            model.graph.value_info.remove(vi)


def _const_weight(model, name):
    """(initializer name, Quant node or None) of a constant, optionally quantised, weight."""
    if model.get_initializer(name) is not None:
        return name, None
    q = model.find_producer(name)
    if q is None or q.op_type != "Quant" or model.get_initializer(q.input[0]) is None:
        return None
    if len(model.find_consumers(q.output[0])) != 1:
        return None
    if any(model.get_initializer(i) is None for i in q.input[1:]):
        return None
    return q.input[0], q


def _transposable(p) -> bool:
    """A constant operand of an elementwise op on (1, C, T) that T021 can be moved past."""
    p = np.asarray(p)
    return p.size == 1 or p.ndim == 3 or (p.ndim == 2 and p.shape[-1] == 1)


def _transpose_param(model, name) -> None:
    p = np.asarray(model.get_initializer(name))
    if p.size == 1:
        return
    if p.ndim == 3:
        model.set_initializer(name, p.transpose(0, 2, 1))
    else:  # (C, 1) against (1, C, T)  ->  (1, 1, C) against (1, T, C)
        model.set_initializer(name, p.reshape(1, 1, -1))


def _count_convs(model: ModelWrapper) -> int:
    return sum(n.op_type == "Conv" for n in model.graph.node)


class LowerConv1dToChannelsLastMatMul(Transformation):
    """Replace each 3D ``Conv`` (batch 1, group 1, constant weight) by the lowering above."""

    def apply(self, model: ModelWrapper):
        graph = model.graph
        for node in list(graph.node):
            if node.op_type != "Conv":
                continue
            ishape = model.get_tensor_shape(node.input[0])
            oshape = model.get_tensor_shape(node.output[0])
            if ishape is None or oshape is None or len(ishape) != 3 or ishape[0] != 1:
                continue
            group = get_by_name(node.attribute, "group")
            if group is not None and group.i != 1:
                continue
            auto_pad = get_by_name(node.attribute, "auto_pad")
            if auto_pad is not None and auto_pad.s.decode() not in ("", "NOTSET"):
                continue
            weight = _const_weight(model, node.input[1])
            if weight is None:
                continue
            w_init, w_quant = weight
            W = np.asarray(model.get_initializer(w_init))
            if W.ndim != 3:
                continue
            c_out, c_in, k = W.shape
            if w_quant is not None:  # per-tensor or per-output-channel parameters only
                params = [np.asarray(model.get_initializer(i)) for i in w_quant.input[1:3]]
                if any(p.size != 1 and (p.size != c_out or p.shape[0] != c_out) for p in params):
                    continue
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if (
                bias is not None
                and model.get_initializer(bias) is None
                and _const_weight(model, bias) is None
            ):
                continue
            pads = _ints(node, "pads", [0, 0])
            stride = _ints(node, "strides", [1])[0]
            dil = _ints(node, "dilations", [1])[0]
            _, c, t = ishape
            t_out = oshape[2]

            model.set_initializer(w_init, W.transpose(2, 1, 0).reshape(k * c_in, c_out))
            if w_quant is not None:
                for i in w_quant.input[1:3]:
                    p = np.asarray(model.get_initializer(i))
                    if p.size > 1:
                        model.set_initializer(i, p.reshape(1, c_out))
                model.set_tensor_shape(w_quant.output[0], [k * c_in, c_out])

            base = node.name or "Conv"
            new = []
            cur = _new_tensor(model, [1, t, c])
            new.append(
                helper.make_node(
                    "Transpose", [node.input[0]], [cur], perm=[0, 2, 1], name=base + _TO_NWC
                )
            )
            if k != 1 or stride != 1 or any(pads):
                shp4 = model.make_new_valueinfo_name()
                model.set_initializer(shp4, np.asarray([1, 1, t, c], dtype=np.int64))
                x4 = _new_tensor(model, [1, 1, t, c])
                new.append(helper.make_node("Reshape", [cur, shp4], [x4], name=base + "_to_4d"))
                cols = _new_tensor(model, [1, 1, t_out, k * c])
                new.append(
                    helper.make_node(
                        "Im2Col",
                        [x4],
                        [cols],
                        domain="qonnx.custom_op.general",
                        name=base + "_im2col",
                        stride=[1, stride],
                        kernel_size=[1, k],
                        pad_amount=[0, pads[0], 0, pads[1]],
                        input_shape=f"(1,1,{t},{c})",
                        dilations=[1, dil],
                    )
                )
                shp3 = model.make_new_valueinfo_name()
                model.set_initializer(shp3, np.asarray([1, t_out, k * c], dtype=np.int64))
                cur = _new_tensor(model, [1, t_out, k * c])
                new.append(helper.make_node("Reshape", [cols, shp3], [cur], name=base + "_to_3d"))
            out = _new_tensor(model, [1, t_out, c_out])
            new.append(helper.make_node("MatMul", [cur, node.input[1]], [out], name=base + "_mm"))
            if bias is not None:
                cur, out = out, _new_tensor(model, [1, t_out, c_out])
                new.append(helper.make_node("Add", [cur, bias], [out], name=base + "_bias"))
            new.append(
                helper.make_node(
                    "Transpose", [out], [node.output[0]], perm=[0, 2, 1], name=base + _TO_NCW
                )
            )
            idx = list(graph.node).index(node)
            for i, n in enumerate(new):
                graph.node.insert(idx + i, n)
            graph.node.remove(node)
            return model.transform(InferShapes()), True
        return model, False


class MoveConv1dTransposes(Transformation):
    """Cancel, sink (``*_to_ncw``), hoist (``*_to_nwc``) and absorb the lowering's transposes."""

    def apply(self, model: ModelWrapper):
        graph = model.graph
        outputs = {o.name for o in graph.output}
        for tr in list(graph.node):
            if not _is_t021(tr) or model.is_fork_node(tr):
                continue
            nxt = model.find_consumer(tr.output[0])
            if _is_t021(nxt) and (_ours(tr) or _ours(nxt)) and nxt.output[0] not in outputs:
                src, dst = tr.input[0], nxt.output[0]  # T021(T021(x)) = x
                for cons in model.find_consumers(dst):
                    cons.input[:] = [src if i == dst else i for i in cons.input]
                graph.node.remove(tr)
                graph.node.remove(nxt)
                return model.transform(InferShapes()), True
            if tr.name.endswith(_TO_NCW) and nxt is not None:
                if self._swap(model, tr, nxt, f=nxt):
                    return model.transform(InferShapes()), True
                if nxt.op_type in ("Flatten", "Reshape") and self._absorb_flatten(model, tr, nxt):
                    return model.transform(InferShapes()), True
                if nxt.op_type in _REDUCE and self._absorb_reduce(model, tr, nxt):
                    return model.transform(InferShapes()), True
            if tr.name.endswith(_TO_NWC):
                prev = model.find_producer(tr.input[0])
                if (
                    prev is not None
                    and len(model.find_consumers(prev.output[0])) == 1
                    and self._swap(model, prev, tr, f=prev)
                ):
                    return model.transform(InferShapes()), True
        return model, False

    @staticmethod
    def _elementwise(model, f) -> bool:
        """f acts elementwise on its data input 0, with constant, transposable operands."""
        if model.get_initializer(f.input[0]) is not None:
            return False
        if f.op_type in _UNARY:
            return True
        if f.op_type not in _QUANT + _BINARY:
            return False
        params = [model.get_initializer(i) for i in f.input[1:]]
        return all(p is not None and _transposable(p) for p in params)

    def _swap(self, model, first, second, f) -> bool:
        """``x -> first -> second -> y`` becomes ``x -> second -> first -> y`` (one of them
        T021, the other the elementwise ``f``, whose constant operands get transposed)."""
        if not self._elementwise(model, f):
            return False
        if f.output[0] in {o.name for o in model.graph.output}:
            return False
        for i in f.input[1:]:
            _transpose_param(model, i)
        x, a, y = first.input[0], first.output[0], second.output[0]
        xshape = model.get_tensor_shape(x)
        mid = _new_tensor(model, xshape if f is second else [xshape[0], xshape[2], xshape[1]])
        second.input[0], second.output[0] = x, mid
        first.input[0], first.output[0] = mid, y
        _drop_value_info(model, a)
        model.graph.node.remove(first)
        model.graph.node.insert(list(model.graph.node).index(second) + 1, first)
        return True

    @staticmethod
    def _absorb_reduce(model, tr, red) -> bool:
        """``Reduce(T021(x), axes=[2], keepdims=0) = Reduce(x, axes=[1], keepdims=0)``."""
        keep = get_by_name(red.attribute, "keepdims")
        if keep is None or keep.i != 0:
            return False
        axes_attr = get_by_name(red.attribute, "axes")
        if axes_attr is not None:
            axes = list(axes_attr.ints)
        elif len(red.input) > 1 and model.get_initializer(red.input[1]) is not None:
            axes = [int(a) for a in np.asarray(model.get_initializer(red.input[1])).ravel()]
        else:
            return False
        if [a % 3 for a in axes] != [2]:
            return False
        if axes_attr is not None:
            axes_attr.ints[:] = [1]
        else:
            name = model.make_new_valueinfo_name()
            model.set_initializer(name, np.asarray([1], dtype=np.int64))
            red.input[1] = name
        red.input[0] = tr.input[0]
        model.graph.node.remove(tr)
        return True

    @staticmethod
    def _absorb_flatten(model, tr, flat) -> bool:
        shape = model.get_tensor_shape(tr.output[0])  # (1, C, T)
        fshape = model.get_tensor_shape(flat.output[0])
        if shape is None or fshape is None or len(fshape) != 2 or fshape[0] != 1:
            return False
        _, c, t = shape
        if fshape[1] != c * t:
            return False
        chain, cur = [], flat  # per-tensor elementwise ops between Flatten and the product
        while True:
            consumers = model.find_consumers(cur.output[0])
            if len(consumers) != 1:
                return False
            n = consumers[0]
            if n.op_type in ("Gemm", "MatMul") and n.input[0] == cur.output[0]:
                break
            if n.input[0] != cur.output[0] or model.get_initializer(n.input[0]) is not None:
                return False
            if n.op_type in _QUANT + _BINARY:
                ps = [model.get_initializer(i) for i in n.input[1:]]
                if any(p is None or np.asarray(p).size != 1 for p in ps):
                    return False
            elif n.op_type not in _UNARY:
                return False
            chain.append(n)
            cur = n
        weight = _const_weight(model, n.input[1])
        if weight is None:
            return False
        w_init, w_quant = weight
        W = np.asarray(model.get_initializer(w_init))
        trans_b = get_by_name(n.attribute, "transB")
        k_axis = 1 if n.op_type == "Gemm" and trans_b is not None and trans_b.i == 1 else 0
        if W.ndim != 2 or W.shape[k_axis] != c * t:
            return False
        if w_quant is not None:  # weight quantiser parameters must not vary along K
            for i in w_quant.input[1:3]:
                p = np.asarray(model.get_initializer(i))
                if p.size != 1 and (p.ndim != 2 or p.shape[k_axis] != 1):
                    return False
        perm = np.arange(c * t).reshape(c, t).T.reshape(-1)  # P[t*C + c] = c*T + t
        model.set_initializer(w_init, np.take(W, perm, axis=k_axis))
        flat.input[0] = tr.input[0]
        model.graph.node.remove(tr)
        if chain:  # Flatten(f(x)) = f(Flatten(x)) for per-tensor elementwise f
            x, y = flat.input[0], chain[-1].output[0]
            chain[0].input[0] = x
            chain[-1].output[0] = flat.output[0]
            flat.input[0], flat.output[0] = flat.output[0], y
            for n in chain[:-1]:
                _drop_value_info(model, n.output[0])
            _drop_value_info(model, flat.input[0])
            model.graph.node.remove(flat)
            model.graph.node.insert(list(model.graph.node).index(chain[-1]) + 1, flat)
        return True


class Conv1dToChannelsLast(Transformation):
    """:class:`LowerConv1dToChannelsLastMatMul`, then :class:`MoveConv1dTransposes`."""

    def apply(self, model: ModelWrapper):
        lowered = model.transform(LowerConv1dToChannelsLastMatMul())
        if _count_convs(lowered) == _count_convs(model):  # nothing lowered: left alone
            return model, False
        model = lowered.transform(MoveConv1dTransposes())
        # qonnx's Im2Col execution reads its input's datatype annotation
        return model.transform(InferDataTypes()), True
