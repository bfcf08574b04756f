"""``apq reproduce``, ``analyze``, ``sensitivity`` and ``search``: studies over many runs
(``brevitas_apq.experiments``, ``analysis``, ``sensitivity``, ``search``)."""

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
    option_error,
)
from brevitas_apq.report import console

# --- apq reproduce (brevitas_apq.experiments) --------------------------------------------------


@app.command()
@clean_errors
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
        raise option_error(f"--board {board} is used only with --finn: add --finn or drop --board")
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
        data=build_data_spec(locals()),
        model_options=build_model_options(d_model, heads, ffn_dim, norm),
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
@clean_errors
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
@clean_errors
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
@clean_errors
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
        data=build_data_spec(locals()),
        sampler=sampler,
        sampler_seed=sampler_seed,
        jobs=jobs,
        progress=progress,
        log=lambda line: console.print(line, highlight=False),
    )
    report.print_pareto(result, study_name, out)
