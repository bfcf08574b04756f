"""The attention's output thresholds as a standalone layer (finn_flow.attention_thresholds)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.finn

T, D = 6, 8  # sequence length, embedding


def _attention_model(rng, av_thresholds=True):
    """A generic ScaledDotProductAttention (as finn-plus's InferScaledDotProductAttention
    leaves it) with thresholded QK, softmax and (optionally) AV outputs."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    shape = [1, T, D]
    vis = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("q", "k", "v")]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)
    thr_qk = np.sort(rng.integers(-40, 40, size=(1, 15)), axis=1).astype(np.float32)
    thr_sm = np.sort(rng.uniform(0, 0.5, size=(1, 15)), axis=1).astype(np.float32)
    # AV accumulator of UINT4 x INT4 over T terms lies in [-8*15*T, 7*15*T]; ties included
    thr_av = np.sort(rng.integers(-300, 300, size=(1, 255)), axis=1).astype(np.float32)
    inputs = ["q", "k", "v", "thr_qk", "thr_sm"] + (["thr_av"] if av_thresholds else [])
    node = helper.make_node(
        "ScaledDotProductAttention",
        inputs,
        ["out"],
        domain="finn.custom_op.fpgadataflow",
        backend="fpgadataflow",
        name="ScaledDotProductAttention_0",
        Heads=1,
        QKDim=D,
        QLen=T,
        VDim=D,
        KVLen=T,
        EmbFold=D,
        SeqFold=T,
        QType="INT4",
        KType="INT4",
        VType="INT4",
        MType="BINARY",
        AType="UINT4",
        OType="INT8" if av_thresholds else "INT32",
        AccQKMatMul="INT32",
        OutQKMatMul="INT5",
        ActQKMatMul="thresholds",
        BiasActQKMatMul=-8.0,
        AccAVMatMul="INT32",
        OutAVMatMul="INT8" if av_thresholds else "INT32",
        ActAVMatMul="thresholds" if av_thresholds else "none",
        BiasActAVMatMul=-128.0 if av_thresholds else 0.0,
        DequantSoftmax=0.05,
        AccASoftmax="FLOAT32",
        ActASoftmax="thresholds",
        BiasActASoftmax=0.0,
        mask_mode="none",
    )
    graph = helper.make_graph([node], "attention", vis, [out])
    model = ModelWrapper(qonnx_make_model(graph))
    for name, arr in (("thr_qk", thr_qk), ("thr_sm", thr_sm), ("thr_av", thr_av)):
        if name in inputs:
            model.set_initializer(name, arr)
    for name in ("q", "k", "v"):
        model.set_tensor_datatype(name, DataType["INT4"])
    model.set_tensor_datatype("out", DataType["INT8" if av_thresholds else "INT32"])
    return model


def _run(model, feeds):
    from qonnx.core.onnx_exec import execute_onnx

    return execute_onnx(model, feeds)["out"]


def test_standalone_av_thresholds_are_exact_and_report_changed():
    from finn_flow.no_vivado import finn_session

    with finn_session():
        from qonnx.core.datatype import DataType

        from finn_flow.attention_thresholds import StandaloneAttentionOutputThresholds

        rng = np.random.default_rng(0)
        model = _attention_model(rng)
        feeds = [
            {n: rng.integers(-8, 8, size=(1, T, D)).astype(np.float32) for n in "qkv"}
            for _ in range(8)
        ]
        # extremes: every input at its minimum / maximum (accumulators at the range ends)
        feeds += [{n: np.full((1, T, D), v, np.float32) for n in "qkv"} for v in (-8, 7)]
        before = [_run(model, f) for f in feeds]
        new, changed = StandaloneAttentionOutputThresholds().apply(model)
        assert changed
        ops = [n.op_type for n in new.graph.node]
        assert ops == ["ScaledDotProductAttention", "MultiThreshold"]
        attn, mt = new.graph.node
        from qonnx.custom_op.registry import getCustomOp

        inst = getCustomOp(attn)
        assert inst.get_nodeattr("ActAVMatMul") == "none"
        assert len(attn.input) == 5  # the AV thresholds moved to the MultiThreshold
        acc = DataType[inst.get_nodeattr("OType")]
        assert acc.min() <= -8 * 15 * T and acc.max() >= 7 * 15 * T  # worst case fits
        assert getCustomOp(mt).get_nodeattr("out_bias") == -128.0
        assert new.get_tensor_datatype("out") == DataType["INT8"]
        after = [_run(new, f) for f in feeds]
        for b, a in zip(before, after, strict=True):
            np.testing.assert_array_equal(a, b)
        assert len({a.tobytes() for a in after}) > 1  # the inputs exercise the thresholds
        # nothing left to rewrite: a second pass reports no change
        _, again = StandaloneAttentionOutputThresholds().apply(new)
        assert not again


def test_attention_without_av_thresholds_is_left_alone():
    from finn_flow.no_vivado import finn_session

    with finn_session():
        from finn_flow.attention_thresholds import StandaloneAttentionOutputThresholds

        model = _attention_model(np.random.default_rng(1), av_thresholds=False)
        nodes = [n.SerializeToString() for n in model.graph.node]
        new, changed = StandaloneAttentionOutputThresholds().apply(model)
        assert not changed
        assert [n.SerializeToString() for n in new.graph.node] == nodes


def test_av_accumulator_datatype_covers_the_worst_case():
    from qonnx.core.datatype import DataType

    from finn_flow.attention_thresholds import av_accumulator_datatype

    dt = av_accumulator_datatype(DataType["UINT8"], DataType["INT4"], 24)
    assert dt == DataType["INT17"]  # [-48960, 42840] needs 17 signed bits
    dt = av_accumulator_datatype(DataType["UINT4"], DataType["UINT4"], 2)
    assert dt == DataType["UINT9"]  # [0, 450]


def _av_node(a_type: str, v_type: str, q_len: int, kv_len: int, suffix: str = "", **attrs):
    """A generic ScaledDotProductAttention node with these AV types and lengths (INT4 queries
    and keys), inputs ``q``/``k``/``v`` and output ``out`` (each + ``suffix``)."""
    from onnx import helper

    kwargs = dict(
        Heads=1,
        QKDim=D,
        QLen=q_len,
        VDim=D,
        KVLen=kv_len,
        EmbFold=D,
        SeqFold=1,
        QType="INT4",
        KType="INT4",
        VType=v_type,
        AType=a_type,
        OType="INT8",
        mask_mode="none",
    )
    kwargs.update(attrs)
    inputs = [n + suffix for n in ("q", "k", "v")]
    if attrs.get("ActAVMatMul") == "thresholds":
        inputs.append("thr" + suffix)
    return helper.make_node(
        "ScaledDotProductAttention",
        inputs,
        ["out" + suffix],
        domain="finn.custom_op.fpgadataflow",
        backend="fpgadataflow",
        **kwargs,
    )


def _finn_plus_av_accumulator(a_type: str, v_type: str, q_len: int, kv_len: int) -> str:
    """The AV accumulator type finn-plus's ScaledDotProductAttention.minimize_accumulator_width
    sets on a node with these types and lengths."""
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(_av_node(a_type, v_type, q_len, kv_len))
    inst.minimize_accumulator_width(None)
    return inst.get_nodeattr("AccAVMatMul")


def test_av_accumulator_datatype_against_finn_plus():
    """Where finn-plus's own accumulator minimisation agrees with av_accumulator_datatype (the
    attention this project builds) and where it is narrower than the worst case (the reasons
    in av_accumulator_datatype's docstring). When the second part fails, finn-plus computes
    the worst case: use its minimize_accumulator_width instead of av_accumulator_datatype."""
    from finn_flow.no_vivado import finn_session

    with finn_session():
        from qonnx.core.datatype import DataType

        from finn_flow.attention_thresholds import av_accumulator_datatype

        # self-attention, unsigned softmax output: the same type
        for a, v, n in (("UINT8", "INT4", 24), ("UINT4", "UINT4", 2), ("UINT4", "INT4", T)):
            ours = av_accumulator_datatype(DataType[a], DataType[v], n)
            assert _finn_plus_av_accumulator(a, v, n, n) == ours.name
        # KVLen > QLen: finn-plus sums QLen terms; the worst case 255 * -128 * 64 does not fit
        worst = 255 * -128 * 64
        ours = av_accumulator_datatype(DataType["UINT8"], DataType["INT8"], 64)
        theirs = DataType[_finn_plus_av_accumulator("UINT8", "INT8", 16, 64)]
        assert ours.min() <= worst < theirs.min()
        # signed AType: finn-plus misses the min * min corner, -128 * -8 = 1024
        ours = av_accumulator_datatype(DataType["INT8"], DataType["INT4"], 1)
        theirs = DataType[_finn_plus_av_accumulator("INT8", "INT4", 1, 1)]
        assert theirs.max() < 1024 <= ours.max()


# (AType, VType, QLen, KVLen, AV thresholds absorbed) of the nodes of _av_model
CROSS = ("UINT8", "INT8", 16, 64, False)  # (a) KVLen > QLen: finn-plus sums QLen terms
SIGNED = ("INT8", "INT4", 4, 4, False)  # (b) signed AType: finn-plus misses -128 * -8
CROSS_THRESHOLDS = ("UINT8", "INT8", 16, 64, True)  # (a) with the output thresholds inside
SELF = ("UINT8", "INT4", 24, 24, False)  # the quickstart attention: finn-plus is exact


def _av_model(*specs):
    """One generic ScaledDotProductAttention node per spec (see CROSS), named
    ``ScaledDotProductAttention_<i>``, as this project's flow leaves them before finn's
    bit-width minimisation: without AV thresholds the output is the accumulator
    (``AccAVMatMul = OutAVMatMul = OType`` = its worst-case type, as
    StandaloneAttentionOutputThresholds sets them); with them, ``OType = OutAVMatMul = INT8``
    and an INT32 accumulator (as finn-plus's InferScaledDotProductAttention leaves them)."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    from finn_flow.attention_thresholds import av_accumulator_datatype

    nodes, inputs, outputs, types, inits = [], [], [], {}, {}
    for i, (a, v, q_len, kv_len, thresholds) in enumerate(specs):
        exact = av_accumulator_datatype(DataType[a], DataType[v], kv_len).name
        out = "INT8" if thresholds else exact
        attrs = dict(OType=out, AccAVMatMul="INT32" if thresholds else exact, OutAVMatMul=out)
        if thresholds:
            attrs.update(ActAVMatMul="thresholds", BiasActAVMatMul=-128.0)
            inits[f"thr{i}"] = np.arange(255, dtype=np.float32)[None, :] - 127
        nodes.append(
            _av_node(a, v, q_len, kv_len, str(i), name=f"ScaledDotProductAttention_{i}", **attrs)
        )
        for name, length, dtype in (("q", q_len, "INT4"), ("k", kv_len, "INT4"), ("v", kv_len, v)):
            inputs.append(
                helper.make_tensor_value_info(f"{name}{i}", TensorProto.FLOAT, [1, length, D])
            )
            types[f"{name}{i}"] = dtype
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, q_len, D]))
        types[f"out{i}"] = out
    model = ModelWrapper(qonnx_make_model(helper.make_graph(nodes, "attention", inputs, outputs)))
    for name, dtype in types.items():
        model.set_tensor_datatype(name, DataType[dtype])
    for name, arr in inits.items():
        model.set_initializer(name, arr)
    return model


def _attrs(model, index: int, *names: str) -> list[str]:
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(model.graph.node[index])
    return [inst.get_nodeattr(n) for n in names]


def _exact(spec) -> str:
    from qonnx.core.datatype import DataType

    from finn_flow.attention_thresholds import av_accumulator_datatype

    a, v, _, kv_len, _ = spec
    return av_accumulator_datatype(DataType[a], DataType[v], kv_len).name


def _holds(dtype: str, needed: str) -> bool:
    from qonnx.core.datatype import DataType

    dt, nd = DataType[dtype], DataType[needed]
    return dt.min() <= nd.min() and dt.max() >= nd.max()


def test_widen_attention_accumulators_restores_the_worst_case_after_finn_plus():
    """finn-plus's MinimizeAccumulatorWidth leaves cases (a) and (b) too narrow; the pass widens
    exactly those (not the thresholded output type), leaves sufficient types alone and is
    idempotent."""
    from finn_flow.no_vivado import finn_session

    with finn_session():
        from finn.transformation.fpgadataflow.minimize_accumulator_width import (
            MinimizeAccumulatorWidth,
        )
        from qonnx.custom_op.registry import getCustomOp

        from finn_flow.attention_thresholds import WidenAttentionAccumulators

        specs = (CROSS, SIGNED, CROSS_THRESHOLDS, SELF, SELF)
        model = _av_model(*specs).transform(MinimizeAccumulatorWidth())
        # node 4: a type wider than needed (finn's minimisation off) stays as it is
        for name in ("AccAVMatMul", "OutAVMatMul", "OType"):
            getCustomOp(model.graph.node[4]).set_nodeattr(name, "INT32")
        acc = [_attrs(model, i, "AccAVMatMul")[0] for i in range(len(specs))]
        for i in (0, 1, 2):  # finn-plus's type cannot hold the worst case
            assert not _holds(acc[i], _exact(specs[i])), (i, acc[i])
        assert acc[3] == _exact(SELF)  # finn-plus agrees for the quickstart attention
        untouched = [model.graph.node[i].SerializeToString() for i in (3, 4)]

        new, changed = WidenAttentionAccumulators().apply(model)
        assert changed
        for i in (0, 1):  # accumulator and its un-thresholded output copy: the worst case
            exact = _exact(specs[i])
            assert _attrs(new, i, "AccAVMatMul", "OutAVMatMul", "OType") == [exact] * 3
        # thresholds inside: the accumulator widens, the quantised output type stays
        assert _attrs(new, 2, "AccAVMatMul", "OutAVMatMul", "OType") == [
            _exact(CROSS_THRESHOLDS),
            "INT8",
            "INT8",
        ]
        assert [new.graph.node[i].SerializeToString() for i in (3, 4)] == untouched

        graph = new.graph.SerializeToString()
        again, changed = WidenAttentionAccumulators().apply(new)
        assert not changed
        assert again.graph.SerializeToString() == graph


# (QType, KType, QLen, QKDim, QK thresholds absorbed) of the nodes of _qk_model
QK_SHORT = ("INT4", "INT4", 8, 16, False)  # QLen < QKDim: finn-plus sums QLen terms
QK_SIGNED = ("INT4", "INT4", 16, 16, True)  # QLen = QKDim: finn-plus misses 16 * -8 * -8
QK_QUICKSTART = ("INT5", "INT5", 24, 16, True)  # the quickstart attention: finn-plus holds it
QK_THRESHOLD_FIT = np.arange(15, dtype=np.float32)[None, :] * 8 - 56  # inside any QK range


def _qk_exact(spec) -> str:
    from qonnx.core.datatype import DataType

    from finn_flow.attention_thresholds import qk_accumulator_datatype

    q, k, _, qk_dim, _ = spec
    return qk_accumulator_datatype(DataType[q], DataType[k], qk_dim).name


def _qk_model(*specs, thresholds=QK_THRESHOLD_FIT):
    """One generic ScaledDotProductAttention node per spec (see QK_SHORT), named
    ``ScaledDotProductAttention_<i>``, with the QK types as finn-plus's
    InferScaledDotProductAttention leaves them (``AccQKMatMul`` INT32, the MatMul's output type;
    ``OutQKMatMul`` the quantised INT4 behind ``thresholds``, else INT32) and a self-attention
    AV part whose types already hold its worst case (UINT4 x INT4, no AV thresholds)."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    from finn_flow.attention_thresholds import av_accumulator_datatype

    nodes, inputs, outputs, types, inits = [], [], [], {}, {}
    for i, (q, k, q_len, qk_dim, thresholded) in enumerate(specs):
        av = av_accumulator_datatype(DataType["UINT4"], DataType["INT4"], q_len).name
        qk = dict(AccQKMatMul="INT32", OutQKMatMul="INT4" if thresholded else "INT32")
        if thresholded:
            qk.update(ActQKMatMul="thresholds", BiasActQKMatMul=-8.0)
            inits[f"thr{i}"] = thresholds
        nodes.append(
            helper.make_node(
                "ScaledDotProductAttention",
                [f"q{i}", f"k{i}", f"v{i}"] + ([f"thr{i}"] if thresholded else []),
                [f"out{i}"],
                domain="finn.custom_op.fpgadataflow",
                backend="fpgadataflow",
                name=f"ScaledDotProductAttention_{i}",
                Heads=1,
                QKDim=qk_dim,
                QLen=q_len,
                VDim=D,
                KVLen=q_len,
                EmbFold=1,
                SeqFold=1,
                QType=q,
                KType=k,
                VType="INT4",
                AType="UINT4",
                OType=av,
                AccAVMatMul=av,
                OutAVMatMul=av,
                mask_mode="none",
                **qk,
            )
        )
        for name, dim, dtype in (("q", qk_dim, q), ("k", qk_dim, k), ("v", D, "INT4")):
            inputs.append(
                helper.make_tensor_value_info(f"{name}{i}", TensorProto.FLOAT, [1, q_len, dim])
            )
            types[f"{name}{i}"] = dtype
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, q_len, D]))
        types[f"out{i}"] = av
    model = ModelWrapper(qonnx_make_model(helper.make_graph(nodes, "attention", inputs, outputs)))
    for name, dtype in types.items():
        model.set_tensor_datatype(name, DataType[dtype])
    for name, arr in inits.items():
        model.set_initializer(name, arr)
    return model


def test_widen_attention_accumulators_restores_the_qk_worst_case_after_finn_plus():
    """finn-plus's MinimizeAccumulatorWidth sizes AccQKMatMul over QLen terms from the
    QType.max() corner: too narrow for a sequence shorter than QKDim and for signed Q and K
    (INT4 x INT4, 16 x 16: INT11, whose maximum 1023 misses 16 * -8 * -8 = 1024). The pass
    widens exactly those (and the un-thresholded output copy, not the quantised output type),
    leaves the quickstart attention and wider types alone, and is idempotent."""
    from finn_flow.no_vivado import finn_session

    with finn_session():
        from finn.transformation.fpgadataflow.minimize_accumulator_width import (
            MinimizeAccumulatorWidth,
        )
        from qonnx.core.datatype import DataType
        from qonnx.custom_op.registry import getCustomOp

        from finn_flow.attention_thresholds import WidenAttentionAccumulators

        assert [_qk_exact(s) for s in (QK_SHORT, QK_SIGNED, QK_QUICKSTART)] == [
            "INT12",  # [-896, 1024]
            "INT12",  # [-896, 1024]
            "INT14",  # [-3840, 4096]
        ]
        specs = (QK_SHORT, QK_SIGNED, QK_QUICKSTART, QK_SHORT)
        model = _qk_model(*specs).transform(MinimizeAccumulatorWidth())
        # node 3: a type wider than needed (finn's minimisation off) stays as it is
        for name in ("AccQKMatMul", "OutQKMatMul"):
            getCustomOp(model.graph.node[3]).set_nodeattr(name, "INT32")
        acc = [_attrs(model, i, "AccQKMatMul")[0] for i in range(len(specs))]
        assert acc[:3] == ["INT10", "INT11", "INT14"]  # finn-plus 1.6.1
        assert DataType["INT10"].max() < 1024 and DataType["INT11"].max() < 1024
        assert _attrs(model, 0, "OutQKMatMul") == ["INT10"]  # finn-plus's copy, no thresholds
        untouched = [model.graph.node[i].SerializeToString() for i in (2, 3)]

        new, changed = WidenAttentionAccumulators().apply(model)
        assert changed
        # accumulator and its un-thresholded output copy: the worst case
        assert _attrs(new, 0, "AccQKMatMul", "OutQKMatMul") == ["INT12", "INT12"]
        # thresholds inside: the accumulator widens, the quantised output type stays
        assert _attrs(new, 1, "AccQKMatMul", "OutQKMatMul") == ["INT12", "INT4"]
        assert [new.graph.node[i].SerializeToString() for i in (2, 3)] == untouched
        for i in range(len(specs)):  # the AV part held its worst case already
            assert _attrs(new, i, "AccAVMatMul") == _attrs(model, i, "AccAVMatMul")

        graph = new.graph.SerializeToString()
        again, changed = WidenAttentionAccumulators().apply(new)
        assert not changed
        assert again.graph.SerializeToString() == graph
        # a graph whose attention finn-plus sized correctly: nothing to do
        correct = _qk_model(QK_QUICKSTART).transform(MinimizeAccumulatorWidth())
        graph = correct.graph.SerializeToString()
        again, changed = WidenAttentionAccumulators().apply(correct)
        assert not changed
        assert again.graph.SerializeToString() == graph


def test_widen_attention_accumulators_holds_the_qk_thresholds():
    """finn-plus's C++ stores the QK thresholds in AccQKMatMul (an ap_int array, which wraps a
    value outside it). A threshold beyond the worst case (never crossed, but wrapped it would
    be) widens the accumulator until it is stored exactly; inside the worst case, the worst
    case decides."""
    from finn_flow.no_vivado import finn_session

    with finn_session():
        from finn.transformation.fpgadataflow.minimize_accumulator_width import (
            MinimizeAccumulatorWidth,
        )

        from finn_flow.attention_thresholds import WidenAttentionAccumulators

        beyond = QK_THRESHOLD_FIT.copy()
        beyond[0, -1] = 5000.0  # INT12 holds [-2048, 2047]; INT14 holds 5000
        beyond[0, 0] = -2100.0
        for thresholds, acc in ((QK_THRESHOLD_FIT, "INT12"), (beyond, "INT14")):
            model = _qk_model(QK_SIGNED, thresholds=thresholds)
            model = model.transform(MinimizeAccumulatorWidth())
            assert _attrs(model, 0, "AccQKMatMul") == ["INT11"]  # finn-plus 1.6.1
            new, changed = WidenAttentionAccumulators().apply(model)
            assert changed
            assert _attrs(new, 0, "AccQKMatMul", "OutQKMatMul") == [acc, "INT4"]
            _, changed = WidenAttentionAccumulators().apply(new)
            assert not changed


def test_widen_attention_accumulators_refuses_an_output_type_too_narrow():
    """Without AV thresholds the accumulator is cast to OType: an OType that cannot hold the
    worst case is an error naming the node, both types and the fix, not silent garbage."""
    from finn_flow.no_vivado import finn_session

    with finn_session():
        from qonnx.custom_op.registry import getCustomOp

        from finn_flow.attention_thresholds import WidenAttentionAccumulators
        from finn_flow.errors import FinnFlowError

        model = _av_model(SELF)
        getCustomOp(model.graph.node[0]).set_nodeattr("OType", "INT16")
        exact = _exact(SELF)
        assert exact == "INT17"
        with pytest.raises(FinnFlowError, match="ScaledDotProductAttention_0") as err:
            WidenAttentionAccumulators().apply(model)
        for text in ("OType INT16", "needs INT17", "Fix: set OType to INT17"):
            assert text in str(err.value)


@pytest.mark.parametrize("full", [False, True])
def test_default_flow_widens_after_every_minimize_step(tmp_path, full):
    """In the step lists (estimate-only and full), each of finn's step_minimize_bit_width* is
    followed by the widening, under finn's step name (the saved model is the corrected one)."""
    from finn_flow.no_vivado import finn_session

    with finn_session():
        from finn.builder.build_dataflow_config import DataflowBuildConfig
        from finn.builder.build_dataflow_steps import build_dataflow_step_lookup

        from finn_flow.steps import build_steps

        cfg = DataflowBuildConfig(
            output_dir=str(tmp_path), synth_clk_period_ns=10.0, generate_outputs=[]
        )
        steps = [
            s for s in build_steps(full, {}) if s.__name__.startswith("step_minimize_bit_width")
        ]
        names = [s.__name__ for s in steps]
        assert names == ["step_minimize_bit_width_initial", "step_minimize_bit_width"]
        exact = _exact(CROSS)
        for name, step in zip(names, steps, strict=True):
            # finn's step alone leaves the cross-attention accumulator too narrow ...
            finn_only = build_dataflow_step_lookup[name](_av_model(CROSS), cfg)
            assert not _holds(_attrs(finn_only, 0, "AccAVMatMul")[0], exact)
            # ... the flow's step of the same name does not
            model = step(_av_model(CROSS), cfg)
            assert _attrs(model, 0, "AccAVMatMul", "OutAVMatMul") == [exact, exact]
