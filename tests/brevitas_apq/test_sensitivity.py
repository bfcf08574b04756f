"""Tests of the sensitivity study and of `apq analyze` / `apq sensitivity` on a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from brevitas_apq.cli import app
from brevitas_apq.data import DataSpec
from brevitas_apq.errors import RunError
from brevitas_apq.plans import LAYERS, BitPlan
from brevitas_apq.sensitivity import (
    BASE_HIGH,
    BASE_LOW,
    SensitivitySettings,
    background_plan,
    configurations,
    default_settings,
    mixed_plan,
    run_sensitivity,
)
from brevitas_apq.training import TrainConfig, train_run

PLAN = BitPlan.from_presets("mixed-4-8", "sq-apq")
TINY = TrainConfig(float_epochs=1, qat_epochs=1, max_batches=2, batch_size=32)
QUICK = SensitivitySettings(epochs=1, max_batches=2, batch_size=TINY.batch_size)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run on a small synthetic hourly series."""
    rng = np.random.default_rng(0)
    n = 24 * 30
    temp = 10 + 5 * np.sin(np.arange(n) * 2 * np.pi / 24) + rng.normal(0, 0.5, n)
    frame = pd.DataFrame(
        {
            "time": pd.date_range("2020-01-01", periods=n, freq="h"),
            "load": 50 + 2 * temp + rng.normal(0, 1, n),
            "temp": temp,
        }
    )
    base = tmp_path_factory.mktemp("sens")
    frame.to_csv(base / "series.csv", index=False)
    data = DataSpec(
        f"csv:{base / 'series.csv'}", options=(("target", "load"), ("timestamp", "time"))
    )
    out = base / "run"
    train_run(out, data=data, plan=PLAN, train=TINY, progress=False)
    return out


@pytest.fixture(scope="module")
def study(run_dir):
    """The study of the tiny run, interrupted after 3 configurations and resumed."""
    finished = []

    def interrupt(name, result):
        finished.append(name)
        if len(finished) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sensitivity(run_dir, QUICK, progress=False, on_result=interrupt)
    saved = sorted(p.stem for p in (run_dir / "sensitivity" / "configs").glob("*.json"))
    assert saved == sorted(finished)
    result = run_sensitivity(run_dir, QUICK, progress=False)
    result["interrupted_after"] = finished
    return result


def test_configuration_plans():
    configs = configurations(PLAN, 4, 8)
    assert len(configs) == 2 + 2 * len(LAYERS)
    for layer in LAYERS:
        low, high = configs[f"{layer}-low"], configs[f"{layer}-high"]
        for other in LAYERS:
            expect_low = 4 if other == layer else 8
            assert low.layers[other].weight.bits == expect_low
            assert low.layers[other].output.bits == expect_low
            assert high.layers[other].bias.bits == 12 - expect_low
    for plan in configs.values():
        # schemes and the extra activation quantisers are the run plan's
        assert plan.layers["L3"].output.scheme == "apq" and plan.layers["L3"].weight.scheme == "sq"
        assert plan.activations == PLAN.activations
    assert configs["L8-high"].layers == mixed_plan(PLAN, 4, 8, ["L8"]).layers == PLAN.layers
    assert background_plan(PLAN, 4).layers == configs[BASE_LOW].layers


def test_settings_are_validated(run_dir):
    with pytest.raises(ValueError, match="below"):
        SensitivitySettings(low=8, high=4)
    with pytest.raises(ValueError, match="epochs"):
        SensitivitySettings(epochs=0)
    # the run's batch size and seed are the defaults
    assert default_settings(run_dir, epochs=1, max_batches=2) == QUICK


def test_study_writes_table_plot_and_plan(run_dir, study):
    out = run_dir / "sensitivity"
    for name in ("sensitivity.csv", "sensitivity.png", "plan.yaml", "summary.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "configs").glob("*.json"))) == 18
    table = pd.read_csv(out / "sensitivity.csv")
    assert sorted(table.layer) == sorted(LAYERS)
    assert list(table["rank"]) == list(range(1, 9))
    assert table.score.is_monotonic_decreasing
    np.testing.assert_allclose(table.score, table.delta_low + table.delta_high)
    # ranked on the validation split; test RMSE only reported beside it
    base_high = study["baselines"][BASE_HIGH]["val_rmse"]
    np.testing.assert_allclose(table.delta_low, table.rmse_layer_low - base_high)
    for r in table.itertuples():
        config = json.loads((out / "configs" / f"{r.layer}-low.json").read_text())
        assert r.rmse_layer_low == pytest.approx(config["val_rmse"], rel=1e-12)
        assert r.test_rmse_layer_low == pytest.approx(config["test_rmse"], rel=1e-12)
        assert config["val_rmse"] != config["test_rmse"]
    assert sorted(table.rank_low) == list(range(1, 9))
    # the proposal keeps the top layer at 8 bits, everything else at 4
    top = table.layer[0]
    assert study["ranking"][0] == top
    plan = BitPlan.from_yaml(out / "plan.yaml")
    assert plan == study["plan"] == mixed_plan(PLAN, 4, 8, [top])
    assert {layer: plan.layers[layer].weight.bits for layer in LAYERS} == {
        layer: 8 if layer == top else 4 for layer in LAYERS
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranking"] == study["ranking"] and summary["kept_high"] == [top]
    assert summary["proposal"]["test_rmse"] == study["proposal"]["test_rmse"]
    # lowering every layer shrinks the model
    assert (table.size_bits_layer_low < study["baselines"][BASE_HIGH]["model_size_bits"]).all()


def test_rerun_skips_finished_configurations(run_dir, study):
    again = run_sensitivity(run_dir, QUICK, progress=False)
    assert again["computed"] == [] and len(again["skipped"]) == 18
    pd.testing.assert_frame_equal(again["table"], study["table"])
    with pytest.raises(RunError, match="other settings"):
        run_sensitivity(run_dir, SensitivitySettings(epochs=2, max_batches=2, batch_size=32))


def test_interrupted_study_resumed(study):
    assert sorted(study["skipped"]) == sorted(study["interrupted_after"])
    assert len(study["computed"]) == 15


def test_recomputed_configuration_is_identical(run_dir, study):
    path = run_dir / "sensitivity" / "configs" / "L5-low.json"
    before = json.loads(path.read_text())
    path.unlink()
    again = run_sensitivity(run_dir, QUICK, progress=False)
    assert again["computed"] == ["L5-low"]
    after = json.loads(path.read_text())
    assert after["test_rmse"] == before["test_rmse"] and after["history"] == before["history"]
    pd.testing.assert_frame_equal(again["table"], study["table"])


def test_keep_two_runs_the_proposal(run_dir, study):
    result = run_sensitivity(run_dir, QUICK, keep=2, progress=False)
    assert result["computed"] == []
    kept = study["ranking"][:2]
    assert result["plan"] == mixed_plan(PLAN, 4, 8, kept)
    assert (run_dir / "sensitivity" / "configs" / f"keep-{'+'.join(kept)}.json").is_file()
    run_sensitivity(run_dir, QUICK, progress=False)  # leave plan.yaml as keep=1 for the others


def test_cli_sensitivity_and_analyze(run_dir, study):
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "sensitivity",
            str(run_dir),
            "--epochs",
            "1",
            "--max-batches",
            "2",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "proposed plan" in result.output and "0 configurations computed" in result.output
    result = runner.invoke(app, ["analyze", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "compression" in result.output
    table = pd.read_csv(run_dir / "analysis.csv")
    assert table.layer.iloc[-1] == "total"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert table.int_ops.iloc[-1] == metrics["int_ops"]
    assert table.zero_point_ops.iloc[-1] == metrics["zero_point_ops"]
    assert [row["layer"] for row in metrics["layers"]] == list(table.layer[:-1])


def test_cli_rejects_bad_run_dir(tmp_path):
    runner = CliRunner()
    for command in ("sensitivity", "analyze"):
        result = runner.invoke(app, [command, str(tmp_path / "nope")])
        assert result.exit_code == 2
        assert "not a finished run directory" in result.output
    result = runner.invoke(app, ["sensitivity", str(tmp_path), "--low", "8", "--high", "4"])
    assert result.exit_code == 2


def test_configurations_of_some_layers():
    from brevitas_apq.sensitivity import check_layers

    configs = configurations(PLAN, 4, 8, layers=("L1", "L8"))
    assert sorted(configs) == sorted(
        [BASE_HIGH, BASE_LOW, "L1-low", "L1-high", "L8-low", "L8-high"]
    )
    assert configs["L1-low"].layers["L1"].weight.bits == 4
    assert configs["L1-low"].layers["L2"].weight.bits == 8  # the rest of the model stays high
    with pytest.raises(ValueError, match=r"layers=\['L0'\]: unknown L0"):
        check_layers(["L0"])


def test_parallel_study_equals_the_sequential_one(run_dir, study, tmp_path):
    """jobs=2 (the runner's spawned workers, one torch thread each) computes the same
    configurations as the sequential study, bit for bit."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("sensitivity"))
    result = run_sensitivity(copy, QUICK, jobs=2, progress=False, layers=("L1", "L8"))
    assert sorted(result["computed"]) == sorted(
        ["base-high", "base-low", "L1-low", "L1-high", "L8-low", "L8-high"]
    )
    for name in result["computed"]:
        parallel = json.loads((copy / "sensitivity" / "configs" / f"{name}.json").read_text())
        sequential = json.loads((run_dir / "sensitivity" / "configs" / f"{name}.json").read_text())
        assert parallel["val_rmse"] == sequential["val_rmse"], name
        assert parallel["history"] == sequential["history"], name
