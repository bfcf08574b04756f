"""Every graph rewrite of finn_flow: outputs unchanged on random and on tie inputs, ``changed``.

For each qonnx ``Transformation`` a small graph is built with ``onnx.helper``, executed with
qonnx's ``execute_onnx`` before and after, and compared: bit for bit where the rewrite is exact
(data movement, annotation, arithmetic that is exact in float32, e.g. power-of-two scales), to
float32 rounding where it changes float arithmetic (stated per test). *Tie inputs* put values
exactly on the rounding half steps of the quantisers in the graph, ``x = (k + 1/2 - z)·s``
(power-of-two ``s``, so that ``x / s`` is exactly a half integer), or exactly on a
``MultiThreshold``'s thresholds. Each rewrite must report ``changed`` True when it rewrote, False
on a graph it must leave alone (which it then leaves bit for bit unchanged), and False when
applied a second time.

Existing tests elsewhere: ``QuantFloatInputToExactThresholds`` (test_exact_thresholds.py, on
ties), ``InferTimePoolFromReduceSum`` (test_finn_flow_transforms.py), the zero-point lowering on
a Brevitas model (test_finn_flow_transforms.py) and ``Conv1dToChannelsLast`` on Brevitas models
(test_conv1d.py, needs finn-plus).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.custom_op.general.intquant import max_int, min_int
from qonnx.transformation.general import RemoveUnusedTensors
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import qonnx_make_model

from finn_flow.conv1d import (
    Conv1dToChannelsLast,
    LowerConv1dToChannelsLastMatMul,
    MoveConv1dTransposes,
)
from finn_flow.errors import FinnFlowError
from finn_flow.hw_rewrites import (
    AbsorbScalarMulIntoLayerNorm,
    AnnotateIntegerAddConstants,
    InferTimePoolFromReduceSum,
    MoveScalarMulPastReduce,
    ReduceMeanToScaledSum,
    SqueezeToReshape,
    WidenBinaryWeights,
)
from finn_flow.transforms import (
    AbsorbZeroPointOffsetIntoMultiThreshold,
    ExactZeroPointOffsetPastRescale,
    LowerActivationZeroPoint,
    LowerWeightZeroPoint,
    LowerZeroPoints,
    ZeroPointError,
    quant_nodes_with_zero_point,
    smallest_int_datatype,
)

QONNX = "qonnx.custom_op.general"
S = np.float32(2.0**-4)  # a power-of-two scale: x / S is exact, so ties are exact ties


# ------------------------------------------------------------------------------ helpers
def make_model(nodes, inputs, outputs, inits=None, dtypes=None, opset=13) -> ModelWrapper:
    """A qonnx model: ``inputs``/``outputs`` map names to shapes, ``inits`` to arrays (kept in
    their dtype: float arrays as float32), ``dtypes`` to QONNX datatype names."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
    )
    model = ModelWrapper(qonnx_make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    for name, value in (inits or {}).items():
        value = np.asarray(value)
        model.set_initializer(name, value if value.dtype.kind == "i" else value.astype(np.float32))
    for name, dt in (dtypes or {}).items():
        model.set_tensor_datatype(name, DataType[dt])
    return model.transform(InferShapes())


def quant(inp, out, name, signed=1, narrow=0, rounding="ROUND"):
    """A QONNX ``Quant`` node reading ``{name}_s``, ``{name}_z``, ``{name}_b``."""
    return helper.make_node(
        "Quant",
        [inp, f"{name}_s", f"{name}_z", f"{name}_b"],
        [out],
        domain=QONNX,
        name=name,
        signed=signed,
        narrow=narrow,
        rounding_mode=rounding,
    )


def quant_params(name, scale, zeropt=0.0, bits=8) -> dict:
    return {f"{name}_s": scale, f"{name}_z": zeropt, f"{name}_b": float(bits)}


def ties(shape, scale=S, zeropt=0.0, bits=8, signed=1, narrow=0, seed=0) -> np.ndarray:
    """Inputs on the half steps ``(k + 1/2 - z)·s`` of a quantiser, k from one below its
    lowest level to its highest (both clipping ends included)."""
    lo, hi = int(min_int(signed, narrow, bits)), int(max_int(signed, narrow, bits))
    k = np.random.default_rng(seed).integers(lo - 1, hi + 1, size=shape).astype(np.float64)
    x = ((k + 0.5 - np.asarray(zeropt, np.float64)) * np.float64(scale)).astype(np.float32)
    assert np.all(np.modf(x.astype(np.float64) / np.float64(scale))[0] != 0)  # real ties
    return x


def run(model: ModelWrapper, feed: dict) -> np.ndarray:
    return execute_onnx(model, feed)[model.graph.output[0].name]


def check_rewrite(
    model, trafo, feeds, exact=True, rtol=1e-6, atol=0.0, annotate=False
) -> ModelWrapper:
    """Apply ``trafo``: it reports a change, the outputs on every feed are unchanged (bit for
    bit if ``exact``), and a second application reports no change. Returns the new model.
    ``annotate``: infer datatypes before executing it (qonnx's ``Im2Col`` reads them)."""
    before = [run(model, feed) for feed in feeds]
    _, changed = trafo.apply(copy.deepcopy(model))
    assert changed is True
    new = model.transform(trafo)
    assert new.model.SerializeToString() != model.model.SerializeToString()
    executed = new.transform(InferDataTypes()) if annotate else new
    for feed, ref in zip(feeds, before, strict=True):
        got = run(executed, feed)
        if exact:
            np.testing.assert_array_equal(got, ref)
        else:
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)
    again, changed = trafo.apply(copy.deepcopy(new))
    assert changed is False
    assert again.model.SerializeToString() == new.model.SerializeToString()
    return new


def check_float_rounding(model, new, tensor, feeds, rtol=1e-6) -> None:
    """The float ``tensor`` (in front of the last quantiser) differs by float32 rounding."""
    for feed in feeds:
        ref = execute_onnx(model, feed, return_full_exec_context=True)[tensor]
        got = execute_onnx(new, feed, return_full_exec_context=True)[tensor]
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def check_left_alone(model, trafo) -> None:
    """``trafo`` must not touch ``model``: changed False and the graph bit for bit unchanged."""
    new, changed = trafo.apply(copy.deepcopy(model))
    assert changed is False
    assert new.model.SerializeToString() == model.model.SerializeToString()


def ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


# ------------------------------------------------------------- zero points (transforms.py)
def act_zp_model(shape, scale, zeropt, bits, signed, narrow) -> ModelWrapper:
    return make_model(
        [quant("x", "y", "q", signed, narrow)],
        {"x": shape},
        {"y": shape},
        quant_params("q", scale, zeropt, bits),
    )


ACT_GRIDS = [
    (0, 0, 8, 37.0),  # unsigned + zero point (Brevitas shifted quantisers)
    (1, 0, 8, -21.0),  # signed + zero point (our AQ)
    (1, 1, 4, 3.0),  # signed narrow 4 bit
    (1, 0, 6, [2.0, -5.0, 0.0, 7.0]),  # per-channel zero point
]


@pytest.mark.parametrize("signed,narrow,bits,zeropt", ACT_GRIDS)
def test_lower_activation_zero_point_random_and_ties(signed, narrow, bits, zeropt):
    model = act_zp_model([2, 4], S, zeropt, bits, signed, narrow)
    rng = np.random.default_rng(0)
    step_range = float(S) * 2**bits
    feeds = [{"x": (rng.standard_normal((2, 4)) * step_range).astype(np.float32)} for _ in range(8)]
    feeds += [{"x": ties((2, 4), S, zeropt, bits, signed, narrow, seed)} for seed in range(8)]
    new = check_rewrite(model, LowerActivationZeroPoint(), feeds)
    assert ops(new) == ["Add", "Quant", "Sub"] and quant_nodes_with_zero_point(new) == []


@pytest.mark.xfail(
    strict=True,
    reason="known limit: Quant(x + z*s; s, 0) rounds x + z*s in float32, so with a scale that "
    "is not a power of two a value within float32 rounding of a half step of the grid can "
    "round to the other neighbour (measured: 23 % of the half steps of 1,000 random 8-bit grids "
    "with zero points; 991 of the grids have at least one). Inputs from float tensors are "
    "handled exactly by finn_flow.exact_thresholds; the lowering is exact for power-of-two "
    "scales.",
)
def test_lower_activation_zero_point_ties_at_other_scales():
    scale, zeropt = np.float32(0.7672184), -60.0
    model = act_zp_model([1, 256], scale, zeropt, 8, 1, 0)
    rng = np.random.default_rng(0)
    k = rng.integers(-128, 128, size=(1, 256)).astype(np.float64)
    x = ((k + 0.5 - zeropt) * np.float64(scale)).astype(np.float32)
    new = model.transform(LowerActivationZeroPoint())
    np.testing.assert_array_equal(run(new, {"x": x}), run(model, {"x": x}))


def test_lower_activation_zero_point_leaves_others_alone():
    check_left_alone(act_zp_model([2, 4], S, 0.0, 8, 1, 0), LowerActivationZeroPoint())
    # a quantised constant is LowerWeightZeroPoint's
    check_left_alone(weight_zp_model(np.ones((4, 3)), S, 3.0, 4, 0), LowerActivationZeroPoint())


def weight_zp_model(w, scale, zeropt, bits, signed, narrow=0, rounding="ROUND") -> ModelWrapper:
    """x (2, 4) -> MatMul with Quant(W; scale, zeropt, bits) -> y (2, n)."""
    w = np.asarray(w, np.float32)
    return make_model(
        [
            quant("w", "qw", "qw_node", signed, narrow, rounding),
            helper.make_node("MatMul", ["x", "qw"], ["y"]),
        ],
        {"x": [2, w.shape[0]]},
        {"y": [2, w.shape[1]]},
        {"w": w, **quant_params("qw_node", scale, zeropt, bits)},
    )


@pytest.mark.parametrize("rounding", ["ROUND", "FLOOR", "CEIL", "HALF_UP"])
@pytest.mark.parametrize(
    "scale", [S, np.float32(0.0837)], ids=["power-of-two scale", "other scale"]
)
@pytest.mark.parametrize(
    "signed,bits,zeropt",
    [(0, 4, 7.0), (1, 4, -3.0), (0, 8, 130.0), (0, 4, 15.0), (1, 3, -4.0), (0, 2, 1.0)],
)
def test_lower_weight_zero_point_random_and_tie_weights(rounding, scale, signed, bits, zeropt):
    """Weights on the half steps of their own grid and random weights (also beyond the clip
    range); zero points at the ends of the grid give q - z = ±(2**b - 1)."""
    rng = np.random.default_rng(bits)
    lo, hi = int(min_int(signed, 0, bits)), int(max_int(signed, 0, bits))
    random_w = (rng.uniform(lo - 2 - zeropt, hi + 2 - zeropt, (8, 5)) * scale).astype(np.float32)
    tie_w = ties((8, 5), scale, zeropt, bits, signed, 0)  # near-ties for the other scale
    feeds = [{"x": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(4)]
    feeds.append({"x": ties((2, 8), S)})
    for w in (random_w, tie_w):
        model = weight_zp_model(w, scale, zeropt, bits, signed, rounding=rounding)
        new = check_rewrite(model, LowerWeightZeroPoint(), feeds)
        qw = new.get_node_from_name("qw_node")
        attrs = {a.name: helper.get_attribute_value(a) for a in qw.attribute}
        assert (attrs["signed"], attrs["narrow"]) == (1, 1)
        assert float(new.get_initializer(qw.input[3])) == bits + 1
        assert quant_nodes_with_zero_point(new) == []
        # the integers q - z really fill the declared grid at the extreme zero points
        levels = np.round(new.get_initializer(qw.input[0]) / scale)
        assert np.abs(levels).max() <= 2**bits - 1


@pytest.mark.parametrize("signed,bits,zeropt", [(0, 4, 16.0), (0, 4, -1.0), (1, 4, 9.0)])
def test_lower_weight_zero_point_refuses_a_zero_point_off_the_grid(signed, bits, zeropt):
    """A zero point outside the b-bit range puts some q - z outside the signed narrow
    (b+1)-bit grid: the lowered node would clip them. A clear error naming the node."""
    lo, hi = int(min_int(signed, 0, bits)), int(max_int(signed, 0, bits))
    w = (np.linspace(lo - zeropt, hi - zeropt, 16).reshape(4, 4) * S).astype(np.float32)
    model = weight_zp_model(w, S, zeropt, bits, signed)
    with pytest.raises(ZeroPointError, match=r"'qw_node'.*outside the signed narrow 5-bit grid"):
        model.transform(LowerWeightZeroPoint())
    assert issubclass(ZeroPointError, FinnFlowError)


def test_lower_zero_points_reports_changed_and_leaves_others_alone():
    """Both lowerings in one: an activation and a weight zero point."""
    w = ties((4, 3), S, 5.0, 4, 0)
    model = make_model(
        [
            quant("x", "qx", "qa", 1, 0),
            quant("w", "qw", "qw_node", 0, 0),
            helper.make_node("MatMul", ["qx", "qw"], ["y"]),
        ],
        {"x": [2, 4]},
        {"y": [2, 3]},
        {"w": w, **quant_params("qa", S, -7.0, 8), **quant_params("qw_node", S, 5.0, 4)},
    )
    feeds = [{"x": ties((2, 4), S, -7.0, 8, 1, 0, seed)} for seed in range(4)]
    feeds.append({"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)})
    new = check_rewrite(model, LowerZeroPoints(), feeds)
    assert quant_nodes_with_zero_point(new) == []
    check_left_alone(act_zp_model([2, 4], S, 0.0, 8, 1, 0), LowerZeroPoints())


def test_remove_unused_initializers_reports_changed():
    """qonnx's RemoveUnusedTensors, which the zero-point lowerings use for the old constants."""
    model = act_zp_model([2, 4], S, 0.0, 8, 1, 0)
    model.set_initializer("stale", np.zeros(3, np.float32))
    x = ties((2, 4), S)
    new = check_rewrite(model, RemoveUnusedTensors(), [{"x": x}])
    assert new.get_initializer("stale") is None and new.get_initializer("q_s") is not None


# ------------------------------------------- zero-point offsets into MultiThreshold (FINN)
def mt_model(scale, offset, op="Sub", out_scale=1.0, channels=6, steps=7) -> ModelWrapper:
    """x (1, C) -> MultiThreshold (C, steps) -> Mul(scale) -> Sub/Add(offset) -> y."""
    rng = np.random.default_rng(0)
    thresholds = np.sort(rng.integers(-40, 40, (channels, steps)), axis=1) + 0.5
    nodes = [
        helper.make_node(
            "MultiThreshold",
            ["x", "thr"],
            ["q"],
            domain=QONNX,
            out_dtype=f"UINT{int(np.ceil(np.log2(steps + 1)))}",
            out_scale=out_scale,
            name="mt",
        ),
        helper.make_node("Mul", ["q", "s"], ["m"], name="mul"),
        helper.make_node(op, ["m", "c"], ["y"], name="offset"),
    ]
    return make_model(
        nodes,
        {"x": [1, channels]},
        {"y": [1, channels]},
        {"thr": thresholds, "s": scale, "c": offset},
    )


def mt_feeds(model) -> list[dict]:
    """Random inputs and inputs exactly on the thresholds (count(x >= T) ties)."""
    thresholds = model.get_initializer("thr")
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.uniform(-45, 45, (1, thresholds.shape[0])).astype(np.float32)}]
    for j in range(thresholds.shape[1]):
        feeds.append({"x": thresholds[:, j][None].astype(np.float32)})
    return feeds


@pytest.mark.parametrize("op,offset_steps", [("Sub", 3), ("Add", -5), ("Sub", -2)])
def test_absorb_zero_point_offset_into_multithreshold(op, offset_steps):
    """s*q - z*s == s*(q - z): exact for a power-of-two scale."""
    model = mt_model(S, np.float32(offset_steps * S), op)
    new = check_rewrite(model, AbsorbZeroPointOffsetIntoMultiThreshold(), mt_feeds(model))
    assert ops(new) == ["MultiThreshold", "Mul"]
    bias = -offset_steps if op == "Sub" else offset_steps
    odt = new.get_tensor_datatype(new.graph.node[0].output[0])
    assert all(odt.allowed(v) for v in range(bias, bias + 8))


def test_absorb_zero_point_offset_other_scale_is_float_rounding_only():
    """With a scale that is not a power of two, s*q + c and s*(q - z) differ by float32
    rounding only: the same levels."""
    scale = np.float32(0.0837)
    model = mt_model(scale, np.float32(3 * scale), "Sub")
    new = check_rewrite(
        model, AbsorbZeroPointOffsetIntoMultiThreshold(), mt_feeds(model), exact=False, rtol=0,
        atol=float(scale) * 1e-5,
    )  # fmt: skip
    for feed in mt_feeds(model):
        np.testing.assert_array_equal(
            np.round(run(new, feed) / scale), np.round(run(model, feed) / scale)
        )


def test_absorb_zero_point_offset_leaves_others_alone():
    check_left_alone(mt_model(S, np.float32(0.3 * S)), AbsorbZeroPointOffsetIntoMultiThreshold())
    check_left_alone(mt_model(S, np.float32(0.0)), AbsorbZeroPointOffsetIntoMultiThreshold())
    check_left_alone(
        mt_model(S, np.float32(2 * S), out_scale=2.0), AbsorbZeroPointOffsetIntoMultiThreshold()
    )


#: A zero-point quantiser of a trained window-8 model (mixed-4-8/sq-apq, the input of the
#: positional-encoding add): the lowering writes the offset as float32(Z_BITE * S_BITE), and
#: streamlining's float32(offset * float32(1 / S_BITE)) is then 2**-19 off -Z_BITE.
S_BITE = np.float32(0.009099877439439297)
Z_BITE = 17


def test_bite_constants_are_not_exact_in_float32():
    """The constants the tests below use do bite: ``fl32(z*s) * fl32(1/s) != z``."""
    c = np.float32(Z_BITE * S_BITE)
    assert c == np.float32(Z_BITE) * S_BITE
    assert np.float32(-c) * (np.float32(1.0) / S_BITE) == np.float32(-16.999998)
    assert abs(float(np.float32(-c) * (np.float32(1.0) / S_BITE)) + Z_BITE) == 2.0**-19


def rescale_model(offset, op="Sub", divisor=S_BITE, channels=6) -> ModelWrapper:
    """x (1, C) -> Sub/Add(offset) -> Div(divisor) -> y: a zero-point offset in front of the
    positional-encoding add's rescale, as FINN imports it."""
    nodes = [
        helper.make_node(op, ["x", "c"], ["h"], name="offset"),
        helper.make_node("Div", ["h", "s"], ["y"], name="rescale"),
    ]
    inits = {"c": np.float32(offset), "s": np.float32(divisor)}
    return make_model(nodes, {"x": [1, channels]}, {"y": [1, channels]}, inits)


@pytest.mark.parametrize("op", ["Sub", "Add"])
def test_exact_zero_point_offset_past_rescale_gives_qonnx_levels(op):
    """``Sub(fl32(z*s)) -> Div(s)`` becomes ``Div(s) -> Add(-z)``: on quantised inputs
    ``(level + b) * s`` the output is QONNX's ``level + b - z`` exactly, where the float32
    chain (and finn's MoveAddPastMul, ``fl32(c * fl32(1/s))``) is off by up to 2**-19."""
    c = np.float32(Z_BITE * S_BITE) * (1 if op == "Sub" else -1)
    model = rescale_model(c, op)
    levels = np.arange(-134, -122, 2, dtype=np.float32)[None]  # near z: the error survives
    feeds = [{"x": (levels * S_BITE).astype(np.float32)}]
    new = check_rewrite(model, ExactZeroPointOffsetPastRescale(), feeds, exact=False, rtol=1e-5)
    assert ops(new) == ["Div", "Add"]
    (const,) = [i for i in new.graph.node[1].input if new.get_initializer(i) is not None]
    assert float(new.get_initializer(const)) == -Z_BITE
    np.testing.assert_array_equal(run(new, feeds[0]), levels - Z_BITE)
    # what finn's MoveAddPastMul would have folded instead (test_bite_constants...)
    assert np.float32(-abs(c)) * (np.float32(1.0) / S_BITE) != -Z_BITE


def test_exact_zero_point_offset_past_rescale_leaves_others_alone():
    """An offset that is not one float32 rounding of an integer multiple of the divisor
    (``17.0001 s``, 0, or another divisor) is left alone."""
    trafo = ExactZeroPointOffsetPastRescale()
    check_left_alone(rescale_model(np.float32(17.0001 * S_BITE)), trafo)
    check_left_alone(rescale_model(np.float32(0.0)), trafo)
    check_left_alone(rescale_model(np.float32(Z_BITE * S_BITE), divisor=0.5), trafo)


@pytest.mark.finn
def test_streamlined_positional_encoding_add_stays_integer():
    """The failing window-8 build in miniature: a signed zero-point quantiser (``S_BITE``,
    ``Z_BITE``) feeding the positional-encoding add as FINN imports it (``Div(s) -> Add(PE) ->
    Mul(s)``) and a matrix product. After step_streamline_transformer the add's constant is
    integral (finn's MoveAddPastMul would otherwise fold ``fl32(-c * fl32(1/s)) = -16.999998``
    into it), annotated integer, and the MatMul reads an integer tensor; the quantiser's
    MultiThreshold keeps its 8-bit output (the offset is not absorbed into it)."""
    from finn_flow.no_vivado import finn_session
    from finn_flow.streamlining import step_streamline_transformer

    rng = np.random.default_rng(0)
    seq, dim = 8, 16
    pe = rng.integers(-100, 111, (seq, dim)).astype(np.float32)
    pe[0, :8] = np.arange(10, 18)  # sums with -16.999998 near 0: the 2**-19 error survives
    thresholds = np.arange(-127.5, 128.0, dtype=np.float32)[None]  # 255 levels: UINT8
    c = np.float32(Z_BITE * S_BITE)
    nodes = [
        helper.make_node("MultiThreshold", ["x", "thr"], ["q"], domain=QONNX, out_dtype="UINT8"),
        helper.make_node("Add", ["q", "b"], ["qb"]),
        helper.make_node("Mul", ["qb", "s"], ["m"]),
        helper.make_node("Sub", ["m", "c"], ["h"]),
        helper.make_node("Div", ["h", "s"], ["hs"]),
        helper.make_node("Add", ["hs", "pe"], ["hp"]),
        helper.make_node("Mul", ["hp", "s"], ["y0"]),
        helper.make_node("MatMul", ["y0", "w"], ["y"]),  # a fork, like the q/k/v projections
        helper.make_node("MatMul", ["y0", "w"], ["y2"]),
    ]
    model = make_model(
        nodes,
        {"x": [1, seq, dim]},
        {"y": [1, seq, dim], "y2": [1, seq, dim]},
        {"thr": thresholds, "b": np.float32(-128), "s": S_BITE, "c": c, "pe": pe,
         "w": rng.integers(-7, 8, (dim, dim)).astype(np.float32)},
        {"pe": "INT9", "w": "INT4"},
    )  # fmt: skip

    class Cfg:
        def _resolve_verification_steps(self):
            return []

    with finn_session():
        new = step_streamline_transformer(model, Cfg())
    (add,) = [n for n in new.graph.node if n.op_type == "Add"]
    (const,) = [i for i in add.input if new.get_initializer(i) is not None]
    value = new.get_initializer(const)
    np.testing.assert_array_equal(value, np.round(value))
    # the encoding plus the signed quantiser's shift (-128) and its exact offset (-z)
    np.testing.assert_array_equal(value.reshape(pe.shape), pe - 128 - Z_BITE)
    assert new.get_tensor_datatype(const).is_integer()
    (mt,) = [n for n in new.graph.node if n.op_type == "MultiThreshold"]
    assert new.get_tensor_datatype(mt.output[0]).bitwidth() == 8
    matmuls = [n for n in new.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2
    assert all(new.get_tensor_datatype(n.input[0]).is_integer() for n in matmuls)


# ------------------------------------------------------------- pooling (hw_rewrites.py)
def pool_model(op, t=16, c=4, opset=13, in_scale=S, out_scale=S, mul=None, keepdims=0):
    """x (1, T, C) -> Quant -> [Mul(mul)] -> ReduceMean/ReduceSum over time -> Quant -> y."""
    nodes = [quant("x", "qx", "qin")]
    inits = {**quant_params("qin", in_scale, 0.0, 4), **quant_params("qout", out_scale, 0.0, 8)}
    src = "qx"
    if mul is not None:
        nodes.append(helper.make_node("Mul", ["qx", "c"], ["scaled"], name="mul"))
        inits["c"] = mul
        src = "scaled"
    if op == "ReduceSum" or opset >= 18:
        nodes.append(helper.make_node(op, [src, "axes"], ["r"], keepdims=keepdims, name="red"))
        inits["axes"] = np.asarray([1], np.int64)
    else:
        nodes.append(helper.make_node(op, [src], ["r"], axes=[1], keepdims=keepdims, name="red"))
    nodes.append(quant("r", "y", "qout"))
    out = [1, 1, c] if keepdims else [1, c]
    return make_model(nodes, {"x": [1, t, c]}, {"y": out}, inits, opset=opset)


def pool_feeds(t, c):
    """Random inputs, and inputs on the input quantiser's half steps whose (scaled) sums land
    on the output quantiser's half steps (odd sums of levels against a doubled scale)."""
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.uniform(-9, 9, (1, t, c)).astype(np.float32) * S} for _ in range(4)]
    feeds += [{"x": ties((1, t, c), S, 0.0, 4, seed=s)} for s in range(4)]
    return feeds


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_to_scaled_sum_power_of_two_length(opset, keepdims):
    """mean = sum * (1/N): exact for N = 16. The output quantiser's scale S/16 puts every
    mean of levels on its grid, S/8 puts the odd sums on its half steps (ties)."""
    for out_scale in (S / 16, S / 8):
        model = pool_model("ReduceMean", 16, 4, opset, out_scale=out_scale, keepdims=keepdims)
        new = check_rewrite(model, ReduceMeanToScaledSum(), pool_feeds(16, 4))
        assert ops(new) == ["Quant", "ReduceSum", "Mul", "Quant"]


def test_reduce_mean_to_scaled_sum_other_length_is_float_rounding_only():
    """N = 24: sum * float32(1/24) and onnxruntime's mean differ by float32 rounding; no mean
    of these inputs lies on a half step of the output quantiser, whose outputs are equal."""
    model = pool_model("ReduceMean", 24, 4, out_scale=np.float32(0.0123))
    new = check_rewrite(model, ReduceMeanToScaledSum(), pool_feeds(24, 4))
    check_float_rounding(model, new, "r", pool_feeds(24, 4))


def test_reduce_mean_to_scaled_sum_leaves_others_alone():
    check_left_alone(pool_model("ReduceSum"), ReduceMeanToScaledSum())


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean"])
@pytest.mark.parametrize("const_first", [False, True])
def test_move_scalar_mul_past_reduce(op, const_first):
    """Reduce(x * c) == Reduce(x) * c: exact for integer-valued x and power-of-two c."""
    # output scales that put odd sums of levels on the output quantiser's half steps
    out_scale = S / 2 if op == "ReduceSum" else S / 32
    model = pool_model(op, 16, 4, mul=np.float32(0.25), out_scale=out_scale)
    if const_first:
        mul = model.get_node_from_name("mul")
        mul.input[0], mul.input[1] = mul.input[1], mul.input[0]
    new = check_rewrite(model, MoveScalarMulPastReduce(), pool_feeds(16, 4))
    assert ops(new) == ["Quant", op, "Mul", "Quant"]


def test_move_scalar_mul_past_reduce_other_factor_is_float_rounding_only():
    """c = 0.0837: sum(x*c) and sum(x)*c differ by float32 rounding; the quantised outputs
    (no sum near a half step of the output quantiser) are equal."""
    model = pool_model("ReduceSum", 24, 4, mul=np.float32(0.0837), out_scale=np.float32(0.05))
    new = check_rewrite(model, MoveScalarMulPastReduce(), pool_feeds(24, 4))
    check_float_rounding(model, new, "r", pool_feeds(24, 4))


def test_move_scalar_mul_past_reduce_leaves_others_alone():
    per_channel = pool_model("ReduceSum", mul=np.full((1, 1, 4), 0.25, np.float32))
    check_left_alone(per_channel, MoveScalarMulPastReduce())
    forked = pool_model("ReduceSum", mul=np.float32(0.25))
    forked.graph.node.append(helper.make_node("Identity", ["scaled"], ["copy"], name="fork"))
    forked.graph.output.append(helper.make_tensor_value_info("copy", TensorProto.FLOAT, None))
    check_left_alone(forked, MoveScalarMulPastReduce())


def time_pool_model(t=24, c=16, dt="INT8", batch=1, op="ReduceSum"):
    x = helper.make_node(op, ["x", "axes"], ["y"], keepdims=0, name="pool")
    return make_model(
        [x],
        {"x": [batch, t, c]},
        {"y": [batch, c]},
        {"axes": np.asarray([1], np.int64)},
        {"x": dt},
    )


def test_infer_time_pool_from_reduce_sum_on_integer_extremes():
    """Complements test_finn_flow_transforms.py: INT4 ends and alternating extremes."""
    model = time_pool_model(8, 3, "INT4")
    feeds = [{"x": np.full((1, 8, 3), v, np.float32)} for v in (-8, 7)] + [
        {"x": np.where(np.arange(24).reshape(1, 8, 3) % 2, 7, -8).astype(np.float32)}
    ]
    check_rewrite(model, InferTimePoolFromReduceSum(), feeds)


def test_infer_time_pool_from_reduce_sum_leaves_others_alone():
    check_left_alone(time_pool_model(dt="FLOAT32"), InferTimePoolFromReduceSum())
    check_left_alone(time_pool_model(batch=2), InferTimePoolFromReduceSum())
    check_left_alone(time_pool_model(op="ReduceMax"), InferTimePoolFromReduceSum())


# ------------------------------------------------------------ layer norm (hw_rewrites.py)
def ln_model(scale=None, offset=None, offset_op="Add", const_first=False, affine=False):
    """x (1, 4, 8) -> [Mul(scale)] -> [Add/Sub(offset)] -> LayerNormalization -> Quant -> y.
    The norm's epsilon, 0.5, is large enough against the inputs' variance to matter."""
    nodes, inits, src = [], {}, "x"
    if scale is not None:
        nodes.append(helper.make_node("Mul", [src, "s"], ["xs"], name="mul"))
        inits["s"], src = scale, "xs"
    if offset is not None:
        args = ["c", src] if const_first else [src, "c"]
        nodes.append(helper.make_node(offset_op, args, ["xc"], name="offset"))
        inits["c"], src = offset, "xc"
    nodes.append(
        helper.make_node(
            "LayerNormalization", [src, "g", "b"], ["n"], axis=-1, epsilon=0.5, name="ln"
        )
    )
    nodes.append(quant("n", "y", "qout"))
    rng = np.random.default_rng(5)
    inits["g"] = rng.uniform(0.5, 2, 8) if affine else np.ones(8)
    inits["b"] = rng.uniform(-1, 1, 8) if affine else np.zeros(8)
    inits.update(quant_params("qout", np.float32(2.0**-5), 0.0, 8))
    return make_model(nodes, {"x": [1, 4, 8]}, {"y": [1, 4, 8]}, inits, opset=17)


def ln_feeds():
    """Integer residual sums (what the norm reads after streamlining), small ones (where
    epsilon counts) and half steps."""
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.integers(-60, 60, (1, 4, 8)).astype(np.float32)} for _ in range(4)]
    feeds += [{"x": rng.integers(-2, 3, (1, 4, 8)).astype(np.float32)} for _ in range(4)]
    return feeds + [{"x": ties((1, 4, 8), np.float32(1.0), seed=s)} for s in range(4)]


@pytest.mark.parametrize("affine", [False, True])
def test_absorb_power_of_two_scale_into_layer_norm_is_exact(affine):
    """LN(s*x; eps) == LN(x; eps/s**2) bit for bit when s is a power of two."""
    model = ln_model(scale=np.float32(0.25), affine=affine)
    new = check_rewrite(model, AbsorbScalarMulIntoLayerNorm(), ln_feeds())
    assert ops(new) == ["LayerNormalization", "Quant"]


@pytest.mark.parametrize(
    "scale,offset,offset_op,const_first",
    [(0.37, -1.5, "Add", False), (0.37, 2.0, "Sub", False), (None, 3.25, "Add", True)],
)
def test_absorb_scalar_mul_and_offset_into_layer_norm(scale, offset, offset_op, const_first):
    """Other scales and offsets change the float32 arithmetic of the norm: its outputs agree
    to float32 rounding; on these inputs none lies on a half step of the next quantiser, and
    the quantised outputs are equal."""
    model = ln_model(
        None if scale is None else np.float32(scale), np.float32(offset), offset_op, const_first
    )
    new = check_rewrite(model, AbsorbScalarMulIntoLayerNorm(), ln_feeds())
    assert ops(new) == ["LayerNormalization", "Quant"]
    check_float_rounding(model, new, "n", ln_feeds(), rtol=1e-5)


def test_absorb_scalar_mul_into_layer_norm_leaves_others_alone():
    check_left_alone(ln_model(scale=np.float32(-0.37)), AbsorbScalarMulIntoLayerNorm())
    check_left_alone(ln_model(scale=np.float32(0.0)), AbsorbScalarMulIntoLayerNorm())
    check_left_alone(  # c - x flips the sign
        ln_model(offset=np.float32(1.0), offset_op="Sub", const_first=True),
        AbsorbScalarMulIntoLayerNorm(),
    )
    check_left_alone(ln_model(scale=np.full(8, 0.5, np.float32)), AbsorbScalarMulIntoLayerNorm())


# -------------------------------------------------- integer constants (hw_rewrites.py)
def add_model(const, x_dt="INT8", op="Add"):
    const = np.asarray(const, np.float32)
    return make_model(
        [helper.make_node(op, ["x", "c"], ["y"], name="add")],
        {"x": [1, const.size]},
        {"y": [1, const.size]},
        {"c": const.reshape(1, -1)},
        {"x": x_dt},
    )


@pytest.mark.parametrize(
    "const", [[-3, 5, 0, 2], [-8, 7, 1, 0], [-8, 8, 0, 1], [0, 1, 1, 0], [300, -2, 5, 9]]
)
@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_annotate_integer_add_constants(const, op):
    model = add_model(const, op=op)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.integers(-128, 128, (1, 4)).astype(np.float32)} for _ in range(4)]
    new = check_rewrite(model, AnnotateIntegerAddConstants(), feeds)
    dt = new.get_tensor_datatype("c")
    assert dt.is_integer() and all(dt.allowed(v) for v in const)


@settings(max_examples=200, deadline=None)
@given(const=arrays(np.int64, st.integers(1, 6), elements=st.integers(-(2**20), 2**20)))
def test_annotated_constant_datatype_holds_every_value(const):
    assume(set(const.tolist()) != {-1, 0})  # known bug: test_smallest_int_datatype_of_minus_...
    new = add_model(const).transform(AnnotateIntegerAddConstants())
    dt = new.get_tensor_datatype("c")
    assert all(dt.allowed(v) for v in const.tolist()), (dt.name, const)


def test_smallest_int_datatype_of_minus_one_to_zero():
    """get_smallest_possible(-1) is BIPOLAR {-1, +1}: the range [-1, 0] needs INT2."""
    assert smallest_int_datatype(-1, 0).allowed(0)
    dt = add_model([-1, 0, 0, -1]).transform(AnnotateIntegerAddConstants()).get_tensor_datatype("c")
    assert dt.allowed(0)


@settings(max_examples=300, deadline=None)
@given(lo=st.integers(-(2**20), 2**20), width=st.integers(0, 2**20))
def test_smallest_int_datatype_holds_its_range(lo, width):
    hi = lo + width
    assume((lo, hi) != (-1, 0))  # known bug: test_smallest_int_datatype_of_minus_one_to_zero
    dt = smallest_int_datatype(lo, hi)
    assert dt.is_integer() and dt.allowed(lo) and dt.allowed(hi)
    assert dt.min() <= lo and dt.max() >= hi


def test_annotate_integer_add_constants_leaves_others_alone():
    check_left_alone(add_model([0.5, 1, 2, 3]), AnnotateIntegerAddConstants())  # fractional
    check_left_alone(add_model([1, 2, 3, 4], x_dt="FLOAT32"), AnnotateIntegerAddConstants())
    annotated = add_model([1, 2, 3, 4])
    annotated.set_tensor_datatype("c", DataType["UINT3"])
    check_left_alone(annotated, AnnotateIntegerAddConstants())


# --------------------------------------------------------- squeeze (hw_rewrites.py)
@pytest.mark.parametrize("op,in_shape,out_shape", [
    ("Squeeze", [1, 8, 1], [1, 8]),
    ("Unsqueeze", [1, 8], [1, 8, 1]),
])  # fmt: skip
def test_squeeze_to_reshape(op, in_shape, out_shape):
    axis = 2
    model = make_model(
        [helper.make_node(op, ["qx", "axes"], ["r"], name="sq"), quant("r", "y", "qout")],
        {"qx": in_shape},
        {"y": out_shape},
        {"axes": np.asarray([axis], np.int64), **quant_params("qout", S)},
    )
    rng = np.random.default_rng(0)
    feeds = [{"qx": rng.standard_normal(in_shape).astype(np.float32)}]
    feeds += [{"qx": ties(in_shape, S, seed=s)} for s in range(3)]
    new = check_rewrite(model, SqueezeToReshape(), feeds)
    assert ops(new) == ["Reshape", "Quant"]


def test_squeeze_to_reshape_leaves_others_alone():
    check_left_alone(act_zp_model([2, 4], S, 0.0, 8, 1, 0), SqueezeToReshape())


# ----------------------------------------------------- binary weights (FINN's MVAU)
def mvau_model(weights, wdt="BINARY", xnor=0):
    pytest.importorskip("finn")
    mw, mh = weights.shape
    node = helper.make_node(
        "MVAU",
        ["x", "w"],
        ["y"],
        domain="finn.custom_op.fpgadataflow",
        backend="fpgadataflow",
        name="mvau",
        MW=mw,
        MH=mh,
        SIMD=1,
        PE=1,
        inputDataType="INT4",
        weightDataType=wdt,
        outputDataType="INT32",
        noActivation=1,
        binaryXnorMode=xnor,
    )
    return make_model(
        [node], {"x": [1, mw]}, {"y": [1, mh]}, {"w": weights}, {"x": "INT4", "w": wdt}
    )


@pytest.mark.finn
def test_widen_binary_weights():
    weights = np.tile(np.eye(3, dtype=np.float32), (4, 1))  # the time-pool 0/1 weights
    model = mvau_model(weights)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.integers(-8, 8, (1, 12)).astype(np.float32)} for _ in range(3)]
    new = check_rewrite(model, WidenBinaryWeights(), feeds)
    assert new.get_tensor_datatype("w") == DataType["UINT2"]
    from qonnx.custom_op.registry import getCustomOp

    assert getCustomOp(new.graph.node[0]).get_nodeattr("weightDataType") == "UINT2"


@pytest.mark.finn
def test_widen_binary_weights_leaves_others_alone():
    weights = np.tile(np.eye(3, dtype=np.float32), (4, 1))
    check_left_alone(mvau_model(weights, "UINT2"), WidenBinaryWeights())
    check_left_alone(mvau_model(weights, "BINARY", xnor=1), WidenBinaryWeights())


# ---------------------------------------------------------------- 1D convs (conv1d.py)
C_IN, T_IN, C_OUT, K = 4, 10, 6, 3


def conv_model(head="flatten", per_channel=False, scale_w=S, scale_out=None, group=1, dims=1):
    """x (1, C, T) -> Quant -> Conv1d(Quant(W), bias, pads 1, stride 2, dilation 1)
    -> Quant -> Relu -> head -> y. ``head``: "flatten" (Flatten -> Quant -> MatMul(W2)),
    "pool" (ReduceMean over time, keepdims 0) or "none"."""
    rng = np.random.default_rng(3)
    c_w = C_IN // group
    w_shape = (C_OUT, c_w, K) if dims == 1 else (C_OUT, c_w, K, K)
    x_shape = [1, C_IN, T_IN] if dims == 1 else [1, C_IN, T_IN, T_IN]
    # per-channel weight scales: scale_w times 1/2, 1 or 2 (powers of two stay powers of two)
    ws = (scale_w * 2.0 ** rng.integers(-1, 2, (C_OUT, 1, 1))).astype(np.float32)
    ws = ws if per_channel else scale_w
    w = (rng.integers(-7, 8, w_shape) * (ws if dims == 1 else scale_w)).astype(np.float32)
    conv_attrs = {"pads": [1, 1], "strides": [2], "dilations": [1], "kernel_shape": [K]}
    if dims == 2:
        conv_attrs = {"pads": [1, 1, 1, 1], "kernel_shape": [K, K]}
    t_out = (T_IN + 2 - K) // 2 + 1 if dims == 1 else T_IN
    s_out = scale_out if scale_out is not None else 2 * S * scale_w
    nodes = [
        quant("x", "qx", "qin"),
        quant("w", "qw", "qw_node", 1, 1),
        helper.make_node(
            "Conv", ["qx", "qw", "bias"], ["conv"], group=group, name="conv", **conv_attrs
        ),
        quant("conv", "qc", "qconv"),
        helper.make_node("Relu", ["qc"], ["act"], name="relu"),
    ]
    inits = {
        "w": w,
        "bias": (rng.integers(-4, 5, C_OUT) * S * scale_w).astype(np.float32),
        **quant_params("qin", S, 0.0, 4),
        **quant_params("qw_node", ws, 0.0, 4),
        **quant_params("qconv", s_out, 0.0, 8),
    }
    out_shape = [1, C_OUT, t_out] if dims == 1 else [1, C_OUT, T_IN, T_IN]
    if head == "flatten":
        nodes += [
            helper.make_node("Flatten", ["act"], ["flat"], axis=1, name="flatten"),
            quant("flat", "qf", "qflat", 0, 0),
            helper.make_node("MatMul", ["qf", "w2"], ["h"], name="head"),
            quant("h", "y", "qhead"),  # the head's output quantiser; odd sums are its ties
        ]
        inits.update(quant_params("qhead", 2 * s_out * S, 0.0, 16))
        inits["w2"] = (rng.integers(-3, 4, (C_OUT * t_out, 2)) * S).astype(np.float32)
        inits.update(quant_params("qflat", s_out, 0.0, 8))
        out_shape = [1, 2]
    elif head == "pool":  # mean over the 5 steps, then its quantiser: odd sums near ties
        nodes.append(helper.make_node("ReduceMean", ["act"], ["p"], axes=[2], keepdims=0))
        nodes.append(quant("p", "y", "qpool"))
        inits.update(quant_params("qpool", s_out / 10, 0.0, 16))
        out_shape = [1, C_OUT]
    else:
        nodes.append(helper.make_node("Identity", ["act"], ["y"]))
    return make_model(nodes, {"x": x_shape}, {"y": out_shape}, inits)


def conv_feeds(shape=(1, C_IN, T_IN)):
    """Random inputs and inputs on the input quantiser's half steps; with the output
    quantiser's scale 2·s_x·s_w every odd accumulator is a tie of the conv's quantiser."""
    rng = np.random.default_rng(0)
    feeds = [{"x": (rng.uniform(-9, 9, shape) * S).astype(np.float32)} for _ in range(4)]
    return feeds + [{"x": ties(shape, S, 0.0, 4, seed=s)} for s in range(4)]


@pytest.mark.parametrize("head", ["flatten", "pool", "none"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_lower_conv1d_then_move_transposes(head, per_channel):
    """Each step alone: the lowering leaves its two transposes, moving them cancels or
    absorbs them; outputs bit for bit equal, on random inputs and on ties."""
    model = conv_model(head, per_channel)
    feeds = conv_feeds()
    assert (
        ties_at_conv_quantiser(model, feeds) > 0
    )  # the tie feeds do reach the conv's quantiser on half steps
    lowered = check_rewrite(model, LowerConv1dToChannelsLastMatMul(), feeds, annotate=True)
    assert "Conv" not in ops(lowered) and ops(lowered).count("Transpose") == 2
    lowered = lowered.transform(InferDataTypes())  # for qonnx's Im2Col execution
    moved = check_rewrite(lowered, MoveConv1dTransposes(), feeds, annotate=True)
    # only the graph input's own layout change is left (the head absorbs the output one)
    assert ops(moved).count("Transpose") == (1 if head != "none" else 2)


def ties_at_conv_quantiser(model, feeds) -> int:
    """How many conv outputs lie exactly on a half step of the conv's quantiser."""
    s = float(model.get_initializer("qconv_s").ravel()[0])
    count = 0
    for feed in feeds:
        ctx = execute_onnx(model, feed, return_full_exec_context=True)
        frac = np.modf(ctx["conv"].astype(np.float64) / s)[0]
        count += int((np.abs(frac) == 0.5).sum())
    return count


@pytest.mark.parametrize("head", ["flatten", "pool", "none"])
def test_conv1d_to_channels_last(head):
    """Both steps as the flow runs them; power-of-two scales: exact also on constructed ties
    of every quantiser after the conv."""
    model = conv_model(head, per_channel=True)
    new = check_rewrite(model, Conv1dToChannelsLast(), conv_feeds())
    assert "Conv" not in ops(new) and ops(new).count("Im2Col") == 1


@pytest.mark.parametrize("head", ["flatten", "pool"])
def test_conv1d_to_channels_last_other_scales(head):
    """Scales that are not powers of two (as Brevitas exports them): the rewrite reorders the
    float32 sums of the products (im2col patches, permuted head rows), so a product sum that
    lies exactly on a half step of the next quantiser may round the other way; this model's
    quantiser scales (0.05, 0.00713) make no such ties, and the outputs are bit for bit equal
    on random inputs and on the input quantiser's half steps."""
    model = conv_model(
        head, per_channel=True, scale_w=np.float32(0.0731), scale_out=np.float32(0.05)
    )
    for name in ("qhead_s", "qpool_s"):
        if model.get_initializer(name) is not None:
            model.set_initializer(name, np.float32(0.00713))
    check_rewrite(model, Conv1dToChannelsLast(), conv_feeds())


def test_conv1d_rewrites_leave_others_alone():
    for trafo in (LowerConv1dToChannelsLastMatMul(), Conv1dToChannelsLast()):
        check_left_alone(conv_model("none", group=2), trafo)  # grouped
        check_left_alone(conv_model("none", dims=2), trafo)  # 2D
    # transposes the lowering did not make are never moved (attention's, norm's)
    model = make_model(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1], name="attn_t"),
            helper.make_node("Relu", ["t"], ["r"], name="relu"),
            helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1], name="attn_back"),
        ],
        {"x": [1, 3, 5]},
        {"y": [1, 3, 5]},
    )
    check_left_alone(model, MoveConv1dTransposes())
