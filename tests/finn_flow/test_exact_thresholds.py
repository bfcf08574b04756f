"""Correctly rounded thresholds for float-input quantisers (finn_flow.exact_thresholds).

The bug these tests pin down: min-max-scaled data lands exactly on half steps of the input
quantiser (``x = (k + 1/2)·s``), where FINN's float32 thresholds (and the zero-point offset
folded into them) disagree with QONNX's ``round(x / s + z)``.
"""

from __future__ import annotations

import finn_flow_models as models
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.custom_op.general.intquant import int_quant, max_int, min_int
from qonnx.transformation.infer_shapes import InferShapes

from finn_flow.exact_thresholds import (
    QuantFloatInputToExactThresholds,
    check_float_thresholds,
    exact_thresholds,
    quant_level,
)

S_255 = np.float32(1 / 255)


def _thresholds(scale, zeropt, bits, signed, narrow, rounding="ROUND"):
    lo, hi = int(min_int(signed, narrow, bits)), int(max_int(signed, narrow, bits))
    levels = np.arange(lo + 1, hi + 1, dtype=np.float64)[None]

    def level(x):
        return quant_level(x, scale, zeropt, bits, signed, narrow, rounding)

    return exact_thresholds(level, levels).astype(np.float32).ravel(), lo, level


def _count(x, thresholds, lo):
    return np.searchsorted(thresholds, np.asarray(x, np.float32), side="right") + lo


def _ties(scale, zeropt, lo, hi):
    """Every half step of the grid: x = (k + 1/2 - z)·s in float32, and its neighbours."""
    k = np.arange(lo - 1, hi + 1, dtype=np.float64)
    x = ((k + 0.5 - zeropt) * np.float64(scale)).astype(np.float32)
    return np.concatenate([x, np.nextafter(x, np.inf), np.nextafter(x, -np.inf)])


def test_quant_level_is_qonnx_int_quant():
    x = np.linspace(-3, 3, 100_001, dtype=np.float32)
    for zeropt in (0.0, -128.0, 37.0):
        q = quant_level(x, S_255 * 7, np.float32(zeropt), 8, 1, 0)
        deq = ((q - np.float32(zeropt)) * (S_255 * 7)).astype(np.float32)
        ref = int_quant(x, S_255 * 7, np.float32(zeropt), np.float32(8), 1, 0, "ROUND")
        assert np.array_equal(deq, ref.astype(np.float32))


@pytest.mark.parametrize("zeropt", [0.0, -128.0, -127.0, 5.0])
@pytest.mark.parametrize("bits,signed,narrow", [(8, 1, 0), (8, 1, 1), (8, 0, 0), (4, 1, 0)])
def test_ties_land_on_qonnx_level(zeropt, bits, signed, narrow):
    """The quickstart's failure: x on a half step of s = 1/255, with and without zero point."""
    thresholds, lo, level = _thresholds(S_255, np.float32(zeropt), bits, signed, narrow)
    x = _ties(S_255, zeropt, lo, int(max_int(signed, narrow, bits)))
    assert np.array_equal(_count(x, thresholds, lo), level(x))


def test_finn_default_thresholds_miss_ties():
    """The rewrite is needed: thresholds from (k + 1/2 - z)·s (FINN's formula, float64 then
    float32, zero-point offset subtracted in float32) put some half-step inputs on the wrong
    level, where the exact ones put none."""
    zeropt = np.float32(-128)
    x = _ties(S_255, -128.0, -128, 127)
    k = np.arange(-127, 128, dtype=np.float64)
    finn = ((k - 0.5) * np.float64(S_255)).astype(np.float32) - zeropt * S_255
    wrong = _count(x, finn.astype(np.float32), -128) != quant_level(x, S_255, zeropt, 8, 1, 0)
    assert wrong.sum() > 0
    exact, lo, level = _thresholds(S_255, zeropt, 8, 1, 0)
    assert np.array_equal(_count(x, exact, lo), level(x))


def test_every_float32_near_every_threshold():
    """Exhaustive within ±4096 ulps of each threshold (where a wrong one could differ)."""
    thresholds, lo, level = _thresholds(S_255, np.float32(-128), 8, 1, 0)
    bits = thresholds.view(np.int32)
    offsets = np.arange(-4096, 4096, dtype=np.int32)
    x = (bits[:, None] + offsets[None]).ravel().view(np.float32)
    assert np.array_equal(_count(x, thresholds, lo), level(x))


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 64 chunks of 2**24 values, 3 s each on a busy 2-core machine
def test_every_float32_in_unit_interval():
    """All 1,065,353,217 float32 values in [0, 1] (the range of min-max-scaled inputs)."""
    thresholds, lo, level = _thresholds(S_255, np.float32(-128), 8, 1, 0)
    first, last = np.float32(0).view(np.int32), np.float32(1).view(np.int32)
    for start in range(int(first), int(last) + 1, 1 << 24):
        x = np.arange(start, min(start + (1 << 24), int(last) + 1), dtype=np.int32)
        x = x.view(np.float32)
        assert np.array_equal(_count(x, thresholds, lo), level(x)), start


@settings(max_examples=60, deadline=None)
@given(
    scale=st.floats(2.0**-13, 64.0, width=32),
    zeropt=st.integers(-200, 200),
    bits=st.integers(2, 8),
    signed=st.booleans(),
    narrow=st.booleans(),
    rounding=st.sampled_from(["ROUND", "FLOOR", "CEIL", "HALF_UP"]),
    data=st.data(),
)
def test_count_equals_level_property(scale, zeropt, bits, signed, narrow, rounding, data):
    scale = np.float32(scale)
    zeropt = np.float32(np.clip(zeropt, -(2**bits), 2**bits))
    narrow = narrow and signed
    thresholds, lo, level = _thresholds(scale, zeropt, bits, int(signed), int(narrow), rounding)
    hi = int(max_int(int(signed), int(narrow), bits))
    xs = data.draw(
        st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=50)
    )
    x = np.concatenate([np.asarray(xs, np.float32), _ties(scale, float(zeropt), lo, hi)])
    assert np.array_equal(_count(x, thresholds, lo), level(x))


# ------------------------------------------------------------------------- the rewrite
def _graph(prefix_nodes, inits, bits=8, signed=1, narrow=0, scale=S_255, zeropt=-128.0):
    """x -> [prefix nodes] -> Quant -> y (qonnx model), float input of shape (1, 24, 4)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 24, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 4])
    src = prefix_nodes[-1].output[0] if prefix_nodes else "x"
    quant = helper.make_node(
        "Quant",
        [src, "s", "z", "b"],
        ["y"],
        domain="qonnx.custom_op.general",
        signed=signed,
        narrow=narrow,
        rounding_mode="ROUND",
        name="QuantIn",
    )
    graph = helper.make_graph([*prefix_nodes, quant], "g", [x], [y])
    model = ModelWrapper(helper.make_model(graph, producer_name="t"))
    inits = {**inits, "s": np.float32(scale), "z": np.float32(zeropt), "b": np.float32(bits)}
    for name, value in inits.items():
        model.set_initializer(name, np.asarray(value, np.float32))
    return model.transform(InferShapes())


def _run(model, x):
    return execute_onnx(model, {"x": x})["y"]


def _tie_inputs(scale=S_255, zeropt=-128.0):
    rng = np.random.default_rng(0)
    k = rng.integers(-140, 140, size=(1, 24, 4)).astype(np.float64)
    return ((k + 0.5 - zeropt) * np.float64(scale)).astype(np.float32)


@pytest.mark.parametrize("zeropt", [0.0, -128.0])
def test_rewrite_matches_quant_on_ties(zeropt):
    model = _graph([], {}, zeropt=zeropt)
    x = _tie_inputs(zeropt=zeropt)
    ref = _run(model, x)
    new, changed = QuantFloatInputToExactThresholds().apply(model.transform(InferShapes()))
    assert changed
    assert [n.op_type for n in new.graph.node] == ["MultiThreshold", "Mul"]
    assert np.array_equal(_run(new, x), ref)
    assert QuantFloatInputToExactThresholds().apply(new)[1] is False
    assert check_float_thresholds(new) == []


def test_rewrite_folds_scalar_chain_exactly():
    """x -> Mul(c) -> Add(d) -> Quant: the float32 chain is folded into the thresholds."""
    chain = [
        helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "d"], ["a"], name="add"),
    ]
    model = _graph(chain, {"c": 0.37, "d": -0.1})
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [_tie_inputs() / np.float32(0.37), rng.uniform(-2, 2, (1, 24, 4)).astype(np.float32)]
    )
    ref = np.concatenate([_run(model, xi[None]) for xi in x])
    new = model.transform(QuantFloatInputToExactThresholds())
    assert [n.op_type for n in new.graph.node] == ["MultiThreshold", "Mul"]
    assert np.array_equal(np.concatenate([_run(new, xi[None]) for xi in x]), ref)


def test_rewrite_leaves_negative_factor_and_integer_paths_alone():
    chain = [helper.make_node("Mul", ["x", "c"], ["m"], name="mul")]
    model = _graph(chain, {"c": -2.0})
    assert QuantFloatInputToExactThresholds().apply(model)[1] is False


def test_check_flags_thresholds_changed_after_the_rewrite():
    new = _graph([], {}).transform(QuantFloatInputToExactThresholds())
    mt = new.graph.node[0]
    thresholds = new.get_initializer(mt.input[1]).copy()
    thresholds[0, 100] = np.nextafter(thresholds[0, 100], np.float32(np.inf))
    new.set_initializer(mt.input[1], thresholds)
    assert check_float_thresholds(new) == [mt.name]


@pytest.mark.finn
def test_build_emulates_tie_inputs_exactly(tmp_path):
    """A zero-point Transformer whose input quantiser sees only half steps: FINN's hardware
    graph (python emulation) equals QONNX up to float32 rounding of the software output
    scaling (1e-6 here, against output steps of about 1e-2: no level differs)."""
    pytest.importorskip("finn")
    from finn_flow.build import build

    path, shape = models.make_transformer(tmp_path / "t.onnx", zero_points=True, norm="layer")
    model = ModelWrapper(str(path))
    quant = next(n for n in model.graph.node if n.op_type == "Quant")
    scale = float(model.get_initializer(quant.input[1]))
    zeropt = float(model.get_initializer(quant.input[2]))
    rng = np.random.default_rng(2)
    k = rng.integers(0, 255, size=(8, *shape)).astype(np.float64)
    inputs = ((k + 0.5 - zeropt) * scale).astype(np.float32)
    summary = build(path, tmp_path / "out", emulation_inputs=inputs, tolerance=1e-6, quiet=True)
    assert summary["emulation"]["passed"]
