"""The ``apq`` command line (typer): the commands, their options and the checks of options
that are each valid but not together. The work is done in the library (``training``,
``experiments``, ``sensitivity``, ``search``, ``finn_bridge``, ...); the tables the commands
print are in ``brevitas_apq.report``.

Every command turns the project's own errors into one line and exit code 2 (``_clean_errors``).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from brevitas_apq import __version__, report
from brevitas_apq.errors import APQError, ConfigError, RunError
from brevitas_apq.report import console, err_console

app = typer.Typer(
    name="apq",
    help="Adaptive quantisation-aware training of tiny time-series Transformers for FPGAs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"brevitas-apq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Adaptive quantisation-aware training of tiny time-series Transformers for FPGAs."""


def _user_errors() -> tuple[type[Exception], ...]:
    """The project's own error types: APQError, and finn_flow's FinnFlowError once finn_flow
    was imported (nothing raised it before; the CLI starts without importing it)."""
    flow = sys.modules.get("finn_flow.errors")
    return (APQError,) if flow is None else (APQError, flow.FinnFlowError)


def _clean_errors(func):
    """Turn the project's own errors into one clear line and exit code 2, and Ctrl-C into exit
    code 130; any other exception is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print(
                "[bold red]interrupted[/] (Ctrl-C): finished results are kept; `apq train` "
                "continues with --resume, `apq reproduce` and `apq sensitivity` when run again"
            )
            raise typer.Exit(130) from None
        except Exception as err:
            if not isinstance(err, _user_errors()):
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(err))}")
            raise typer.Exit(2) from None

    return wrapper


def _option_error(message: str) -> ConfigError:
    """An error of options that are each valid but not together (one line, exit code 2)."""
    return ConfigError(message)


def _finite_at_least_zero(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"{value} is not a tolerance; give a finite number >= 0")
    return value


def _finite_positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"{value} is not a clock period; give a number of ns > 0")
    return value


# --- shared options -------------------------------------------------------------------------

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help="Data set: 'beijing' (embedded default), 'airu:PATH' or 'csv:PATH'.",
    ),
]
PredictOpt = Annotated[
    str,
    typer.Option(
        "--predict",
        help="What the model outputs: 'change' (from the last hour; the forecast adds the last "
        "observed value back) or 'level' (the target itself).",
    ),
]
PlanOpt = Annotated[
    str,
    typer.Option(
        "--plan",
        "-p",
        help="Bit plan: BITS/SCHEMES presets (BITS: all-8, all-4, mixed-4-8; SCHEMES: all-sq, "
        "all-aq, sq-aq, sq-apq, all-apq) or a YAML plan file.",
    ),
]
# data options of train, reproduce and search (_data_spec)
WindowOpt = Annotated[int, typer.Option(help="Input window length (hours).")]
HorizonOpt = Annotated[int, typer.Option(help="Steps ahead (0: the window's last step).")]
TargetOpt = Annotated[str | None, typer.Option(help="csv/airu: target column.")]
TimestampOpt = Annotated[
    list[str] | None, typer.Option(help="csv: timestamp column(s), repeat for several.")
]
TimestampFormatOpt = Annotated[str | None, typer.Option(help="csv: strftime format.")]
FeaturesOpt = Annotated[str | None, typer.Option(help="csv/airu: comma-separated.")]
DelimiterOpt = Annotated[str | None, typer.Option(help="csv: field delimiter.")]
DecimalOpt = Annotated[str | None, typer.Option(help="csv: decimal mark.")]
NaValuesOpt = Annotated[
    str | None, typer.Option(help="csv: comma-separated missing markers, e.g. -200,NA.")
]
# model and training options of train and reproduce
DModelOpt = Annotated[int, typer.Option(help="Model width.")]
HeadsOpt = Annotated[int, typer.Option(help="Attention heads.")]
FfnDimOpt = Annotated[int | None, typer.Option(help="FFN width (default 4*d_model).")]
NormOpt = Annotated[str, typer.Option(help="Normalisation: layer or batch.")]
BatchSizeOpt = Annotated[int, typer.Option(help="Mini-batch size.")]
LrOpt = Annotated[float, typer.Option(help="Adam learning rate (float).")]
QatLrOpt = Annotated[float, typer.Option(help="Adam learning rate (QAT).")]
PatienceOpt = Annotated[int, typer.Option(help="Early-stopping patience (epochs).")]


def _csv_options(
    target, timestamp, timestamp_format, features, delimiter, decimal, na_values
) -> tuple[tuple[str, object], ...]:
    options = {
        "target": target,
        "timestamp": tuple(timestamp) if timestamp else None,
        "timestamp_format": timestamp_format,
        "features": tuple(f.strip() for f in features.split(",")) if features else None,
        "delimiter": delimiter,
        "decimal": decimal,
        "na_values": tuple(v.strip() for v in na_values.split(",")) if na_values else None,
    }
    if options["timestamp"] and len(options["timestamp"]) == 1:
        options["timestamp"] = options["timestamp"][0]
    return tuple((k, v) for k, v in options.items() if v is not None)


def _data_spec(
    data,
    predict,
    window,
    horizon,
    target,
    timestamp,
    timestamp_format,
    features,
    delimiter,
    decimal,
    na_values,
):
    """The DataSpec of the shared data options."""
    from brevitas_apq.data import DataSpec

    options = _csv_options(
        target, timestamp, timestamp_format, features, delimiter, decimal, na_values
    )
    return DataSpec(data, window, horizon, options=options, predict=predict)


def _model_options(d_model, heads, ffn_dim, norm) -> dict[str, object]:
    return {"d_model": d_model, "n_heads": heads, "ffn_dim": ffn_dim, "norm": norm}


def _print_metrics(metrics: dict, title: str) -> None:
    """The run's table (``report.print_metrics``); exit code 1 for a degenerate model."""
    if report.print_metrics(metrics, title):
        raise typer.Exit(1)


# --- commands -------------------------------------------------------------------------------


@app.command()
@_clean_errors
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/train"),
    data: DataOpt = "beijing",
    predict: PredictOpt = "change",
    plan: PlanOpt = "mixed-4-8/sq-apq",
    threshold: Annotated[float, typer.Option(help="APQ symmetry threshold (presets).")] = 0.1,
    decision_rule: Annotated[
        str | None,
        typer.Option(
            help="APQ decision rule: paper (S <= threshold at every mini-batch) or hysteresis "
            "(band around the threshold on a moving average of S). Default: the plan's."
        ),
    ] = None,
    decision_band: Annotated[
        float | None, typer.Option(help="Hysteresis half-width relative to the threshold.")
    ] = None,
    decision_momentum: Annotated[
        float | None, typer.Option(help="Weight of the newest mini-batch in the average of S.")
    ] = None,
    per_channel_weights: Annotated[
        bool,
        typer.Option(help="One scale (and zero point) per output channel for every weight."),
    ] = False,
    epochs: Annotated[int, typer.Option(help="Max float epochs.")] = 30,
    qat_epochs: Annotated[int, typer.Option(help="Max QAT epochs.")] = 20,
    batch_size: BatchSizeOpt = 64,
    lr: LrOpt = 1e-3,
    qat_lr: QatLrOpt = 1e-3,
    patience: PatienceOpt = 10,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    qat_from_scratch: Annotated[
        bool, typer.Option(help="Start QAT from random weights instead of the float model.")
    ] = False,
    max_batches: Annotated[
        int | None, typer.Option(help="Cap on training batches per epoch (quick runs).")
    ] = None,
    threads: Annotated[int, typer.Option(help="Torch intra-op threads (1 is fastest here).")] = 1,
    window: WindowOpt = 24,
    horizon: HorizonOpt = 1,
    d_model: DModelOpt = 16,
    heads: HeadsOpt = 1,
    ffn_dim: FfnDimOpt = None,
    norm: NormOpt = "layer",
    target: TargetOpt = None,
    timestamp: TimestampOpt = None,
    timestamp_format: TimestampFormatOpt = None,
    features: FeaturesOpt = None,
    delimiter: DelimiterOpt = None,
    decimal: DecimalOpt = None,
    na_values: NaValuesOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Start again even if --out has a run (its results are removed before training)."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train the float model, then QAT with a bit plan; write metrics, plots and checkpoints."""
    import dataclasses

    from brevitas_apq.plans import BitPlan
    from brevitas_apq.training import TrainConfig, train_run

    if resume and overwrite:
        raise _option_error("--resume and --overwrite exclude each other: give one of them")
    data_spec = _data_spec(
        data,
        predict,
        window,
        horizon,
        target,
        timestamp,
        timestamp_format,
        features,
        delimiter,
        decimal,
        na_values,
    )
    bit_plan = BitPlan.parse(plan, threshold=threshold)
    decision = {
        key: value
        for key, value in (
            ("rule", decision_rule),
            ("band", decision_band),
            ("momentum", decision_momentum),
        )
        if value is not None
    }
    if decision:
        bit_plan = dataclasses.replace(
            bit_plan, decision=dataclasses.replace(bit_plan.decision, **decision)
        )
    if per_channel_weights:
        bit_plan = dataclasses.replace(
            bit_plan,
            layers={
                name: dataclasses.replace(spec, weight=spec.weight.replace(per_channel=True))
                for name, spec in bit_plan.layers.items()
            },
        )
    metrics = train_run(
        out,
        data=data_spec,
        plan=bit_plan,
        train=TrainConfig(
            float_epochs=epochs,
            qat_epochs=qat_epochs,
            batch_size=batch_size,
            lr=lr,
            qat_lr=qat_lr,
            patience=patience,
            seed=seed,
            qat_from_scratch=qat_from_scratch,
            max_batches=max_batches,
            threads=threads,
        ),
        model_options=_model_options(d_model, heads, ffn_dim, norm),
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    _print_metrics(metrics, f"apq train: {out}")


@app.command("export")
@_clean_errors
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished `apq train` run directory.")],
    windows: Annotated[int, typer.Option(min=1, help="Test windows to check.")] = 256,
    tolerance: Annotated[
        float, typer.Option(callback=_finite_at_least_zero, help="Max abs difference allowed.")
    ] = 1e-5,
) -> None:
    """Export the run's quantised model to QONNX and check it against Brevitas on test windows."""
    from brevitas_apq.export import export_run

    report = export_run(run_dir, n_windows=windows, tolerance=tolerance)
    status = "[green]ok[/]" if report["passed"] else "[bold red]FAILED[/]"
    console.print(
        f"exported {report['onnx']}: qonnx vs Brevitas on {report['n_windows']} test windows, "
        f"max |diff| = {report['max_abs_diff']:.3e} (tolerance {tolerance:g}) {status}"
    )
    if not report["passed"]:
        raise typer.Exit(1)


#: Test windows the quickstart emulates through FINN's hardware graph, and of those the
#: windows it runs through the C++ kernels (when the HLS sources are found).
QUICKSTART_WINDOWS = 256
QUICKSTART_CPPSIM_WINDOWS = 32


@app.command()
@_clean_errors
def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path(
        "runs/quickstart"
    ),
    epochs: Annotated[int, typer.Option(help="Max float epochs.")] = 30,
    qat_epochs: Annotated[int, typer.Option(help="Max QAT epochs (apq train's default).")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    finn: Annotated[
        bool, typer.Option(help="End with the FINN estimate + emulation (Pynq-Z1).")
    ] = True,
    overwrite: Annotated[
        bool, typer.Option(help="Start over: remove the results of an earlier run in --out.")
    ] = False,
) -> None:
    """The main job: float + QAT (mixed-4-8 / sq-apq) on the embedded data, QONNX export, then
    the FINN dataflow estimate and emulation for Pynq-Z1 (RUN_DIR/finn/summary.json).

    Resumes an interrupted quickstart in the same --out (--overwrite starts over).
    """
    from brevitas_apq.export import export_run
    from brevitas_apq.io import write_json
    from brevitas_apq.plans import BitPlan
    from brevitas_apq.rundir import CHECKPOINT, METRICS_FILE
    from brevitas_apq.training import TrainConfig, train_run

    metrics = train_run(
        out,
        plan=BitPlan.from_presets("mixed-4-8", "sq-apq"),
        train=TrainConfig(float_epochs=epochs, qat_epochs=qat_epochs, seed=seed),
        resume=not overwrite and (out / CHECKPOINT).exists(),
        overwrite=overwrite,
        progress=progress,
    )
    metrics["export"] = export_run(out)
    write_json(out / METRICS_FILE, metrics)
    _print_metrics(metrics, f"apq quickstart: {out}")
    if not metrics["export"]["passed"]:
        raise typer.Exit(1)
    if finn:
        _quickstart_finn(out)


def _quickstart_finn(run_dir: Path) -> None:
    """FINN estimate + emulation of the quickstart model (brevitas_apq.finn_bridge).

    Emulates QUICKSTART_WINDOWS test windows and, where the HLS sources are found (APQ_HLS_DIR;
    `apq hls-fetch`), simulates QUICKSTART_CPPSIM_WINDOWS of them in the C++ kernels; any
    difference from QONNX, Brevitas or FINN's Python execution above the tolerance fails the
    main job (exit 1) after printing the summary.
    """
    import importlib.util

    if importlib.util.find_spec("finn") is None:
        err_console.print("[yellow]finn-plus is not installed: FINN estimate skipped[/]")
        return
    from brevitas_apq.finn_bridge import build_run
    from brevitas_apq.io import read_json
    from finn_flow.errors import EmulationMismatchError, FinnFlowError
    from finn_flow.hls_toolchain import HlsToolchain

    cppsim = QUICKSTART_CPPSIM_WINDOWS
    try:
        HlsToolchain.resolve()
    except FinnFlowError as err:
        cppsim = 0
        err_console.print(f"[yellow]C++ simulation of the HLS kernels skipped:[/] {err}")
    failure = None
    try:
        summary = build_run(run_dir, board="Pynq-Z1", windows=QUICKSTART_WINDOWS, cppsim=cppsim)
    except EmulationMismatchError as err:
        summary, failure = read_json(run_dir / "finn" / "summary.json"), err
    board = summary.get("board", "Pynq-Z1")
    console.print(report.summary_table(summary, f"apq quickstart: FINN estimate, {board}"))
    console.print(f"FINN reports in {run_dir / 'finn' / 'report'}")
    if failure is not None:
        err_console.print(f"[bold red]error:[/] {failure}")
        raise typer.Exit(1)


@app.command()
@_clean_errors
def show(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Print the summary table of a finished run."""
    from brevitas_apq.rundir import check_finished

    _print_metrics(check_finished(run_dir), str(run_dir))


# --- apq reproduce (brevitas_apq.experiments) --------------------------------------------------


@app.command()
@_clean_errors
def reproduce(
    out: Annotated[Path, typer.Option("--out", "-o", help="Grid directory.")] = Path(
        "runs/reproduce"
    ),
    quick: Annotated[
        bool,
        typer.Option(help="Reduced grid: 1 seed, 20+3 epochs, 200 batches/epoch (minutes)."),
    ] = False,
    seeds: Annotated[int | None, typer.Option(help="Seeds 0..N-1 (default 3; quick 1).")] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Max float epochs (default 30; quick 20).")
    ] = None,
    qat_epochs: Annotated[
        int | None, typer.Option(help="Max QAT epochs (default 20; quick 3).")
    ] = None,
    max_batches: Annotated[
        int | None,
        typer.Option(help="Cap on training batches per epoch (default none; quick 200)."),
    ] = None,
    bits: Annotated[
        str | None,
        typer.Option(help="Comma-separated bit presets (default all-8,all-4,mixed-4-8)."),
    ] = None,
    schemes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated scheme presets (default all-aq,all-sq,sq-aq,sq-apq,all-apq)."
        ),
    ] = None,
    threshold: Annotated[float, typer.Option(help="APQ threshold of the main grid.")] = 0.1,
    thresholds: Annotated[
        str | None,
        typer.Option(help="APQ threshold sweep of sq-apq/all-apq, e.g. 0,0.05,0.1,0.2,0.5,1."),
    ] = None,
    decision_rules: Annotated[
        str,
        typer.Option(
            help="Comma-separated APQ decision rules, each trained for every APQ configuration: "
            "paper, hysteresis (band 0.2, momentum 0.02), or both."
        ),
    ] = "paper",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Parallel worker processes.")] = 1,
    patience: PatienceOpt = 10,
    batch_size: BatchSizeOpt = 64,
    lr: LrOpt = 1e-3,
    qat_lr: QatLrOpt = 1e-3,
    finn: Annotated[
        bool, typer.Option(help="Add FINN resource estimates (brevitas_apq.finn_bridge).")
    ] = False,
    board: Annotated[
        str | None, typer.Option(help="FINN board (with --finn; default Pynq-Z1).")
    ] = None,
    data: DataOpt = "beijing",
    predict: PredictOpt = "change",
    window: WindowOpt = 24,
    horizon: HorizonOpt = 1,
    target: TargetOpt = None,
    timestamp: TimestampOpt = None,
    timestamp_format: TimestampFormatOpt = None,
    features: FeaturesOpt = None,
    delimiter: DelimiterOpt = None,
    decimal: DecimalOpt = None,
    na_values: NaValuesOpt = None,
    d_model: DModelOpt = 16,
    heads: HeadsOpt = 1,
    ffn_dim: FfnDimOpt = None,
    norm: NormOpt = "layer",
    progress: Annotated[bool, typer.Option(help="Progress bars of each run.")] = False,
) -> None:
    """The paper's grid: float baseline and every bit x scheme preset over seeds.

    Trains the float model once per seed and starts every QAT configuration from it. Writes
    results.csv, results.md (headed by the command that regenerates it), stability.csv and
    plots to --out; finished runs are kept and interrupted ones resume, so running the same
    command again continues the grid.
    """
    from brevitas_apq import experiments
    from brevitas_apq.finn_bridge import DEFAULT_BOARD
    from brevitas_apq.plans import BIT_PRESETS, SCHEME_PRESETS
    from brevitas_apq.quant.validation import DECISION_RULES
    from brevitas_apq.training import TrainConfig

    def pick(value, key, default):
        return value if value is not None else (experiments.QUICK[key] if quick else default)

    if board is not None and not finn:
        raise _option_error(f"--board {board} is used only with --finn: add --finn or drop --board")
    result = experiments.reproduce(
        out,
        bits=experiments.parse_list(bits, BIT_PRESETS, "bit preset"),
        schemes=experiments.parse_list(schemes, SCHEME_PRESETS, "scheme preset")
        if schemes
        else experiments.GRID_SCHEMES,
        seeds=pick(seeds, "seeds", 3),
        thresholds=experiments.parse_thresholds(thresholds),
        threshold=threshold,
        rules=experiments.parse_list(decision_rules, DECISION_RULES, "decision rule"),
        train=TrainConfig(
            float_epochs=pick(epochs, "float_epochs", 30),
            qat_epochs=pick(qat_epochs, "qat_epochs", 20),
            max_batches=pick(max_batches, "max_batches", None),
            patience=patience,
            batch_size=batch_size,
            lr=lr,
            qat_lr=qat_lr,
        ),
        data=_data_spec(
            data,
            predict,
            window,
            horizon,
            target,
            timestamp,
            timestamp_format,
            features,
            delimiter,
            decimal,
            na_values,
        ),
        model_options=_model_options(d_model, heads, ffn_dim, norm),
        jobs=jobs,
        finn=finn,
        finn_board=(board or DEFAULT_BOARD) if finn else board,
        progress=progress,
        log=lambda line: console.print(line, highlight=False),
    )
    report.print_grid(result, out)
    if result.failed:
        raise typer.Exit(1)


@app.command()
@_clean_errors
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="A finished `apq train` run directory.")],
) -> None:
    """Integer operations per inference (MACs by bit width, zero-point overhead) and model size.

    Prints the per-layer table and writes RUN_DIR/analysis.csv (see brevitas_apq.analysis).
    """
    import pandas as pd

    from brevitas_apq.analysis import float_size_bits, operation_counts, size_summary
    from brevitas_apq.io import write_csv
    from brevitas_apq.rundir import load_run

    float_model, quant_model, _ = load_run(run_dir)
    ops = operation_counts(quant_model)
    write_csv(run_dir / "analysis.csv", pd.DataFrame(report.operation_rows(ops)))
    report.print_analysis(run_dir, ops, size_summary(quant_model), float_size_bits(float_model))
    console.print(f"wrote {run_dir / 'analysis.csv'}")


@app.command()
@_clean_errors
def sensitivity(
    run_dir: Annotated[Path, typer.Argument(help="A finished `apq train` run directory.")],
    low: Annotated[int, typer.Option(help="Low bit width.")] = 4,
    high: Annotated[int, typer.Option(help="High bit width.")] = 8,
    epochs: Annotated[int, typer.Option(help="QAT epochs per configuration.")] = 3,
    max_batches: Annotated[
        int | None, typer.Option(help="Cap on training batches per epoch (quick runs).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Mini-batch size (default: the run's).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="QAT learning rate (default: the run's).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the run's).")] = None,
    keep: Annotated[int, typer.Option(help="Most sensitive layers kept at --high bits.")] = 1,
    jobs: Annotated[int, typer.Option(help="Parallel processes (1 torch thread each).")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Recompute finished configurations.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Per-layer bit-width sensitivity: each layer low with the rest high, and the reverse.

    Short QAT from the run's float weights per configuration (resumable: finished ones are
    skipped); writes RUN_DIR/sensitivity/ (sensitivity.csv, sensitivity.png, plan.yaml).
    """
    from brevitas_apq.sensitivity import default_settings, run_sensitivity

    settings = default_settings(
        run_dir,
        low=low,
        high=high,
        epochs=epochs,
        max_batches=max_batches,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    result = run_sensitivity(
        run_dir, settings, keep=keep, jobs=jobs, overwrite=overwrite, progress=progress
    )
    report.print_sensitivity(run_dir, result, low, high)


# --- apq search (brevitas_apq.search) ----------------------------------------------------------


@app.command()
@_clean_errors
def search(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path(
        "runs/search"
    ),
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db "
            "(default: sqlite:///OUT/study.db)."
        ),
    ] = None,
    study_name: Annotated[str, typer.Option(help="Study name in the storage.")] = "apq-search",
    trials: Annotated[int, typer.Option(help="Trials for this worker (0: only report).")] = 10,
    epochs: Annotated[int, typer.Option(help="Max float epochs (shared float model).")] = 10,
    qat_epochs: Annotated[int, typer.Option(help="Max QAT epochs per trial.")] = 5,
    max_batches: Annotated[
        int | None, typer.Option(help="Cap on training batches per epoch.")
    ] = None,
    batch_size: BatchSizeOpt = 64,
    patience: PatienceOpt = 10,
    seed: Annotated[int, typer.Option(help="Seed of the float model and of QAT.")] = 0,
    min_bits: Annotated[int, typer.Option(help="Smallest bit width per layer.")] = 2,
    max_bits: Annotated[int, typer.Option(help="Largest bit width per layer.")] = 8,
    weight_schemes: Annotated[
        str, typer.Option(help="Weight/bias schemes to choose from (comma-separated).")
    ] = "sq,aq,apq",
    act_schemes: Annotated[
        str, typer.Option(help="Activation schemes to choose from (comma-separated).")
    ] = "sq,aq,apq",
    threshold: Annotated[float, typer.Option(help="APQ symmetry threshold.")] = 0.1,
    sampler: Annotated[str, typer.Option(help="Optuna sampler: tpe, nsga2 or random.")] = "tpe",
    sampler_seed: Annotated[
        int | None, typer.Option(help="Sampler seed (default: random per worker).")
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs", "-j", help="Worker processes sharing this command's --trials in the study."
        ),
    ] = 1,
    data: DataOpt = "beijing",
    predict: PredictOpt = "change",
    window: WindowOpt = 24,
    horizon: HorizonOpt = 1,
    target: TargetOpt = None,
    timestamp: TimestampOpt = None,
    timestamp_format: TimestampFormatOpt = None,
    features: FeaturesOpt = None,
    delimiter: DelimiterOpt = None,
    decimal: DecimalOpt = None,
    na_values: NaValuesOpt = None,
    progress: Annotated[bool, typer.Option(help="Progress bars of each run.")] = False,
) -> None:
    """Multi-objective search over per-layer bits and schemes (RMSE, size, zero-point ops).

    Start several workers with the same --storage and --study-name to share one study; each
    writes trials.csv, pareto.csv and pareto.png of the whole study to its --out.
    """
    from brevitas_apq import search as search_mod
    from brevitas_apq.training import TrainConfig

    result = search_mod.search(
        out,
        storage=storage,
        study_name=study_name,
        trials=trials,
        space=search_mod.SearchSpace(
            min_bits=min_bits,
            max_bits=max_bits,
            weight_schemes=search_mod.parse_schemes(weight_schemes),
            act_schemes=search_mod.parse_schemes(act_schemes),
            threshold=threshold,
        ),
        train=TrainConfig(
            float_epochs=epochs,
            qat_epochs=qat_epochs,
            max_batches=max_batches,
            batch_size=batch_size,
            patience=patience,
            seed=seed,
        ),
        data=_data_spec(
            data,
            predict,
            window,
            horizon,
            target,
            timestamp,
            timestamp_format,
            features,
            delimiter,
            decimal,
            na_values,
        ),
        sampler=sampler,
        sampler_seed=sampler_seed,
        jobs=jobs,
        progress=progress,
        log=lambda line: console.print(line, highlight=False),
    )
    report.print_pareto(result, study_name, out)


# --- apq build (FINN, brevitas_apq.finn_bridge) ---------------------------------------------


@app.command("build")
@_clean_errors
def build_cmd(
    model: Annotated[
        Path,
        typer.Argument(help="A QONNX file (apq export) or a finished run directory."),
    ],
    board: Annotated[
        str,
        typer.Option(
            "--board",
            "-b",
            help="Pynq-Z1, Pynq-Z2, ZCU104, KV260_SOM, Ultra96-V2 or an FPGA part name.",
        ),
    ] = "Pynq-Z1",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output directory (default RUN_DIR/finn or MODEL_finn)."),
    ] = None,
    target_fps: Annotated[
        int | None,
        typer.Option("--target-fps", min=1, help="Target inferences/s (auto-folding)."),
    ] = None,
    folding: Annotated[
        Path | None, typer.Option("--folding", help="FINN folding config JSON.")
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Run directory supplying test windows and the Brevitas model."),
    ] = None,
    windows: Annotated[
        int,
        typer.Option(min=0, help="Test windows to emulate through FINN's HW graph (0: none)."),
    ] = 32,
    tolerance: Annotated[
        float, typer.Option(callback=_finite_at_least_zero, help="Max abs emulation difference.")
    ] = 1e-4,
    clock_ns: Annotated[
        float,
        typer.Option("--clock-ns", callback=_finite_positive, help="Target clock period (ns)."),
    ] = 10.0,
    inputs: Annotated[
        Path | None,
        typer.Option(
            "--inputs",
            help="A .npy of samples (N, *input shape) for a model without a run directory.",
        ),
    ] = None,
    cppsim: Annotated[
        int,
        typer.Option(
            "--cppsim",
            help="Also compile every HLS node with g++ and run the first N windows through "
            "the C++ kernels, bit for bit against Python and QONNX (0: off).",
            min=0,
        ),
    ] = 0,
    hls_dir: Annotated[
        Path | None,
        typer.Option(
            "--hls-dir",
            help="Folder with finn-hlslib/ and attention-hlslib/ for --cppsim (default: "
            "$APQ_HLS_DIR, else finn's deps folder).",
        ),
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Parallel C++ compiles for --cppsim.")] = 2,
    max_util: Annotated[
        float | None,
        typer.Option(
            "--max-util",
            help="Without --target-fps/--folding: the fastest folding whose estimate uses at "
            "most this share of the board's LUT/BRAM/URAM/DSP (default 0.8).",
        ),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="Explicit limits instead of --max-util, e.g. lut=8000,dsp=20,bram18=20 "
            "(bram36=N counts two BRAM_18K).",
        ),
    ] = None,
    pareto: Annotated[
        bool,
        typer.Option("--pareto", help="Write OUT/pareto.csv and pareto.png (all candidates)."),
    ] = False,
    prefer_hls: Annotated[
        bool,
        typer.Option(
            "--prefer-hls",
            help="Use HLS variants wherever finn-plus has one (it prefers RTL for thresholds "
            "and matrix units), so --cppsim checks the whole design in C++.",
        ),
    ] = False,
) -> None:
    """Build a model with FINN for a board: resource/throughput estimate plus emulation.

    By default the fastest folding whose estimate fits 80 % of the board (--max-util,
    --budget; exit 1 if none fits); --target-fps or --folding choose it instead. Without
    Xilinx tools (no XILINX_VIVADO) the flow stops after HLS/RTL code generation; with them it
    goes on to the bitfile. Writes FINN's reports and OUT/summary.json. With --cppsim N the
    HLS kernels are compiled (g++, cached) and N windows simulated in C++.
    """
    import warnings

    from brevitas_apq.finn_bridge import build_model, run_onnx
    from brevitas_apq.io import read_json
    from finn_flow.errors import EmulationMismatchError

    if target_fps is not None and folding is not None:
        raise _option_error("--target-fps and --folding exclude each other: give one of them")
    if max_util is not None and not 0 < max_util <= 1:
        raise _option_error(f"--max-util {max_util}: expected a share in (0, 1], e.g. 0.8")
    if cppsim > windows:
        raise _option_error(
            f"--cppsim {cppsim} > --windows {windows}: simulate at most the "
            "emulated windows (raise --windows)"
        )
    if inputs is not None and model.is_dir():
        raise _option_error(f"{model} is a run directory (it supplies the inputs): drop --inputs")
    if inputs is not None and run is not None:
        raise _option_error("--inputs and --run exclude each other: give one of them")
    if out is not None and out.exists() and not out.is_dir():
        raise _option_error(f"--out {out} is a file: give a folder for FINN's outputs")
    if model.is_dir():
        if run is not None and run.resolve() != model.resolve():
            raise _option_error(f"{model} is a run directory: drop --run or pass the .onnx file")
        run = model
        if not any((model / name).exists() for name in ("model.onnx", "model.pt", "metrics.json")):
            raise RunError(
                f"{model} is a directory without model.onnx or model.pt: pass a QONNX file "
                "or a finished `apq train` run directory"
            )
        onnx_path = run_onnx(model, log=lambda line: console.print(line, highlight=False))
        out = out or model / "finn"
    else:
        onnx_path = model
        out = out or model.with_name(model.stem + "_finn")
    samples = None
    if inputs is not None:
        from brevitas_apq.finn_bridge import load_inputs

        samples = load_inputs(inputs, onnx_path)
    console.print(f"FINN build of {onnx_path} for {board} -> {out}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = build_model(
                onnx_path,
                out,
                board=board,
                run_dir=run,
                windows=windows,
                target_fps=target_fps,
                folding=folding,
                tolerance=tolerance,
                clock_ns=clock_ns,
                inputs=samples,
                cppsim=cppsim,
                hls_dir=hls_dir,
                jobs=jobs,
                prefer_hls=prefer_hls,
                max_util=max_util,
                budget=budget,
                pareto=pareto,
            )
            failure = None
        except EmulationMismatchError as err:
            summary, failure = read_json(out / "summary.json"), err
    report.print_finn_warnings(caught)
    console.print(report.summary_table(summary))
    console.print(f"reports in {out / 'report'}, summary in {out / 'summary.json'}")
    fit = summary.get("fit")
    if failure is None and fit is not None and not fit["fits"]:
        failure = (
            f"no folding fits {fit['budget_source']} (estimates); the smallest design is "
            f"summarised above, binding resource {fit['binding_resource']}"
        )
    if failure is not None:
        err_console.print(f"[bold red]error:[/] {failure}")
        raise typer.Exit(1)


@app.command("hls-fetch")
@_clean_errors
def hls_fetch(
    dest: Annotated[Path, typer.Argument(help="Folder to clone the HLS sources into.")],
) -> None:
    """Clone the HLS C++ sources `apq build --cppsim` compiles against, at pinned commits.

    finn-hlslib and attention-hlslib at the commits finn-plus pins, and Xilinx's open-source
    ap_int headers (git and network needed). Then: export APQ_HLS_DIR=DEST (or --hls-dir DEST).
    """
    from finn_flow.hls_sources import fetch, pinned_sources

    pins = pinned_sources()
    for name, (url, commit) in pins.items():
        console.print(f"{name}: {url} @ {commit[:12]}")
    fetched = fetch(dest, pins)
    console.print(f"HLS sources in {dest.absolute()} ({', '.join(fetched)})")
    console.print(f"use them with: export APQ_HLS_DIR={dest.absolute()}")


# Third-party notices that say nothing about the user's run (Brevitas's optional Hadamard
# kernels; its accumulator zero point, which our export does not use). Also set for the worker
# processes of reproduce / sensitivity / search through PYTHONWARNINGS.
_QUIET = (
    "fast_hadamard_transform package not found",
    "Computing zero point of output accumulator",
)


def main() -> None:
    extra = ",".join(f"ignore:{message}" for message in _QUIET)
    current = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = f"{current},{extra}" if current else extra
    for message in _QUIET:
        warnings.filterwarnings("ignore", message=message)
    app()


if __name__ == "__main__":
    main()
