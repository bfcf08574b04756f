"""Exact lowering of QONNX ``Quant`` zero points, for FINN.

FINN's QONNX import rejects ``Quant`` nodes with a non-zero zero point, for weights
(``FoldQuantWeights``) and activations (``ConvertQuantActToMultiThreshold``). QONNX defines

    Quant(x; s, z, b) = s * (clamp(round(x / s + z), lo, hi) - z)

with ``lo, hi`` given by ``b``, ``signed`` and ``narrow`` only. Both rewrites here are exact
(up to float rounding of the added offset) and leave ``signed``/``narrow``/rounding alone:

* :class:`LowerActivationZeroPoint`: ``Quant(x; s, z, b) == Quant(x + z*s; s, 0, b) - z*s``.
  The ``Add`` before becomes a threshold offset, the ``Sub`` after a bias that streamlining
  moves into the next thresholds/accumulator.
* :class:`LowerWeightZeroPoint`: for a ``Quant`` of a constant, the integers ``q - z`` lie in
  the signed narrow ``(b+1)``-bit range (``|q - z| <= 2**b - 1`` for an unsigned or signed
  ``b``-bit ``q`` and an in-range integer ``z``), so the node is replaced by a ``Quant`` of
  the dequantised values ``s*(q - z)`` with zero point 0, ``signed=1, narrow=1`` and ``b+1``
  bits. The hardware cost of a weight zero point is one more weight bit.

Both work for signed and unsigned grids and for per-tensor or broadcastable per-channel
scales/zero points. :class:`LowerZeroPoints` applies both. Zero points must be integers
(QONNX allows fractional ones; those are reported, not rewritten).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.general.intquant import int_quant
from qonnx.transformation.base import Transformation
from qonnx.transformation.general import RemoveUnusedTensors

from finn_flow.errors import FinnFlowError
from finn_flow.graph import node_attr

__all__ = [
    "AbsorbZeroPointOffsetIntoMultiThreshold",
    "ExactZeroPointOffsetPastRescale",
    "LowerActivationZeroPoint",
    "LowerWeightZeroPoint",
    "LowerZeroPoints",
    "ScalarZeroZeroPoint",
    "ZeroPointError",
    "quant_nodes_with_zero_point",
    "smallest_int_datatype",
]

_ZP_ATOL = 1e-6


class ZeroPointError(FinnFlowError):
    """A zero point that cannot be lowered exactly (fractional, 1-bit bipolar, or a weight zero
    point outside its grid, so that ``q - z`` leaves the signed narrow ``(b+1)``-bit grid)."""


def smallest_int_datatype(lo: int, hi: int):
    """The smallest FINN integer datatype holding every integer in ``lo..hi``."""
    from qonnx.core.datatype import DataType

    if lo >= 0:
        return DataType.get_smallest_possible(hi)
    # at least INT2: get_smallest_possible(-1) is BIPOLAR {-1, +1}, which has no 0
    return DataType.get_smallest_possible(min(lo, -hi - 1, -2))


def _quant_params(model: ModelWrapper, node):
    """(scale, zeropt, bitwidth) initializers of a Quant node, or None if not constant."""
    vals = [model.get_initializer(name) for name in node.input[1:4]]
    if any(v is None for v in vals):
        return None
    return tuple(np.asarray(v, dtype=np.float32) for v in vals)


def _has_zero_point(model: ModelWrapper, node) -> bool:
    if node.op_type != "Quant" or len(node.input) < 4:
        return False
    zp = model.get_initializer(node.input[2])
    return zp is not None and bool(np.any(np.asarray(zp) != 0))


def quant_nodes_with_zero_point(model: ModelWrapper) -> list[str]:
    """Names of all ``Quant`` nodes whose zero point is a non-zero constant."""
    return [n.name for n in model.graph.node if _has_zero_point(model, n)]


def _check_integer_zero_point(node, zeropt: np.ndarray, bitwidth: np.ndarray) -> np.ndarray:
    rounded = np.round(zeropt)
    if not np.allclose(zeropt, rounded, atol=_ZP_ATOL, rtol=0):
        raise ZeroPointError(
            f"Quant node {node.name!r} has a fractional zero point ({zeropt.ravel()[:4]}...); "
            "only integer zero points can be lowered exactly for FINN."
        )
    if np.any(bitwidth == 1) and node_attr(node, "signed", 1):
        raise ZeroPointError(
            f"Quant node {node.name!r}: 1-bit signed (bipolar) quantisation with a zero point "
            "is not supported."
        )
    return rounded.astype(np.float32)


def _check_weight_levels(node, w, scale, zeropt, bitwidth, signed, narrow, rounding) -> None:
    """Raise :class:`ZeroPointError` unless every ``q - z`` of the constant ``w`` lies on the
    signed narrow ``(b+1)``-bit grid ``[-(2**b - 1), 2**b - 1]`` that the lowering declares."""
    from finn_flow.exact_thresholds import quant_level  # it imports this module

    levels = quant_level(w, scale, zeropt, bitwidth, signed, narrow, rounding) - zeropt
    limit = 2.0 ** np.asarray(bitwidth, dtype=np.float64) - 1
    if np.any(np.abs(levels) > limit):
        bits = int(np.max(bitwidth))
        raise ZeroPointError(
            f"Quant node {node.name!r}: the weight levels q - z reach {levels.min():g} to "
            f"{levels.max():g}, outside the signed narrow {bits + 1}-bit grid "
            f"[-{2**bits - 1}, {2**bits - 1}] that the zero-point lowering declares (zero point "
            f"{np.unique(zeropt)[:4]} outside the {bits}-bit grid); export the weight quantiser "
            "with a zero point inside its integer range."
        )


def _new_const(model: ModelWrapper, base: str, value: np.ndarray) -> str:
    name = model.make_new_valueinfo_name()
    name = f"{base}_{name}"
    model.set_initializer(name, np.asarray(value, dtype=np.float32))
    return name


class LowerActivationZeroPoint(Transformation):
    """Rewrite activation ``Quant(x; s, z, b)`` as ``Quant(x + z*s; s, 0, b) - z*s``.

    Touches only ``Quant`` nodes whose data input is *not* a constant and whose zero point
    is a non-zero constant. Inserts one ``Add`` before and one ``Sub`` after each such node
    and sets its zero point to 0. Signed/unsigned, narrow and rounding are unchanged.
    """

    def apply(self, model: ModelWrapper):
        graph = model.graph
        changed = False
        for node in list(graph.node):
            if not _has_zero_point(model, node):
                continue
            if model.get_initializer(node.input[0]) is not None:
                continue  # constants: LowerWeightZeroPoint
            params = _quant_params(model, node)
            if params is None:
                continue
            scale, zeropt, bitwidth = params
            zeropt = _check_integer_zero_point(node, zeropt, bitwidth)
            offset = (zeropt * scale).astype(np.float32)
            base = node.name or "Quant"
            # x + z*s
            x_in = node.input[0]
            shifted = model.make_new_valueinfo_name()
            off_in = _new_const(model, base + "_zp_offset_in", offset)
            add = helper.make_node("Add", [x_in, off_in], [shifted], name=f"{base}_zp_add")
            # Quant(...) - z*s
            q_out = node.output[0]
            raw = model.make_new_valueinfo_name()
            off_out = _new_const(model, base + "_zp_offset_out", offset)
            sub = helper.make_node("Sub", [raw, off_out], [q_out], name=f"{base}_zp_sub")
            node.input[0] = shifted
            node.output[0] = raw
            node.input[2] = _new_const(model, base + "_zeropt0", np.zeros_like(zeropt))
            shape = model.get_tensor_shape(q_out)
            for t in (shifted, raw):
                vi = helper.make_tensor_value_info(t, TensorProto.FLOAT, shape)
                graph.value_info.append(vi)
            idx = list(graph.node).index(node)
            graph.node.insert(idx, add)
            graph.node.insert(idx + 2, sub)
            changed = True
        if changed:
            # drop the old zero-point constants (qonnx; model.transform's cleanup runs it too)
            model = model.transform(RemoveUnusedTensors())
        return model, changed


class LowerWeightZeroPoint(Transformation):
    """Replace a constant ``Quant(W; s, z, b)`` by ``Quant(s*(q - z); s, 0, b+1)``, signed narrow.

    Touches only ``Quant`` nodes whose data input is a constant (weights, biases, quantised
    constants such as a positional encoding) and whose zero point is a non-zero constant.
    The new data input holds the dequantised values, so the node's output is unchanged and
    FINN's weight folding sees a symmetric signed grid with zero point 0. The new node rounds
    half to even (``ROUND``): its input lies on its grid, so any rounding mode of the old node
    would give the same levels, but ``FLOOR``/``CEIL`` would turn ``s*(q - z)/s`` one float
    ulp off an integer into the neighbouring level. Raises :class:`ZeroPointError` (naming
    the node) when some ``q - z`` lies outside ``[-(2**b - 1), 2**b - 1]``, i.e. for a zero
    point outside the quantiser's own integer range.
    """

    def apply(self, model: ModelWrapper):
        changed = False
        for node in list(model.graph.node):
            if not _has_zero_point(model, node):
                continue
            w = model.get_initializer(node.input[0])
            if w is None:
                continue
            params = _quant_params(model, node)
            if params is None:
                continue
            scale, zeropt, bitwidth = params
            zeropt = _check_integer_zero_point(node, zeropt, bitwidth)
            signed = int(node_attr(node, "signed", 1))
            narrow = int(node_attr(node, "narrow", 0))
            rounding = node_attr(node, "rounding_mode", "ROUND")
            w = np.asarray(w, dtype=np.float32)
            _check_weight_levels(node, w, scale, zeropt, bitwidth, signed, narrow, rounding)
            deq = int_quant(w, scale, zeropt, bitwidth, signed, narrow, rounding).astype(np.float32)
            base = node.name or "Quant"
            node.input[0] = _new_const(model, base + "_dequantised", deq)
            node.input[2] = _new_const(model, base + "_zeropt0", np.zeros_like(zeropt))
            node.input[3] = _new_const(model, base + "_bitwidth", bitwidth + 1)
            for a in node.attribute:
                if a.name == "signed" or a.name == "narrow":
                    a.i = 1
                elif a.name == "rounding_mode":
                    a.s = b"ROUND"
            names = {a.name for a in node.attribute}
            if "signed" not in names:
                node.attribute.append(helper.make_attribute("signed", 1))
            if "narrow" not in names:
                node.attribute.append(helper.make_attribute("narrow", 1))
            changed = True
        if changed:
            model = model.transform(RemoveUnusedTensors())
        return model, changed


class ScalarZeroZeroPoint(Transformation):
    """Replace a ``Quant`` node's zero point that is 0 in every element by the scalar 0.

    ``Quant(x; s, 0, b)`` is the same with a zero point of any shape that is all zeros. A
    per-channel quantiser exports one zero point per channel (all 0 under SQ, and after
    :class:`LowerWeightZeroPoint`), and FINN's ``FoldQuantWeights`` and activation conversion
    test ``zero_point == 0`` as one truth value, which fails for more than one element.
    """

    def apply(self, model: ModelWrapper):
        changed = False
        for node in model.graph.node:
            if node.op_type != "Quant" or len(node.input) < 3:
                continue
            zp = model.get_initializer(node.input[2])
            if zp is None or np.asarray(zp).size <= 1 or np.any(np.asarray(zp) != 0):
                continue
            node.input[2] = _new_const(model, (node.name or "Quant") + "_zeropt0", np.zeros(()))
            changed = True
        if changed:
            model = model.transform(RemoveUnusedTensors())
        return model, changed


class LowerZeroPoints(Transformation):
    """Apply :class:`LowerWeightZeroPoint`, :class:`LowerActivationZeroPoint`, then
    :class:`ScalarZeroZeroPoint`."""

    def apply(self, model: ModelWrapper):
        model, weights = LowerWeightZeroPoint().apply(model)
        model, activations = LowerActivationZeroPoint().apply(model)
        model, scalar = ScalarZeroZeroPoint().apply(model)
        return model, weights or activations or scalar


#: Relative bound on ``|c/s - z|`` for an offset ``c = float32(z*s)``: see
#: :func:`_once_rounded_multiple`.
_ONE_ROUNDING_RTOL = 2.0**-23


def _once_rounded_multiple(c: float, s: float) -> int | None:
    """The integer ``z != 0`` if ``c`` is ``float32(z*s)`` to within one float32 rounding.

    :class:`LowerActivationZeroPoint` writes the offset as ``c = fl32(z*s)`` (a float32
    product, rounded once to nearest): ``|c - z*s| <= 2**-24 |z*s|``. ``c/s`` evaluated in
    float64 from the float32 ``c`` and ``s`` adds at most ``2**-53 |c/s|``, so
    ``|c/s - z| <= |z| (2**-24 + 2**-52) < 2**-23 |z|`` (:data:`_ONE_ROUNDING_RTOL`), which is
    below ``1/2`` for every zero point of at most 22 bits: ``round(c/s)`` is then ``z``. Returns
    None unless ``|c/s - round(c/s)|`` is within that bound (and ``round(c/s) != 0``).
    """
    if not (np.isfinite(c) and np.isfinite(s)) or s == 0:
        return None
    off = c / s
    k = round(off)
    if k == 0 or abs(off - k) > _ONE_ROUNDING_RTOL * abs(k):
        return None
    return int(k)


class AbsorbZeroPointOffsetIntoMultiThreshold(Transformation):
    """FINN dialect: fold ``MultiThreshold -> Mul(s) -> Add/Sub(c)`` with ``c/s`` integer.

    After :class:`LowerActivationZeroPoint` and FINN's QONNX import, a zero-point quantiser
    becomes ``MultiThreshold`` (integers ``q``) ``-> Mul(s) -> Sub(z*s)``. Since
    ``s*q - z*s == s*(q - z)``, the offset moves into the MultiThreshold's ``out_bias``
    (``-z``), whose output datatype widens to hold ``q - z`` (one more bit in general). The
    quantised tensor then has no offset, so dynamic matrix products (attention) and adds see
    plain integers. Touches only that three-node chain with scalar constants, single
    consumers and ``out_scale == 1``; exact.
    """

    def apply(self, model: ModelWrapper):
        from qonnx.custom_op.registry import getCustomOp
        from qonnx.transformation.infer_datatypes import InferDataTypes

        graph = model.graph
        for node in graph.node:
            if node.op_type != "MultiThreshold" or model.is_fork_node(node):
                continue
            mul = model.find_consumer(node.output[0])
            if mul is None or mul.op_type != "Mul" or model.is_fork_node(mul):
                continue
            add = model.find_consumer(mul.output[0])
            if add is None or add.op_type not in ("Add", "Sub"):
                continue
            s = model.get_initializer(mul.input[1])
            c = model.get_initializer(add.input[1])
            if s is None or c is None or np.asarray(s).size != 1 or np.asarray(c).size != 1:
                continue
            if add.input[0] != mul.output[0]:
                continue
            s, c = float(np.asarray(s).ravel()[0]), float(np.asarray(c).ravel()[0])
            if add.op_type == "Sub":
                c = -c
            if s == 0:
                continue
            off = c / s
            if abs(off - round(off)) > 1e-3 or round(off) == 0:
                continue
            inst = getCustomOp(node)
            if float(inst.get_nodeattr("out_scale")) != 1.0:
                continue
            thresholds = model.get_initializer(node.input[1])
            if thresholds is None:
                continue
            out_bias = float(inst.get_nodeattr("out_bias")) + round(off)
            odt = smallest_int_datatype(out_bias, out_bias + thresholds.shape[-1])
            inst.set_nodeattr("out_bias", out_bias)
            inst.set_nodeattr("out_dtype", odt.name)
            model.set_tensor_datatype(node.output[0], odt)
            mul.output[0] = add.output[0]
            graph.node.remove(add)
            model = model.transform(InferDataTypes())
            return model, True
        return model, False


class ExactZeroPointOffsetPastRescale(Transformation):
    """FINN dialect: ``Add/Sub(c) -> Div(s)``, ``c`` one float32 rounding of ``z*s``, becomes
    ``Div(s) -> Add(-z)`` (``Add(+z)`` for ``Add(c)``).

    Identity: ``(y - z*s) / s == y/s - z``. :class:`LowerActivationZeroPoint` writes a
    zero-point quantiser's offset as ``c = fl32(z*s)`` (QONNX's output is
    ``(level - z) * s``); where the quantised tensor is rescaled by the same ``s`` (the
    positional-encoding add as FINN imports it: ``Sub(c) -> Div(s) -> Add(PE) -> Mul(s)``),
    finn's ``MoveAddPastMul`` would compute ``fl32(c * fl32(1/s))``, which is ``z`` only up to
    a few float32 roundings (``-16.999998`` for ``z = 17``, ``s = 0.0090998774``), and
    ``CollapseRepeatedAdd`` would sum that into the integer encoding: the q/k/v products then
    read a float tensor and stay unmapped (a window-8 ``mixed-4-8/sq-apq`` model failed
    ``step_check_hw_mapping`` so). Moving the offset past the rescale as the integer ``z``
    (accepted only when ``c/s`` lies within one float32 rounding of it,
    :func:`_once_rounded_multiple`) undoes the rounding the lowering introduced. The offset
    stays downstream, where streamlining folds it into integer constants and thresholds; it is
    not absorbed into the quantiser's MultiThreshold, which would widen every such quantised
    tensor by a bit (measured on the quickstart model: 173,611 instead of 260,417
    inferences/s within the Pynq-Z1 budget). Touches only that two-node chain with scalar
    constants and a single consumer.
    """

    def apply(self, model: ModelWrapper):
        from qonnx.transformation.infer_datatypes import InferDataTypes
        from qonnx.transformation.infer_shapes import InferShapes

        graph = model.graph
        outputs = {o.name for o in graph.output}
        for add in list(graph.node):
            if add.op_type not in ("Add", "Sub") or model.is_fork_node(add):
                continue
            c = model.get_initializer(add.input[1])
            div = model.find_consumer(add.output[0])
            if c is None or np.asarray(c).size != 1 or div is None or div.op_type != "Div":
                continue
            if div.input[0] != add.output[0] or add.output[0] in outputs:
                continue
            s = model.get_initializer(div.input[1])
            if s is None or np.asarray(s).size != 1:
                continue
            c = float(np.asarray(c).ravel()[0]) * (-1.0 if add.op_type == "Sub" else 1.0)
            offset = _once_rounded_multiple(c, float(np.asarray(s).ravel()[0]))
            if offset is None:
                continue
            scaled = model.make_new_valueinfo_name()
            div.input[0], div.output[0], add.output[0] = add.input[0], scaled, div.output[0]
            add.input[0] = scaled
            add.op_type = "Add"
            const = model.make_new_valueinfo_name()
            model.set_initializer(const, np.asarray(offset, dtype=np.float32))
            add.input[1] = const
            graph.node.remove(add)  # topological order: the Div now runs first
            graph.node.insert(list(graph.node).index(div) + 1, add)
            model = model.transform(InferShapes()).transform(InferDataTypes())
            return model, True
        return model, False
