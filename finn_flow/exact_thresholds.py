"""Correctly rounded thresholds for quantisers that read a float tensor.

FINN turns an activation ``Quant`` into ``MultiThreshold`` (``count(x >= T_k)``) with
thresholds ``T_k = (k + 1/2 - z)·s`` computed in float64 and stored as float32; streamlining
then folds float ``Add``/``Mul`` nodes in front of it into ``T`` in float32. QONNX computes
the level as ``round_half_even(clip(float32(x / s) + z))``. On a float input the two disagree
exactly where data lands on a half step: min-max-scaled integer measurements do
(``255·x = k + 1/2``), and one flipped input level became 42 output steps in the quickstart
(``../shared/notes/hardware-truth.md`` section 1).

The identity relied on: the QONNX level ``q(x)`` of a float32 ``x`` is monotone
non-decreasing in ``x`` (division by ``s > 0``, adding ``z``, clipping and rounding are all
monotone, also in float32), so for every level ``L`` there is a smallest float32 ``T_L`` with
``q(T_L) >= L``, and ``count(x >= T_L, L = lo+1..hi) + lo == q(x)`` for **every** float32
``x``. :func:`exact_thresholds` finds each ``T_L`` by bisection over the ordered float32
values (32 steps), evaluating ``q`` with qonnx's own operations.

:class:`QuantFloatInputToExactThresholds` applies this, at the QONNX level before FINN's
import, to every activation ``Quant`` whose input is a float tensor: a graph input or the
output of a float ``LayerNormalization``, optionally through a chain of scalar-constant
``Add``/``Sub``/``Mul``/``Div`` (positive factors) that the chain's float32 arithmetic is
folded into, so there is nothing left in front of the thresholds for streamlining to fold.
The ``Quant`` becomes ``MultiThreshold(out_bias = lo - z) -> Mul(s)``: the same float32
values ``s·(q - z)`` that QONNX outputs, zero point included (lowered exactly here, not by
:mod:`finn_flow.transforms`). The threshold rows are recorded (SHA-256) in the model's metadata;
:func:`check_float_thresholds` (run after hardware conversion) fails if any thresholding
node that reads a float tensor holds thresholds that were not derived this way.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.general.intquant import max_int, min_int, resolve_rounding_mode
from qonnx.transformation.base import Transformation

from finn_flow.graph import node_attr
from finn_flow.transforms import smallest_int_datatype

__all__ = [
    "FLOAT_SOURCES",
    "METADATA_KEY",
    "QuantFloatInputToExactThresholds",
    "check_float_thresholds",
    "exact_thresholds",
    "quant_level",
]

#: Ops whose output is a float tensor that FINN keeps float in hardware (thresholds read it).
FLOAT_SOURCES = ("LayerNormalization",)
#: Scalar-constant elementwise ops that may stand between a float source and its quantiser.
_CHAIN_OPS = ("Add", "Sub", "Mul", "Div")
#: Layout changes of the graph input that may stand in front of its quantiser (they stay
#: in software; e.g. the NCW -> NWC transpose of finn_flow.conv1d).
_LAYOUT_OPS = ("Transpose", "Reshape")
#: Model metadata key listing the SHA-256 of every exact threshold array.
METADATA_KEY = "finn_flow.exact_thresholds"

_F32_MAX_KEY = int(np.float32(np.finfo(np.float32).max).view(np.int32))


def quant_level(x, scale, zeropt, bitwidth, signed, narrow, rounding_mode="ROUND") -> np.ndarray:
    """The integer level of QONNX's ``Quant`` for float32 ``x``, with qonnx's own operations.

    Mirrors :func:`qonnx.custom_op.general.intquant.int_quant` up to the rounding (the same
    float32 division, offset, clipping and rounding function), without rescaling.
    """
    y = np.asarray(x, dtype=np.float32) / np.asarray(scale, dtype=np.float32)
    y = y + np.asarray(zeropt, dtype=np.float32)
    lo = min_int(signed, narrow, bitwidth)
    hi = max_int(signed, narrow, bitwidth)
    y = np.where(y > hi, np.asarray(hi).astype(y.dtype), y)
    y = np.where(y < lo, np.asarray(lo).astype(y.dtype), y)
    return resolve_rounding_mode(rounding_mode)(y)


def _key_to_float(key: np.ndarray) -> np.ndarray:
    """Inverse of the order-preserving map float32 -> int64 (negatives mirrored below 0)."""
    key = np.asarray(key, dtype=np.int64)
    bits = np.where(key >= 0, key, (-(key + 1)) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def exact_thresholds(level_fn, levels: np.ndarray) -> np.ndarray:
    """For each ``L`` in ``levels``: the smallest float32 ``x`` with ``level_fn(x) >= L``.

    ``level_fn`` maps a float32 array to levels and must be monotone non-decreasing.
    ``levels`` may have any shape (e.g. ``(channels, n)``; ``level_fn`` then receives arrays
    of that shape and may broadcast per-channel parameters). A level not reached even at the
    largest finite float32 gets ``+inf`` (never reached); one reached by the smallest gets
    ``-inf`` (always reached).
    """
    levels = np.asarray(levels, dtype=np.float64)
    lo = np.full(levels.shape, -_F32_MAX_KEY - 1, dtype=np.int64)  # key of -FLT_MAX
    hi = np.full(levels.shape, _F32_MAX_KEY, dtype=np.int64)  # key of +FLT_MAX
    with np.errstate(over="ignore", invalid="ignore"):  # x / s overflows to inf at the ends
        below = level_fn(_key_to_float(lo)) >= levels
        never = level_fn(_key_to_float(hi)) < levels
        # invariant: level(lo) < L <= level(hi); bisection on the ordered float32 keys
        while np.any(hi - lo > 1):
            mid = lo + (hi - lo) // 2
            reached = level_fn(_key_to_float(mid)) >= levels
            hi = np.where(reached, mid, hi)
            lo = np.where(reached, lo, mid)
    out = _key_to_float(hi).copy()
    out[below] = -np.inf
    out[never] = np.inf
    return out


def _row_digests(thresholds: np.ndarray) -> set[str]:
    """SHA-256 of each channel's threshold row (FINN may broadcast one row to all channels)."""
    rows = np.asarray(thresholds, dtype=np.float32).reshape(-1, np.shape(thresholds)[-1])
    return {hashlib.sha256(np.ascontiguousarray(r).tobytes()).hexdigest() for r in rows}


def _recorded(model: ModelWrapper) -> list[str]:
    return json.loads(model.get_metadata_prop(METADATA_KEY) or "[]")


class QuantFloatInputToExactThresholds(Transformation):
    """Replace a float-input activation ``Quant`` by exact ``MultiThreshold -> Mul(s)``.

    Touches an activation ``Quant`` (constant scale, zero point and bit width; per-tensor, or
    per-channel on the last axis) whose input is a graph input or a ``LayerNormalization``
    output, reached directly or through a chain of single-consumer ``Add``/``Sub``/``Mul``/
    ``Div`` nodes with a scalar constant second operand (``Mul``/``Div`` by a positive
    number). The chain is evaluated in float32 exactly as ONNX does, folded into the
    thresholds and removed. ``signed``/``narrow``/rounding/zero point are honoured; the
    output (``s·(q - z)`` in float32) equals QONNX's. 1-bit bipolar quantisers and any other
    layout are left to FINN. Records each threshold row's digest in the model metadata.
    """

    def apply(self, model: ModelWrapper):
        for node in model.graph.node:
            if node.op_type != "Quant" or model.get_initializer(node.input[0]) is not None:
                continue
            params = [model.get_initializer(name) for name in node.input[1:4]]
            if any(p is None for p in params):
                continue
            chain = self._float_chain(model, node)
            if chain is None:
                continue
            rewritten = self._rewrite(model, node, chain, *params)
            if rewritten:
                return model, True
        return model, False

    @staticmethod
    def _float_chain(model: ModelWrapper, quant) -> list | None:
        """The scalar-constant nodes between a float source and ``quant``, or None."""
        graph_inputs = {i.name for i in model.graph.input}
        chain: list = []
        tensor = quant.input[0]
        while True:
            if tensor in graph_inputs:
                return chain
            producer = model.find_producer(tensor)
            if producer is None:
                return None
            if producer.op_type in FLOAT_SOURCES:
                return chain
            if (
                producer.op_type in _LAYOUT_OPS
                and producer.input[0] in graph_inputs
                and not model.is_fork_node(producer)
            ):
                return chain  # the graph input in another layout: the same float32 values
            if producer.op_type not in _CHAIN_OPS or model.is_fork_node(producer):
                return None
            const = model.get_initializer(producer.input[1])
            if const is None or np.asarray(const).size != 1:
                return None
            if producer.op_type in ("Mul", "Div") and float(np.asarray(const).ravel()[0]) <= 0:
                return None
            chain.insert(0, producer)
            tensor = producer.input[0]

    def _rewrite(self, model, quant, chain, scale, zeropt, bitwidth) -> bool:
        bits = float(np.asarray(bitwidth).ravel()[0])
        signed = int(node_attr(quant, "signed", 1))
        narrow = int(node_attr(quant, "narrow", 0))
        rounding = str(node_attr(quant, "rounding_mode", "ROUND"))
        if np.asarray(bitwidth).size != 1 or (bits == 1 and signed):
            return False
        in_shape = model.get_tensor_shape(quant.output[0])  # Quant keeps the shape
        if in_shape is None:
            return False
        scale = np.asarray(scale, dtype=np.float32)
        zeropt = np.asarray(zeropt, dtype=np.float32)
        channels = max(scale.size, zeropt.size)
        if channels > 1:  # per-channel: only on the last axis
            last = in_shape[-1]
            for p in (scale, zeropt):
                if p.size not in (1, last) or (p.size > 1 and p.shape[-1] != last):
                    return False
        if np.any(zeropt != np.round(zeropt)):
            return False  # fractional zero point: finn_flow.transforms reports it
        lo, hi = int(min_int(signed, narrow, bits)), int(max_int(signed, narrow, bits))
        s_col = scale.reshape(-1, 1)  # (1 or C, 1): broadcasts over (C, n) levels
        z_col = zeropt.reshape(-1, 1)
        consts = [
            (n.op_type, np.float32(np.asarray(model.get_initializer(n.input[1])).ravel()[0]))
            for n in chain
        ]

        def level(x):
            for op, c in consts:  # float32 elementwise ops, as onnxruntime evaluates them
                x = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](
                    x, c
                ).astype(np.float32)
            return quant_level(x, s_col, z_col, bits, signed, narrow, rounding)

        levels = np.broadcast_to(np.arange(lo + 1, hi + 1, dtype=np.float64), (channels, hi - lo))
        thresholds = exact_thresholds(level, levels).astype(np.float32)
        z_int = np.round(zeropt).astype(np.int64).ravel()
        if z_int.size > 1 and np.any(z_int != z_int[0]):
            return False  # per-channel zero points would need a per-channel out_bias
        z0 = int(z_int[0])
        odt = smallest_int_datatype(lo - z0, hi - z0)

        graph = model.graph
        base = quant.name or "Quant"
        src = chain[0].input[0] if chain else quant.input[0]
        thr_name = f"{base}_exact_thresholds"
        model.set_initializer(thr_name, thresholds)
        levels_out = model.make_new_valueinfo_name()
        graph.value_info.append(
            helper.make_tensor_value_info(levels_out, TensorProto.FLOAT, in_shape)
        )
        mt = helper.make_node(
            "MultiThreshold",
            [src, thr_name],
            [levels_out],
            domain="qonnx.custom_op.general",
            name=f"{base}_exact_thresholds",
            out_dtype=odt.name,
            out_bias=float(lo - z0),
        )
        if channels > 1 or len(in_shape) in (3, 4):
            # per tensor, a 4D input is an NCHW image (FINN lowers NCHW convs and wraps NCHW
            # thresholds in transposes); per channel means the last axis
            layout = {2: "NC", 3: "NWC", 4: "NHWC" if channels > 1 else "NCHW"}.get(len(in_shape))
            if layout is not None:
                mt.attribute.append(helper.make_attribute("data_layout", layout))
        scale_name = f"{base}_exact_scale"
        model.set_initializer(scale_name, scale)
        mul = helper.make_node(
            "Mul", [levels_out, scale_name], [quant.output[0]], name=f"{base}_exact_rescale"
        )
        idx = list(graph.node).index(quant)
        graph.node.insert(idx, mt)
        graph.node.insert(idx + 1, mul)
        graph.node.remove(quant)
        for n in chain:
            graph.node.remove(n)
        model.set_tensor_datatype(levels_out, odt)
        digests = set(_recorded(model)) | _row_digests(thresholds)
        model.set_metadata_prop(METADATA_KEY, json.dumps(sorted(digests)))
        for name in list(quant.input[1:]) + [i for n in chain for i in n.input[1:]]:
            if not any(name in n.input for n in graph.node):
                init = next((t for t in graph.initializer if t.name == name), None)
                if init is not None:
                    graph.initializer.remove(init)
        return True


def float_input_threshold_nodes(model: ModelWrapper) -> list:
    """Thresholding nodes (``MultiThreshold``, ``Thresholding*``) whose data input is float."""
    out = []
    for node in model.graph.node:
        if node.op_type != "MultiThreshold" and not node.op_type.startswith("Thresholding"):
            continue
        if model.get_tensor_datatype(node.input[0]) == DataType["FLOAT32"]:
            out.append(node)
    return out


def check_float_thresholds(model: ModelWrapper) -> list[str]:
    """Names of float-input thresholding nodes whose thresholds are not exact (recorded).

    Empty when every threshold that compares a float tensor was derived by
    :class:`QuantFloatInputToExactThresholds` and left unchanged since.
    """
    recorded = set(_recorded(model))
    bad = []
    for node in float_input_threshold_nodes(model):
        thresholds = model.get_initializer(node.input[1])
        if thresholds is None or not _row_digests(thresholds) <= recorded:
            bad.append(node.name)
    return bad
