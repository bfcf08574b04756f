"""``apq train``, ``export``, ``quickstart`` and ``show``: one run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brevitas_apq import report
from brevitas_apq.cli.common import (
    BatchSizeOpt,
    DataOpt,
    DecimalOpt,
    DelimiterOpt,
    DModelOpt,
    FeaturesOpt,
    FfnDimOpt,
    HeadsOpt,
    HorizonOpt,
    LrOpt,
    NaValuesOpt,
    NormOpt,
    PatienceOpt,
    PlanOpt,
    PredictOpt,
    QatLrOpt,
    TargetOpt,
    TimestampFormatOpt,
    TimestampOpt,
    WindowOpt,
    app,
    build_data_spec,
    build_model_options,
    clean_errors,
    finite_at_least_zero,
    option_error,
    print_metrics,
)
from brevitas_apq.report import console, err_console

# --- commands -------------------------------------------------------------------------------


@app.command()
@clean_errors
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
        raise option_error("--resume and --overwrite exclude each other: give one of them")
    data_spec = build_data_spec(locals())
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
        model_options=build_model_options(d_model, heads, ffn_dim, norm),
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    print_metrics(metrics, f"apq train: {out}")


@app.command("export")
@clean_errors
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished `apq train` run directory.")],
    windows: Annotated[int, typer.Option(min=1, help="Test windows to check.")] = 256,
    tolerance: Annotated[
        float, typer.Option(callback=finite_at_least_zero, help="Max abs difference allowed.")
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
@clean_errors
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
    print_metrics(metrics, f"apq quickstart: {out}")
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
@clean_errors
def show(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Print the summary table of a finished run."""
    from brevitas_apq.rundir import check_finished

    print_metrics(check_finished(run_dir), str(run_dir))
