"""What every ``apq`` command shares: the typer app, the error handling that turns the
project's own errors into one line and exit code 2 (``clean_errors``), option validators, the
shared option types (data, model, training), and ``main`` (the console entry point).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.markup import escape

from brevitas_apq import __version__, report
from brevitas_apq.errors import APQError, ConfigError
from brevitas_apq.report import err_console

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


def clean_errors(func):
    """Turn the project's own errors into one clear line and exit code 2, and Ctrl-C into exit
    code 130; any other exception is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print(
                "[bold red]interrupted[/] (Ctrl-C): finished results are kept; `apq train` "
                "continues with --resume; `apq reproduce`, `apq sensitivity` and `apq search` "
                "continue when run again"
            )
            raise typer.Exit(130) from None
        except Exception as err:
            if not isinstance(err, _user_errors()):
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(err))}")
            raise typer.Exit(2) from None

    return wrapper


def option_error(message: str) -> ConfigError:
    """An error of options that are each valid but not together (one line, exit code 2)."""
    return ConfigError(message)


def finite_at_least_zero(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"{value} is not a tolerance; give a finite number >= 0")
    return value


def finite_positive(value: float) -> float:
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
# data options of train, reproduce and search (build_data_spec)
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


#: The data options of train, reproduce and search, by parameter name (``build_data_spec``).
DATA_OPTIONS = (
    "data",
    "predict",
    "window",
    "horizon",
    "target",
    "timestamp",
    "timestamp_format",
    "features",
    "delimiter",
    "decimal",
    "na_values",
)


def build_data_spec(values: Mapping[str, Any]):
    """The DataSpec of a command's data options, picked by name (``DATA_OPTIONS``) from
    ``values``, the command's ``locals()``.

    Example::

        def train(..., data: DataOpt = "beijing", predict: PredictOpt = "change", ...):
            spec = build_data_spec(locals())
    """
    from brevitas_apq.data import DataSpec

    o = {name: values[name] for name in DATA_OPTIONS}
    options = {
        "target": o["target"],
        "timestamp": tuple(o["timestamp"]) if o["timestamp"] else None,
        "timestamp_format": o["timestamp_format"],
        "features": _split(o["features"]),
        "delimiter": o["delimiter"],
        "decimal": o["decimal"],
        "na_values": _split(o["na_values"]),
    }
    if options["timestamp"] and len(options["timestamp"]) == 1:
        options["timestamp"] = options["timestamp"][0]
    csv = tuple((k, v) for k, v in options.items() if v is not None)
    return DataSpec(o["data"], o["window"], o["horizon"], options=csv, predict=o["predict"])


def _split(text: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in text.split(",")) if text else None


def build_model_options(d_model, heads, ffn_dim, norm) -> dict[str, object]:
    return {"d_model": d_model, "n_heads": heads, "ffn_dim": ffn_dim, "norm": norm}


def print_metrics(metrics: dict, title: str) -> None:
    """The run's table (``report.print_metrics``); exit code 1 for a degenerate model."""
    if report.print_metrics(metrics, title):
        raise typer.Exit(1)


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
