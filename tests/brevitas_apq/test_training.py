"""Tests of training runs: artefacts, determinism, resume, export and the command line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from brevitas_apq.cli import app
from brevitas_apq.data import DataSpec
from brevitas_apq.errors import RunError
from brevitas_apq.export import export_run
from brevitas_apq.plans import BitPlan
from brevitas_apq.rundir import CHECKPOINT, load_run
from brevitas_apq.training import TrainConfig, evaluate, train_run
from tests.helpers import csv_data

QUICK = TrainConfig(float_epochs=2, qat_epochs=2, max_batches=6, batch_size=32, patience=5)
PLAN = BitPlan.from_presets("mixed-4-8", "sq-apq")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_csv):
    out = tmp_path_factory.mktemp("run")
    metrics = train_run(out, data=csv_data(small_csv), plan=PLAN, train=QUICK, progress=False)
    return out, metrics


def test_run_writes_every_artefact(finished_run):
    out, metrics = finished_run
    for name in (
        "metrics.json",
        "plan.yaml",
        "history.csv",
        "symmetry.csv",
        CHECKPOINT,
        "model.pt",
        "learning_curves.png",
        "forecast.png",
        "symmetry.png",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    for key in (
        "rmse",
        "mae",
        "rmse_normalised",
        "float_rmse",
        "persistence_rmse",
        "model_size_bits",
        "float_model_size_bits",
        "schemes",
        "decision_flips",
        "decision_rule",
        "plan",
        "dataset",
        "n_train",
        "n_val",
        "n_test",
        "epochs_run",
        "train_seconds",
        "seed",
    ):
        assert key in saved, key
    assert saved["epochs_run"] == 4 and saved["plan"] == "mixed-4-8/sq-apq"
    assert saved["model_size_bits"] < saved["float_model_size_bits"]
    assert set(saved["schemes"].values()) <= {"SQ", "AQ"}
    # flips per quantiser, keyed as the schemes are, equal to the changes in symmetry.csv
    assert set(saved["decision_flips"]) == set(saved["schemes"])
    assert saved["decision_rule"] == PLAN.decision.to_dict()
    history = pd.read_csv(out / "history.csv")
    assert list(history.phase) == ["float", "float", "qat", "qat"]
    sym = pd.read_csv(out / "symmetry.csv")
    # every APQ quantiser has one row per QAT training step (2 epochs x 6 batches)
    assert set(sym.quant_scheme) == {"apq"}
    assert sym.groupby("quantizer").step.max().eq(12).all()
    for name, q in sym.groupby("quantizer"):
        schemes = q.sort_values("step").scheme.to_numpy()
        assert saved["decision_flips"][name] == int((schemes[1:] != schemes[:-1]).sum()), name
    assert BitPlan.from_yaml(out / "plan.yaml") == PLAN


def test_checkpoint_loads_with_weights_only(finished_run):
    out, _ = finished_run
    state = torch.load(out / CHECKPOINT, weights_only=True)
    assert state["phases"]["qat"]["done"]
    torch.load(out / "model.pt", weights_only=True)


def test_same_seed_gives_the_same_result(tmp_path, small_csv, finished_run):
    _, first = finished_run
    again = train_run(tmp_path, data=csv_data(small_csv), plan=PLAN, train=QUICK, progress=False)
    for key in ("rmse", "float_rmse", "mae", "schemes", "model_size_bits"):
        assert again[key] == first[key], key


def test_resume_after_interruption_gives_the_same_result(tmp_path, small_csv, finished_run):
    _, uninterrupted = finished_run
    seen = []

    def interrupt(row):
        seen.append(row)
        if len(seen) == 3:  # after the first QAT epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(
            tmp_path,
            data=csv_data(small_csv),
            plan=PLAN,
            train=QUICK,
            progress=False,
            on_epoch=interrupt,
        )
    assert not (tmp_path / "metrics.json").exists()
    with pytest.raises(RunError, match="--resume"):
        train_run(tmp_path, data=csv_data(small_csv), plan=PLAN, train=QUICK, progress=False)
    resumed = train_run(
        tmp_path, data=csv_data(small_csv), plan=PLAN, train=QUICK, progress=False, resume=True
    )
    for key in ("rmse", "float_rmse", "schemes", "decision_flips", "epochs_run"):
        assert resumed[key] == uninterrupted[key], key
    sym = pd.read_csv(tmp_path / "symmetry.csv")
    assert sym.groupby("quantizer").step.max().eq(12).all()


def test_resume_with_other_settings_is_refused(tmp_path, small_csv):
    quick = TrainConfig(float_epochs=1, qat_epochs=1, max_batches=2, batch_size=32)
    train_run(tmp_path, data=csv_data(small_csv), plan=PLAN, train=quick, progress=False)
    other = BitPlan.from_presets("all-8", "all-sq")
    with pytest.raises(RunError, match="other settings"):
        train_run(
            tmp_path, data=csv_data(small_csv), plan=other, train=quick, progress=False, resume=True
        )


def test_data_spec_predict_round_trip_and_errors():
    spec = DataSpec("beijing")
    assert spec.predict == "change"
    assert DataSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "predict"}
    assert DataSpec.from_dict(old).predict == "level"  # runs saved before the option existed
    with pytest.raises(RunError, match="predict='diff' is invalid; valid: level, change"):
        DataSpec(predict="diff")


def test_evaluate_adds_the_last_value_back_for_change(small_csv):
    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x))

    for predict in ("change", "level"):
        dataset = dataclasses.replace(csv_data(small_csv), predict=predict).load()
        X, y, _ = dataset.arrays("test")
        truth = dataset.inverse_target(y)
        naive = dataset.inverse_target(dataset.persistence("test"))
        floor = dataset.inverse_target(np.zeros_like(y))
        expected = naive if predict == "change" else floor
        rmse = float(np.sqrt(np.mean((expected.astype(np.float64) - truth) ** 2)))
        assert evaluate(Zero(), dataset, "test")["rmse"] == pytest.approx(rmse, rel=1e-6)


def test_qat_from_scratch_does_not_need_float_epochs(tmp_path, small_csv):
    cfg = TrainConfig(
        float_epochs=0, qat_epochs=1, max_batches=2, batch_size=32, qat_from_scratch=True
    )
    metrics = train_run(tmp_path, data=csv_data(small_csv), plan=PLAN, train=cfg, progress=False)
    assert metrics["float_epochs_run"] == 0 and metrics["qat_epochs_run"] == 1
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.phase) == ["qat"]
    assert np.isfinite(metrics["rmse"])


def test_export_run_checks_qonnx_against_brevitas(finished_run):
    out, _ = finished_run
    report = export_run(out, n_windows=8)
    assert report["passed"] and report["max_abs_diff"] <= 1e-5
    assert (out / "model.onnx").is_file() and (out / "export.json").is_file()
    float_model, quant_model, data = load_run(out)
    assert quant_model.is_quantized and not float_model.is_quantized


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"float_epochs": 0}, "float_epochs=0 leaves no float weights"),
        ({"threads": 0}, "threads=0"),
    ],
)
def test_bad_train_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_cli_train_export_and_errors(tmp_path, small_csv):
    runner = CliRunner()
    out = tmp_path / "cli"
    base = ["--data", small_csv, "--target", "load", "--timestamp", "time", "--out", str(out)]
    quick = ["--epochs", "1", "--qat-epochs", "1", "--max-batches", "2", "--no-progress"]
    # a lower QAT learning rate: at 1e-3 two mini-batches push L8's output outside its frozen
    # range, a degenerate model, and `apq train` ends with exit code 1 (test_bad_data.py)
    quick += ["--qat-lr", "1e-4"]
    result = runner.invoke(
        app, ["train", *base, *quick, "--plan", "all-8/all-aq", "--decision-rule", "paper"]
    )
    assert result.exit_code == 0, result.output
    assert "QAT test RMSE" in result.output
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["decision_rule"]["rule"] == "paper"
    assert set(saved["decision_flips"].values()) == {0}  # AQ everywhere: nothing to flip
    result = runner.invoke(app, ["export", str(out), "--windows", "4"])
    assert result.exit_code == 0 and "max |diff|" in result.output
    result = runner.invoke(app, ["train", *base, *quick, "--decision-rule", "vote"])
    assert result.exit_code == 2 and "rule='vote' is unknown" in result.output
    result = runner.invoke(app, ["train", *base, *quick, "--plan", "all-9/sq-apq"])
    assert result.exit_code == 2 and "neither a preset" in result.output
    result = runner.invoke(app, ["train", "--data", "csv:/no/such.csv", "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not a finished run" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "brevitas-apq" in result.output
