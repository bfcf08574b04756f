"""The project's TimeSeriesTransformer through the FINN flow: build, emulation, CLI, simulation.

Trains tiny runs (one float + one QAT epoch of three batches) on a synthetic CSV, exports them
and builds them for Pynq-Z1 without Xilinx tools, emulating real test windows through FINN's
hardware graph. cppsim/rtlsim tests need Vitis HLS/Vivado (``@pytest.mark.vivado``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("finn")


from brevitas_apq.cli import app
from brevitas_apq.finn_bridge import build_run
from brevitas_apq.plans import BitPlan
from brevitas_apq.rundir import load_run
from brevitas_apq.training import TrainConfig, train_run
from tests.helpers import csv_data

# module fixtures train two runs and build them; the first test using them pays for that, and
# the cppsim test compiles every kernel and builds every RTL node in Verilator
pytestmark = [pytest.mark.finn, pytest.mark.timeout(1800)]

TINY = TrainConfig(float_epochs=1, qat_epochs=1, max_batches=3, batch_size=32)
WINDOWS = 8
#: (bits, schemes, norm) of the module's runs
CONFIGS = {
    "mixed_sqapq_layer": ("mixed-4-8", "sq-apq", "layer"),
    "allaq_batch": ("all-4", "all-aq", "batch"),
}


runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _text(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_csv) -> dict:
    """name -> trained run directory (model.onnx is exported by the build)."""
    out = {}
    for name, (bits, schemes, norm) in CONFIGS.items():
        run_dir = tmp_path_factory.mktemp(name)
        train_run(
            run_dir,
            data=csv_data(small_csv),
            plan=BitPlan.from_presets(bits, schemes),
            train=TINY,
            model_options={"norm": norm},
            progress=False,
            overwrite=True,
        )
        out[name] = run_dir
    return out


@pytest.fixture(scope="module")
def built(runs, tmp_path_factory) -> dict:
    """name -> summary with emulation of WINDOWS test windows: the first run through the
    Python API (build_run), the second through the command line (``apq build RUN_DIR``)."""
    out = {"mixed_sqapq_layer": build_run(runs["mixed_sqapq_layer"], windows=WINDOWS)}
    cli_out = tmp_path_factory.mktemp("cli_build")
    result = _invoke(
        "build", str(runs["allaq_batch"]), "--out", str(cli_out), "--windows", str(WINDOWS)
    )
    assert result.exit_code == 0, result.output
    out["allaq_batch"] = json.loads((cli_out / "summary.json").read_text())
    out["allaq_batch_cli"] = (result.output, cli_out)
    return out


def _emulated(summary: dict) -> np.ndarray:
    notes = [n for n in summary["emulation"]["notes"] if n.startswith("emulated outputs")]
    assert len(notes) == 1, f"the build saved no emulated outputs: {summary['emulation']}"
    return np.load(notes[0].split(": ", 1)[1]).reshape(-1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_transformer_maps_to_one_partition_and_emulates_exactly(name, runs, built):
    summary, run_dir = built[name], runs[name]
    assert (run_dir / "model.onnx").is_file()  # exported by build_run
    if name == "mixed_sqapq_layer":  # default output directory of build_run
        assert (run_dir / "finn" / "summary.json").is_file()
    assert summary["board"] == "Pynq-Z1" and summary["part"] == "xc7z020clg400-1"
    # everything but the final float scale/offset is inside the dataflow partition
    outside = summary["nodes_outside_dataflow_partition"]
    assert {n["op"] for n in outside} <= {"Mul", "Add"}
    assert all(n["role"].startswith("output dequantisation") for n in outside)
    for key in ("LUT", "BRAM_18K", "DSP"):
        assert summary[key] > 0
    assert summary["estimated_throughput_fps"] > 0 and summary["estimated_latency_ns"] > 0
    attn = [
        n
        for n in summary["nodes_not_estimated_by_finn"]
        if n["analytical_estimate"] and n["node"].startswith("ScaledDotProductAttention")
    ]
    assert len(attn) == 1 and attn[0]["node"].startswith("ScaledDotProductAttention")

    emu = summary["emulation"]
    assert emu["passed"] and emu["n_inputs"] == WINDOWS
    assert emu["max_abs_diff"] <= 1e-5  # FINN python emulation vs QONNX
    assert emu["max_abs_diff_vs_brevitas"] <= 1e-4
    assert np.isfinite(emu["rmse_target_units"]) and emu["rmse_target_units"] > 0

    # independent check: QONNX and Brevitas on the same windows
    from brevitas_apq.export import run_qonnx

    _, model, spec = load_run(run_dir)
    X = spec.load().X_test[:WINDOWS]
    qonnx_out = run_qonnx(run_dir / "model.onnx", X).reshape(-1)
    with torch.no_grad():
        brevitas_out = model(torch.from_numpy(X)).numpy().reshape(-1)
    emulated = _emulated(summary)
    np.testing.assert_allclose(emulated, qonnx_out, atol=1e-5, rtol=0)
    np.testing.assert_allclose(emulated, brevitas_out, atol=1e-4, rtol=0)


def test_batch_norm_is_integer_layer_norm_is_float(built):
    """BatchNorm(affine=False) folds into thresholds; LayerNorm stays a float HW operator."""
    layer = {n["op"] for n in built["mixed_sqapq_layer"]["float_datapath_nodes"]}
    batch = built["allaq_batch"]["float_datapath_nodes"]
    assert "LayerNorm_hls" in layer
    assert batch == []


def test_estimate_only_mode_is_cheap(runs, tmp_path):
    summary = build_run(runs["mixed_sqapq_layer"], out=tmp_path / "est", windows=0)
    assert summary["emulation"] is None
    assert summary["LUT"] > 0 and summary["estimated_throughput_fps"] > 0
    assert not (tmp_path / "est" / "intermediate_models" / "step_tidy_up.onnx").exists()


# ----------------------------------------------------------------------------------- CLI
def test_cli_build_run_dir_writes_summary_and_table(built, runs):
    output, out = built["allaq_batch_cli"]
    text = " ".join(output.split())
    assert "FINN estimate: Pynq-Z1" in text and "53,200" in text and "inferences/s" in text
    assert "outside the dataflow partition: Mul" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["emulation"]["n_inputs"] == WINDOWS and summary["emulation"]["passed"]
    assert (out / "report" / "estimate_layer_resources.json").is_file()
    assert (runs["allaq_batch"] / "model.onnx").is_file()  # exported first


def test_cli_build_emulation_above_tolerance_fails(mlp_model, tmp_path, monkeypatch):
    # a QONNX reference off by one: exit 1, the table and summary.json still written
    from finn_flow import emulation

    reference = emulation.qonnx_reference
    monkeypatch.setattr(emulation, "qonnx_reference", lambda *a, **k: reference(*a, **k) + 1.0)
    path, _ = mlp_model
    out = tmp_path / "o"
    result = _invoke("build", str(path), "--out", str(out), "--windows", "2")
    assert result.exit_code == 1
    text = _text(result)
    assert "emulation differs" in text and "Traceback" not in text
    assert "FINN estimate" in text
    assert not json.loads((out / "summary.json").read_text())["emulation"]["passed"]


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error:" in result.output
    for needle in needles:
        assert needle in _text(result), result.output


def test_cli_build_not_onnx(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_text("not a model")
    _one_line_error(_invoke("build", str(bad)), "not an ONNX model")


def test_cli_build_float_model(tmp_path):
    path = tmp_path / "float.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), torch.randn(1, 4), str(path), dynamo=False)
    _one_line_error(_invoke("build", str(path)), "no QONNX Quant nodes")


def test_cli_build_unknown_board(mlp_model, tmp_path):
    path, _ = mlp_model
    _one_line_error(
        _invoke("build", str(path), "--board", "Pynq-Z9", "--out", str(tmp_path)),
        "Unknown board",
        "Valid boards",
    )


def test_cli_build_folding_names_nonexistent_node(mlp_model, tmp_path):
    path, _ = mlp_model
    folding = tmp_path / "fold.json"
    folding.write_text(json.dumps({"Defaults": {}, "MVAU_hls_42": {"PE": 2}}))
    result = _invoke("build", str(path), "--folding", str(folding), "--out", str(tmp_path / "o"))
    _one_line_error(result, "MVAU_hls_42")


def test_cli_build_unreachable_fps_warns(mlp_model, tmp_path):
    path, _ = mlp_model
    result = _invoke(
        "build", str(path), "--target-fps", str(10**9), "--out", str(tmp_path / "o"),
        "--windows", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "not reached" in result.output


def test_cli_build_unmappable_operator(tmp_path):
    import finn_flow_models as models

    path = models.make_unmappable(tmp_path / "sin.onnx")
    _one_line_error(
        _invoke("build", str(path), "--out", str(tmp_path / "o")), "Sin node", "cannot map"
    )


def test_cli_build_directory_without_model(tmp_path):
    _one_line_error(_invoke("build", str(tmp_path)), "without model.onnx")


# ---------------------------------------------------------------------- C++ simulation
def test_cli_build_cppsim_of_trained_transformer_is_bit_exact(runs, hls_dir, tmp_path):
    """Every HLS kernel of a trained Transformer (attention, LayerNorm, the pooling MVAU, adds,
    stream forks), compiled with g++, on real test windows: the whole graph equals FINN's
    Python execution and QONNX exactly; every *_hls node is verified at level cppsim, the RTL
    thresholds in Verilator."""
    out = tmp_path / "cpp"
    result = _invoke(
        "build", str(runs["mixed_sqapq_layer"]), "--out", str(out), "--windows", "6",
        "--cppsim", "6", "--hls-dir", str(hls_dir),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    sim = summary["cppsim"]
    assert sim["windows"] == 6 and sim["passed"]
    assert sim["max_abs_diff_vs_python"] == 0.0 and sim["max_abs_diff_vs_qonnx"] <= 1e-6
    by_op = {}
    for entry in summary["verification"]:
        by_op.setdefault(entry["op_type"], set()).add(entry["level"])
    hls = {op for op in by_op if op.endswith("_hls")}
    assert {
        "ScaledDotProductAttention_hls", "LayerNorm_hls", "MVAU_hls", "ElementwiseAdd_hls",
        "ReplicateStream_hls",
    } <= hls  # fmt: skip
    assert all(by_op[op] == {"cppsim"} for op in hls)
    assert by_op["Thresholding_rtl"] == {"rtl-verilator"}  # Verilator (CI installs it)
    assert by_op.get("MVAU_rtl", {"python"}) == {"python"}  # Xilinx DSP primitives
    assert all(e["max_abs_diff"] == 0.0 for e in summary["verification"]
               if e["level"] == "rtl-verilator")  # fmt: skip
    norms = [e for e in summary["verification"] if e["op_type"] == "LayerNorm_hls"]
    assert all(e["decisions_changed"] == 0 for e in norms)
    text = _text(result)
    # (rich wraps the row labels at the test runner's 80 columns)
    assert "C++ sim |diff|" in text and "deepest level per hardware node" in text


def test_cli_build_cppsim_missing_hls_dir_is_one_line(mlp_model, tmp_path, monkeypatch):
    monkeypatch.delenv("APQ_HLS_DIR", raising=False)
    path, _ = mlp_model
    result = _invoke(
        "build", str(path), "--out", str(tmp_path / "o"), "--windows", "2", "--cppsim", "2",
        "--hls-dir", str(tmp_path / "nowhere"),
    )  # fmt: skip
    _one_line_error(result, "nowhere", "APQ_HLS_DIR")
    assert not (tmp_path / "o" / "summary.json").exists()  # refused before the build


def test_cli_build_cppsim_needs_windows(mlp_model, tmp_path):
    path, _ = mlp_model
    result = _invoke("build", str(path), "--windows", "2", "--cppsim", "4")
    _one_line_error(result, "--cppsim 4 > --windows 2")


def test_cli_build_inputs_npy(mlp_model, tmp_path):
    """A model without a run: samples from --inputs, compared against its QONNX graph."""
    path, shape = mlp_model
    x = np.random.default_rng(4).uniform(-1, 1, size=(3, *shape[1:])).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "o"
    result = _invoke(
        "build", str(path), "--inputs", str(tmp_path / "x.npy"), "--out", str(out),
        "--windows", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    emu = json.loads((out / "summary.json").read_text())["emulation"]
    assert emu["n_inputs"] == 3 and emu["passed"] and emu["inputs"] == "first 3 of the given inputs"
    np.save(tmp_path / "bad.npy", x[:, :2])
    _one_line_error(
        _invoke("build", str(path), "--inputs", str(tmp_path / "bad.npy")),
        "does not match the model input",
    )
    (tmp_path / "junk.npy").write_text("junk")
    _one_line_error(
        _invoke("build", str(path), "--inputs", str(tmp_path / "junk.npy")), "not a readable"
    )


def _attention_alone(hw, node):
    """A graph of ``hw``'s attention ``node`` alone: its q/k/v as graph inputs, its thresholds as
    initializers, its tensors' FINN datatypes (for cppsim of just that kernel)."""
    import copy

    from onnx import helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    node = copy.deepcopy(node)
    graph = helper.make_graph(
        [node],
        "attention",
        [hw.get_tensor_valueinfo(name) for name in node.input[:3]],
        [hw.get_tensor_valueinfo(node.output[0])],
    )
    model = ModelWrapper(qonnx_make_model(graph))
    for name in node.input[3:]:
        model.set_initializer(name, hw.get_initializer(name))
    for name in [*node.input, *node.output]:
        model.set_tensor_datatype(name, hw.get_tensor_datatype(name))
    return model


@pytest.mark.slow  # measured 58 s on two busy cores (training, build, two kernel compiles)
def test_window_shorter_than_d_model_attention_is_exact_in_cpp(
    small_csv, hls_dir, kernel_cache, tmp_path
):
    """A window of 8 < d_model 16 (QLen < QKDim), where finn-plus 1.6.1 sizes the attention's QK
    accumulator over QLen terms from the QType.max() corner (too narrow:
    finn_flow.attention_thresholds.qk_accumulator_datatype). FINN's Python emulation computes
    in float and cannot show it; the attention's C++ kernel can. After the flow
    (WidenAttentionAccumulators), AccQKMatMul holds the worst case over QKDim, emulation equals
    QONNX, and the kernel, compiled with g++, equals FINN's Python on the test windows' q/k/v
    and on worst-case q/k, which finn-plus's own type wraps."""
    import dataclasses

    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    from finn_flow import cppsim, hls_toolchain
    from finn_flow.attention_thresholds import qk_accumulator_datatype
    from finn_flow.graph import dynamic_inputs, find_hw_model, python_model
    from finn_flow.no_vivado import finn_session

    run_dir = tmp_path / "run"
    bits, schemes, norm = CONFIGS["allaq_batch"]
    train_run(
        run_dir,
        data=dataclasses.replace(csv_data(small_csv), window=8),
        plan=BitPlan.from_presets(bits, schemes),
        train=TINY,
        model_options={"norm": norm},
        progress=False,
        overwrite=True,
    )
    summary = build_run(run_dir, out=tmp_path / "finn", windows=WINDOWS)
    emu = summary["emulation"]
    assert emu["passed"] and emu["n_inputs"] == WINDOWS
    assert emu["max_abs_diff"] <= 1e-5  # FINN python emulation vs QONNX
    outside = summary["nodes_outside_dataflow_partition"]
    assert all(n["role"].startswith("output dequantisation") for n in outside)

    hw = ModelWrapper(str(find_hw_model(tmp_path / "finn")))
    (node,) = [n for n in hw.graph.node if n.op_type.startswith("ScaledDotProductAttention")]
    with finn_session():
        from finn.core.onnx_exec import execute_onnx
        from qonnx.custom_op.registry import getCustomOp

        attrs = getCustomOp(node).get_nodeattr
        q_type, k_type = DataType[attrs("QType")], DataType[attrs("KType")]
        assert (attrs("QLen"), attrs("QKDim")) == (8, 16)
        assert q_type.signed() and k_type.signed()  # so QType.min() * KType.min() is the max
        worst = qk_accumulator_datatype(q_type, k_type, 16)
        acc = DataType[attrs("AccQKMatMul")]
        assert acc.min() <= worst.min() and acc.max() >= worst.max(), (acc, worst)
        alone = _attention_alone(hw, node)
        theirs = getCustomOp(_attention_alone(hw, node).graph.node[0])
        theirs.minimize_accumulator_width(None)  # finn-plus's own type: too narrow here
        finn_acc = DataType[theirs.get_nodeattr("AccQKMatMul")]
        assert finn_acc.max() < worst.max() or finn_acc.min() > worst.min(), finn_acc

        # q/k/v of the test windows: FINN's Python execution of the HW graph (the model input
        # enters it directly; only the output scaling is outside)
        _, _, spec = load_run(run_dir)
        (inp,) = dynamic_inputs(hw)
        reference = python_model(hw)
        real = {name: [] for name in node.input[:3]}
        for x in spec.load().X_test[:WINDOWS]:
            feed = {inp: x.reshape(hw.get_tensor_shape(inp)).astype(np.float32)}
            ctx = execute_onnx(reference, feed, return_full_exec_context=True)
            for name in real:
                real[name].append(ctx[name])
    real = {name: np.stack(arrays) for name, arrays in real.items()}
    # worst case: every query at QType.min() against keys alternately at KType.min() (score
    # 16 * QType.min() * KType.min(), the maximum, which finn-plus's type wraps) and at 0 (score
    # 0); the windows' values
    q_name, k_name, v_name = node.input[:3]
    extreme = {
        q_name: np.full_like(real[q_name], q_type.min()),
        k_name: np.zeros_like(real[k_name]),
        v_name: real[v_name],
    }
    extreme[k_name][..., ::2, :] = k_type.min()
    samples = {name: np.concatenate([real[name], extreme[name]]) for name in real}

    toolchain = hls_toolchain.HlsToolchain.resolve(hls_dir, cache_dir=kernel_cache)
    result = cppsim.simulate_graph(
        alone, samples, toolchain=toolchain, progress=False, work_dir=tmp_path / "cpp"
    )
    assert result.nodes[0].level == "cppsim"
    assert result.max_abs_diff_vs_python == 0.0  # C++ kernel == FINN's Python, bit for bit
    assert len({o.tobytes() for o in result.outputs}) > 1
    # the same kernel with finn-plus's AccQKMatMul: the worst case wraps (what the widening fixes)
    getCustomOp(alone.graph.node[0]).set_nodeattr("AccQKMatMul", finn_acc.name)
    narrow = cppsim.simulate_graph(
        alone, extreme, toolchain=toolchain, progress=False, work_dir=tmp_path / "cpp_finn"
    )
    assert narrow.max_abs_diff_vs_python > 0.0


# ------------------------------------------------------------------------ Xilinx tools
@pytest.mark.vivado
@pytest.mark.parametrize("mode", ["cppsim", "rtlsim"])
def test_cppsim_and_rtlsim_match_python_emulation(mode, runs, tmp_path):
    """With Vitis HLS / Vivado: FINN's own cppsim and node-by-node RTL simulation equal the
    python emulation."""
    from finn_flow.build import build
    from finn_flow.simulate import simulate_dataflow

    run_dir = runs["mixed_sqapq_layer"]
    if not (run_dir / "model.onnx").is_file():
        from brevitas_apq.export import export_run

        export_run(run_dir)
    _, model, spec = load_run(run_dir)
    X = spec.load().X_test[:2]
    out = tmp_path / mode
    summary = build(run_dir / "model.onnx", out, emulation_inputs=X[:, None], full=False)
    emulated = _emulated(summary)  # the build saves its emulated outputs (a note names them)
    simulated = simulate_dataflow(out, X[:, None], mode=mode).reshape(-1)
    with torch.no_grad():
        brevitas_out = model(torch.from_numpy(X)).numpy().reshape(-1)
    np.testing.assert_allclose(simulated, brevitas_out, atol=1e-4, rtol=0)
    np.testing.assert_allclose(simulated, emulated, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------ graph rewrites
def _ln_graph(scale: float, offset: float):
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["xs"], name="Mul_0"),
        helper.make_node("Add", ["xs", "c"], ["xc"], name="Add_0"),
        helper.make_node("LayerNormalization", ["xc", "g", "b"], ["y"], name="LN_0", axis=-1),
    ]
    graph = helper.make_graph(nodes, "ln", [x], [y])
    model = ModelWrapper(qonnx_make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    model.set_initializer("s", np.asarray(scale, dtype=np.float32))
    model.set_initializer("c", np.asarray(offset, dtype=np.float32))
    model.set_initializer("g", np.ones(8, dtype=np.float32))
    model.set_initializer("b", np.zeros(8, dtype=np.float32))
    return model


def test_layer_norm_absorbs_scalar_scale_and_offset_exactly():
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    from finn_flow.hw_rewrites import AbsorbScalarMulIntoLayerNorm

    model = _ln_graph(0.37, -1.5).transform(InferShapes())
    x = np.random.default_rng(0).integers(-8, 8, size=(1, 4, 8)).astype(np.float32)
    before = execute_onnx(model, {"x": x})["y"]
    rewritten = model.transform(AbsorbScalarMulIntoLayerNorm())
    assert [n.op_type for n in rewritten.graph.node] == ["LayerNormalization"]
    after = execute_onnx(rewritten, {"x": x})["y"]
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
    # a negative scale flips the sign: left alone
    neg = _ln_graph(-0.37, 0.0).transform(InferShapes()).transform(AbsorbScalarMulIntoLayerNorm())
    assert "Mul" in [n.op_type for n in neg.graph.node]
