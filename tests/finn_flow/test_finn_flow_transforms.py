"""Zero-point lowering: outputs unchanged, no non-zero zero point left (qonnx only)."""

from __future__ import annotations

import finn_flow_models as models
import numpy as np
import pytest
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.infer_shapes import InferShapes

from finn_flow.transforms import (
    LowerActivationZeroPoint,
    LowerWeightZeroPoint,
    LowerZeroPoints,
    ZeroPointError,
    quant_nodes_with_zero_point,
)

TOL = 1e-5


def _quant_model(shape, scale, zeropt, bits, signed, narrow, weight=None) -> ModelWrapper:
    """x -> Quant(act) [-> MatMul(Quant(weight))] -> y, with the given act parameters."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    nodes = [
        helper.make_node(
            "Quant",
            ["x", "s", "z", "b"],
            ["qa"],
            domain="qonnx.custom_op.general",
            signed=signed,
            narrow=narrow,
            rounding_mode="ROUND",
            name="QuantAct",
        )
    ]
    inits = {
        "s": np.asarray(scale, np.float32),
        "z": np.asarray(zeropt, np.float32),
        "b": np.asarray(bits, np.float32),
    }
    out_shape = list(shape)
    last = "qa"
    if weight is not None:
        w, ws, wz, wb, wsigned, wnarrow = weight
        inits.update(
            {
                "w": w.astype(np.float32),
                "ws": np.float32(ws),
                "wz": np.float32(wz),
                "wb": np.float32(wb),
            }
        )
        nodes.append(
            helper.make_node(
                "Quant",
                ["w", "ws", "wz", "wb"],
                ["qw"],
                domain="qonnx.custom_op.general",
                signed=wsigned,
                narrow=wnarrow,
                rounding_mode="ROUND",
                name="QuantW",
            )
        )
        nodes.append(helper.make_node("MatMul", ["qa", "qw"], ["y"], name="MatMul0"))
        out_shape[-1] = w.shape[1]
        last = "y"
    else:
        nodes.append(helper.make_node("Identity", ["qa"], ["y"], name="Id"))
    y = helper.make_tensor_value_info(last if last == "y" else "y", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(
        nodes,
        "g",
        [x],
        [y],
        initializer=[
            helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel()) for k, v in inits.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return ModelWrapper(model).transform(InferShapes())


def _max_diff(m0: ModelWrapper, m1: ModelWrapper, inputs) -> float:
    i0, o0 = m0.graph.input[0].name, m0.graph.output[0].name
    i1, o1 = m1.graph.input[0].name, m1.graph.output[0].name
    return max(
        float(np.abs(execute_onnx(m0, {i0: x})[o0] - execute_onnx(m1, {i1: x})[o1]).max())
        for x in inputs
    )


@pytest.mark.parametrize(
    "signed,narrow,bits,zeropt",
    [
        (0, 0, 8, 37.0),  # unsigned + zero point (Brevitas shifted quantisers)
        (1, 0, 8, -21.0),  # signed + zero point (our AQ)
        (1, 1, 4, 3.0),  # signed narrow 4 bit
        (1, 0, 6, [2.0, -5.0, 0.0, 7.0]),  # per-channel zero point
    ],
)
def test_activation_zero_point_rewrite_exact(signed, narrow, bits, zeropt):
    rng = np.random.default_rng(0)
    scale = np.float32(0.05) if np.ndim(zeropt) == 0 else np.asarray([0.05, 0.1, 0.02, 0.07])
    m0 = _quant_model([2, 4], scale, zeropt, bits, signed, narrow)
    m1 = m0.transform(LowerActivationZeroPoint()).transform(InferShapes())
    assert quant_nodes_with_zero_point(m0) == ["QuantAct"]
    assert quant_nodes_with_zero_point(m1) == []
    ops = [n.op_type for n in m1.graph.node]
    assert ops[:3] == ["Add", "Quant", "Sub"]
    xs = [rng.standard_normal((2, 4)).astype(np.float32) * 4 for _ in range(20)]
    assert _max_diff(m0, m1, xs) <= TOL


@pytest.mark.parametrize("wsigned,wbits,wz", [(0, 4, 7.0), (1, 4, -3.0), (0, 8, 130.0)])
def test_weight_zero_point_rewrite_exact(wsigned, wbits, wz):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    m0 = _quant_model([2, 4], 0.1, 0.0, 8, 1, 0, weight=(w, 0.08, wz, wbits, wsigned, 0))
    m1 = m0.transform(LowerWeightZeroPoint()).transform(InferShapes())
    assert quant_nodes_with_zero_point(m1) == []
    qw = next(n for n in m1.graph.node if n.name == "QuantW")
    attrs = {a.name: helper.get_attribute_value(a) for a in qw.attribute}
    assert attrs["signed"] == 1 and attrs["narrow"] == 1
    assert float(m1.get_initializer(qw.input[3])) == wbits + 1
    xs = [rng.standard_normal((2, 4)).astype(np.float32) for _ in range(10)]
    assert _max_diff(m0, m1, xs) <= TOL


def test_fractional_zero_point_is_reported():
    m0 = _quant_model([2, 4], 0.05, 3.5, 8, 0, 0)
    with pytest.raises(ZeroPointError, match="fractional zero point"):
        m0.transform(LowerActivationZeroPoint())


def test_brevitas_shifted_transformer_rewrite_exact(transformer_zp_model):
    path, shape = transformer_zp_model
    m0 = ModelWrapper(str(path)).transform(InferShapes())
    assert len(quant_nodes_with_zero_point(m0)) > 10
    m1 = m0.transform(LowerZeroPoints()).transform(InferShapes())
    assert quant_nodes_with_zero_point(m1) == []
    xs = list(models.random_inputs(shape, 4))
    assert _max_diff(m0, m1, xs) <= TOL


def test_time_pool_is_an_exact_01_matmul():
    """ReduceSum over time of (1, T, C) integers == Reshape -> MatMul(0/1) -> Reshape."""
    from qonnx.core.datatype import DataType

    from finn_flow.hw_rewrites import InferTimePoolFromReduceSum

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 24, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0, name="pool")
    graph = helper.make_graph([node], "g", [x], [y])
    model = ModelWrapper(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    model.set_initializer("axes", np.asarray([1], dtype=np.int64))
    model.set_tensor_datatype("x", DataType["INT8"])
    model = model.transform(InferShapes())
    rng = np.random.default_rng(0)
    inputs = [rng.integers(-128, 128, (1, 24, 16)).astype(np.float32) for _ in range(3)]
    inputs.append(np.full((1, 24, 16), -128, np.float32))  # extremes: the accumulator range
    before = [execute_onnx(model, {"x": v})["y"] for v in inputs]
    new, changed = InferTimePoolFromReduceSum().apply(model)
    assert changed
    assert [n.op_type for n in new.graph.node] == ["Reshape", "MatMul", "Reshape"]
    for v, ref in zip(inputs, before, strict=True):
        assert np.array_equal(execute_onnx(new, {"x": v})["y"], ref)
    assert InferTimePoolFromReduceSum().apply(new)[1] is False
