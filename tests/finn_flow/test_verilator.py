"""Verilator simulation of finn-plus ``*_rtl`` nodes against FINN's Python execution.

Small single-node graphs built directly (a generic ``Thresholding`` specialised with
``SpecializeLayers`` for a 7-series part, or ``*_rtl`` nodes made directly), simulated
through :mod:`finn_flow.verilator` and compared bit for bit with the generic op's Python
execution (:func:`finn_flow.graph.python_model`). Each Verilator build takes ~5 s; compiled
models are cached for the session (``APQ_CACHE_DIR`` if set).

Measured facts these tests pin down (finn-plus 1.6.1, Verilator 5.006):

* Thresholding_rtl (FLOAT32 and integer inputs, PE 1 and 4, ties ``x == T`` and the
  neighbouring floats), Reshape_rtl, StreamingDataWidthConverter_rtl, FMPadding_rtl:
  bit-exact, also under random back-pressure.
* Thresholding_rtl with an output type wider than ``clog2(numSteps + 1)`` bits: finn-plus
  writes the threshold memory for the wrong number of binary-search stages and the RTL
  differs; with finn_flow.finn_fixes it is bit-exact.
* Float thresholding: input ``-0.0`` against threshold ``+0.0`` is one level lower in RTL.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("finn")

from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.util.basic import qonnx_make_model

from finn_flow import verilator
from finn_flow.errors import FinnFlowError

pytestmark = pytest.mark.finn

PROJECT_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = PROJECT_ROOT / "runs" / "quickstart"
HW_DOMAIN = "finn.custom_op.fpgadataflow"
RTL_DOMAIN = f"{HW_DOMAIN}.rtl"
PART = "xc7z020clg400-1"

needs_verilator = pytest.mark.skipif(
    not verilator.verilator_available(),
    reason="verilator is not installed (Debian/Ubuntu package `verilator`)",
)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path | None:
    """Session cache for compiled models (None: the default, ``APQ_CACHE_DIR``, if set)."""
    if os.environ.get("APQ_CACHE_DIR"):
        return None
    return tmp_path_factory.mktemp("verilator_cache")


# ------------------------------------------------------------------------------ graphs
def _tensor(name: str, shape) -> helper.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _model(node, ishape, oshape, dtypes, inits=None) -> ModelWrapper:
    graph = helper.make_graph(
        [node], "verilator_test", [_tensor("x", ishape)], [_tensor("y", oshape)]
    )
    model = ModelWrapper(qonnx_make_model(graph, producer_name="verilator-test"))
    for name, value in (inits or {}).items():
        model.set_initializer(name, np.asarray(value, dtype=np.float32))
    for name, dt in dtypes.items():
        model.set_tensor_datatype(name, DataType[dt])
    return model


def _signed_type(lo, hi) -> str:
    bits = 2
    while not (-(2 ** (bits - 1)) <= lo and hi <= 2 ** (bits - 1) - 1):
        bits += 1
    return f"INT{bits}"


def thresholding_graph(
    thresholds: np.ndarray,
    idt: str,
    odt: str,
    act_val: int,
    pe: int = 1,
    rows: int = 24,
    name: str = "Thresholding_rtl_0",
    specialize: bool = False,
) -> ModelWrapper:
    """(1, rows, C) -> Thresholding_rtl; generic ``Thresholding`` + SpecializeLayers if asked."""
    channels, steps = thresholds.shape
    # integer thresholds: a signed type holding [min - 1, max] (as finn's RTL minimisation)
    tdt = "FLOAT32" if idt == "FLOAT32" else _signed_type(thresholds.min() - 1, thresholds.max())
    node = helper.make_node(
        "Thresholding" if specialize else "Thresholding_rtl",
        ["x", "T"],
        ["y"],
        name=name.replace("_rtl", "") if specialize else name,
        domain=HW_DOMAIN if specialize else RTL_DOMAIN,
        backend="fpgadataflow",
        NumChannels=channels,
        PE=pe,
        numSteps=steps,
        inputDataType=idt,
        weightDataType=tdt,
        outputDataType=odt,
        ActVal=act_val,
        numInputVectors=[1, rows],
    )
    shape = (1, rows, channels)
    model = _model(node, shape, shape, {"x": idt, "T": tdt, "y": odt}, inits={"T": thresholds})
    if specialize:
        from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

        model = model.transform(SpecializeLayers(PART))
        assert [n.op_type for n in model.graph.node] == ["Thresholding_rtl"]
    return model


def python_outputs(model: ModelWrapper, samples) -> np.ndarray:
    """FINN's Python execution of the graph (generic ops), stacked over the samples."""
    from finn.core.onnx_exec import execute_onnx

    from finn_flow.graph import python_model

    py = python_model(model)
    return np.stack([execute_onnx(py, {"x": np.asarray(s, np.float32)})["y"] for s in samples])


def _simulate(model, samples, tmp_path, cache_dir, **kwargs) -> np.ndarray:
    return verilator.simulate_rtl_node(
        model, model.graph.node[0], samples, tmp_path / "work", cache_dir=cache_dir, **kwargs
    )


def _assert_bit_exact(actual, expected) -> None:
    actual = np.asarray(actual)
    assert actual.dtype == np.float32
    np.testing.assert_array_equal(actual.reshape(expected.shape), expected)


def _float_samples(thresholds: np.ndarray, rng, n_random: int, rows: int) -> np.ndarray:
    """Random windows, then windows exactly on / one float below / above the thresholds."""
    channels, steps = thresholds.shape
    random = rng.normal(scale=1.5, size=(n_random, 1, rows, channels)).astype(np.float32)
    picks = rng.integers(0, steps, size=(rows, channels))
    on = np.take_along_axis(thresholds, picks.T, axis=1).T.astype(np.float32)
    ties = np.stack([on, np.nextafter(on, -np.inf), np.nextafter(on, np.inf)])
    ends = np.stack(  # below the lowest, on the lowest / highest, above the highest threshold
        [
            np.broadcast_to(thresholds[:, 0] - 1, (rows, channels)),
            np.broadcast_to(thresholds[:, 0], (rows, channels)),
            np.broadcast_to(thresholds[:, -1], (rows, channels)),
            np.broadcast_to(thresholds[:, -1] + 1, (rows, channels)),
        ]
    ).astype(np.float32)
    return np.concatenate([random, ties[:, None], ends[:, None]])


def _float_thresholds(rng, channels: int, steps: int = 255) -> np.ndarray:
    """Sorted float32 thresholds with ties between neighbours and no exact zero."""
    t = np.sort(rng.normal(size=(channels, steps)).astype(np.float32), axis=1)
    t[:, 10] = t[:, 11]  # repeated thresholds (two levels at once)
    t[t == 0] = np.float32(1e-3)
    return np.sort(t, axis=1)


# ------------------------------------------------------------------------ thresholding
@needs_verilator
def test_float_thresholding_bit_exact(tmp_path, cache_dir):
    """FLOAT32 input, 255 thresholds, INT8 out, PE=1 (the model input / LayerNorm case),
    specialised from a generic Thresholding for a 7-series part."""
    rng = np.random.default_rng(0)
    thresholds = _float_thresholds(rng, channels=4)
    model = thresholding_graph(thresholds, "FLOAT32", "INT8", -128, specialize=True)
    assert verilator.supported(model.graph.node[0])
    x = _float_samples(thresholds, rng, n_random=6, rows=24)
    expected = python_outputs(model, x)
    actual = _simulate(model, x, tmp_path, cache_dir)
    assert actual.shape == (len(x), 1, 24, 4)
    _assert_bit_exact(actual, expected)
    # the tie windows really sit on thresholds: one float lower is one level lower somewhere
    assert (expected[6] != expected[7]).any() and (expected[6] == expected[8]).all()


@needs_verilator
def test_float_thresholding_input_forms(tmp_path, cache_dir):
    """One unstacked sample gives the node's output shape; a list gives a stacked result."""
    rng = np.random.default_rng(0)
    model = thresholding_graph(
        _float_thresholds(rng, channels=4), "FLOAT32", "INT8", -128, specialize=True
    )
    x = rng.normal(size=(3, 1, 24, 4)).astype(np.float32)
    expected = python_outputs(model, x)
    single = _simulate(model, x[0], tmp_path, cache_dir)
    assert single.shape == (1, 24, 4)
    _assert_bit_exact(single, expected[0])
    listed = _simulate(model, [s.reshape(24, 4) for s in x], tmp_path, cache_dir)
    assert listed.shape == (3, 1, 24, 4)
    _assert_bit_exact(listed, expected)
    with pytest.raises(FinnFlowError, match="do not split into samples"):
        _simulate(model, np.zeros((5, 7), np.float32), tmp_path, cache_dir)


@needs_verilator
def test_integer_thresholding_pe4_under_backpressure(tmp_path, cache_dir):
    """INT12 input, 15 integer thresholds in INT10 (the RTL saturates inputs to the threshold
    type), UINT4 out, PE=4 of 8 channels; inputs on and next to the thresholds and at the
    type's ends; the harness withholds TVALID/TREADY at random."""
    rng = np.random.default_rng(1)
    channels, steps, rows = 8, 15, 6
    thresholds = np.sort(rng.integers(-300, 300, size=(channels, steps)), axis=1)
    thresholds[:, 3] = thresholds[:, 4]
    model = thresholding_graph(thresholds, "INT12", "UINT4", 0, pe=4, rows=rows)
    assert model.get_tensor_datatype("T") == DataType["INT10"]
    picks = rng.integers(0, steps, size=(rows, channels))
    on = np.take_along_axis(thresholds, picks.T, axis=1).T
    x = np.concatenate(
        [
            rng.integers(-2048, 2048, size=(4, 1, rows, channels)),
            np.stack([on, on - 1, on + 1])[:, None],
            np.full((1, 1, rows, channels), -2048),
            np.full((1, 1, rows, channels), 2047),
            np.full((1, 1, rows, channels), -513),
            np.full((1, 1, rows, channels), 512),
        ]
    ).astype(np.float32)
    expected = python_outputs(model, x)
    _assert_bit_exact(_simulate(model, x, tmp_path, cache_dir, stall=0.3, seed=3), expected)
    assert verilator.known_differences(model.graph.node[0]) == []


@needs_verilator
def test_float_negative_zero_differs(tmp_path, cache_dir):
    """Known difference: input -0.0 against threshold +0.0 counts as below it in RTL."""
    thresholds = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    model = thresholding_graph(thresholds, "FLOAT32", "UINT2", 0, rows=4, name="Thr_negzero_rtl")
    x = np.array([[[[-0.0], [0.0], [-1.0], [0.5]]]], dtype=np.float32)
    expected = python_outputs(model, x)
    actual = _simulate(model, x, tmp_path, cache_dir).reshape(expected.shape)
    assert expected.reshape(-1).tolist() == [2, 2, 1, 2]
    assert actual.reshape(-1).tolist() == [1, 2, 1, 2]
    assert any("-0.0" in d for d in verilator.known_differences(model.graph.node[0]))


@needs_verilator
def test_wide_output_type_threshold_memory_fixed(tmp_path, cache_dir):
    """finn-plus 1.6.1 bug: 15 thresholds with ActVal=-10 need INT5 outputs; finn writes the
    threshold memory for 5 binary-search stages, the RTL reads clog2(15 + 1) = 4. With
    finn_flow.finn_fixes (applied by every finn_flow session) the RTL equals Python; the same
    compiled model fed finn's original memory files does not."""
    from qonnx.custom_op.registry import getCustomOp

    rng = np.random.default_rng(2)
    thresholds = np.sort(rng.integers(-100, 100, size=(4, 15)), axis=1)
    model = thresholding_graph(thresholds, "INT9", "INT5", -10, rows=8, name="Thr_int5_rtl")
    node = model.graph.node[0]
    x = rng.integers(-110, 110, size=(3, 1, 8, 4)).astype(np.float32)
    expected = python_outputs(model, x)
    actual = _simulate(model, x, tmp_path, cache_dir).reshape(expected.shape)
    _assert_bit_exact(actual, expected)

    # the bug: finn's unpatched memory files (5 stages) in the same compiled model
    build = verilator.build_rtl_node(model, node, tmp_path / "unfixed", cache_dir)
    assert build.cached
    for dat in Path(build.code_gen_dir).glob("*.dat"):
        dat.unlink()
    inst = getCustomOp(copy.deepcopy(node))
    original = type(inst).make_weight_file.__wrapped__
    original(inst, model.get_initializer(node.input[1]), "internal_embedded",
             f"{build.code_gen_dir}/memblock.dat")  # fmt: skip
    assert len(list(Path(build.code_gen_dir).glob("*_threshs_0_*.dat"))) == 5
    words = [w for sample in x for w in verilator._pack(inst, sample)]
    per_sample = len(words) // len(x)  # one output word per input word (PE=1)
    out = verilator._run(build, words, per_sample * len(x), 0.0, 0)
    unfixed = np.stack(
        [verilator._unpack(inst, out[i * per_sample : (i + 1) * per_sample]) for i in range(3)]
    )
    assert (unfixed != expected).mean() > 0.5


# --------------------------------------------------------------------- other RTL nodes
def _rtl_node(op_type: str, name: str, **attrs):
    return helper.make_node(
        op_type, ["x"], ["y"], name=name, domain=RTL_DOMAIN, backend="fpgadataflow", **attrs
    )


def _ints(rng, dt: str, shape) -> np.ndarray:
    d = DataType[dt]
    return rng.integers(int(d.min()), int(d.max()) + 1, size=shape).astype(np.float32)


@needs_verilator
def test_reshape_rtl_is_a_passthrough(tmp_path, cache_dir):
    """Reshape_rtl as in the project's graphs: (1, 24, 16) -> (1, 1, 24, 16), INT9."""
    node = _rtl_node(
        "Reshape_rtl",
        "Reshape_rtl_0",
        inp_shape=[1, 24, 16],
        out_shape=[1, 1, 24, 16],
        dtype="INT9",
        PE=2,
    )
    model = _model(node, (1, 24, 16), (1, 1, 24, 16), {"x": "INT9", "y": "INT9"})
    x = _ints(np.random.default_rng(4), "INT9", (3, 1, 24, 16))
    actual = _simulate(model, x, tmp_path, cache_dir, stall=0.2)
    assert actual.shape == (3, 1, 1, 24, 16)
    _assert_bit_exact(actual, python_outputs(model, x))


@needs_verilator
def test_data_width_converter_rtl(tmp_path, cache_dir):
    """StreamingDataWidthConverter_rtl, 2 -> 3 INT5 elements per word (not a multiple)."""
    shape = [1, 4, 12]
    node = _rtl_node(
        "StreamingDataWidthConverter_rtl",
        "StreamingDataWidthConverter_rtl_0",
        inShape=shape,
        outShape=shape,
        inWidth=10,
        outWidth=15,
        dataType="INT5",
    )
    model = _model(node, shape, shape, {"x": "INT5", "y": "INT5"})
    x = _ints(np.random.default_rng(5), "INT5", (4, *shape))
    _assert_bit_exact(_simulate(model, x, tmp_path, cache_dir, stall=0.3), python_outputs(model, x))


@needs_verilator
def test_fmpadding_rtl(tmp_path, cache_dir):
    """FMPadding_rtl (5x6 image, 4 channels, SIMD 2, asymmetric padding), under back-pressure."""
    node = _rtl_node(
        "FMPadding_rtl",
        "FMPadding_rtl_0",
        ImgDim=[5, 6],
        Padding=[1, 2, 2, 1],
        NumChannels=4,
        SIMD=2,
        inputDataType="INT4",
        numInputVectors=1,
    )
    model = _model(node, (1, 5, 6, 4), (1, 8, 9, 4), {"x": "INT4", "y": "INT4"})
    x = _ints(np.random.default_rng(6), "INT4", (3, 1, 5, 6, 4))
    _assert_bit_exact(_simulate(model, x, tmp_path, cache_dir, stall=0.3), python_outputs(model, x))


# ------------------------------------------------------------------------ cache, errors
@needs_verilator
def test_cache_avoids_recompiling(tmp_path, monkeypatch):
    """Verilator runs are counted: a second simulation (other work dir) runs none; changed
    thresholds rebuild."""
    calls: list[list[str]] = []
    real = verilator._run_verilator

    def counting(args, cwd):
        calls.append(args)
        return real(args, cwd)

    monkeypatch.setattr(verilator, "_run_verilator", counting)
    cache = tmp_path / "cache"
    rng = np.random.default_rng(7)
    thresholds = np.sort(rng.integers(-8, 8, size=(2, 3)), axis=1)
    model = thresholding_graph(thresholds, "INT4", "UINT2", 0, rows=4, name="Thr_cache_rtl")
    x = _ints(rng, "INT4", (2, 1, 4, 2))
    first = verilator.simulate_rtl_node(model, "Thr_cache_rtl", x, tmp_path / "a", cache)
    assert len(calls) == 1
    build = verilator.build_rtl_node(model, "Thr_cache_rtl", tmp_path / "b", cache)
    second = verilator.simulate_rtl_node(model, "Thr_cache_rtl", x, tmp_path / "c", cache)
    assert len(calls) == 1 and build.cached and build.compile_seconds == 0
    assert Path(build.executable).is_relative_to(cache / "verilator" / build.key)
    np.testing.assert_array_equal(first, second)
    _assert_bit_exact(second, python_outputs(model, x))
    entries = [p for p in (cache / "verilator").iterdir()]
    assert [p.name for p in entries] == [build.key]  # no temporary folder left behind

    changed = thresholding_graph(thresholds + 1, "INT4", "UINT2", 0, rows=4, name="Thr_cache_rtl")
    again = verilator.build_rtl_node(changed, "Thr_cache_rtl", tmp_path / "d", cache)
    assert len(calls) == 2 and not again.cached and again.key != build.key


def test_unsupported_nodes_give_the_reason(tmp_path):
    mvau = helper.make_node("MVAU_rtl", ["x", "W"], ["y"], name="MVAU_rtl_0", domain=RTL_DOMAIN)
    assert not verilator.supported(mvau)
    model = ModelWrapper(
        qonnx_make_model(
            helper.make_graph([mvau], "g", [_tensor("x", (1, 4))], [_tensor("y", (1, 4))])
        )
    )
    with pytest.raises(FinnFlowError, match=r"MVAU_rtl_0: MVAU_rtl .*Xilinx DSP primitives"):
        verilator.simulate_rtl_node(model, mvau, np.zeros((1, 4)), tmp_path)
    fifo = helper.make_node("StreamingFIFO_rtl", ["x"], ["y"], name="f", domain=RTL_DOMAIN)
    assert "fifo.sv" in verilator.unsupported_reason(fifo)
    other = helper.make_node("ConvolutionInputGenerator_rtl", ["x"], ["y"], domain=RTL_DOMAIN)
    assert "not tried" in verilator.unsupported_reason(other)
    hls = helper.make_node("Thresholding_hls", ["x", "T"], ["y"], domain=f"{HW_DOMAIN}.hls")
    assert "not an RTL node" in verilator.unsupported_reason(hls)
    mlo = helper.make_node("Thresholding_rtl", ["x", "T"], ["y"], domain=RTL_DOMAIN, mlo_max_iter=4)
    assert "threshold sets" in verilator.unsupported_reason(mlo)
    assert set(verilator.SUPPORTED_OP_TYPES) >= {"Thresholding_rtl", "Reshape_rtl"}


def test_missing_verilator_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no verilator
    assert not verilator.verilator_available()
    model = thresholding_graph(np.array([[0.0, 1.0, 2.0]]), "INT4", "UINT2", 0, rows=2)
    with pytest.raises(FinnFlowError, match="package `verilator`"):
        verilator.simulate_rtl_node(
            model, model.graph.node[0], np.zeros((1, 2, 1), np.float32), tmp_path / "w"
        )


# --------------------------------------------------------------------- the quickstart
def _quickstart_node_inputs(work: Path, n_windows: int):
    """The quickstart's HW graph and, per window, FINN's Python execution context."""
    import finn.custom_op.fpgadataflow.reshape  # noqa: F401  (before loading HW graphs)
    from finn.core.onnx_exec import execute_onnx
    from finn.util.execution import execute_parent

    from brevitas_apq.rundir import load_run
    from finn_flow.emulation import _as_samples, _first_dynamic_input
    from finn_flow.graph import python_model

    _, _, spec = load_run(str(QUICKSTART))
    windows = spec.load().X_test[:n_windows]
    models = QUICKSTART / "finn" / "intermediate_models"
    hw = ModelWrapper(str(models / "step_minimize_bit_width.onnx"))
    py_path = work / "python.onnx"
    python_model(hw).save(str(py_path))
    py = ModelWrapper(str(py_path))
    parent_path = str(models / "dataflow_parent.onnx")
    parent = ModelWrapper(parent_path)
    (sdp,) = parent.get_nodes_by_op_type("StreamingDataflowPartition")
    child_inputs = [i.name for i in hw.graph.input if hw.get_initializer(i.name) is None]
    contexts = []
    for x in _as_samples(windows, parent.get_tensor_shape(_first_dynamic_input(parent))):
        ctx = execute_parent(parent_path, str(py_path), x, return_full_ctx=True)
        feed = {name: ctx[sdp.input[i]] for i, name in enumerate(child_inputs)}
        contexts.append(execute_onnx(py, feed, return_full_exec_context=True))
    return hw, contexts


@pytest.mark.slow
@pytest.mark.timeout(3600)  # Verilator builds of every RTL node (cold cache: minutes each)
@needs_verilator
@pytest.mark.skipif(
    not (QUICKSTART / "finn" / "intermediate_models" / "dataflow_parent.onnx").is_file(),
    reason="needs the quickstart run with its FINN build (make run)",
)
def test_quickstart_rtl_nodes(tmp_path, cache_dir):
    """Every supported *_rtl node of the quickstart, fed 8 real windows: bit-exact."""
    from finn_flow.no_vivado import finn_session

    with finn_session(tmp_path):
        hw, contexts = _quickstart_node_inputs(tmp_path, 8)
    simulated = 0
    for node in hw.graph.node:
        if not node.op_type.endswith("_rtl") or not verilator.supported(node):
            continue
        inputs = [c[node.input[0]] for c in contexts]
        expected = np.stack([c[node.output[0]] for c in contexts])
        actual = verilator.simulate_rtl_node(hw, node, inputs, tmp_path / "work", cache_dir)
        actual = actual.reshape(expected.shape)
        np.testing.assert_array_equal(actual, expected, err_msg=node.name)
        simulated += 1
    assert simulated >= 10
