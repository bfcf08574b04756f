"""The ``apq`` command line (typer)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from brevitas_apq import __version__

app = typer.Typer(
    name="apq",
    help="Adaptive quantisation-aware training of tiny time-series Transformers for FPGAs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


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


def _clean_errors(func):
    """Turn the project's input errors into one clear line and exit code 2, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ValueError, FileNotFoundError) as err:
            err_console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2) from None

    return wrapper


# --- shared options -------------------------------------------------------------------------

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help="Data set: 'beijing' (embedded default), 'airu:PATH' or 'csv:PATH'.",
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


def print_metrics(metrics: dict, title: str) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("plan", metrics["plan"]),
        ("data set / target", f"{metrics['dataset']} / {metrics['target']}"),
        (
            "windows train / val / test",
            f"{metrics['n_train']} / {metrics['n_val']} / {metrics['n_test']}",
        ),
        ("QAT test RMSE", f"{metrics['rmse']:.3f}"),
        ("QAT test MAE", f"{metrics['mae']:.3f}"),
        ("QAT test RMSE (normalised)", f"{metrics['rmse_normalised']:.5f}"),
        ("float test RMSE", f"{metrics['float_rmse']:.3f}"),
        ("persistence test RMSE", f"{metrics['persistence_rmse']:.3f}"),
        ("QAT RMSE vs float", f"{100 * metrics['rmse_vs_float']:+.2f} %"),
        ("model size (bits)", f"{metrics['model_size_bits']:,}"),
        ("float model size (bits)", f"{metrics['float_model_size_bits']:,}"),
        (
            "quantisers using AQ",
            f"{sum(v == 'AQ' for v in metrics['schemes'].values())} of {len(metrics['schemes'])}",
        ),
        ("epochs (float + QAT)", f"{metrics['float_epochs_run']} + {metrics['qat_epochs_run']}"),
        ("training time (s)", f"{metrics['train_seconds']:.1f}"),
    ]
    for key in ("int_ops", "zero_point_ops"):
        if key in metrics:
            rows.append((key.replace("_", " "), f"{metrics[key]:,}"))
    export = metrics.get("export")
    if export:
        rows.append(("QONNX vs Brevitas max |diff|", f"{export['max_abs_diff']:.2e}"))
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)


# --- commands -------------------------------------------------------------------------------


@app.command()
@_clean_errors
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/train"),
    data: DataOpt = "beijing",
    plan: PlanOpt = "mixed-4-8/sq-apq",
    threshold: Annotated[float, typer.Option(help="APQ symmetry threshold (presets).")] = 0.1,
    epochs: Annotated[int, typer.Option(help="Max float epochs.")] = 30,
    qat_epochs: Annotated[int, typer.Option(help="Max QAT epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate (float).")] = 1e-3,
    qat_lr: Annotated[float, typer.Option(help="Adam learning rate (QAT).")] = 5e-4,
    patience: Annotated[int, typer.Option(help="Early-stopping patience (epochs).")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    qat_from_scratch: Annotated[
        bool, typer.Option(help="Start QAT from random weights instead of the float model.")
    ] = False,
    max_batches: Annotated[
        int | None, typer.Option(help="Cap on training batches per epoch (quick runs).")
    ] = None,
    threads: Annotated[int, typer.Option(help="Torch intra-op threads (1 is fastest here).")] = 1,
    window: Annotated[int, typer.Option(help="Input window length (hours).")] = 24,
    horizon: Annotated[int, typer.Option(help="Steps ahead (0: the window's last step).")] = 1,
    d_model: Annotated[int, typer.Option(help="Model width.")] = 16,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 1,
    ffn_dim: Annotated[int | None, typer.Option(help="FFN width (default 4*d_model).")] = None,
    norm: Annotated[str, typer.Option(help="Normalisation: layer or batch.")] = "layer",
    target: Annotated[str | None, typer.Option(help="csv/airu: target column.")] = None,
    timestamp: Annotated[
        list[str] | None, typer.Option(help="csv: timestamp column(s), repeat for several.")
    ] = None,
    timestamp_format: Annotated[str | None, typer.Option(help="csv: strftime format.")] = None,
    features: Annotated[str | None, typer.Option(help="csv/airu: comma-separated.")] = None,
    delimiter: Annotated[str | None, typer.Option(help="csv: field delimiter.")] = None,
    decimal: Annotated[str | None, typer.Option(help="csv: decimal mark.")] = None,
    na_values: Annotated[
        str | None, typer.Option(help="csv: comma-separated missing markers, e.g. -200,NA.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start again even if --out has a run.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train the float model, then QAT with a bit plan; write metrics, plots and checkpoints."""
    from brevitas_apq.plans import BitPlan
    from brevitas_apq.training import DataSpec, TrainConfig, train_run

    options = _csv_options(
        target, timestamp, timestamp_format, features, delimiter, decimal, na_values
    )
    metrics = train_run(
        out,
        data=DataSpec(data, window, horizon, options=options),
        plan=BitPlan.parse(plan, threshold=threshold),
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
        model_options={"d_model": d_model, "n_heads": heads, "ffn_dim": ffn_dim, "norm": norm},
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    print_metrics(metrics, f"apq train: {out}")


@app.command("export")
@_clean_errors
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished `apq train` run directory.")],
    windows: Annotated[int, typer.Option(help="Test windows to check.")] = 256,
    tolerance: Annotated[float, typer.Option(help="Max abs difference allowed.")] = 1e-5,
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


@app.command()
@_clean_errors
def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path(
        "runs/quickstart"
    ),
    epochs: Annotated[int, typer.Option(help="Max float epochs.")] = 30,
    qat_epochs: Annotated[int, typer.Option(help="Max QAT epochs.")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """The main job: float + QAT (mixed-4-8 / sq-apq) on the embedded data, then QONNX export.

    Resumes an interrupted quickstart in the same --out.
    """
    from brevitas_apq.export import export_run
    from brevitas_apq.io import write_json
    from brevitas_apq.plans import BitPlan
    from brevitas_apq.training import CHECKPOINT, TrainConfig, train_run

    metrics = train_run(
        out,
        plan=BitPlan.from_presets("mixed-4-8", "sq-apq"),
        train=TrainConfig(float_epochs=epochs, qat_epochs=qat_epochs, seed=seed),
        resume=(out / CHECKPOINT).exists(),
        progress=progress,
    )
    metrics["export"] = export_run(out)
    write_json(out / "metrics.json", metrics)
    print_metrics(metrics, f"apq quickstart: {out}")
    if not metrics["export"]["passed"]:
        raise typer.Exit(1)


@app.command()
@_clean_errors
def show(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Print the summary table of a finished run."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a finished run directory")
    print_metrics(json.loads(path.read_text()), str(run_dir))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
