"""Tests of the experiment grid (``apq reproduce``) and of shared float weights (``float_init``)."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from brevitas_apq import experiments, grid_report
from brevitas_apq.cli import app
from brevitas_apq.data import DataSpec
from brevitas_apq.errors import RunError
from brevitas_apq.experiments import Config, GridError, reproduce
from brevitas_apq.plans import BitPlan
from brevitas_apq.rundir import MODEL_FILE, load_float_state
from brevitas_apq.training import TrainConfig, train_float, train_run
from tests.helpers import csv_data

# The small grid of these tests: two configurations plus one threshold-sweep run, one seed.
GRID = {"bits": ["all-4"], "schemes": ["all-sq", "sq-apq"], "seeds": 1, "thresholds": [0.0]}
TINY = TrainConfig(float_epochs=1, qat_epochs=1, max_batches=2, batch_size=32)


@pytest.fixture(scope="module")
def data(small_csv) -> DataSpec:
    return csv_data(small_csv)


def test_float_init_gives_the_same_result_as_a_full_run(tmp_path, data):
    plan = BitPlan.from_presets("all-4", "sq-apq")
    full = train_run(tmp_path / "full", data=data, plan=plan, train=TINY, progress=False)
    flt = train_float(tmp_path / "float", data=data, train=TINY, progress=False)
    assert flt["float_rmse"] == pytest.approx(full["float_rmse"], abs=0)
    shared = train_run(
        tmp_path / "shared", data=data, plan=plan, train=TINY, progress=False,
        float_init=tmp_path / "float",
    )  # fmt: skip
    assert shared["rmse"] == pytest.approx(full["rmse"], abs=0)
    assert shared["schemes"] == full["schemes"]
    assert shared["float_epochs_run"] == 0
    a = torch.load(tmp_path / "full" / MODEL_FILE, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "shared" / MODEL_FILE, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A state dict works as well as a run directory; resuming with other weights is refused.
    state = load_float_state(tmp_path / "float")
    other = {k: v + 1.0 for k, v in state.items()}
    with pytest.raises(RunError, match="other settings"):
        train_run(
            tmp_path / "shared", data=data, plan=plan, train=TINY, progress=False,
            float_init=other, resume=True,
        )  # fmt: skip
    with pytest.raises(RunError, match="no such file"):
        load_float_state(tmp_path / "missing")
    # Weights trained to predict the level are no start for a run that predicts the change.
    level = dataclasses.replace(data, predict="level")
    with pytest.raises(RunError, match="other data settings \\(predict: 'change' there, 'level'"):
        train_run(
            tmp_path / "level", data=level, plan=plan, train=TINY, progress=False,
            float_init=tmp_path / "float",
        )  # fmt: skip


@pytest.fixture(scope="module")
def grid(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("grid")
    lines: list[str] = []
    result = reproduce(out, **GRID, train=TINY, data=data, log=lines.append)
    return out, result, lines


def test_grid_writes_results_tables_and_plots(grid):
    out, result, lines = grid
    assert not result.failed
    for name in (
        "results.csv",
        "results.md",
        "stability.csv",
        "settings.json",
        "rmse_bars.png",
        "rmse_vs_zero_point_ops.png",
        "thresholds.csv",
        "thresholds.png",
        "symmetry_representative.png",
    ):
        assert (out / name).is_file(), name
    results = pd.read_csv(out / "results.csv")
    assert list(results.config) == [
        "float",
        "all-4/all-sq",
        "all-4/sq-apq t=0.1",
        "all-4/sq-apq t=0",
    ]
    for column in ("rmse", "rmse_vs_float", "model_size_bits", "zero_point_ops", "n_apq_aq"):
        assert column in results.columns
    qat = results[results.config != "float"]
    assert (qat.float_rmse == results.rmse.iloc[0]).all()  # every QAT run shares the float model
    assert (qat[qat.schemes == "all-sq"].n_apq == 0).all()
    apq = qat[qat.schemes == "sq-apq"]
    assert (apq.n_apq > 0).all() and (apq.n_apq_aq <= apq.n_apq).all()
    # Threshold 0 sends every APQ quantiser with any asymmetry to AQ: at least as many as 0.1.
    by_t = apq.set_index("threshold").n_apq_aq
    assert by_t[0.0] >= by_t[0.1]
    md = (out / "results.md").read_text()
    assert "apq reproduce --out" in md and "--thresholds 0 " in md
    assert "| all-4/sq-apq t=0.1 |" in md and "APQ threshold sweep" in md
    stab = pd.read_csv(out / "stability.csv")
    assert {"quantizer", "flips_mean", "flips_max", "final_aq_runs"} <= set(stab.columns)
    assert set(stab.config) == set(apq.config)
    assert len(lines) >= 5


def test_grid_reports_validation_rmse_and_skill_over_persistence(grid):
    out, result, _ = grid
    results = pd.read_csv(out / "results.csv")
    skill = 1 - results.rmse / results.persistence_rmse
    pd.testing.assert_series_equal(results.skill, skill, check_names=False)
    assert (results.beats_persistence == (skill > 0).astype(int)).all()
    assert results.val_rmse.notna().all() and (results.val_rmse != results.rmse).all()
    row = result.table.set_index("config").loc["all-4/all-sq"]
    assert row.skill == pytest.approx(skill[results.config == "all-4/all-sq"].iloc[0])
    md = (out / "results.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| all-4/all-sq |"))
    n_beat = int(results.beats_persistence[results.config == "all-4/all-sq"].iloc[0])
    assert f"{100 * row.skill:+.2f} % ({n_beat} of 1 > 0)" in line
    assert f"| {row.val_rmse:.3f} |" in line and "skill vs persistence" in md
    # over seeds: mean ± std, and the count of seeds above persistence
    frame = result.results  # (read back from CSV, the float row's empty schemes is NaN)
    two = pd.concat([frame.assign(seed=0), frame.assign(seed=1, skill=frame.skill + 0.02)])
    two["beats_persistence"] = (two.skill > 0).astype(int)
    agg = grid_report.aggregate(two).set_index("config")
    assert agg.loc["float", "skill_std"] == pytest.approx(0.02 / 2**0.5)
    assert agg.loc["float", "beats_persistence_runs"] == int(
        (two.skill[two.config == "float"] > 0).sum()
    )


def test_grid_resumes_without_redoing_finished_runs(grid, data):
    out, first, _ = grid
    config_dir = experiments.run_dir(out, Config("all-4", "all-sq"), 0)
    before = (config_dir / "metrics.json").read_text()
    # An interrupted configuration: checkpoint present, outputs missing.
    apq_dir = experiments.run_dir(out, Config("all-4", "sq-apq", 0.0), 0)
    expected = json.loads((apq_dir / "metrics.json").read_text())
    (apq_dir / "metrics.json").unlink()
    (apq_dir / MODEL_FILE).unlink()
    lines: list[str] = []
    again = reproduce(out, **GRID, train=TINY, data=data, log=lines.append)
    assert sum("done before, kept" in line for line in lines) == 3
    assert (config_dir / "metrics.json").read_text() == before
    resumed = json.loads((apq_dir / "metrics.json").read_text())
    assert resumed["rmse"] == expected["rmse"]
    assert again.results.rmse.tolist() == first.results.rmse.tolist()
    # Other training settings in the same directory are refused.
    with pytest.raises(GridError, match="other settings"):
        other = TrainConfig(float_epochs=2, qat_epochs=1, max_batches=2, batch_size=32)
        reproduce(out, bits=["all-4"], schemes=["all-sq"], seeds=1, data=data, train=other)


def test_bad_grid_options(tmp_path):
    with pytest.raises(GridError, match="valid: all-8, all-4, mixed-4-8"):
        experiments.parse_list("all-8,all-3", ("all-8", "all-4", "mixed-4-8"), "bit preset")
    with pytest.raises(GridError, match="not a number"):
        experiments.parse_thresholds("0,x")
    with pytest.raises(GridError, match="out of range"):
        experiments.parse_thresholds("0,1.5")
    with pytest.raises(GridError, match="selects none"):
        reproduce(tmp_path, schemes=["all-sq"], thresholds=[0.2])
    with pytest.raises(GridError, match="seeds"):
        reproduce(tmp_path, seeds=0)


def test_cli_reproduce_parallel_and_errors(tmp_path, small_csv):
    runner = CliRunner()
    base = ["reproduce", "--out", str(tmp_path / "g"), "--data", small_csv, "--target", "load"]
    base += ["--timestamp", "time", "--epochs", "1", "--qat-epochs", "1", "--max-batches", "2"]
    base += ["--seeds", "1"]
    result = runner.invoke(app, [*base, "--bits", "all-4", "--schemes", "all-aq", "-j", "2"])
    assert result.exit_code == 0, result.output
    assert "all-4/all-aq" in result.output
    assert len(pd.read_csv(tmp_path / "g" / "results.csv")) == 2
    result = runner.invoke(app, [*base, "--schemes", "all-sq,sq-apqq"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # rich wraps long lines
    assert (
        "unknown scheme preset 'sq-apqq'; valid: all-sq, all-aq, sq-aq, sq-apq, all-apq" in message
    )


def test_grid_trains_each_decision_rule_of_the_apq_configurations(tmp_path, data):
    out = tmp_path / "rules"
    result = reproduce(
        out, bits=["all-4"], schemes=["all-sq", "sq-apq"], seeds=1, train=TINY, data=data,
        rules=["paper", "hysteresis"], log=lambda _: None,
    )  # fmt: skip
    assert not result.failed
    assert list(result.results.config) == [
        "float", "all-4/all-sq", "all-4/sq-apq t=0.1", "all-4/sq-apq t=0.1 hysteresis",
    ]  # fmt: skip
    for config, rule in (
        ("all-4_sq-apq_t0.1", "paper"),
        ("all-4_sq-apq_t0.1_hysteresis", "hysteresis"),
    ):
        metrics = json.loads((out / "runs" / config / "seed0" / "metrics.json").read_text())
        assert metrics["decision_rule"]["rule"] == rule
    assert result.results.rule.tolist()[1:] == ["", "paper", "hysteresis"]
    md = (out / "results.md").read_text()
    assert "--decision-rules paper,hysteresis" in md and "## APQ decisions per configuration" in md
    decisions = md.split("## APQ decisions per configuration")[1].splitlines()
    line = next(x for x in decisions if x.startswith("| all-4/sq-apq t=0.1 hysteresis | 1 |"))
    flips = result.results.set_index("config").loc["all-4/sq-apq t=0.1 hysteresis", "flips"]
    assert f"| {flips:,.1f} |" in line
    with pytest.raises(GridError, match="decision rule 'vote'"):
        reproduce(tmp_path / "bad", schemes=["sq-apq"], rules=["vote"])
    with pytest.raises(GridError, match="--decision-rules applies to the APQ schemes"):
        reproduce(tmp_path / "bad", schemes=["all-sq"], rules=["hysteresis"])


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_float_run_fails_its_seed_and_the_grid_goes_on(tmp_path, data, jobs):
    out = tmp_path / "g"
    bad = experiments.float_dir(out, 0)
    bad.mkdir(parents=True)
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")  # seed 0's float run fails
    lines: list[str] = []
    result = reproduce(
        out, bits=["all-4"], schemes=["all-sq"], seeds=2, train=TINY, data=data,
        jobs=jobs, log=lines.append,
    )  # fmt: skip
    qat0 = experiments.run_dir(out, Config("all-4", "all-sq"), 0)
    assert set(result.failed) == {str(bad), str(qat0)}
    assert "checkpoint.pt" in (bad / "error.txt").read_text()
    assert (qat0 / "error.txt").read_text() == f"it waits for {bad}, which failed"
    assert sum("FAILED" in line for line in lines) == 2
    assert list(result.results.seed) == [1, 1]  # seed 1 trained: float and all-4/all-sq
    assert f"- `{qat0}` (see its error.txt)" in (out / "results.md").read_text()
