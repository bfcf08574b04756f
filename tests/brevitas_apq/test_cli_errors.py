"""Command-line errors (issue 13): options checked before any work, the same data options on
train / reproduce / search, exception narrowing (the project's errors are one line and exit
code 2, a bug keeps its traceback, Ctrl-C stays Ctrl-C), FINN reports that are missing, the
FINN summary cache of `apq reproduce --finn`, and the regenerate command of results.md.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shlex
import signal
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from brevitas_apq import experiments, rundir, search, training
from brevitas_apq.cli import app
from brevitas_apq.data import DataSpec
from brevitas_apq.errors import RunError

runner = CliRunner()


def squeeze(text: str) -> str:
    """``text`` without white space and panel borders: rich wraps (and boxes) at 80 columns."""
    return re.sub(r"[\s│╭╮╰╯─]", "", text)


def assert_exit_2(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.exception, result.output)
    assert "Traceback" not in result.output
    for needle in needles:
        assert squeeze(needle) in squeeze(result.output), (needle, result.output)


class Captured(Exception):
    """Raised by a stand-in for the work function: carries the arguments the CLI built."""


def capture(monkeypatch, module, name: str) -> None:
    def stand_in(*args, **kwargs):
        raise Captured(args, kwargs)

    monkeypatch.setattr(module, name, stand_in)


def captured(result) -> tuple[tuple, dict]:
    assert isinstance(result.exception, Captured), (result.exception, result.output)
    return result.exception.args


# --- options checked before work starts ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "RUN", "--windows", "0"], "--windows"),
        (["export", "RUN", "--windows", "-5"], "--windows"),
        (["export", "RUN", "--tolerance", "nan"], "--tolerance"),
        (["export", "RUN", "--tolerance", "-1"], "--tolerance"),
        (["export", "RUN", "--tolerance", "inf"], "--tolerance"),
        (["build", "m.onnx", "--clock-ns", "0"], "--clock-ns"),
        (["build", "m.onnx", "--clock-ns", "nan"], "--clock-ns"),
        (["build", "m.onnx", "--tolerance", "nan"], "--tolerance"),
        (["build", "m.onnx", "--windows", "-1"], "--windows"),
        (["build", "m.onnx", "--jobs", "0"], "--jobs"),
        (["build", "m.onnx", "--target-fps", "0"], "--target-fps"),
        (["build", "m.onnx", "--cppsim", "4", "--windows", "2"], "--cppsim 4 > --windows 2"),
        (["train", "--resume", "--overwrite"], "exclude each other"),
        (["reproduce", "--board", "ZCU104"], "--board ZCU104 is used only with --finn"),
        (["sensitivity", "RUN", "--low", "8", "--high", "4"], "low=8 must be below high=4"),
        (["sensitivity", "RUN", "--low", "1"], "low=1 is out of range"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, args, needle):
    args = [str(tmp_path / a) if a in ("RUN", "m.onnx") else a for a in args]
    result = runner.invoke(
        app, [*args, "--out", str(tmp_path / "out")] if "train" in args else args
    )
    assert_exit_2(result, needle)
    assert not (tmp_path / "out").exists()


def test_reproduce_checks_the_finn_board_before_training(tmp_path):
    out = tmp_path / "grid"
    args = ["reproduce", "--out", str(out), "--seeds", "1", "--finn", "--board", "Foo"]
    result = runner.invoke(app, [*args, "--bits", "all-8", "--schemes", "all-sq"])
    assert_exit_2(result)
    text = squeeze(result.output)
    assert squeeze("Unknown board 'Foo'") in text or squeeze("needs finn-plus") in text
    assert not out.exists()  # refused before anything was trained or written


def test_bad_model_and_training_settings_are_one_line(tmp_path, small_csv):
    base = ["train", "--data", small_csv, "--target", "load", "--timestamp", "time"]
    base += ["--out", str(tmp_path / "out"), "--no-progress"]
    assert_exit_2(runner.invoke(app, [*base, "--epochs", "-1"]), "float_epochs=-1 is invalid")
    assert_exit_2(runner.invoke(app, [*base, "--heads", "3"]), "not divisible by n_heads=3")
    assert_exit_2(runner.invoke(app, [*base, "--norm", "group"]), "norm='group' is invalid")


# --- the same data options on train, reproduce and search ------------------------------------


def test_reproduce_and_search_take_the_data_options_of_train(tmp_path, small_csv, monkeypatch):
    frame = pd.read_csv(small_csv.removeprefix("csv:"))
    semicolon = tmp_path / "european.csv"
    frame.to_csv(semicolon, sep=";", decimal=",", index=False)
    data = ["--data", f"csv:{semicolon}", "--target", "load", "--timestamp", "time"]
    data += [
        "--delimiter",
        ";",
        "--decimal",
        ",",
        "--na-values",
        "-200,NA",
        "--features",
        "load,temp",
    ]
    data += ["--timestamp-format", "%Y-%m-%d %H:%M:%S", "--window", "12", "--horizon", "2"]
    capture(monkeypatch, training, "train_run")
    capture(monkeypatch, experiments, "reproduce")
    capture(monkeypatch, search, "search")
    specs = {}
    for command in ("train", "reproduce", "search"):
        result = runner.invoke(app, [command, *data, "--out", str(tmp_path / command)])
        specs[command] = captured(result)[1]["data"]
    assert specs["train"] == specs["reproduce"] == specs["search"]
    spec = specs["reproduce"]
    assert dict(spec.options)["delimiter"] == ";" and dict(spec.options)["na_values"] == (
        "-200",
        "NA",
    )
    assert (spec.window, spec.horizon) == (12, 2)
    loaded = spec.load()  # the semicolon / decimal-comma file reads with these options
    assert loaded.n_train > 0 and list(loaded.features) == ["load", "temp"]


# --- exception narrowing ---------------------------------------------------------------------


def test_an_internal_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def buggy(run_dir):
        return np.zeros(3).reshape(2)  # numpy's ValueError: a bug, not bad input

    monkeypatch.setattr(rundir, "check_finished", buggy)
    result = runner.invoke(app, ["show", str(tmp_path)])
    assert type(result.exception) is ValueError and "reshape" in str(result.exception)
    assert result.exit_code == 1 and "error:" not in result.output


def test_project_errors_are_one_line_with_exit_2(monkeypatch, tmp_path):
    def refuse(run_dir):
        raise RunError(f"{run_dir} is not what it should be; do this instead")

    monkeypatch.setattr(rundir, "check_finished", refuse)
    result = runner.invoke(app, ["show", str(tmp_path)])
    assert_exit_2(result, "error:", "do this instead")


def test_ctrl_c_is_exit_130_not_an_error(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "check_finished", interrupted)
    result = runner.invoke(app, ["show", str(tmp_path)])
    assert result.exit_code == 130 and "interrupted" in result.output
    from brevitas_apq import finn_bridge

    monkeypatch.setattr(finn_bridge, "build_model", interrupted)
    model = tmp_path / "m.onnx"
    result = runner.invoke(app, ["build", str(model), "--windows", "0"])
    assert result.exit_code == 130 and "interrupted" in result.output
    assert "FinnFlowError" not in result.output and "error:" not in result.output


def test_finn_flow_errors_are_one_line_with_exit_2(monkeypatch, tmp_path):
    from brevitas_apq import finn_bridge
    from finn_flow.errors import FinnFlowError

    def refuse(*args, **kwargs):
        raise FinnFlowError("FINN cannot map operator Sin; remove it")

    monkeypatch.setattr(finn_bridge, "build_model", refuse)
    result = runner.invoke(app, ["build", str(tmp_path / "m.onnx"), "--windows", "0"])
    assert_exit_2(result, "FINN cannot map operator Sin; remove it")


@pytest.mark.finn
@pytest.mark.parametrize("how", ["raised", "in a step", "between steps", "a FINN failure"])
def test_finn_build_keeps_ctrl_c(tmp_path, monkeypatch, how):
    """FINN's builder catches KeyboardInterrupt and returns -1 (outside pytest it also
    catches everything else); Ctrl-C must stay a KeyboardInterrupt, never a FinnFlowError."""
    flow = importlib.import_module("finn_flow.build")
    from finn_flow import steps
    from finn_flow.errors import FinnFlowError
    from finn_flow.no_vivado import finn_session
    from tests.finn_flow.finn_flow_models import make_mlp

    model, _ = make_mlp(tmp_path / "mlp.onnx")
    with finn_session():
        import finn.builder.build_dataflow as builder

    def interrupting_step(model, cfg):
        raise KeyboardInterrupt

    def build_steps(full, record, emulation=None, prefer_hls=False):
        return [steps.guard_step(interrupting_step, record)]

    def build_dataflow_cfg(path, cfg):  # what finn-plus's builder does with these
        try:
            if how == "raised":
                raise KeyboardInterrupt
            if how == "in a step":
                for step in cfg.steps:
                    step(None, cfg)
            if how == "between steps":
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
        except KeyboardInterrupt:
            if how == "raised":
                raise
            return -1
        raise RuntimeError("a FINN failure")

    monkeypatch.setattr(steps, "build_steps", build_steps)
    monkeypatch.setattr(builder, "build_dataflow_cfg", build_dataflow_cfg)
    expected = FinnFlowError if how == "a FINN failure" else KeyboardInterrupt
    with pytest.raises(expected) as info:
        flow.build(model, tmp_path / "out", quiet=True, full=False)
    assert type(info.value) is expected
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


# --- FINN reports and the summary cache of `apq reproduce --finn` ------------------------------


def test_a_missing_finn_report_is_an_error_not_zero(tmp_path):
    from finn_flow.boards import resolve_target
    from finn_flow.build import _summarise
    from finn_flow.errors import FinnFlowError

    cfg = SimpleNamespace(synth_clk_period_ns=10.0, target_fps=None)
    report = tmp_path / "report"
    report.mkdir()

    def summarise():
        return _summarise(tmp_path, resolve_target("Pynq-Z1"), {}, cfg, time.time(), False)

    with pytest.raises(FinnFlowError, match=re.escape("wrote no estimate_layer_resources.json")):
        summarise()
    (report / "estimate_layer_resources.json").write_text('{"total": {"LUT": 1234.0}}')
    with pytest.raises(
        FinnFlowError, match=re.escape("wrote no estimate_network_performance.json")
    ):
        summarise()
    (report / "estimate_network_performance.json").write_text('{"estimated_throughput_fps": 9')
    with pytest.raises(
        FinnFlowError, match=re.escape("estimate_network_performance.json cannot be read")
    ):
        summarise()


def test_finn_cache_is_keyed_on_board_and_model(tmp_path, monkeypatch):
    from brevitas_apq import finn_bridge

    run = tmp_path / "runs" / "all-8_all-sq" / "seed0"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"model A")
    (run / "finn_summary.json").write_text('{"LUT": 999}')  # an old cache without its key
    calls = []
    lut = {"Pynq-Z1": 100.0, "ZCU104": 200.0}

    def build_run(run_dir, board, out, windows):
        calls.append(board)
        return {"LUT": lut[board] + len(calls) / 10, "DSP": 1.0, "board": board}

    monkeypatch.setattr(finn_bridge, "build_run", build_run)
    results = pd.DataFrame({"config": ["float", "all-8/all-sq"], "run_dir": ["x", str(run)]})

    def luts(board):
        return experiments._finn_summaries(results, board, lambda line: None)[str(run)]["LUT"]

    assert luts("Pynq-Z1") == 100.1 and calls == ["Pynq-Z1"]
    assert luts("Pynq-Z1") == 100.1 and calls == ["Pynq-Z1"]  # cached
    assert luts("ZCU104") == 200.2 and calls == ["Pynq-Z1", "ZCU104"]  # another board: built
    assert luts("Pynq-Z1") == 100.1 and len(calls) == 2
    (run / "model.pt").write_bytes(b"model B")  # retrained: the cache is stale
    assert luts("Pynq-Z1") == 100.3 and len(calls) == 3
    next(run.glob("finn_summary.Pynq-Z1.json")).write_text('{"key": ')  # damaged: rebuilt
    assert luts("Pynq-Z1") == 100.4 and len(calls) == 4


# --- results.md's regenerate command ----------------------------------------------------------

EVERY_OPTION = [
    "--out", "runs/a grid",  # a space: the command is shell-quoted
    "--seeds", "2",
    "--epochs", "3",
    "--qat-epochs", "4",
    "--max-batches", "5",
    "--bits", "all-4,mixed-4-8",
    "--schemes", "sq-apq,all-sq",
    "--threshold", "0.25",
    "--thresholds", "0,0.3,0.123456789",
    "--decision-rules", "hysteresis,paper",
    "--jobs", "3",
    "--patience", "7",
    "--batch-size", "16",
    "--lr", "0.002",
    "--qat-lr", "5e-05",
    "--finn",
    "--board", "ZCU104",
    "--data", "csv:/data/my file.csv",
    "--predict", "level",
    "--window", "12",
    "--horizon", "0",
    "--target", "load",
    "--timestamp", "date",
    "--timestamp", "time",
    "--timestamp-format", "%d/%m/%Y %H.%M.%S",
    "--features", "temp,hum",
    "--delimiter", ";",
    "--decimal", ",",
    "--na-values", "-200,NA",
    "--d-model", "32",
    "--heads", "2",
    "--ffn-dim", "48",
    "--norm", "batch",
]  # fmt: skip
SETTINGS = ("bits", "schemes", "seeds", "thresholds", "threshold", "rules", "train", "data")
SETTINGS += ("model_options", "jobs", "finn", "finn_board")


def _settings(args, monkeypatch) -> tuple[str, dict]:
    capture(monkeypatch, experiments, "reproduce")
    (out,), kwargs = captured(runner.invoke(app, ["reproduce", *args]))
    return out, {key: kwargs[key] for key in SETTINGS}


@pytest.mark.parametrize("args", [EVERY_OPTION, [], ["--quick"]], ids=["all", "none", "quick"])
def test_regenerate_command_round_trip(args, monkeypatch):
    out, settings = _settings(args, monkeypatch)
    command = experiments.command_line(out, **settings)
    assert "#" not in command
    words = shlex.split(command)
    assert words[:2] == ["apq", "reproduce"]
    again_out, again = _settings(words[2:], monkeypatch)
    assert again_out == out
    for key in SETTINGS:
        assert again[key] == settings[key], key
    if args == EVERY_OPTION:  # every option is really set to a non-default value
        defaults = _settings([], monkeypatch)[1]
        train_fields = [f.name for f in dataclasses.fields(settings["train"])]
        for field in (f for f in train_fields if f not in ("seed", "threads", "qat_from_scratch")):
            assert getattr(settings["train"], field) != getattr(defaults["train"], field), field
        for key in ("bits", "schemes", "seeds", "thresholds", "threshold", "rules", "jobs", "finn"):
            assert settings[key] != defaults[key], key
        data, default_data = settings["data"], defaults["data"]
        for field in ("dataset", "window", "horizon", "predict"):
            assert getattr(data, field) != getattr(default_data, field), field
        assert {k for k, _ in data.options} == set(experiments._DATA_FLAGS)
        model = settings["model_options"]
        assert all(model[k] != defaults["model_options"][k] for k in model)


def test_regenerate_command_names_what_the_command_line_cannot_say():
    command = experiments.command_line(
        experiments.Path("g"),
        bits=["all-8"],
        schemes=["all-sq"],
        seeds=[1, 3],
        thresholds=(),
        threshold=0.1,
        train=training.TrainConfig(qat_from_scratch=True),
        data=DataSpec(),
    )
    assert command.endswith(
        "# not expressible on the command line: seeds=[1, 3], qat_from_scratch=True"
    )
