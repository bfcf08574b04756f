"""Bad input that used to be accepted silently (issue 13, group 1), and degenerate models.

Data: an absurd magnitude is a DataError (exit code 2 from the CLI); duplicate timestamps, a
likely missing-value marker, an absurd outlier and a feature that removes most windows are
DataWarnings with counts, kept on the data and in metrics.json. Models: constant or non-finite
output and collapsed quantisers are reported by ``evaluate``, written to metrics.json, shown by
``apq show`` / ``apq train`` (exit code 1), counted in the grid tables and the search trials.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from brevitas_apq import experiments, grid_report, search
from brevitas_apq.cli import app
from brevitas_apq.data import DataError, DataWarning, load_csv, prepare_dataset
from brevitas_apq.health import QuantizerWatch, degenerate_reasons, output_problems
from brevitas_apq.models import ModelConfig
from brevitas_apq.plans import BitPlan
from brevitas_apq.quant import iter_quantizers
from brevitas_apq.training import (
    DivergedError,
    TrainConfig,
    build_models,
    evaluate,
    train_epoch,
    train_run,
)
from tests.helpers import csv_data

N = 24 * 60  # hours in the synthetic series


def _series(**columns) -> pd.DataFrame:
    """An hourly series (``time``, target ``load``, feature ``temp``) with extra columns."""
    rng = np.random.default_rng(0)
    t = pd.date_range("2020-01-01", periods=N, freq="h")
    temp = 10 + 5 * np.sin(np.arange(N) * 2 * np.pi / 24) + rng.normal(0, 0.5, N)
    frame = pd.DataFrame({"time": t, "load": 50 + 2 * temp + rng.normal(0, 1, N), "temp": temp})
    for name, values in columns.items():
        frame[name] = values
    return frame


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _load(path: Path, **options):
    return prepare_dataset(load_csv(path, target="load", **options))


@pytest.fixture()
def no_data_warnings():
    """Fail the test if a DataWarning is emitted inside it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        yield


# --- data: errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e300", "inf", "-inf", "-1e39"])
def test_absurd_magnitude_is_an_error_naming_column_and_count(tmp_path, value):
    frame = _series().astype({"load": object})
    frame.loc[[300, 301], "load"] = value
    path = _write(frame, tmp_path / "huge.csv")
    with pytest.raises(DataError, match=r"column 'load' has 2 value\(s\) that are infinite or "):
        _load(path)
    # in a feature too, and also through load_dataset's other entry (TimeSeries itself)
    frame = _series().astype({"temp": object})
    frame.loc[7, "temp"] = value
    with pytest.raises(DataError, match=r"column 'temp' has 1 value\(s\).*float32"):
        _load(_write(frame, tmp_path / "feature.csv"))


# --- data: warnings -----------------------------------------------------------------------------


def test_duplicate_timestamps_are_averaged_with_a_warning(tmp_path):
    frame = _series()
    dup = frame.iloc[100:130].copy()
    dup["load"] += 10.0
    path = _write(pd.concat([frame, dup]).sort_values("time", kind="stable"), tmp_path / "d.csv")
    with pytest.warns(DataWarning, match=r"30 timestamp\(s\) occur more than once \(60 rows"):
        series = load_csv(path, target="load")
    # the documented policy: the rows of one timestamp are averaged
    assert series.frame["load"].iloc[100] == pytest.approx(frame["load"].iloc[100] + 5.0)
    assert any("averaged" in w for w in series.data_warnings)
    with pytest.raises(DataError, match="duplicate timestamps"):
        load_csv(path, target="load", resample=None)


def test_repeated_sentinel_warns_and_na_values_silences_it(tmp_path, no_data_warnings):
    frame = _series()
    frame.loc[np.arange(50, N, 100), "load"] = -200
    path = _write(frame, tmp_path / "s.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _load(path)
    messages = [str(w.message) for w in caught if w.category is DataWarning]
    assert len(messages) == 1 and "column 'load' has 14 values equal to -200" in messages[0]
    assert "--na-values -200" in messages[0]
    assert ds.data_warnings == tuple(messages)
    ds = _load(path, na_values=(-200,))  # marked missing: no warning (fixture)
    assert ds.data_warnings == ()


def test_lone_negative_value_in_a_non_negative_column_warns(tmp_path):
    frame = _series(count=np.arange(N) % 7)
    frame.loc[np.arange(0, N, 40), "count"] = -1
    with pytest.warns(DataWarning, match=r"column 'count' has 36 values equal to -1 "):
        _load(_write(frame, tmp_path / "c.csv"))


def test_absurd_outlier_warns(tmp_path):
    frame = _series()
    frame.loc[300, "load"] = 1e30
    with pytest.warns(DataWarning, match=r"'load' has 1 value\(s\) more than 1,000 interquartile"):
        _load(_write(frame, tmp_path / "o.csv"))


def test_mostly_missing_feature_warns_with_windows_lost(tmp_path):
    nmhc = np.where(np.arange(N) < 600, 100.0, np.nan)  # 58 % missing, in one block
    path = _write(_series(nmhc=nmhc), tmp_path / "m.csv")
    with pytest.warns(DataWarning) as caught:
        ds = _load(path)
    (message,) = [str(w.message) for w in caught if "feature" in str(w.message)]
    assert "feature 'nmhc' is missing in 840 of 1,440 rows (58%)" in message
    assert "alone removes 839 of 1,416 windows" in message and "--features load,temp" in message
    assert ds.n_train + ds.n_val + ds.n_test < 600
    assert message in ds.data_warnings


def test_a_run_records_its_data_warnings_in_metrics(tmp_path):
    frame = _series()
    path = _write(pd.concat([frame, frame.iloc[200:203]]).sort_values("time"), tmp_path / "d.csv")
    tiny = TrainConfig(float_epochs=1, qat_epochs=1, max_batches=2, batch_size=32)
    data = csv_data(f"csv:{path}")
    with pytest.warns(DataWarning, match="3 timestamp"):
        train_run(tmp_path / "run", data=data, train=tiny, progress=False)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (message,) = saved["data_warnings"]
    assert "3 timestamp(s) occur more than once (6 rows" in message


def test_clean_data_gives_no_warning(tmp_path, small_csv, no_data_warnings):
    assert _load(_write(_series(), tmp_path / "clean.csv")).data_warnings == ()
    assert csv_data(small_csv).load().data_warnings == ()


def test_cli_prints_the_warning_and_a_one_line_error(tmp_path):
    """Through the real command line: the DataWarning is visible on stderr, then the bad value
    is one line and exit code 2 (before any training)."""
    frame = _series().astype({"load": object})
    frame.loc[np.arange(50, N, 10), "load"] = -200
    frame.loc[300, "load"] = "1e300"
    path = _write(frame, tmp_path / "bad.csv")
    command = [sys.executable, "-c", "from brevitas_apq.cli import main; main()", "train"]
    command += ["--data", f"csv:{path}", "--target", "load", "--out", str(tmp_path / "run")]
    env = {**os.environ, "COLUMNS": "300"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "DataWarning" in result.stderr and "equal to -200" in result.stderr
    assert "--na-values -200" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "column 'load' has 1 value(s) that are infinite" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --- degenerate models --------------------------------------------------------------------------


def test_output_problems():
    assert output_problems(np.zeros(4, np.float32)) == ["constant output: all 4 windows give 0"]
    nan = np.array([0.1, np.nan, 0.3], np.float32)
    assert output_problems(nan) == ["non-finite output (NaN or inf) on 1 of 3 windows"]
    assert output_problems(np.array([0.1, 0.2], np.float32)) == []
    nearly = np.zeros(200, np.float32)
    nearly[7] = 0.5  # 199 of 200 windows give 0: effectively persistence
    assert output_problems(nearly) == ["nearly constant output: 199 of 200 windows (99.50%) give 0"]
    nearly[8] = 0.25  # 198 of 200 windows (99 %) still counts, 98 % does not
    assert output_problems(nearly)[0].startswith("nearly constant output: 198 of 200")
    nearly[9:11] = 0.1
    assert output_problems(nearly) == []
    inf_forecast = output_problems(np.array([0.1, 0.2]), np.array([1.0, np.inf]))
    assert inf_forecast and "non-finite forecast" in inf_forecast[0]


@pytest.fixture(scope="module")
def dataset(small_csv):
    return csv_data(small_csv).load()


def _calibrated(dataset, plan: str = "all-8/all-aq"):
    """A quantised model with activation ranges from one training-mode batch, in eval mode."""
    _, model = build_models(
        ModelConfig(n_features=dataset.n_features, window=24), BitPlan.parse(plan), 0
    )
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(dataset.X_train[:64]))
    return model.eval()


def test_sound_model_is_not_degenerate(dataset):
    assert evaluate(_calibrated(dataset), dataset, "test")["degenerate"] == []


def test_constant_output_is_degenerate(dataset):
    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x))

    result = evaluate(Zero(), dataset, "test")
    assert result["degenerate"] == [f"constant output: all {dataset.n_test} windows give 0"]
    # predicting the change, an output of 0 everywhere is the persistence forecast
    naive = dataset.inverse_target(dataset.persistence("test"))
    rmse = float(np.sqrt(np.mean((naive - dataset.inverse_target(dataset.y_test)) ** 2)))
    assert result["rmse"] == pytest.approx(rmse, rel=1e-6)


def test_nan_weights_are_degenerate(dataset):
    model = _calibrated(dataset)
    with torch.no_grad():
        model.L8.weight.fill_(float("nan"))
    reasons = evaluate(model, dataset, "val")["degenerate"]
    assert (
        reasons[0]
        == f"non-finite output (NaN or inf) on {dataset.n_val} of {dataset.n_val} windows"
    )
    assert "quantiser L8.weight_quant: scale is nan" in reasons


def test_output_quantiser_whose_range_misses_the_data_is_degenerate(dataset):
    model = _calibrated(dataset)
    with torch.no_grad():
        model.L8.bias.add_(100.0)  # far above the frozen output range: every output clamps
    reasons = evaluate(model, dataset, "test")["degenerate"]
    assert reasons[0].startswith(f"constant output: all {dataset.n_test} windows give")
    assert reasons[1].startswith("quantiser L8.output_quant maps every value to one level")
    with QuantizerWatch(model) as watch:  # the hooks go away with the context
        pass
    assert all(not core._forward_hooks for _, core in iter_quantizers(model))
    assert watch.problems() == []


def test_non_finite_loss_stops_training(tmp_path, small_csv):
    model = torch.nn.Linear(3, 1)
    X, y = torch.randn(8, 3), torch.full((8, 1), float("nan"))
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(DivergedError, match="the loss is nan at mini-batch 1"):
        train_epoch(model, optimizer, X, y, [torch.arange(4), torch.arange(4, 8)])
    huge_lr = TrainConfig(float_epochs=2, qat_epochs=1, max_batches=3, batch_size=32, lr=1e30)
    with pytest.raises(DivergedError, match="float epoch 1: training diverged"):
        train_run(tmp_path, data=csv_data(small_csv), train=huge_lr, progress=False)
    assert not (tmp_path / "metrics.json").exists()


@pytest.fixture(scope="module")
def degenerate_run(tmp_path_factory, small_csv, dataset):
    """A run whose float model (all weights 0) outputs 0 on every window and whose QAT model
    outputs a constant: with every weight 0 only L8's bias gets a gradient."""
    out = tmp_path_factory.mktemp("degenerate")
    config = ModelConfig(n_features=dataset.n_features, window=24)
    float_model, _ = build_models(config, BitPlan.parse("all-8/all-sq"), 0)
    zeros = {k: torch.zeros_like(v) for k, v in float_model.state_dict().items()}
    train = TrainConfig(float_epochs=1, qat_epochs=1, max_batches=2, batch_size=32)
    metrics = train_run(
        out, data=csv_data(small_csv), train=train, progress=False, float_init=zeros
    )
    return out, metrics


def test_degenerate_run_is_recorded_in_metrics(degenerate_run, dataset):
    out, metrics = degenerate_run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["degenerate"] == metrics["degenerate"]
    assert set(saved["degenerate"]) == {"qat/val", "qat/test", "float/val", "float/test"}
    (reason,) = saved["degenerate"]["qat/test"]
    assert reason.startswith(f"constant output: all {dataset.n_test} windows give ")
    assert saved["data_warnings"] == []
    assert degenerate_reasons(saved, "float") == [
        f"float model, val split: constant output: all {dataset.n_val} windows give 0",
        f"float model, test split: constant output: all {dataset.n_test} windows give 0",
    ]


def test_apq_show_and_train_flag_a_degenerate_run(degenerate_run, tmp_path, monkeypatch):
    out, metrics = degenerate_run
    runner = CliRunner()
    result = runner.invoke(app, ["show", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "DEGENERATE" in result.output and "degenerate model" in result.output
    assert "QAT model, test split: constant output" in result.output
    # the same run with the reasons removed and a data warning added: shown, exit code 0
    sound = {**metrics, "degenerate": {}, "data_warnings": ["csv:x: 2 timestamp(s) occur ..."]}
    copy = shutil.copytree(out, tmp_path / "copy")
    (copy / "metrics.json").write_text(json.dumps(sound))
    result = runner.invoke(app, ["show", str(copy)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "DEGENERATE" not in result.output and "data warning: csv:x: 2 timestamp" in result.output
    # apq train ends with exit code 1 when the model it trained is degenerate
    import brevitas_apq.training

    monkeypatch.setattr(brevitas_apq.training, "train_run", lambda *a, **k: metrics)
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "t"), "--no-progress"])
    assert result.exit_code == 1 and "degenerate model" in result.output


def test_runs_from_before_the_check_are_judged_by_their_numbers():
    old = {"rmse": 2.5, "float_rmse": 2.4, "persistence_rmse": 2.5, "predict": "change"}
    assert degenerate_reasons(old) == [
        "QAT model, test split: RMSE equals the persistence RMSE exactly (an output of 0 on "
        "every window; run trained before the degenerate-model check)"
    ]
    assert degenerate_reasons({**old, "predict": "level"}) == []
    assert degenerate_reasons({**old, "float_rmse": float("inf")}, "float") == [
        "float model, test split: RMSE is inf"
    ]


def test_grid_tables_count_degenerate_runs(degenerate_run):
    out, metrics = degenerate_run
    config = experiments.Config("all-8", "all-sq")
    rows = [grid_report.run_row(c, 0, out, metrics) for c in (None, config)]
    sound = grid_report.run_row(experiments.Config("all-4", "all-sq"), 0, out, metrics)
    sound.update(config="all-4/all-sq", bits="all-4", degenerate=0, degenerate_reasons="")
    results = pd.DataFrame([*rows, sound])
    assert results.degenerate.tolist() == [1, 1, 0]
    assert results.degenerate_reasons[0].startswith("float model, val split: constant output")
    assert results.degenerate_reasons[1].startswith("QAT model, val split: constant output")
    agg = grid_report.aggregate(results)
    assert agg.degenerate_runs.tolist() == [1, 1, 0] and "degenerate" not in agg
    table = grid_report.markdown_table(agg)
    assert table.splitlines()[0].endswith("| degenerate |")
    assert "| **DEGENERATE: 1 of 1** |" in table.splitlines()[3]
    assert table.splitlines()[4].endswith("| – |")
    assert "degenerate" not in grid_report.markdown_table(grid_report.aggregate(results[2:]))


def test_search_records_degenerate_trials(tmp_path, small_csv, degenerate_run, monkeypatch):
    pytest.importorskip("optuna")
    import brevitas_apq.training

    _, metrics = degenerate_run
    monkeypatch.setattr(search, "float_model_dir", lambda *a, **k: tmp_path / "float")
    monkeypatch.setattr(brevitas_apq.training, "train_run", lambda *a, **k: metrics)
    lines: list[str] = []
    result = search.search(
        tmp_path, trials=1, data=csv_data(small_csv), sampler="random", sampler_seed=0,
        log=lines.append,
    )  # fmt: skip
    reason = result["trials"].degenerate.iloc[0]
    assert reason.startswith("QAT model, val split: constant output")
    assert "; DEGENERATE: QAT model" in lines[-1]
    assert pd.read_csv(tmp_path / "trials.csv").degenerate.iloc[0] == reason
