"""C++ simulation (cppsim) of finn-plus ``*_hls`` nodes with g++ and the header shim.

Small graphs of finn-plus HW ops built directly (no Brevitas/FINN build), compiled through
:mod:`finn_flow.cppsim` against the project's HLS sources (``../shared/hls`` next to the project)
and compared with FINN's Python execution. Kernels are cached for the session (identical
graphs compile once); each compile takes 10-30 s on two cores.

Measured facts these tests pin down (finn-plus 1.6.1, finn-hlslib as in ../shared/hls):

* MVAU_hls, Thresholding_hls, ElementwiseAdd_hls, ReplicateStream_hls: bit-exact.
* LayerNorm_hls: float32 arithmetic (max 2.4e-7 here). finn-plus's generated code calls
  ``layernorm<N>(in, out)`` without the node's ``epsilon`` (the kernel then used finn-hlslib's
  default, an effective ``1e-5 / N**2``); :mod:`finn_flow.finn_fixes` passes it.
* ScaledDotProductAttention_hls: finn-plus generates its three threshold activations with
  ``comp::less`` (``threshold < x``) where Python's ``multithreshold`` (and Thresholding_hls /
  MVAU_hls, ``comp::less_equal``) count ``x >= threshold``: an accumulator exactly on a
  threshold was one level lower in C++ (the known +-1 LSB). :mod:`finn_flow.finn_fixes`
  generates ``comp::less_equal``; a numpy model with strict comparisons shows the ties.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("finn")

from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.util.basic import qonnx_make_model

from finn_flow import cppsim, cppsim_compile, hls_toolchain
from finn_flow.errors import FinnFlowError

pytestmark = pytest.mark.finn

HLS_DOMAIN = "finn.custom_op.fpgadataflow.hls"
MVAU_MEM_MODE = "internal_embedded"
#: Integer HLS ops whose C++ simulation reproduces FINN's Python execution exactly.
BIT_EXACT_OPS = ("ElementwiseAdd", "ReplicateStream", "MVAU", "Thresholding", "VVAU", "Reshape")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def toolchain(hls_dir, kernel_cache) -> hls_toolchain.HlsToolchain:
    """The project's HLS sources and the session's kernel cache (conftest.kernel_cache)."""
    return hls_toolchain.HlsToolchain.resolve(hls_dir, cache_dir=kernel_cache)


def _simulate(model, inputs, toolchain, tmp_path, **kwargs) -> cppsim.CppSimResult:
    return cppsim.simulate_graph(
        model, inputs, toolchain=toolchain, jobs=2, progress=False, work_dir=tmp_path, **kwargs
    )


# ------------------------------------------------------------------------------ graphs
def _tensor(name: str, shape) -> helper.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _model(nodes, inputs, outputs, value_info=(), inits=None, dtypes=None) -> ModelWrapper:
    graph = helper.make_graph(nodes, "cppsim_test", inputs, outputs, value_info=list(value_info))
    model = ModelWrapper(qonnx_make_model(graph, producer_name="cppsim-test"))
    for name, value in (inits or {}).items():
        model.set_initializer(name, np.asarray(value, dtype=np.float32))
    for name, dt in (dtypes or {}).items():
        model.set_tensor_datatype(name, DataType[dt])
    return model


def _hw_node(op_type: str, inputs, outputs, name: str, **attrs):
    return helper.make_node(
        op_type, inputs, outputs, name=name, domain=HLS_DOMAIN, backend="fpgadataflow", **attrs
    )


def mvau_thresholding_graph(rng) -> ModelWrapper:
    """INT4 (4, 8) -> MVAU_hls (INT4 weights, thresholds -> UINT3) -> Thresholding_hls.

    2D: finn-plus's Python MVAU applies its thresholds on axis 1 (channels of 2D/4D data).
    """
    mw, mh, n = 8, 6, 4
    weights = rng.integers(-8, 8, size=(mw, mh))
    # integer thresholds: accumulators land exactly on them (tests x >= T semantics)
    t1 = np.sort(rng.integers(-40, 40, size=(mh, 7)), axis=1)
    t2 = np.sort(rng.integers(0, 8, size=(mh, 3)), axis=1)
    nodes = [
        _hw_node(
            "MVAU_hls",
            ["x", "W", "T1"],
            ["h"],
            "MVAU_hls_0",
            MW=mw,
            MH=mh,
            SIMD=4,
            PE=2,
            inputDataType="INT4",
            weightDataType="INT4",
            outputDataType="UINT3",
            accDataType="INT12",
            ActVal=0,
            noActivation=0,
            binaryXnorMode=0,
            numInputVectors=[n],
            mem_mode=MVAU_MEM_MODE,
        ),
        _hw_node(
            "Thresholding_hls",
            ["h", "T2"],
            ["y"],
            "Thresholding_hls_0",
            NumChannels=mh,
            PE=3,
            numSteps=3,
            inputDataType="UINT3",
            weightDataType="UINT3",
            outputDataType="UINT2",
            numInputVectors=[n],
            ActVal=0,
        ),
    ]
    return _model(
        nodes,
        [_tensor("x", (n, mw))],
        [_tensor("y", (n, mh))],
        [_tensor("h", (n, mh))],
        inits={"W": weights, "T1": t1, "T2": t2},
        dtypes={"x": "INT4", "W": "INT4", "T1": "INT12", "h": "UINT3", "T2": "UINT3", "y": "UINT2"},
    )


def replicate_add_graph() -> ModelWrapper:
    """INT5 (1, 4, 8) -> ReplicateStream_hls (2 copies) -> ElementwiseAdd_hls -> INT6 (= 2x)."""
    shape = [1, 4, 8]
    nodes = [
        _hw_node(
            "ReplicateStream_hls",
            ["x"],
            ["a", "b"],
            "ReplicateStream_hls_0",
            num=2,
            dtype="INT5",
            num_elems=8,
            PE=2,
            num_inputs=[1, 4],
        ),
        _hw_node(
            "ElementwiseAdd_hls",
            ["a", "b"],
            ["y"],
            "ElementwiseAdd_hls_0",
            lhs_dtype="INT5",
            rhs_dtype="INT5",
            out_dtype="INT6",
            lhs_shape=shape,
            rhs_shape=shape,
            out_shape=shape,
            PE=2,
        ),
    ]
    return _model(
        nodes,
        [_tensor("x", shape)],
        [_tensor("y", shape)],
        [_tensor("a", shape), _tensor("b", shape)],
        dtypes={"x": "INT5", "a": "INT5", "b": "INT5", "y": "INT6"},
    )


def layernorm_graph(epsilon: float) -> ModelWrapper:
    """INT9 (1, 4, 16) -> LayerNorm_hls (float output)."""
    shape = [1, 4, 16]
    node = _hw_node(
        "LayerNorm_hls",
        ["x"],
        ["y"],
        "LayerNorm_hls_0",
        SIMD=2,
        ifm_dim=shape,
        epsilon=epsilon,
        inputDataType="INT9",
        outputDataType="FLOAT32",
    )
    return _model(
        [node], [_tensor("x", shape)], [_tensor("y", shape)], dtypes={"x": "INT9", "y": "FLOAT32"}
    )


SDPA = {"QLen": 6, "KVLen": 6, "QKDim": 4, "VDim": 4, "dequant": 0.125}


def sdpa_graph(rng) -> ModelWrapper:
    """ScaledDotProductAttention_hls with thresholds after QK, softmax and AV (no mask)."""
    ql, kvl, d, dv = SDPA["QLen"], SDPA["KVLen"], SDPA["QKDim"], SDPA["VDim"]
    t_qk = np.arange(-56, 64, 8)[None, :]  # 15 integer thresholds: INT10 accumulator -> INT4
    t_a = np.sort(rng.uniform(0.0, 1.0, size=(1, 15)), axis=1).astype(np.float32)
    t_av = np.arange(-70, 80, 10)[None, :]  # INT12 accumulator -> INT4
    node = _hw_node(
        "ScaledDotProductAttention_hls",
        ["q", "k", "v", "t_qk", "t_a", "t_av"],
        ["y"],
        "ScaledDotProductAttention_hls_0",
        QKDim=d,
        QLen=ql,
        VDim=dv,
        KVLen=kvl,
        Heads=1,
        EmbFold=2,
        SeqFold=3,
        QType="INT4",
        KType="INT4",
        VType="INT4",
        AType="UINT4",
        OType="INT4",
        AccQKMatMul="INT10",
        OutQKMatMul="INT4",
        ActQKMatMul="thresholds",
        BiasActQKMatMul=-8.0,
        DequantSoftmax=SDPA["dequant"],
        AccASoftmax="FLOAT32",
        ActASoftmax="thresholds",
        BiasActASoftmax=0.0,
        AccAVMatMul="INT12",
        OutAVMatMul="INT4",
        ActAVMatMul="thresholds",
        BiasActAVMatMul=-8.0,
        mask_mode="none",
    )
    return _model(
        [node],
        [_tensor("q", (1, ql, d)), _tensor("k", (1, kvl, d)), _tensor("v", (1, kvl, dv))],
        [_tensor("y", (1, ql, dv))],
        inits={"t_qk": t_qk, "t_a": t_a, "t_av": t_av},
        dtypes={"q": "INT4", "k": "INT4", "v": "INT4", "t_qk": "INT10", "t_av": "INT12"},
    )


def _ints(rng, low: int, high: int, shape) -> np.ndarray:
    return rng.integers(low, high, size=shape).astype(np.float32)


def _strict_multithreshold(x: np.ndarray, thresholds: np.ndarray, strict: bool) -> np.ndarray:
    """Per-tensor thresholds (1, n): count of ``t < x`` (strict) or ``t <= x`` (Python's)."""
    t = thresholds.reshape(-1)
    return ((x[..., None] > t) if strict else (x[..., None] >= t)).sum(-1).astype(np.float64)


def sdpa_reference(model: ModelWrapper, q, k, v, strict: bool) -> np.ndarray:
    """The attention node's maths in numpy; ``strict`` uses the C++ kernel's comparisons."""
    from finn.custom_op.fpgadataflow.attention import softmax

    t_qk, t_a, t_av = (model.get_initializer(n) for n in ("t_qk", "t_a", "t_av"))
    q, k, v = (np.asarray(a, dtype=np.float64).reshape(a.shape[-2:]) for a in (q, k, v))
    qk = _strict_multithreshold(q @ k.T, t_qk, strict) - 8
    scores = (np.float32(SDPA["dequant"]) * qk.astype(np.float32)).astype(np.float32)
    a = _strict_multithreshold(softmax(scores, axis=-1), t_a, strict)
    return _strict_multithreshold(a @ v, t_av, strict) - 8


def layernorm_kernel_reference(x: np.ndarray) -> np.ndarray:
    """finn-hlslib ``layernorm<N>`` with its default eps (1e-5 added to N**2 * variance)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    centred = x - x.mean(-1, keepdims=True)
    var = (centred**2).mean(-1, keepdims=True)
    return centred / np.sqrt(var + 1e-5 / n**2)


# ------------------------------------------------------------------------------- errors
def test_missing_hls_dir_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(hls_toolchain.HLS_DIR_ENV, raising=False)
    with pytest.raises(FinnFlowError, match="does not exist") as exc:
        hls_toolchain.HlsToolchain.resolve(tmp_path / "nowhere")
    assert "APQ_HLS_DIR" in str(exc.value) and "--hls-dir" in str(exc.value)

    (tmp_path / "partial" / "finn-hlslib").mkdir(parents=True)
    with pytest.raises(FinnFlowError, match=r"lacks attention-hlslib/") as exc:
        hls_toolchain.HlsToolchain.resolve(tmp_path / "partial")
    assert "APQ_HLS_DIR" in str(exc.value)

    monkeypatch.setenv(hls_toolchain.HLS_DIR_ENV, str(tmp_path / "from_env"))
    with pytest.raises(FinnFlowError, match="environment variable APQ_HLS_DIR"):
        hls_toolchain.HlsToolchain.resolve()

    # nothing configured and finn's own deps folder without the libraries
    monkeypatch.delenv(hls_toolchain.HLS_DIR_ENV)
    monkeypatch.setattr(hls_toolchain, "_finn_deps_dir", lambda: tmp_path / "finn_deps")
    with pytest.raises(FinnFlowError, match="no folder with them is configured") as exc:
        hls_toolchain.HlsToolchain.resolve()
    assert "APQ_HLS_DIR" in str(exc.value) and "finn deps update" in str(exc.value)


def test_missing_ap_int_headers(tmp_path, monkeypatch):
    for name in hls_toolchain.HLS_LIBRARIES:
        (tmp_path / name).mkdir()
    monkeypatch.delenv("XILINX_HLS", raising=False)
    monkeypatch.setattr(hls_toolchain, "_find_ap_types", lambda folder: None)
    with pytest.raises(FinnFlowError, match=r"No ap_int\.h .*HLS_arbitrary_Precision_Types"):
        hls_toolchain.HlsToolchain.resolve(tmp_path)


def test_finn_deps_fallback(tmp_path, monkeypatch):
    for name in hls_toolchain.HLS_LIBRARIES:
        (tmp_path / name).mkdir()
    monkeypatch.delenv(hls_toolchain.HLS_DIR_ENV, raising=False)
    monkeypatch.setattr(hls_toolchain, "_finn_deps_dir", lambda: tmp_path)
    monkeypatch.setattr(hls_toolchain, "_find_ap_types", lambda folder: folder)
    tc = hls_toolchain.HlsToolchain.resolve(cache_dir=tmp_path / "cache")
    assert tc.hls_dir == tmp_path.resolve() and "finn" in tc.source


def test_attention_width_check():
    model = sdpa_graph(np.random.default_rng(0))
    node = model.graph.node[0]
    hls_toolchain.check_attention_widths(model, node)  # the test graph's widths are fine
    for attr in node.attribute:
        if attr.name == "AccAVMatMul":
            attr.s = b"INT64"
    with pytest.raises(FinnFlowError, match=r"wider than 63 bits \(AccAVMatMul=INT64\)"):
        hls_toolchain.check_attention_widths(model, node)


def test_compile_error_names_node_and_log(toolchain, tmp_path, monkeypatch):
    import dataclasses
    import subprocess

    def failing(command, cwd, env):
        return subprocess.CompletedProcess(command, 1, "", "execute.cpp:3:1: error: boom\n")

    monkeypatch.setattr(cppsim_compile, "_run_compiler", failing)
    fresh = dataclasses.replace(toolchain, cache_dir=tmp_path / "cache")
    with pytest.raises(FinnFlowError) as exc:
        cppsim_compile.compile_cppsim(
            layernorm_graph(1e-5), toolchain=fresh, progress=False, work_dir=tmp_path / "w"
        )
    message = str(exc.value)
    assert "LayerNorm_hls_0 (LayerNorm_hls)" in message and "error: boom" in message
    log = tmp_path / "w" / "nodes" / "LayerNorm_hls_0" / "compile.log"
    assert f"Full log: {log}" in message and log.is_file()


# ------------------------------------------------------------------------- bit-exactness
def test_mvau_and_thresholding_bit_exact(toolchain, tmp_path):
    rng = np.random.default_rng(0)
    model = mvau_thresholding_graph(rng)
    x = _ints(rng, -8, 8, (6, 4, 8))
    result = _simulate(model, x, toolchain, tmp_path)
    assert result.max_abs_diff_vs_python == 0.0
    assert [(n.op_type, n.level, n.max_abs_diff) for n in result.nodes] == [
        ("MVAU_hls", "cppsim", 0.0),
        ("Thresholding_hls", "cppsim", 0.0),
    ]
    assert len(np.unique(result.outputs)) >= 3  # not a degenerate (constant) output
    assert result.node("MVAU_hls_0").n_values == 6 * 4 * 6


def test_replicate_stream_and_elementwise_add_bit_exact(toolchain, tmp_path):
    rng = np.random.default_rng(1)
    x = _ints(rng, -16, 16, (4, 1, 4, 8))
    result = _simulate(replicate_add_graph(), x, toolchain, tmp_path)
    np.testing.assert_array_equal(result.outputs, 2 * x)
    assert result.max_abs_diff_vs_python == 0.0
    assert {n.op_type: n.max_abs_diff for n in result.nodes} == {
        "ReplicateStream_hls": 0.0,
        "ElementwiseAdd_hls": 0.0,
    }
    assert result.node("ReplicateStream_hls_0").n_values == 2 * x.size  # both copies compared


def test_layernorm_float_difference(toolchain, tmp_path):
    """Default epsilon (1e-5): float32 kernel vs numpy, measured max abs 2.4e-7."""
    rng = np.random.default_rng(2)
    x = _ints(rng, -256, 256, (4, 1, 4, 16))
    result = _simulate(layernorm_graph(1e-5), x, toolchain, tmp_path)
    node = result.node("LayerNorm_hls_0")
    print(
        f"LayerNorm_hls cppsim vs Python: max abs {node.max_abs_diff:.3g} ({node.n_diff} of "
        f"{node.n_values} values differ); outputs in [{result.outputs.min():.2f}, "
        f"{result.outputs.max():.2f}]"
    )
    assert node.level == "cppsim"
    assert 0.0 < node.max_abs_diff < 1e-6
    np.testing.assert_allclose(result.outputs, layernorm_kernel_reference(x), atol=1e-6)


def test_layernorm_kernel_honours_epsilon(toolchain, tmp_path):
    """finn-plus 1.6.1's LayerNorm_hls passes no epsilon to finn-hlslib's layernorm<N> (the
    kernel then normalises with 1e-5 / N**2 whatever the node says); finn_flow.finn_fixes
    passes N**2 * epsilon. A large epsilon makes a missing one visible (> 1e-3 measured)."""
    rng = np.random.default_rng(2)
    x = _ints(rng, -256, 256, (4, 1, 4, 16))
    result = _simulate(layernorm_graph(1000.0), x, toolchain, tmp_path)
    assert result.node("LayerNorm_hls_0").max_abs_diff < 1e-6
    assert np.abs(result.outputs - layernorm_kernel_reference(x)).max() > 1e-3


def test_attention_thresholds_compare_like_python(toolchain, tmp_path):
    """finn-plus 1.6.1 generates the attention's threshold activations with ``comp::less``
    (``threshold < x``), Python with ``x >= threshold``: with integer accumulators the C++
    lost one level wherever an accumulator equals a threshold (18 of 96 values here, up to 2
    levels; 283 of 3,072 on 8 quickstart windows). finn_flow.finn_fixes generates
    ``comp::less_equal``; a numpy model of the node with strict comparisons shows that these
    inputs do hit ties."""
    rng = np.random.default_rng(3)
    model = sdpa_graph(rng)
    inputs = {name: _ints(rng, -8, 8, (4, 1, 6, 4)) for name in "qkv"}
    result = _simulate(model, inputs, toolchain, tmp_path)
    ties = 0
    for i in range(4):
        q, k, v = (inputs[n][i] for n in "qkv")
        python_like = sdpa_reference(model, q, k, v, strict=False)
        ties += int((sdpa_reference(model, q, k, v, strict=True) != python_like).sum())
        np.testing.assert_array_equal(result.python_outputs[i].reshape(6, 4), python_like)
        np.testing.assert_array_equal(result.outputs[i].reshape(6, 4), python_like)
    assert ties > 0
    assert result.max_abs_diff_vs_python == 0.0
    params = list(Path(tmp_path).rglob("params.hpp"))
    assert params and all("comp::less<" not in p.read_text() for p in params)


def test_rtl_nodes_run_in_verilator_or_python(toolchain, tmp_path):
    """cppsim runs FINN's Python for *_rtl nodes; with rtl_sim (the default) the ones
    Verilator supports are then simulated as RTL and marked rtl-verilator."""
    shape = [1, 4, 6]
    node = helper.make_node(
        "Thresholding_rtl",
        ["x", "T"],
        ["y"],
        name="Thresholding_rtl_0",
        domain="finn.custom_op.fpgadataflow.rtl",
        backend="fpgadataflow",
        NumChannels=6,
        PE=2,
        numSteps=3,
        inputDataType="INT4",
        weightDataType="INT4",
        outputDataType="UINT2",
        numInputVectors=[1, 4],
    )
    thresholds = np.sort(np.random.default_rng(4).integers(-8, 8, size=(6, 3)), axis=1)
    model = _model(
        [node],
        [_tensor("x", shape)],
        [_tensor("y", shape)],
        inits={"T": thresholds},
        dtypes={"x": "INT4", "T": "INT4", "y": "UINT2"},
    )
    x = _ints(np.random.default_rng(5), -8, 8, (3, *shape))
    result = _simulate(model, x, toolchain, tmp_path / "py", rtl_sim=False)
    assert result.compile.kernels == []
    assert [(n.level, n.max_abs_diff) for n in result.nodes] == [("python", 0.0)]
    if shutil.which("verilator"):
        result = _simulate(model, x, toolchain, tmp_path / "rtl")
        assert [(n.level, n.max_abs_diff) for n in result.nodes] == [("rtl-verilator", 0.0)]


# --------------------------------------------------------------------------------- cache
def test_cache_avoids_recompiling(toolchain, tmp_path, monkeypatch):
    """Compiler runs are counted: a second compile (other work dir) runs none; a changed
    kernel recompiles alone."""
    calls: list[str] = []
    real = cppsim_compile._run_compiler

    def counting(command, cwd, env):
        calls.append(command)
        return real(command, cwd, env)

    monkeypatch.setattr(cppsim_compile, "_run_compiler", counting)
    model = replicate_add_graph()
    _, first = cppsim_compile.compile_cppsim(
        model, toolchain=toolchain, progress=False, work_dir=tmp_path / "a"
    )
    assert len(calls) == first.n_compiled  # 2 if this test runs first, else 0
    calls.clear()
    compiled, second = cppsim_compile.compile_cppsim(
        model, toolchain=toolchain, progress=False, work_dir=tmp_path / "b"
    )
    assert calls == []
    assert second.n_compiled == 0 and second.n_cached == 2
    assert [k.key for k in second.kernels] == [k.key for k in first.kernels]
    for kernel in second.kernels:  # installed into the new work dir, runnable there
        assert kernel.executable.startswith(str(tmp_path / "b"))
    from finn.core.onnx_exec import execute_onnx

    x = _ints(np.random.default_rng(6), -16, 16, (1, 4, 8))
    np.testing.assert_array_equal(execute_onnx(compiled, {"x": x})["y"], 2 * x)

    # a rebuild with one kernel changed (the add's parallelism) recompiles only that kernel
    changed = replicate_add_graph()
    for attr in changed.graph.node[1].attribute:
        if attr.name == "PE":
            attr.i = 4
    _, third = cppsim_compile.compile_cppsim(
        changed, toolchain=toolchain, progress=False, work_dir=tmp_path / "c"
    )
    assert len(calls) == 1
    assert [(k.node, k.cached) for k in third.kernels] == [
        ("ReplicateStream_hls_0", True),
        ("ElementwiseAdd_hls_0", False),
    ]


# ------------------------------------------------------------------------- build outputs
def _fake_build(out: Path, child: ModelWrapper) -> Path:
    """A build output directory: dataflow_parent.onnx (partition -> Mul 0.5) + HW graph."""
    models = out / "intermediate_models"
    models.mkdir(parents=True)
    child_path = models / "step_minimize_bit_width.onnx"
    child.save(str(child_path))
    shape = [1, 4, 8]
    sdp = helper.make_node(
        "StreamingDataflowPartition",
        ["global_in"],
        ["p"],
        name="GenericPartition_0",
        domain="finn.custom_op.fpgadataflow",
        model=str(models / "supported_op_partitions" / "partition_0.onnx"),
    )
    mul = helper.make_node("Mul", ["p", "half"], ["global_out"], name="Mul_0")
    parent = _model(
        [sdp, mul],
        [_tensor("global_in", shape)],
        [_tensor("global_out", shape)],
        [_tensor("p", shape)],
        inits={"half": np.float32(0.5)},
    )
    parent.save(str(models / "dataflow_parent.onnx"))
    return out


def test_simulate_cppsim_of_a_build(toolchain, tmp_path):
    out = _fake_build(tmp_path / "build", replicate_add_graph())
    x = _ints(np.random.default_rng(7), -16, 16, (5, 1, 4, 8))
    result = cppsim.simulate_cppsim(out, x, expected=x, toolchain=toolchain, progress=False)
    np.testing.assert_array_equal(result.outputs, x)  # 2x * 0.5
    assert result.max_abs_diff_vs_python == 0.0
    assert result.max_abs_diff_vs_qonnx == 0.0 and result.python_max_abs_diff_vs_qonnx == 0.0
    assert [n.name for n in result.nodes] == ["ReplicateStream_hls_0", "ElementwiseAdd_hls_0"]
    assert (out / "cppsim" / "dataflow_cppsim.onnx").is_file()
    summary = json.loads(json.dumps(result.as_dict()))
    assert summary["n_inputs"] == 5 and len(summary["outputs"]) == 5
    assert summary["compile"]["n_compiled"] + summary["compile"]["n_cached"] == 2
    assert {"name", "op_type", "level", "max_abs_diff"} <= set(summary["nodes"][0])


def test_find_hw_model(tmp_path):
    from finn_flow.graph import find_hw_model

    with pytest.raises(FinnFlowError, match="No specialised HW graph"):
        find_hw_model(tmp_path)
    (tmp_path / "intermediate_models").mkdir()
    (tmp_path / "intermediate_models" / "step_hw_codegen.onnx").write_bytes(b"")
    assert find_hw_model(tmp_path).name == "step_hw_codegen.onnx"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # measured 865 s with a cold kernel cache on a busy 2-core machine
def test_transformer_build_cppsim(toolchain, model_dir, tmp_path):
    """A built Transformer (layer norm) through cppsim: every HLS node compiles and runs.

    Integer HLS nodes and attention (with finn_flow.finn_fixes' comparison) are bit-exact,
    LayerNorm_hls differs by float32 rounding only; a node type without an expectation here
    fails the test instead of passing unchecked.
    """
    import finn_flow_models as models

    from finn_flow.build import build
    from finn_flow.emulation import qonnx_reference

    path, shape = models.make_transformer(model_dir / "transformer_ln.onnx", norm="layer")
    x = models.random_inputs(shape, 4)
    out = tmp_path / "tf"
    build(path, out, emulation_inputs=x, raise_on_mismatch=False, quiet=True)
    expected = qonnx_reference(path, x)
    result = cppsim.simulate_cppsim(out, x, expected=expected, toolchain=toolchain, progress=False)
    for node in result.nodes:
        print(
            f"{node.name:36s} {node.level:7s} max abs {node.max_abs_diff:.3g} "
            f"({node.n_diff}/{node.n_values})"
        )
    print(
        f"whole graph vs Python {result.max_abs_diff_vs_python:.3g}, vs QONNX "
        f"{result.max_abs_diff_vs_qonnx:.3g} (Python vs QONNX "
        f"{result.python_max_abs_diff_vs_qonnx:.3g})"
    )
    assert len(result.compile.kernels) == sum(n.level == "cppsim" for n in result.nodes) > 0
    for node in result.nodes:
        kind = node.op_type
        if node.level == "python" or kind.startswith((*BIT_EXACT_OPS, "ScaledDotProduct")):
            assert node.max_abs_diff == 0.0, node
        elif kind.startswith("LayerNorm"):
            assert node.max_abs_diff < 1e-3, node
        else:
            pytest.fail(f"no expectation for {kind} ({node.name}, level {node.level})")
    # measured: 0 and 2.98e-08 (the software output scaling in float32)
    assert result.max_abs_diff_vs_python == 0.0
    assert result.max_abs_diff_vs_qonnx <= 1e-6
