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
    # The exported graph computes what the Brevitas model computes (up to float32 rounding
    # ties, far below one quantisation step of the output).
    assert result["max_abs_diff"] < 1e-3
    assert result["rmse"] == result["rmse"]  # finite, not NaN
    assert "scheme decisions" in out
    # Plan-driven and directly configured quantisers are all there, each with a decision.
    for name in ("inp.act_quant", "conv1.weight_quant", "conv2.output_quant", "head.weight_quant"):
        assert name in out
    assert "max abs diff" in out


def test_byo_model_follows_the_plan():
    example = _load_example()
    plan = example.BitPlan.from_presets("mixed-4-8", "sq-apq")
    model = example.ConvRegressor(3, 24, plan)
    # L1 at 4 bits, L8 at 8 (mixed-4-8); the second conv's injectors given directly.
    assert int(model.conv1.quant_weight().bit_width) == 4
    assert int(model.head.quant_weight().bit_width) == 8
    assert int(model.conv2.quant_weight().bit_width) == 4
    decisions = example.scheme_decisions(model)
    assert set(decisions.values()) <= {"SQ", "AQ"}
    assert "relu1.act_quant" in decisions


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
