"""Folding that fits (finn_flow.fit): budgets, the choice, and apq build's default."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from finn_flow.boards import BOARDS
from finn_flow.errors import FinnFlowError
from finn_flow.fit import Budget, Candidate, choose

runner = CliRunner()


def _cand(fps, lut, dsp=0, bram=0, budget=None, target=1.0):
    res = {"LUT": lut, "BRAM_18K": bram, "URAM": 0, "DSP": dsp}
    over = budget.over(res) if budget else {}
    return Candidate(target, fps, int(1e8 / fps), "n", res, not over, over)


def test_budget_parse_units_and_errors():
    b = Budget.parse("lut=8000, dsp=20,bram36=10")
    assert b.limits == {"LUT": 8000, "BRAM_18K": 20, "URAM": None, "DSP": 20}
    for bad in ("lut", "luts=abc", "foo=3", "lut=-1", "lut=nan", ""):
        with pytest.raises(FinnFlowError):
            Budget.parse(bad)


def test_budget_from_board_and_unknown_part():
    b = Budget.from_capacities(BOARDS["Pynq-Z1"].capacities(), 0.8, "Pynq-Z1")
    assert b.limits["LUT"] == pytest.approx(42_560) and b.limits["DSP"] == pytest.approx(176)
    with pytest.raises(FinnFlowError, match="--budget"):
        Budget.from_capacities(dict.fromkeys(b.limits), 0.8, "xc7s15")
    with pytest.raises(FinnFlowError):
        Budget.from_capacities(BOARDS["Pynq-Z1"].capacities(), 1.5, "Pynq-Z1")


def test_choose_fastest_fitting_else_smallest_with_binding_resource():
    budget = Budget.parse("lut=1000,dsp=10")
    cands = [
        _cand(100, 500, budget=budget),
        _cand(400, 900, budget=budget),
        _cand(400, 800, budget=budget),  # same speed, fewer LUT: preferred
        _cand(900, 1500, budget=budget),
    ]
    result = choose(cands, budget)
    assert result.fits and result.chosen is cands[2]
    tight = Budget.parse("lut=100,dsp=10")
    cands = [_cand(100, 500, dsp=5, budget=tight), _cand(900, 1500, dsp=40, budget=tight)]
    result = choose(cands, tight)
    assert not result.fits and result.chosen is cands[0] and result.binding == "LUT"


@pytest.mark.finn
def test_cli_build_fits_pynq_by_default_and_writes_pareto(mlp_model, tmp_path):
    """The default build is the fastest candidate under 80 % of the board, not fully folded."""
    from brevitas_apq.cli import app

    path, _ = mlp_model
    out = tmp_path / "fit"
    result = runner.invoke(app, ["build", str(path), "--out", str(out), "--windows", "2",
                                 "--pareto"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    fit = summary["fit"]
    assert fit["fits"] and fit["budget_source"] == "80% of Pynq-Z1"
    assert fit["chosen"]["fps"] == pytest.approx(summary["estimated_throughput_fps"], rel=1e-6)
    import pandas as pd

    table = pd.read_csv(out / "pareto.csv")
    assert set(table.choice) == {"auto", "bram", "bram+dsp"}  # every resource choice evaluated
    assert summary["estimated_throughput_fps"] > table.fps.min()  # faster than fully folded
    assert fit["resource_choice"].startswith(fit["chosen"]["choice"])
    assert (out / "pareto.png").stat().st_size > 0
    assert "fastest of" in " ".join(result.output.split())


@pytest.mark.finn
def test_cli_build_nothing_fits_says_binding_resource(mlp_model, tmp_path):
    from brevitas_apq.cli import app

    path, _ = mlp_model
    out = tmp_path / "tiny"
    result = runner.invoke(app, ["build", str(path), "--out", str(out), "--windows", "0",
                                 "--budget", "lut=10,dsp=1"])  # fmt: skip
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    fit = json.loads((out / "summary.json").read_text())["fit"]
    assert fit["fits"] is False and fit["binding_resource"] in ("LUT", "DSP")
    assert "no folding fits budget lut=10,dsp=1" in text
    assert f"binding resource {fit['binding_resource']}" in text


@pytest.mark.finn
def test_cli_build_budget_excludes_target_fps(mlp_model, tmp_path):
    from brevitas_apq.cli import app

    path, _ = mlp_model
    result = runner.invoke(app, ["build", str(path), "--target-fps", "1000", "--budget",
                                 "lut=100", "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 2 and "drop --target-fps" in " ".join(result.output.split())
