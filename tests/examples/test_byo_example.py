"""examples/byo_brevitas_model.py runs end to end in quick mode and its export matches."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "byo_brevitas_model.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("byo_brevitas_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_byo_example_quick(tmp_path, capsys):
    example = _load_example()
    assert example.__doc__ and "Bring your own" in example.__doc__
    result = example.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out

    assert (tmp_path / "byo_model.onnx").is_file()
    # The exported graph computes exactly what the Brevitas model computes.
    assert result["max_abs_diff"] == 0.0
    assert result["rmse"] < result["persistence_rmse"]  # it learned something, finite
    assert "scheme decisions" in out
    # Quantisers from the glob patterns and the exact names, each with a decision.
    for name in (
        "inp.act_quant",
        "conv1.weight_quant",
        "conv2.output_quant",
        "head.2.weight_quant",
    ):
        assert name in out
    assert "max abs diff" in out and "integer ops" in out
    assert result["int_ops"] > 0 and result["model_size_bits"] > 0
    # the plan used is saved beside the model, and it is the example's
    assert example.ModulePlan.from_yaml(tmp_path / "plan.yaml") == example.PLAN


def test_byo_model_follows_the_plan(tmp_path):
    import torch

    example = _load_example()
    float_model = example.ConvRegressor(3, 24)
    model = example.brevitas_apq.quantize(float_model, example.PLAN)
    assert isinstance(float_model.conv1, torch.nn.Conv1d) and not hasattr(
        float_model.conv1, "weight_quant"
    )
    # "conv*": 4-bit weights; "head.*" and the exact head.2: 8 bits
    assert int(model.conv1.quant_weight().bit_width) == 4
    assert int(model.conv2.quant_weight().bit_width) == 4
    assert int(model.head[0].quant_weight().bit_width) == 8
    assert int(model.head[2].quant_weight().bit_width) == 8
    # the exact name wins entirely: head.2 has the output quantiser, head.0 (glob) has none
    assert model.head[2].output_quant.is_quant_enabled
    assert not model.head[0].output_quant.is_quant_enabled
    decisions = example.scheme_decisions(model)
    assert set(decisions.values()) <= {"SQ", "AQ"}
    assert {"relu1.act_quant", "head.1.act_quant", "flat.act_quant"} <= set(decisions)
    # a plan file of the user's own replaces the example's
    plan = tmp_path / "plan.yaml"
    plan.write_text("modules: {'conv*': {weight: 3}, inp: {act: 8}, 'relu*': {act: 8}}\n")
    assert int(example.brevitas_apq.quantize(float_model, plan).conv2.quant_weight().bit_width) == 3


def test_byo_model_builds_with_finn_and_emulates_exactly(tmp_path):
    """`apq build` of the example's exported 1D-conv model (it failed in step_qonnx_to_finn
    before finn_flow.conv1d): FINN maps it completely and emulates it like QONNX, on inputs
    saved with --inputs."""
    import json

    import numpy as np
    import pytest
    from typer.testing import CliRunner

    pytest.importorskip("finn")
    from brevitas_apq.cli import app

    example = _load_example()
    example.main(["--quick", "--out", str(tmp_path)])
    x = np.random.default_rng(0).uniform(0, 1, size=(6, 24, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "finn"
    result = CliRunner().invoke(
        app,
        ["build", str(tmp_path / "byo_model.onnx"), "--inputs", str(tmp_path / "x.npy"),
         "--windows", "6", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["emulation"]["passed"] and summary["emulation"]["max_abs_diff"] <= 1e-6
    assert {n["op"] for n in summary["nodes_outside_dataflow_partition"]} <= {"Mul", "Add"}
    assert summary["fit"]["fits"]
