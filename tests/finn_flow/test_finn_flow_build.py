"""FINN flow end to end (estimate-only, no Xilinx tools) and its error handling."""

from __future__ import annotations

import json
import os
import sys

import finn_flow_models as models
import pytest
import torch
from torch import nn

pytest.importorskip("finn")

from finn_flow.boards import BOARDS, resolve_target
from finn_flow.build import build, flow_steps
from finn_flow.errors import FinnFlowError, FinnFlowWarning
from finn_flow.no_vivado import finn_session

pytestmark = pytest.mark.finn

TAIL_OPS = {"Mul", "Add"}  # final dequantisation scale and bias stay in software


def _check_summary(summary: dict, out_dir) -> None:
    assert summary["board"] == "Pynq-Z1" and summary["part"] == "xc7z020clg400-1"
    for key in ("LUT", "BRAM_18K", "URAM", "DSP"):
        assert summary[key] >= 0
    assert summary["estimated_throughput_fps"] > 0
    assert summary["estimated_latency_ns"] > 0
    assert {n["op"] for n in summary["nodes_outside_dataflow_partition"]} <= TAIL_OPS
    assert summary["emulation"]["passed"]
    on_disk = json.loads((out_dir / "summary.json").read_text())
    assert on_disk["LUT"] == summary["LUT"]
    assert (out_dir / "report" / "estimate_layer_resources.json").is_file()
    assert (out_dir / "report" / "estimate_network_performance.json").is_file()


def test_mlp_estimate_flow_emulation_matches_qonnx(mlp_model, tmp_path):
    path, shape = mlp_model
    x = models.random_inputs(shape, 4)
    summary = build(path, tmp_path / "mlp", emulation_inputs=x, tolerance=1e-5)
    _check_summary(summary, tmp_path / "mlp")
    assert summary["emulation"]["max_abs_diff"] <= 1e-5
    assert summary["nodes_not_estimated_by_finn"] == []
    assert type(sys.stdout).__name__ != "PrintLogger"  # FINN's redirection undone


def test_transformer_estimate_flow_emulation_matches_qonnx(transformer_model, tmp_path):
    path, shape = transformer_model
    x = models.random_inputs(shape, 3)
    summary = build(path, tmp_path / "tf", emulation_inputs=x, tolerance=1e-5)
    _check_summary(summary, tmp_path / "tf")
    assert summary["emulation"]["max_abs_diff"] <= 1e-5
    # attention is mapped, but finn-plus has no resource model for it
    attn = [
        n
        for n in summary["nodes_not_estimated_by_finn"]
        if n["node"].startswith("ScaledDotProductAttention")
    ]
    assert len(attn) == 1 and attn[0]["analytical_estimate"]["LUT"] > 0
    assert summary["LUT"] > summary["resources_finn_estimate"]["LUT"]
    # every figure by source: FINN's estimate + our fitted attention model, no synthesis here
    src = summary["resource_sources"]
    for key in ("LUT", "BRAM_18K", "DSP"):
        assert src["finn"][key] + src["analytical"][key] == pytest.approx(summary[key])
    # attention plus the adds and forks (finn_flow.glue_estimate)
    analytical = [n["analytical_estimate"] for n in summary["nodes_not_estimated_by_finn"]]
    assert src["analytical"]["LUT"] == sum(e["LUT"] for e in analytical if e)
    assert "FINN-T post-synthesis" in src["analytical_method"][0] and src["synthesis"] is None
    assert (tmp_path / "tf" / "report" / "estimate_attention_analytical.json").is_file()


def test_transformer_with_zero_points_everywhere(transformer_zp_model, tmp_path):
    path, shape = transformer_zp_model
    x = models.random_inputs(shape, 2)
    summary = build(path, tmp_path / "tfz", emulation_inputs=x, tolerance=1e-5)
    _check_summary(summary, tmp_path / "tfz")


# ------------------------------------------------------------------------ bad inputs
def test_not_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("this is not a protobuf")
    with pytest.raises(FinnFlowError, match="not an ONNX model"):
        build(bad, tmp_path / "out")


def test_float_model_without_quant_nodes(tmp_path):
    path = tmp_path / "float.onnx"
    torch.onnx.export(nn.Linear(4, 2), torch.randn(1, 4), str(path), dynamo=False)
    with pytest.raises(FinnFlowError, match="no QONNX Quant nodes"):
        build(path, tmp_path / "out")


def test_unmappable_operator_names_op_and_node(tmp_path):
    path = models.make_unmappable(tmp_path / "sin.onnx")
    with pytest.raises(FinnFlowError, match=r"Sin node '.*'"):
        build(path, tmp_path / "out")


def test_unknown_board_lists_valid_boards(mlp_model, tmp_path):
    path, _ = mlp_model
    with pytest.raises(ValueError, match=r"Pynq-Z1.*part name") as err:
        build(path, tmp_path / "out", board="Pynq-Z9")
    assert isinstance(err.value, FinnFlowError)
    for name in BOARDS:
        assert name in str(err.value)


def test_board_presets_and_bare_part():
    assert resolve_target("pynq-z2").part == "xc7z020clg400-1"
    assert resolve_target("ZCU104").URAM == 96
    bare = resolve_target("xcvu9p-flga2104-2L-e")
    assert bare.board is None and bare.LUT is None


def test_folding_config_with_unknown_nodes(mlp_model, tmp_path):
    path, _ = mlp_model
    cfg = tmp_path / "folding.json"
    cfg.write_text(json.dumps({"Defaults": {}, "MVAU_hls_99": {"PE": 2}}))
    with pytest.raises(FinnFlowError, match="MVAU_hls_99"):
        build(path, tmp_path / "out", folding_config=cfg)


def test_unreachable_target_fps_warns_and_builds(mlp_model, tmp_path):
    path, _ = mlp_model
    with pytest.warns(FinnFlowWarning, match="not reached"):
        summary = build(path, tmp_path / "out", target_fps=10**9)
    assert summary["warnings"] and summary["estimated_throughput_fps"] > 0


def test_session_restores_environment_and_streams(tmp_path):
    before = (sys.stdout, sys.stderr, os.environ.get("FINN_BUILD_DIR"))
    with finn_session(tmp_path / "w") as build_dir:
        assert os.environ["FINN_BUILD_DIR"] == str(build_dir)
        assert build_dir.is_dir()
    assert (sys.stdout, sys.stderr, os.environ.get("FINN_BUILD_DIR")) == before
    assert not (tmp_path / "w" / "finn_settings.yaml").exists()


def test_step_lists():
    est = flow_steps(full=False)
    full = flow_steps(full=True)
    assert est[:2] == ["step_prepare_convs", "step_lower_zero_points"]
    assert est[-1] == "step_hw_codegen"
    assert "step_convert_to_hw_transformer" in est and "step_specialize_layers" in est
    for name in (
        "step_create_stitched_ip",
        "step_synthesize_bitfile",
        "step_make_driver",
        "step_deployment_package",
    ):
        assert name in full and name not in est


@pytest.mark.vivado
def test_full_flow_with_vivado(mlp_model, tmp_path):
    path, shape = mlp_model
    summary = build(
        path, tmp_path / "full", emulation_inputs=models.random_inputs(shape, 2), full=True
    )
    assert (tmp_path / "full" / "deploy" / "bitfile").is_dir()
    assert summary["flow"] == "full" and summary["emulation"]["passed"]


def test_unknown_node_domain_is_refused_before_import(tmp_path, monkeypatch):
    """An untrusted file naming a module as a node domain: refused, the module never imported."""
    import sys

    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Quant", ["x", "s", "z", "b"], ["q"], domain="qonnx.custom_op.general"),
        helper.make_node("Evil", ["q"], ["y"], domain="apq_evil_module", name="evil"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    path = tmp_path / "evil.onnx"
    onnx.save(helper.make_model(graph), str(path))
    (tmp_path / "apq_evil_module.py").write_text("raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FinnFlowError, match="unknown domains: 'apq_evil_module'"):
        build(path, tmp_path / "out")
    assert "apq_evil_module" not in sys.modules


def test_bad_clock_is_refused_before_the_flow(mlp_model, tmp_path):
    path, _ = mlp_model
    for clock in (0, -5, float("nan")):
        with pytest.raises(FinnFlowError, match="clock_ns"):
            build(path, tmp_path / "out", clock_ns=clock)
    assert not (tmp_path / "out").exists()
